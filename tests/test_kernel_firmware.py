"""%mpy-cross and %esptool through the kernel, on an emulated board (no ESP hardware)."""
from __future__ import annotations

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


def test_mpy_cross_compiles_for_the_board_and_the_board_imports_it(board_and_kernel, tmp_path: Path) -> None:
    board, kernel = board_and_kernel
    source = tmp_path / "blinker.py"
    source.write_text("def twice(x):\n    return 2 * x\n")
    out = Path(board.flash_dir) / "blinker.mpy"
    run = kernel.ok(f"%mpy-cross {source} --out {out}")
    assert "compiled" in run.stream() and out.exists()
    assert kernel.ok("import blinker\nblinker.twice(21)").result_text == "42"


def test_mpy_cross_missing_file_is_a_clear_error(board_and_kernel) -> None:
    _, kernel = board_and_kernel
    run = kernel.execute("%mpy-cross /nonexistent/x.py")
    assert run.status == "error" and "no such file" in run.content["evalue"]


def test_esptool_on_a_board_without_an_esp_chip_fails_clearly_and_reconnects(board_and_kernel) -> None:
    _, kernel = board_and_kernel
    kernel.ok("kept = 7")
    run = kernel.execute("%esptool detect", timeout=120)
    assert run.status == "error"
    assert "no ESP chip answered" in run.content["evalue"]
    # The kernel gave the port back to the board session: cells work, state kept.
    assert kernel.ok("kept * 6").result_text == "42"
