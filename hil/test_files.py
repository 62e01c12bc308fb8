"""BoardFiles on every target: the unix board (fast path), the same at 115200 baud,
and the micro:bit's MicroPython 1.9.2 (fallbacks: literals, Adler-32, flat filesystem)."""
from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from edgekernel.device.files import BoardFiles, FileTransferError


def _rand(n: int, seed: int = 3) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def files(board) -> BoardFiles:
    return BoardFiles(board)


def _sizes(files: BoardFiles) -> dict[str, int | None]:
    return {e.name: e.size for e in files.ls(long=True)}


def test_round_trips(files, board):
    small = board.target.ram_small
    cases = [b"x = 1\nprint(x)\n" * (20 if small else 400), bytes(range(256)) * 2,
             b"\x03\x04\x1e\x1b" * 50, b"", _rand(2000 if small else 50_000)]
    for i, data in enumerate(cases):
        name = f"t{i}.bin"
        assert files.put(data, name) == len(data)
        assert files.get(name) == data, name
        assert _sizes(files)[name] == len(data)
        files.rm(name)
    assert not any(n.startswith("t") and n.endswith(".bin") for n in _sizes(files))


def test_capabilities_match_the_board(files, board):
    c = files.caps
    if board.target.name == "microbit":
        # Its flat filesystem has no os.rename: puts there write in place (and say so on failure).
        assert not c.stream and not c.sha256 and not c.ilistdir and c.listdir and c.size and not c.rename
    else:
        assert c.stream and c.sha256 and c.deflate and c.rename


def test_failed_put_keeps_the_old_file(files, board, monkeypatch):
    """A put that fails verification leaves the old file and no temporary file (where os.rename exists)."""
    if not files.caps.rename:
        pytest.skip("no os.rename on this board: puts write in place")
    files.put(b"old\n", "keep.txt")
    real = BoardFiles.host_digest
    monkeypatch.setattr(BoardFiles, "host_digest", lambda self, data: real(self, data + b"x"))
    with pytest.raises(FileTransferError, match="keep.txt on the board is unchanged"):
        files.put(_rand(3000), "keep.txt")
    monkeypatch.undo()
    assert files.get("keep.txt") == b"old\n"
    assert ".keep.txt.ek-tmp" not in _sizes(files)
    files.put(b"new\n", "keep.txt")
    assert files.get("keep.txt") == b"new\n"
    files.rm("keep.txt")


def test_append_where_supported(files, board):
    if not files.caps.stat:
        with pytest.raises(FileTransferError, match="appending needs os.stat.*nothing was written"):
            files.put(b"x", "a.txt", append=True)
        return
    files.put(b"one\n", "a.txt")
    files.put(b"two\x03\n", "a.txt", append=True)
    assert files.get("a.txt") == b"one\ntwo\x03\n"
    files.rm("a.txt")


def test_tree_and_dirs(files, board, tmp_path):
    if not files.caps.mkdir:
        with pytest.raises(FileTransferError, match="flat filesystem"):
            files.mkdir("d")
        return
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "m.py").write_bytes(b"V = 1\n" * 100)
    (src / "boot_x.py").write_bytes(_rand(1500))
    assert {w for _, w in files.put_tree(src, "tree")} == {"put"}
    assert {w for _, w in files.put_tree(src, "tree")} == {"skipped"}
    files.rm("tree", recursive=True)
    assert "tree" not in _sizes(files)


def test_missing_file_and_dir_errors(files, board):
    with pytest.raises(FileTransferError, match="get nope.bin failed on the board.*(ENOENT|not found)"):
        files.get("nope.bin")
    if files.caps.mkdir:
        with pytest.raises(FileTransferError, match="put no/dir/f failed.*ENOENT"):
            files.put(b"abc" * 1000, "no/dir/f")
    files.put(b"still fine", "ok.txt")
    assert files.get("ok.txt") == b"still fine"
    files.rm("ok.txt")


def test_microbit_full_flash_fails_cleanly(files, board):
    """A file larger than the micro:bit's flash: ENOSPC, one-line error, no file left."""
    if board.target.name != "microbit":
        pytest.skip("the micro:bit's tiny flash gives a real ENOSPC")
    before = _sizes(files)
    with pytest.raises(FileTransferError) as e:
        files.put(_rand(40_000), "huge.bin")
    msg = str(e.value)
    assert "\n" not in msg and "28" in msg and "partial file was removed" in msg and "no os.rename" in msg
    assert "huge.bin" not in _sizes(files) and _sizes(files) == before
    files.put(b"after", "after.txt")
    assert files.get("after.txt") == b"after"
    files.rm("after.txt")


def test_microbit_large_read_is_chunked(files, board):
    """A file several times the free heap reads back whole (no MemoryError)."""
    if board.target.name != "microbit":
        pytest.skip("micro:bit RAM limits")
    data = _rand(9000, seed=9)
    assert data.__len__() > files.meminfo()
    files.put(data, "big.bin")
    assert files.get("big.bin") == data
    files.rm("big.bin")


def _mpremote(port: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpremote", "connect", port, "resume", *args],
                          capture_output=True, timeout=120)


@pytest.mark.parametrize("target", ["unix"], indirect=True)
def test_interop_with_mpremote(target, tmp_path):
    """Written by edgekernel, read by mpremote, and the other way round, byte-exact."""
    from edgekernel.device import BoardSession
    data = _rand(30_000, seed=11) + bytes(range(256))
    with BoardSession.open(target.port) as s:
        BoardFiles(s).put(data, "ek.bin")
    r = _mpremote(target.port, "fs", "cp", ":ek.bin", str(tmp_path / "back.bin"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back.bin").read_bytes() == data
    (tmp_path / "mp.bin").write_bytes(data[::-1])
    r = _mpremote(target.port, "fs", "cp", str(tmp_path / "mp.bin"), ":mp.bin")
    assert r.returncode == 0, r.stderr
    with BoardSession.open(target.port) as s:
        f = BoardFiles(s)
        assert f.get("mp.bin") == data[::-1]
        f.rm("mp.bin")
        f.rm("ek.bin")
