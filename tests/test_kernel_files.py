"""File magics through the kernel on the emulated unix board."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from kernel_fixtures import (boards, kernel_env, kernels, no_leftover_processes,  # noqa: F401
                             unix_board_and_kernel)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module", autouse=True)
def _checked_for_leftovers(no_leftover_processes: None) -> None:
    """Set up before (so torn down after) every other fixture of the module."""


@pytest.fixture(scope="module")
def board_and_kernel(unix_board_and_kernel):
    return unix_board_and_kernel


def test_sendtofile_writes_the_cell_and_the_board_runs_it(board_and_kernel) -> None:
    board, kernel = board_and_kernel
    run = kernel.ok("%sendtofile greet.py\ndef hello(name):\n    return 'hi ' + name\n")
    assert "verified" in run.stream() + str(run.iopub)
    assert (Path(board.flash_dir) / "greet.py").read_text() == "def hello(name):\n    return 'hi ' + name\n"
    assert kernel.ok("import greet\ngreet.hello('board')").result_text == "'hi board'"
    assert kernel.ok("%cat greet.py").stream().startswith("def hello(name):")
    listing = kernel.ok("%ls -l").stream()
    assert "greet.py" in listing


def test_big_source_file_shows_one_progress_display_updated_in_place(board_and_kernel, tmp_path: Path) -> None:
    board, kernel = board_and_kernel
    data = os.urandom(300_000)
    local = tmp_path / "blob.bin"
    local.write_bytes(data)
    run = kernel.ok(f"%sendtofile --source {local} blob.bin", timeout=120)
    shown = [m for m in run.iopub if m["msg_type"] in ("display_data", "update_display_data")]
    assert len(shown) <= 40, "progress must update in place, not print thousands of lines"
    ids = {m["content"]["transient"]["display_id"] for m in shown}
    assert len(ids) <= 1
    assert (Path(board.flash_dir) / "blob.bin").read_bytes() == data
    back = tmp_path / "back.bin"
    kernel.ok(f"%fetchfile blob.bin {back}", timeout=120)
    assert back.read_bytes() == data


def test_fetchfile_load_fills_the_next_cell(board_and_kernel) -> None:
    _, kernel = board_and_kernel
    kernel.ok("%sendtofile notes.txt\nline one\nline two\n")
    run = kernel.ok("%fetchfile --load notes.txt")
    payload = run.content["payload"]
    assert payload and payload[0]["source"] == "set_next_input"
    assert payload[0]["text"] == "%sendtofile notes.txt\nline one\nline two\n"


def test_rm_mkdir_df_meminfo_and_errors(board_and_kernel) -> None:
    board, kernel = board_and_kernel
    kernel.ok("%mkdir data")
    assert (Path(board.flash_dir) / "data").is_dir()
    kernel.ok("%sendtofile data/x.txt\nx\n")
    kernel.ok("%rm -r data")
    assert not (Path(board.flash_dir) / "data").exists()
    assert "free of" in kernel.ok("%df").stream()
    assert "bytes free" in kernel.ok("%meminfo").stream()
    missing = kernel.execute("%sendtofile no/such/dir/f.txt\nx\n")
    assert missing.status == "error" and missing.content["evalue"]
    assert kernel.execute("%cat nothing-here.txt").status == "error"
    assert kernel.execute("%sendtofile").status == "error"


def test_interrupt_during_sendtofile_keeps_the_old_file(board_and_kernel, tmp_path: Path) -> None:
    """Kernel -> Interrupt mid-transfer: the cell ends with one clear line, the board's old file
    is intact with no temporary file beside it, and the board runs the next cell at once."""
    import time
    board, kernel = board_and_kernel
    flash = Path(board.flash_dir)
    (flash / "keep.bin").write_bytes(b"the old file")
    local = tmp_path / "huge.bin"
    local.write_bytes(os.urandom(3_000_000))
    msg_id = kernel.send_execute(f"%sendtofile --source {local} keep.bin")
    deadline = time.monotonic() + 60
    while not any(m["msg_type"] in ("display_data", "update_display_data") for m in kernel._iopub.get(msg_id, [])):
        assert msg_id not in kernel._replies and time.monotonic() < deadline, "the transfer did not start"
        kernel._pump(0.01)
    kernel.km.interrupt_kernel()
    reply = kernel.wait_reply(msg_id, timeout=30)
    kernel.wait_idle(msg_id)
    content = reply["content"]
    assert content["status"] == "error", content
    message = f"{content['ename']}: {content['evalue']}"
    assert "\n" not in content["evalue"] and "interrupted" in message and "keep.bin on the board is unchanged" in message
    assert (flash / "keep.bin").read_bytes() == b"the old file"
    assert not (flash / ".keep.bin.ek-tmp").exists()
    assert kernel.ok("print(6*7)").stream().strip() == "42"
