"""The emulated-board kernel in Notebook 7 (`jupyter notebook`), in a real Chromium.

A saved notebook whose metadata names the "MicroPython (emulated board)" kernel is opened from the
file list at /tree, as a person opens it; its cells run on the board and Stop works.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from jupyter_pages import EMULATED, JupyterServer, NotebookPage

pytestmark = pytest.mark.timeout(240)


def test_a_saved_notebook_runs_and_stops_on_the_emulated_board(page: Page, notebook7: JupyterServer,
                                                               shots: Path | None):
    notebook7.write_notebook("board.ipynb", ["print('hello from Notebook 7')", "21 * 2", "x = 1\n1 / 0"])

    page.goto(notebook7.url("/tree"))
    listed = page.locator(".jp-DirListing-item", has_text="board.ipynb")
    expect(listed).to_be_visible(timeout=90_000)
    # The New menu offers the edgekernel kernels.
    page.locator("[data-jp-item-name=\"new-dropdown\"] .lm-MenuBar-item").click()
    expect(page.locator(".lm-Menu-item", has_text=EMULATED)).to_be_visible()
    page.keyboard.press("Escape")

    # Notebook 7 opens a notebook in a new tab.
    with page.context.expect_page() as opened:
        listed.dblclick()
    nb = NotebookPage(opened.value, shots)
    expect(nb.panel).to_be_visible(timeout=90_000)
    nb.wait_kernel_ready(0)
    # The header shows the kernel's name and logo.
    expect(nb.page.locator(".jp-Toolbar", has_text=EMULATED).first).to_be_visible()
    logo = nb.page.locator("#jp-top-panel img, .jp-NotebookKernelLogo img").first
    expect(logo).to_be_visible()
    assert logo.evaluate("img => img.complete && img.naturalWidth") > 0, "the kernel's logo did not load"

    # Run the saved cells one after the other (Shift+Enter from the first).
    nb.cell(0).locator(".cm-content").click()
    for _ in range(3):
        nb.page.keyboard.press("Shift+Enter")
    nb.wait_done(0)
    assert nb.output_text(0).splitlines()[-1] == "hello from Notebook 7"
    n = nb.wait_done(1)
    result = nb.output(1).locator(".jp-OutputArea-executeResult")
    expect(result.locator(".jp-OutputPrompt")).to_have_text(f"[{n}]:")
    expect(result.locator(".jp-OutputArea-output")).to_have_text("42")
    nb.wait_done(2)
    expect(nb.output(2)).to_contain_text("ZeroDivisionError")
    expect(nb.output(2)).to_contain_text(re.compile(r"line 2"))
    nb.screenshot("notebook7-cells")

    # The toolbar's Stop button on a busy loop.
    busy = nb.run_new_cell("print('looping')\nwhile True:\n    pass", wait=False)
    expect(nb.output(busy)).to_contain_text("looping", timeout=60_000)
    nb.toolbar_button("notebook:interrupt-kernel").click()
    nb.wait_done(busy)
    expect(nb.output(busy)).to_contain_text("KeyboardInterrupt")

    # Kernel → Interrupt on a print flood; the page stays usable and the next cell runs.
    flood = nb.run_new_cell("while True:\n    print('y' * 60)", wait=False)
    expect(nb.output(flood).get_by_text("y" * 60).first).to_be_visible(timeout=60_000)
    nb.menu("Kernel", "kernelmenu:interrupt")
    nb.wait_done(flood)
    stopped = nb.output(flood).get_by_text("KeyboardInterrupt").first
    expect(stopped).to_be_visible()
    stopped.scroll_into_view_if_needed()
    expect(nb.panel.get_by_text("IOPub data rate exceeded")).to_have_count(0)
    after = nb.run_new_cell("print('after the flood', 6 * 7)")
    expect(nb.output(after)).to_have_text("after the flood 42")
    nb.screenshot("notebook7-stopped")
