"""%%bg: board cells that run in the background while the notebook stays usable."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from kernel_fixtures import (boards, kernel_env, kernels, no_leftover_processes,  # noqa: F401
                             unix_board_and_kernel)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def _checked_for_leftovers(no_leftover_processes: None) -> None:
    """Set up before (so torn down after) every other fixture of the module."""


@pytest.fixture(scope="module")
def kernel(unix_board_and_kernel):
    return unix_board_and_kernel[1]


def _wait_for(kernel, text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        shown = kernel.ok("%bg").stream()
        if text in shown:
            return shown
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in %bg: {shown!r}")


def test_background_job_returns_at_once_and_keeps_its_output(unix_board_and_kernel) -> None:
    board, kernel = unix_board_and_kernel
    # The job cannot end by itself: after its ticks it waits for a file in the board's flash
    # that this test creates only later. A %%bg cell that waited for its job would never reply.
    release = Path(board.flash_dir) / "release-the-job"
    code = ("%%bg\nimport os, time\nfor i in range(30):\n    print('tick', i)\n    time.sleep(0.05)\n"
            f"while {release.name!r} not in os.listdir():\n    time.sleep(0.05)\n'done'")
    run = kernel.ok(code)
    assert "background" in run.stream()
    assert "running" in kernel.ok("%bg").stream(), "the job ended before it was released"
    # The notebook stays usable: host cells and magics run while the board works.
    assert kernel.ok("%%local\n6 * 7").result_text == "42"
    # Board cells get a clear "board busy" error instead of a hang.
    busy = kernel.execute("print('hi')")
    assert busy.status == "error" and "busy" in busy.content["evalue"] and "%bg" in busy.content["evalue"]
    release.write_text("")
    shown = _wait_for(kernel, "finished")
    assert "tick 29" in shown and "'done'" in shown
    # The board is free again.
    assert kernel.ok("print('free')").stream() == "free\n"
    release.unlink()


def test_background_job_can_be_stopped(kernel) -> None:
    kernel.ok("%%bg\nn = 0\nwhile True:\n    n += 1")
    assert "running" in kernel.ok("%bg").stream()
    stopped = kernel.ok("%bg stop").stream()
    assert "stopped" in stopped
    # The board kept its state: the loop's counter is there.
    assert int(kernel.ok("n").result_text) > 0


def test_bg_without_a_job_and_with_bad_options(kernel) -> None:
    bad = kernel.execute("%bg --bogus")
    assert bad.status == "error" and "--bogus" in bad.content["evalue"]


def test_bg_with_another_cell_magic_says_what_does_it(kernel) -> None:
    run = kernel.execute("%%bg\n%%plot\nprint(1, 2)")
    assert run.status == "error" and "%%plot --bg" in run.content["evalue"], run
    assert "\n" not in run.content["evalue"]
    assert kernel.ok("print('still fine')").stream().strip() == "still fine"
