"""The emulated-board kernel in JupyterLab, in a real Chromium, used as a person uses it.

One JupyterLab server for the module (its kernels and their emulated boards are checked gone at the
end); each test opens a fresh workspace and starts its own kernel from the Launcher. Assertions are
about what the page shows; timeouts are hang guards only.
"""
from __future__ import annotations

import re
import secrets
import shutil

import pytest
from playwright.sync_api import Page, expect

from jupyter_pages import EMULATED, REPO, JupyterServer, NotebookPage

# Every kernel the Launcher must show, with its logo.
EDGEKERNEL_KERNELS = ("MicroPython (emulated board)", "MicroPython (serial)", "MicroPython ESP8266",
                      "MicroPython (MQTT)")

# What the page says about a flood's output past the cell's limit (edgekernel/kernel/output.py).
HELD_BACK = re.compile(r"held back")
NOT_SHOWN = re.compile(r"not shown here")

# The first test also waits for the server and JupyterLab's first page load on a loaded machine.
pytestmark = pytest.mark.timeout(240)


def open_launcher(page: Page, server: JupyterServer, workspace: str) -> None:
    """A fresh workspace: JupyterLab opens with only the Launcher."""
    page.goto(server.url(f"/lab/workspaces/{workspace}", reset=""))
    expect(page.locator(".jp-Launcher")).to_be_visible(timeout=90_000)


def start_notebook(nb: NotebookPage, server: JupyterServer, workspace: str, kernel: str = EMULATED) -> None:
    """From a fresh Launcher, click the kernel's Notebook tile and wait until its kernel is ready."""
    open_launcher(nb.page, server, workspace)
    replies = nb.kernel_info_replies
    nb.page.locator(f'.jp-LauncherCard[data-category="Notebook"][title="{kernel}"]').click()
    expect(nb.panel).to_be_visible(timeout=30_000)
    nb.wait_kernel_ready(replies)


def test_launcher_shows_every_edgekernel_kernel_with_its_logo(page: Page, lab: JupyterServer,
                                                             notebook_page: NotebookPage):
    open_launcher(page, lab, "launcher")
    for title in EDGEKERNEL_KERNELS:
        for category in ("Notebook", "Console"):
            tile = page.locator(f'.jp-LauncherCard[data-category="{category}"][title="{title}"]')
            expect(tile).to_be_visible()
            logo = tile.locator("img")
            expect(logo).to_have_count(1)
            # The logo loaded (a missing or broken image has no natural size).
            assert logo.evaluate("img => img.complete && img.naturalWidth") > 0, f"{category} {title}: no logo"
    notebook_page.screenshot("launcher")


def test_output_values_tracebacks_and_input(notebook_page: NotebookPage, lab: JupyterServer):
    nb = notebook_page
    start_notebook(nb, lab, "basics")

    printed = nb.run_new_cell("print(1)")
    # The first board cell also says which board the kernel started and connected to.
    expect(nb.output(printed)).to_contain_text("connected to the emulated unix board")
    assert nb.output_text(printed).splitlines()[-1] == "1"

    value = nb.run_new_cell("1+1")
    n = nb.wait_done(value)
    result = nb.output(value).locator(".jp-OutputArea-executeResult")
    expect(result).to_have_count(1)
    expect(result.locator(".jp-OutputPrompt")).to_have_text(f"[{n}]:")
    expect(result.locator(".jp-OutputArea-output")).to_have_text("2")

    failing = nb.run_new_cell("x = 5\ny = x / 0")
    error = nb.output(failing).locator('[data-mime-type="application/vnd.jupyter.stderr"]')
    expect(error).to_contain_text("ZeroDivisionError")
    # The traceback points at the cell's own line 2 and shows it.
    expect(error).to_contain_text(re.compile(r'File "<(stdin|cell[^>]*)>", line 2'))
    expect(error).to_contain_text("y = x / 0")

    asking = nb.run_new_cell("name = input('who? ')", wait=False)
    box = nb.output(asking).locator(".jp-Stdin-input")
    expect(box).to_be_visible(timeout=30_000)
    expect(nb.output(asking).locator(".jp-Stdin-prompt")).to_have_text("who? ")
    nb.screenshot("input-box")
    box.fill("Ada Lovelace")
    box.press("Enter")
    nb.wait_done(asking)
    # The answer stays on the page next to its prompt, and the board has it.
    expect(nb.output(asking)).to_contain_text("who? Ada Lovelace")
    greeted = nb.run_new_cell("print('hello', name)")
    expect(nb.output(greeted)).to_have_text("hello Ada Lovelace")
    nb.screenshot("basics")


