"""%%plot in JupyterLab, in a real Chromium: the chart appears while the board prints and changes in
place (one image, not a stack of them), also for a --bg job after its cell has ended; %%local then has
the numbers as a DataFrame."""
from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from jupyter_pages import JupyterServer, NotebookPage

pytestmark = pytest.mark.timeout(300)

# The running cell's prompt in JupyterLab.
RUNNING = re.compile(r"^\[\*\]:$")


def released_loop(release: str, line: str) -> str:
    """Board code printing `line` (with i) every 100 ms until the test creates the file `release` in the
    board's flash: the test decides when it has seen enough, so no wall-clock guess makes it flaky."""
    return (f"import os, time, math\ni = 0\nwhile {release!r} not in os.listdir():\n    print({line})\n"
            f"    i += 1\n    time.sleep(0.1)\n")


def flash_dir(server: JupyterServer) -> Path:
    """The emulated board's flash folder of the server's kernels (XDG_DATA_HOME is under its root)."""
    return server.root / "xdg-data" / "edgekernel" / "flash-unix"


def image_src(nb: NotebookPage, index: int) -> str:
    image = nb.output(index).locator("img")
    expect(image).to_have_count(1)
    return image.get_attribute("src") or ""


def wait_src_change(nb: NotebookPage, index: int, before: str, timeout: int = 30_000) -> str:
    """Wait until the cell's one image shows another picture than `before`; return it."""
    nb.page.wait_for_function(
        """([index, before]) => {
             const cells = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell');
             const images = cells[index].querySelectorAll('.jp-OutputArea img');
             return images.length === 1 && images[0].getAttribute('src') !== before;
           }""", arg=[index, before], timeout=timeout)
    return image_src(nb, index)


def test_plot_updates_live_and_leaves_a_dataframe(notebook_page: NotebookPage, lab: JupyterServer):
    nb = notebook_page
    tag = secrets.token_hex(4)
    release_plot, release_bg = f"release-plot-{tag}", f"release-bg-{tag}"
    sin_cos = "'sin:%.3f cos:%.3f' % (math.sin(i / 5), math.cos(i / 5))"
    cells = ["%%plot --as readings\n" + released_loop(release_plot, sin_cos),
             "%%local\nprint(list(readings.columns), len(readings) == board.eval('i'))",
             "%%plot --bg --as live\n" + released_loop(release_bg, "i, (i * 7) % 23"),
             "%%local\nprint('rows so far:', len(live))"]
    lab.write_notebook("plot.ipynb", cells)
    replies = nb.kernel_info_replies
    nb.page.goto(lab.url("/lab/workspaces/plot/tree/plot.ipynb", reset=""))
    expect(nb.panel).to_be_visible(timeout=90_000)
    nb.wait_kernel_ready(replies)

    # Run the plot cell (Shift+Enter in it) and watch its chart while the board prints.
    nb.cell(0).locator(".cm-content").click()
    nb.page.keyboard.press("Shift+Enter")
    try:
        image = nb.output(0).locator("img")
        expect(image).to_have_count(1, timeout=60_000)
        first = image_src(nb, 0)
        nb.screenshot("plot-first")
        # The picture changes in place while the board still prints (it prints until released).
        wait_src_change(nb, 0, first)
        expect(nb.prompt(0)).to_have_text(RUNNING)
        expect(nb.output(0).locator("img")).to_have_count(1)
        nb.screenshot("plot-live")
    finally:
        (flash_dir(lab) / release_plot).write_text("")
    nb.wait_done(0)
    expect(nb.output(0).locator("img")).to_have_count(1)
    assert image.evaluate("img => img.complete && img.naturalWidth") > 300
    expect(nb.output(0)).to_contain_text(
        re.compile(r"readings: \d+ samples of sin, cos, a pandas DataFrame for %%local cells"))
    # The numbers are also printed as text below the chart.
    expect(nb.output(0)).to_contain_text("sin:0.000 cos:1.000")
    nb.screenshot("plot-done")

    # %%local sees the DataFrame, one row per line the board printed (Shift+Enter in cell 0 moved to 1).
    nb.page.keyboard.press("Shift+Enter")
    nb.wait_done(1)
    expect(nb.output(1)).to_have_text("['sin', 'cos'] True")

    # A --bg plot: its cell ends at once, and its chart keeps changing while another cell runs.
    nb.page.keyboard.press("Shift+Enter")
    try:
        nb.wait_done(2)
        expect(nb.output(2)).to_contain_text("started in the background")
        expect(nb.output(2).locator("img")).to_have_count(1, timeout=60_000)
        before = image_src(nb, 2)
        nb.page.keyboard.press("Shift+Enter")
        nb.wait_done(3)
        expect(nb.output(3)).to_have_text(re.compile(r"^rows so far: [1-9]\d*\s*$"))
        wait_src_change(nb, 2, before)
        expect(nb.output(2).locator("img")).to_have_count(1)
        nb.screenshot("plot-bg-live")
    finally:
        (flash_dir(lab) / release_bg).write_text("")

    # When the job ends, its DataFrame has every sample the board printed.
    done = nb.run_new_cell("%bg")
    for _ in range(60):   # a hang guard of about 30 s: the job ends once released
        if "finished" in nb.output_text(done):
            break
        nb.page.wait_for_timeout(500)
        done = nb.run_new_cell("%bg")
    assert "finished" in nb.output_text(done)
    last = nb.run_new_cell("%%local\nprint('rows at the end:', len(live), len(live) == board.eval('i'))")
    expect(nb.output(last)).to_have_text(re.compile(r"^rows at the end: \d+ True\s*$"))
    nb.output(2).locator("img").scroll_into_view_if_needed()
    nb.screenshot("plot-bg-done")


