"""%mount DIR / %umount through the kernel: a host folder served live to the emulated boards.

Real parts only: the unix-port board on a pty (and behind the emulated WebREPL), QEMU's micro:bit for
the refusal, real kernels through jupyter_client. The host folder is a temp dir; every check of what
the board wrote reads the host's own files.
"""
from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

import pytest

from edgekernel.device.mount import MountFolder
from kernel_fixtures import (wait_for_stream, CELL_TIMEOUT, BOARD_OPTIONS, Kernel, Run, boards, kernel_env, kernels,  # noqa: F401
                             no_leftover_processes)

pytestmark = pytest.mark.timeout(300)

PASSWORD = "m0untpw"
MODULE = "GREETING = 'hi from the host'\ndef double(x):\n    return 2 * x\n"


@pytest.fixture(scope="module", autouse=True)
def _checked_for_leftovers(no_leftover_processes: None) -> None:
    """Set up before (so torn down after) every other fixture of the module."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mounted")
    (root / "hostmod.py").write_text(MODULE)
    (root / "data.txt").write_text("line one\nline two\nünïcode line\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def unix(boards, kernels, folder):
    board = boards.start("unix")
    kernel = kernels.start("micropython", port=board.port, name="micropython/mount")
    kernel.ok("None")
    run = kernel.ok(f"%mount {folder}")
    assert f"mounted {folder.resolve()} at /remote" in run.stream(), run
    yield board, kernel
    kernels.shutdown(kernel)
    boards.stop(board)


def board_errno(kernel: Kernel, code: str) -> int:
    """The errno of the OSError `code` raises on the board."""
    run = kernel.ok(f"try:\n    {code}\n    print('no error')\nexcept OSError as e:\n    print('errno', e.args[0])")
    text = run.stream().strip()
    assert text.startswith("errno "), (code, text)
    return int(text.split()[-1])


# -- the host side alone -------------------------------------------------------------------------------

def test_host_refuses_paths_outside_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "inside.txt").write_text("in")
    (tmp_path / "secret.txt").write_text("out")
    (root / "out_link").symlink_to(tmp_path / "secret.txt")
    (root / "in_link").symlink_to(root / "inside.txt")
    served = MountFolder(root)
    assert served.handle(b"s/inside.txt")[0] == 0
    for path in (b"s/../secret.txt", b"s../secret.txt", b"s/a/../../secret.txt", b"s/out_link"):
        assert served.handle(path) == bytes((errno.EACCES,)), path
    assert served.handle(b"s/in_link")[0] == 0
    assert served.handle(b"s/missing")[0] == errno.ENOENT
    assert served.handle(b"orb\0/out_link") == bytes((errno.EACCES,))
    # Asked for: symlinks may point out; `..` above the folder is still refused.
    lenient = MountFolder(root, allow_symlinks_outside=True)
    assert lenient.handle(b"s/out_link")[0] == 0
    assert lenient.handle(b"s/../secret.txt") == bytes((errno.EACCES,))


# -- the unix board through the kernel --------------------------------------------------------------------

def test_import_read_write_list_stat_through_the_mount(unix, folder: Path) -> None:
    board, kernel = unix
    assert kernel.ok("import os\nos.getcwd()").result_text == "'/remote'"
    run = kernel.ok("import hostmod\nprint(hostmod.GREETING)\nhostmod.double(21)")
    assert run.stream() == "hi from the host\n" and run.result_text == "42"
    # Text: lines, a UTF-8 line, read(n) in pieces
    # (MicroPython's repr escapes non-ASCII characters: compare what print shows)
    run = kernel.ok("with open('data.txt') as f:\n    lines = [l for l in f]\nprint('|'.join(lines))\nlen(lines)")
    assert run.stream() == "line one\n|line two\n|ünïcode line\n\n" and run.result_text == "3"
    run = kernel.ok("f = open('data.txt')\nparts = []\nwhile True:\n    p = f.read(3)\n    if not p:\n        break\n"
                    "    parts.append(p)\nf.close()\nprint('|'.join(parts))")
    assert run.stream().replace("|", "") == "line one\nline two\nünïcode line\n\n"
    # Writes land in the host folder at once; binary is byte-exact (every byte value both ways)
    kernel.ok("with open('from_board.txt', 'w') as f:\n    f.write('written on the board\\n')")
    assert (folder / "from_board.txt").read_text() == "written on the board\n"
    kernel.ok("with open('all.bin', 'wb') as f:\n    f.write(bytes(range(256)) * 3)")
    assert (folder / "all.bin").read_bytes() == bytes(range(256)) * 3
    assert kernel.ok("open('all.bin', 'rb').read() == bytes(range(256)) * 3").result_text == "True"
    kernel.ok("f = open('all.bin', 'rb')\nf.seek(250)\nchunk = f.read(10)\npos = f.tell()\nf.close()")
    assert kernel.ok("chunk, pos").result_text == repr((bytes(range(250, 256)) + bytes(range(4)), 260))
    # Directories, stat, rename, remove
    kernel.ok("os.mkdir('sub')\nos.rename('from_board.txt', 'sub/moved.txt')")
    assert (folder / "sub" / "moved.txt").read_text() == "written on the board\n"
    assert not (folder / "from_board.txt").exists()
    assert kernel.ok("sorted(os.listdir())").result_text == repr(sorted(["hostmod.py", "data.txt", "all.bin", "sub"]))
    assert kernel.ok("os.listdir('sub')").result_text == "['moved.txt']"
    assert kernel.ok("os.stat('all.bin')[6], os.stat('sub')[0] & 0x4000 != 0").result_text == "(768, True)"
    kernel.ok("os.chdir('sub')\nprint(os.getcwd(), open('moved.txt').read())\nos.chdir('..')")
    kernel.ok("os.remove('sub/moved.txt')\nos.rmdir('sub')\nos.remove('all.bin')")
    assert sorted(p.name for p in folder.iterdir()) == ["data.txt", "hostmod.py"]
    assert board_errno(kernel, "open('missing.txt')") == errno.ENOENT
    # A magic's own program sees the mount too (the board's current directory)
    assert "hostmod.py" in kernel.ok("%ls").stream()


def test_a_file_larger_than_the_boards_ram_streams_both_ways(unix, folder: Path) -> None:
    _, kernel = unix
    assert int(kernel.ok("import gc\ngc.collect()\ngc.mem_free()").result_text) < 2_000_000
    data = os.urandom(2_000_000)
    (folder / "big.bin").write_bytes(data)
    run = kernel.ok("import hashlib\nh = hashlib.sha256()\nn = 0\nb = bytearray(4096)\n"
                    "with open('big.bin', 'rb') as f:\n"
                    "    while True:\n        k = f.readinto(b)\n        if not k:\n            break\n"
                    "        h.update(b[:k])\n        n += k\n"
                    "n, h.digest()", timeout=120)
    assert run.result_text == repr((len(data), hashlib.sha256(data).digest()))
    kernel.ok("with open('made.bin', 'wb') as f:\n    for i in range(500):\n        f.write(bytes([i % 251]) * 4000)",
              timeout=120)
    assert (folder / "made.bin").read_bytes() == b"".join(bytes([i % 251]) * 4000 for i in range(500))
    kernel.ok("os.remove('big.bin')\nos.remove('made.bin')")


def test_paths_outside_the_folder_are_refused_on_the_board(unix, folder: Path, tmp_path: Path) -> None:
    _, kernel = unix
    outside = tmp_path / "outside.txt"
    outside.write_text("not for the board")
    link = folder / "escape.txt"
    link.symlink_to(outside)
    try:
        rel = os.path.relpath(outside, folder)
        assert board_errno(kernel, f"open({rel!r})") == errno.EACCES
        assert board_errno(kernel, "open('escape.txt')") == errno.EACCES
        assert board_errno(kernel, "open('/remote/../../../etc/passwd')") != 0
        assert board_errno(kernel, "open('escape.txt', 'w').write('x')") == errno.EACCES
        assert outside.read_text() == "not for the board"
    finally:
        link.unlink()


def test_output_that_looks_like_the_protocol_changes_nothing(unix, folder: Path) -> None:
    _, kernel = unix
    # The marker lead, request letters, escapes and raw-REPL endings printed by the user's code,
    # between file operations that move every byte value both ways.
    noise = "'\\x1eQM\\x1e@@@Q' + 'M\\x04\\x04>\\x1b[\\x1bD\\x1e\\x1eq\\x03\\x01'"
    code = (f"noise = {noise}\nprint(noise)\n"
            "with open('echo.bin', 'wb') as f:\n    print(noise, end='')\n    f.write(bytes(range(256)))\n    print(noise)\n"
            "back = open('echo.bin', 'rb').read()\nprint(noise)\nback == bytes(range(256))")
    run = kernel.ok(code)
    assert run.result_text == "True", run
    assert (folder / "echo.bin").read_bytes() == bytes(range(256))
    assert run.stream().count("@@@QM") == 4 and run.stream().count("\n") == 3
    assert kernel.ok("hostmod.double(4)").result_text == "8"
    kernel.ok("os.remove('echo.bin')")


def test_ctrl_c_during_a_long_read_then_the_next_cell_and_the_mount_work(unix, folder: Path) -> None:
    _, kernel = unix
    (folder / "endless.bin").write_bytes(os.urandom(300_000))
    for attempt in range(3):
        msg_id = kernel.send_execute(
            "print('reading')\nwhile True:\n    with open('endless.bin', 'rb') as f:\n"
            "        while f.read(8192):\n            pass")
        wait_for_stream(kernel, msg_id, "reading")
        time.sleep(0.3 + 0.2 * attempt)
        kernel.km.interrupt_kernel()
        reply = kernel.wait_reply(msg_id, timeout=30)
        kernel.wait_idle(msg_id)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt", reply
        assert kernel.ok("6*7").result_text == "42"
        assert kernel.ok("open('data.txt').readline()").result_text == repr("line one\n")
        run = kernel.ok("n = 0\nwith open('endless.bin', 'rb') as f:\n    while True:\n        k = len(f.read(5000))\n"
                        "        if not k:\n            break\n        n += k\nn")
        assert run.result_text == "300000"
    (folder / "endless.bin").unlink()


def test_a_background_cell_uses_the_mount(unix, folder: Path) -> None:
    _, kernel = unix
    kernel.ok("%%bg\nimport time\nfor i in range(3):\n    print(open('data.txt').read().split()[1 + i])\n"
              "    time.sleep(0.05)\nopen('bg.txt', 'w').write('done')")
    deadline = time.monotonic() + 30
    while not (folder / "bg.txt").exists() or "finished" not in kernel.ok("%bg").stream():
        assert time.monotonic() < deadline, kernel.ok("%bg").stream()
        time.sleep(0.1)
    status = kernel.ok("%bg").stream()
    assert "one\nline\ntwo" in status.replace("\r\n", "\n"), status
    assert (folder / "bg.txt").read_text() == "done"
    (folder / "bg.txt").unlink()


def test_soft_resets_remount_and_umount_removes_it(unix, folder: Path) -> None:
    board, kernel = unix
    run = kernel.ok("%reboot")
    assert f"mounted {folder.resolve()} at /remote again" in run.stream(), run
    assert kernel.ok("import os, hostmod\nos.getcwd(), hostmod.double(5)").result_text == "('/remote', 10)"
    # A reset from the cell itself (sys.exit() soft-resets the board)
    run = kernel.execute("import sys\nsys.exit()")
    assert run.status == "error" and run.content["ename"] == "BoardReset", run
    assert "at /remote again" in run.stream(), run
    assert kernel.ok("open('data.txt').read(4)").result_text == "'line'"
    run = kernel.ok("%umount")
    assert "unmounted" in run.stream()
    assert kernel.ok("import os\nos.getcwd()").result_text == "'/'"
    assert board_errno(kernel, "open('data.txt')") == errno.ENOENT
    assert "/remote" not in kernel.ok("os.listdir('/')").result_text
    # After %umount nothing is remounted on reset
    assert "again" not in kernel.ok("%reboot").stream()
    # Mounting binds no name in the user's namespace
    names = "sorted(k for k in globals() if k != '_')"
    before = kernel.ok(names).result_text
    kernel.ok(f"%mount {folder}")
    assert kernel.ok(names).result_text == before


# -- WebREPL, micro:bit ---------------------------------------------------------------------------------

def test_mount_over_webrepl(boards, kernels, folder: Path) -> None:
    board = boards.start("unix", webrepl=0, webrepl_password=PASSWORD)
    kernel = kernels.start("micropython", name="webrepl-mount", BOARD_PW=PASSWORD)
    kernel.ok(f"%websocketconnect {board.webrepl} --password-env BOARD_PW")
    kernel.ok(f"%mount {folder}")
    assert kernel.ok("import hostmod\nhostmod.double(8)").result_text == "16"
    kernel.ok("open('over_ws.bin', 'wb').write(bytes(range(256)) * 40)")
    assert (folder / "over_ws.bin").read_bytes() == bytes(range(256)) * 40
    assert kernel.ok("open('over_ws.bin', 'rb').read() == bytes(range(256)) * 40").result_text == "True"
    # A soft reset drops the WebREPL client: the link logs in again and the folder is mounted again.
    assert "at /remote again" in kernel.ok("%reboot").stream()
    assert kernel.ok("len(open('over_ws.bin', 'rb').read())").result_text == "10240"
    kernel.ok("%umount")
    (folder / "over_ws.bin").unlink()
    kernels.shutdown(kernel)
    boards.stop(board)


def test_microbit_refuses_with_one_line(boards, kernels, folder: Path) -> None:
    board = boards.start("microbit", **BOARD_OPTIONS["microbit"])
    kernel = kernels.start("micropython", port=board.port, name="microbit-mount")
    kernel.ok("None")
    run = kernel.execute(f"%mount {folder}")
    assert run.status == "error", run
    evalue = run.content["evalue"]
    assert "os.mount" in evalue and "1.9.2" in evalue and "%sendtofile" in evalue and "\n" not in evalue, evalue
    assert kernel.ok("1+1").result_text == "2"
    kernels.shutdown(kernel)
    boards.stop(board)