def test_stop_a_busy_loop_and_a_print_flood(notebook_page: NotebookPage, lab: JupyterServer):
    nb = notebook_page
    start_notebook(nb, lab, "stop")

    # The toolbar's Stop button on a board that is busy computing.
    busy = nb.run_new_cell("print('looping')\nwhile True:\n    pass", wait=False)
    expect(nb.output(busy)).to_contain_text("looping", timeout=60_000)
    expect(nb.prompt(busy)).to_have_text("[*]:")
    nb.toolbar_button("notebook:interrupt-kernel").click()
    nb.wait_done(busy)
    expect(nb.output(busy)).to_contain_text("KeyboardInterrupt")
    after_busy = nb.run_new_cell("print('next cell runs')")
    expect(nb.output(after_busy)).to_have_text("next cell runs")

    # Kernel → Interrupt Kernel on a board flooding the page with output, once the flood has gone
    # past what the page is given of one cell (the kernel then holds the rest back and says so).
    flood = nb.run_new_cell("while True:\n    print('x' * 60)", wait=False)
    expect(nb.output(flood).get_by_text("x" * 60).first).to_be_visible(timeout=60_000)
    # (get_by_text: a failure names the missing text instead of quoting a megabyte of output)
    expect(nb.output(flood).get_by_text(HELD_BACK).first).to_be_visible(timeout=120_000)
    nb.screenshot("flood-running")
    nb.menu("Kernel", "kernelmenu:interrupt")
    nb.wait_done(flood)
    stopped = nb.output(flood).get_by_text("KeyboardInterrupt").first
    expect(stopped).to_be_visible()
    stopped.scroll_into_view_if_needed()
    nb.screenshot("flood-stopped")
    # The page says what it left out, and nothing was dropped by the server's IOPub rate limit.
    note = nb.output(flood).get_by_text(NOT_SHOWN).first
    expect(note).to_be_visible()
    note.scroll_into_view_if_needed()
    nb.screenshot("flood-note")
    expect(nb.panel.get_by_text("IOPub data rate exceeded")).to_have_count(0)
    # The page still answers: a new cell can be typed, runs, and shows its output.
    after_flood = nb.run_new_cell("print('still responsive', 6 * 7)")
    expect(nb.output(after_flood)).to_have_text("still responsive 42")


