"""%%plot in JupyterLab, in a real Chromium: the chart appears while the board prints and changes in
place (one image, not a stack of them), also for a --bg job after its cell has ended; %%local then has
the numbers as a DataFrame."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from jupyter_pages import JupyterServer, NotebookPage

pytestmark = pytest.mark.timeout(300)

# The running cell's prompt in JupyterLab.
RUNNING = re.compile(r"^\[\*\]:$")

PLOT_CELL = ("%%plot --as readings\nimport time, math\nfor i in range(60):\n"
             "    print('sin:%.3f cos:%.3f' % (math.sin(i / 5), math.cos(i / 5)))\n    time.sleep(0.1)")
LOCAL_CELL = "%%local\nprint(len(readings), list(readings.columns), round(readings['sin'].max(), 3))"
BG_CELL = ("%%plot --bg --as live\nimport time\nfor i in range(80):\n"
           "    print(i, (i * 7) % 23)\n    time.sleep(0.1)")
WHILE_BG_CELL = "%%local\nprint('rows so far:', len(live))"


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
    lab.write_notebook("plot.ipynb", [PLOT_CELL, LOCAL_CELL, BG_CELL, WHILE_BG_CELL])
    replies = nb.kernel_info_replies
    nb.page.goto(lab.url("/lab/workspaces/plot/tree/plot.ipynb", reset=""))
    expect(nb.panel).to_be_visible(timeout=90_000)
    nb.wait_kernel_ready(replies)

    # Run the plot cell (Shift+Enter in it) and watch its chart while the board prints.
    nb.cell(0).locator(".cm-content").click()
    nb.page.keyboard.press("Shift+Enter")
    image = nb.output(0).locator("img")
    expect(image).to_have_count(1, timeout=60_000)
    first = image_src(nb, 0)
    expect(nb.prompt(0)).to_have_text(RUNNING)
    nb.screenshot("plot-first")
    # The picture changes while the board is still printing: fewer than its 60 lines are shown yet
    # (the final chart comes after the last line), and it is still one image.
    nb.page.wait_for_function(
        """([index, before]) => {
             const cells = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell');
             const area = cells[index].querySelector('.jp-OutputArea');
             const images = area.querySelectorAll('img');
             const lines = area.innerText.split('\\n').filter(l => l.startsWith('sin:')).length;
             return images.length === 1 && images[0].getAttribute('src') !== before && lines < 60;
           }""", arg=[0, first], timeout=30_000)
    nb.screenshot("plot-live")
    expect(nb.output(0).locator("img")).to_have_count(1)
    nb.wait_done(0)
    expect(nb.output(0).locator("img")).to_have_count(1)
    assert image.evaluate("img => img.complete && img.naturalWidth") > 300
    expect(nb.output(0)).to_contain_text("readings: 60 samples of sin, cos, a pandas DataFrame for %%local cells")
    # The numbers are also printed as text below the chart.
    expect(nb.output(0)).to_contain_text("sin:0.000 cos:1.000")
    nb.screenshot("plot-done")

    # %%local sees the DataFrame (Shift+Enter in cell 0 moved to cell 1).
    nb.page.keyboard.press("Shift+Enter")
    nb.wait_done(1)
    expect(nb.output(1)).to_have_text("60 ['sin', 'cos'] 1.0")

    # A --bg plot: its cell ends at once, and its chart keeps changing while another cell runs.
    nb.page.keyboard.press("Shift+Enter")
    nb.wait_done(2)
    expect(nb.output(2)).to_contain_text("started in the background")
    expect(nb.output(2).locator("img")).to_have_count(1, timeout=60_000)
    before = image_src(nb, 2)
    nb.page.keyboard.press("Shift+Enter")
    nb.wait_done(3)
    expect(nb.output(3)).to_contain_text(re.compile(r"rows so far: \d+"))
    found = re.search(r"rows so far: (\d+)", nb.output_text(3))
    assert found is not None
    rows_then = int(found.group(1))
    assert 0 < rows_then < 80
    wait_src_change(nb, 2, before)
    nb.screenshot("plot-bg-live")
    expect(nb.output(2).locator("img")).to_have_count(1)

    # When the job ends, its DataFrame has every sample.
    done = nb.run_new_cell("%bg")
    for _ in range(60):   # a hang guard of about 30 s: the job prints for 8 s
        if "finished" in nb.output_text(done):
            break
        nb.page.wait_for_timeout(500)
        done = nb.run_new_cell("%bg")
    assert "finished" in nb.output_text(done)
    last = nb.run_new_cell("%%local\nprint('rows at the end:', len(live))")
    expect(nb.output(last)).to_have_text("rows at the end: 80")
    nb.output(2).locator("img").scroll_into_view_if_needed()
    nb.screenshot("plot-bg-done")