def test_plot_in_notebook7_updates_in_place_also_after_a_bg_cell_ended(page: Page, notebook7: JupyterServer,
                                                                       shots: Path | None):
    tag = secrets.token_hex(4)
    release_plot, release_bg = f"release-plot7-{tag}", f"release-bg7-{tag}"
    notebook7.write_notebook("plot7.ipynb", [
        "%%plot --window 20\n" + released_loop(release_plot, "i, i % 7"),
        "%%plot --bg --as live\n" + released_loop(release_bg, "'a:%d b:%d' % (i, -i)"),
        "%%local\nprint('rows so far:', len(live))"])
    nb = NotebookPage(page, shots)
    page.goto(notebook7.url("/notebooks/plot7.ipynb"))
    expect(nb.panel).to_be_visible(timeout=90_000)
    nb.wait_kernel_ready(0)

    nb.cell(0).locator(".cm-content").click()
    nb.page.keyboard.press("Shift+Enter")
    try:
        expect(nb.output(0).locator("img")).to_have_count(1, timeout=60_000)
        wait_src_change(nb, 0, image_src(nb, 0))
        expect(nb.prompt(0)).to_have_text(RUNNING)
        nb.screenshot("notebook7-plot-live")
    finally:
        (flash_dir(notebook7) / release_plot).write_text("")
    nb.wait_done(0)
    expect(nb.output(0).locator("img")).to_have_count(1)
    expect(nb.output(0)).to_contain_text(re.compile(r"plot_data: \d+ samples of col1, col2"))

    nb.page.keyboard.press("Shift+Enter")
    try:
        nb.wait_done(1)
        expect(nb.output(1).locator("img")).to_have_count(1, timeout=60_000)
        before = image_src(nb, 1)
        nb.page.keyboard.press("Shift+Enter")
        nb.wait_done(2)
        expect(nb.output(2)).to_have_text(re.compile(r"^rows so far: [1-9]\d*\s*$"))
        # The --bg chart changes after its cell ended, while the notebook ran another cell.
        wait_src_change(nb, 1, before)
        expect(nb.output(1).locator("img")).to_have_count(1)
        nb.screenshot("notebook7-plot-bg")
    finally:
        (flash_dir(notebook7) / release_bg).write_text("")