def test_completion_files_and_a_local_plot(notebook_page: NotebookPage, lab: JupyterServer):
    nb = notebook_page
    start_notebook(nb, lab, "tools")

    nb.run_new_cell("class Foo:\n    bar = 1")
    # Tab in a new cell completes from the board's namespace: the only match is inserted at once,
    # several would open the completer.
    index = nb.cells.count() - 1
    nb.type_into(index, "Foo.b")
    nb.page.keyboard.press("Tab")
    completed = nb.cell(index).locator(".cm-content", has_text="Foo.bar")
    offered = nb.page.locator(".jp-Completer .jp-Completer-item", has_text="bar")
    expect(completed.or_(offered).first).to_be_visible(timeout=30_000)
    nb.screenshot("completion")
    nb.page.keyboard.press("Escape")

    body = f"hello from the browser {secrets.token_hex(4)}"
    sent = nb.run_new_cell(f"%sendtofile hello.txt\n{body}")
    expect(nb.output(sent)).to_contain_text("hello.txt")
    assert "Error" not in nb.output_text(sent)
    shown = nb.run_new_cell("%cat hello.txt")
    expect(nb.output(shown)).to_contain_text(body)

    plot = nb.run_new_cell("%%local\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    image = nb.output(plot).locator("img")
    expect(image).to_have_count(1, timeout=30_000)
    expect(image).to_be_visible()
    assert image.evaluate("img => img.complete && img.naturalWidth") > 100
    nb.screenshot("files-and-plot")


def test_restart_from_the_kernel_menu_gives_a_clean_board(notebook_page: NotebookPage,
                                                          lab: JupyterServer):
    nb = notebook_page
    start_notebook(nb, lab, "restart")
    nb.run_new_cell("left_over = 'from before the restart'\nprint(left_over)")

    replies = nb.kernel_info_replies
    nb.menu("Kernel", "kernelmenu:restart")
    dialog = nb.page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Restart")
    dialog.locator("button.jp-mod-accept").click()
    expect(dialog).to_have_count(0)
    nb.wait_kernel_ready(replies)

    after = nb.run_new_cell("print('after restart', 'left_over' in globals())")
    # The restarted kernel soft-resets the same board: the cell runs, and nothing from before is left.
    assert nb.output_text(after).splitlines()[-1] == "after restart False"
    nb.screenshot("restarted")


def snapshot_live_views(nb: NotebookPage, table: int, plot: int) -> tuple[str, str, bytes, bytes]:
    """What the page shows of the live table and plot: their DOM (the table's HTML, the image's
    data) and pictures of both output areas. The pictures are taken first, so any DOM change after
    this snapshot is a newer view than both pictures."""
    image = nb.output(plot).locator("img")
    expect(image).to_have_count(1)
    pictures = nb.output(table).screenshot(), nb.output(plot).screenshot()
    return (nb.output(table).locator("table").first.inner_html(), image.get_attribute("src") or "", *pictures)


def test_telemetry_notebook_updates_its_plot_and_table_live(notebook_page: NotebookPage, lab: JupyterServer):
    """examples/telemetry.ipynb on the Python 3 kernel: an MQTT broker and an emulated board running
    firmware/sensor_demo.py publish readings; the table and the plot change in the page while
    the board publishes, and the clean-up cell stops everything."""
    nb = notebook_page
    shutil.copy(REPO / "examples" / "telemetry.ipynb", lab.notebooks / "telemetry.ipynb")
    replies = nb.kernel_info_replies
    nb.page.goto(lab.url("/lab/workspaces/telemetry/tree/telemetry.ipynb", reset=""))
    expect(nb.panel).to_be_visible(timeout=90_000)
    nb.wait_kernel_ready(replies)

    sources = nb.cell_sources()
    table = next(i for i, s in enumerate(sources) if s.startswith("%mqtt table"))
    plot = next(i for i, s in enumerate(sources) if s.startswith("%mqtt plot"))
    last = len(sources) - 1

    # Run the notebook up to the plot (select the cell after it, Run → Run All Above Selected Cell) ...
    nb.select(plot + 1)
    nb.menu("Run", "notebook:run-all-above")
    nb.wait_done(plot, guard_ms=120_000)
    expect(nb.output(table).locator("table")).to_contain_text("edgekernel/demo/telemetry/env")
    first = snapshot_live_views(nb, table, plot)
    nb.screenshot("telemetry-first")

    # ... and watch: the board keeps publishing, so both views must change in place.
    changed = nb.page.wait_for_function(
        """([table, plot, html, src]) => {
             const cells = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell');
             const t = cells[table].querySelector('.jp-OutputArea table');
             const i = cells[plot].querySelectorAll('.jp-OutputArea img');
             return t && i.length === 1 && t.innerHTML !== html && i[0].getAttribute('src') !== src;
           }""", arg=[table, plot, first[0], first[1]], timeout=60_000)
    assert changed
    second = snapshot_live_views(nb, table, plot)
    nb.screenshot("telemetry-later")
    assert second[2] != first[2], "the table's picture did not change while the board published"
    assert second[3] != first[3], "the plot's picture did not change while the board published"
    # Still one table and one image: updated in place, not appended.
    expect(nb.output(table).locator("table")).to_have_count(1)
    expect(nb.output(plot).locator("img")).to_have_count(1)

    # The rest of the notebook (devices, describe, record, clean-up) runs without an error
    # (Run → Run Selected Cell and All Below, the selection is still after the plot).
    nb.menu("Run", "notebook:run-all-below")
    nb.wait_done(last, guard_ms=120_000)
    assert nb.panel.locator('.jp-OutputArea [data-mime-type="application/vnd.jupyter.stderr"]').count() == 0, \
        nb.panel.locator(".jp-Notebook").inner_text()
    cleanup = next(i for i, s in enumerate(nb.cell_sources()) if s.startswith("%mqtt stop"))
    expect(nb.output(cleanup)).to_contain_text("stopped readings:")
    nb.screenshot("telemetry-done")
