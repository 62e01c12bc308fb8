"""The emulated-board kernel in JupyterLab, in a real Chromium, used as a person uses it.

One JupyterLab server for the module (its kernels and their emulated boards are checked gone at the
end); each test opens a fresh workspace and starts its own kernel from the Launcher. Assertions are
about what the page shows; timeouts are hang guards only.
"""
from __future__ import annotations

import re
import secrets

import pytest
from playwright.sync_api import Page, expect

from jupyter_pages import EMULATED, JupyterServer, NotebookPage

# Every kernel the Launcher must show, with its logo.
EDGEKERNEL_KERNELS = ("MicroPython (emulated board)", "MicroPython (serial)", "MicroPython ESP8266",
                      "MicroPython (MQTT)")

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


def test_launcher_shows_every_edgekernel_kernel_with_its_logo(page: Page, lab_server: JupyterServer,
                                                             notebook_page: NotebookPage):
    open_launcher(page, lab_server, "launcher")
    for title in EDGEKERNEL_KERNELS:
        for category in ("Notebook", "Console"):
            tile = page.locator(f'.jp-LauncherCard[data-category="{category}"][title="{title}"]')
            expect(tile).to_be_visible()
            logo = tile.locator("img")
            expect(logo).to_have_count(1)
            # The logo loaded (a missing or broken image has no natural size).
            assert logo.evaluate("img => img.complete && img.naturalWidth") > 0, f"{category} {title}: no logo"
    notebook_page.screenshot("launcher")


def test_output_values_tracebacks_and_input(notebook_page: NotebookPage, lab_server: JupyterServer):
    nb = notebook_page
    start_notebook(nb, lab_server, "basics")

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
    # The traceback points at the cell's own line 2.
    expect(error).to_contain_text(re.compile(r'File "<(stdin|cell[^>]*)>", line 2'))

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


def test_stop_a_busy_loop_and_a_print_flood(notebook_page: NotebookPage, lab_server: JupyterServer):
    nb = notebook_page
    start_notebook(nb, lab_server, "stop")

    # The toolbar's Stop button on a board that is busy computing.
    busy = nb.run_new_cell("print('looping')\nwhile True:\n    pass", wait=False)
    expect(nb.output(busy)).to_contain_text("looping", timeout=60_000)
    expect(nb.prompt(busy)).to_have_text("[*]:")
    nb.toolbar_button("notebook:interrupt-kernel").click()
    nb.wait_done(busy)
    expect(nb.output(busy)).to_contain_text("KeyboardInterrupt")
    after_busy = nb.run_new_cell("print('next cell runs')")
    expect(nb.output(after_busy)).to_have_text("next cell runs")

    # Kernel → Interrupt Kernel on a board flooding the page with output.
    flood = nb.run_new_cell("while True:\n    print('x' * 60)", wait=False)
    expect(nb.output(flood)).to_contain_text("x" * 60, timeout=60_000)
    nb.screenshot("flood-running")
    nb.menu("Kernel", "kernelmenu:interrupt")
    nb.wait_done(flood)
    expect(nb.output(flood)).to_contain_text("KeyboardInterrupt")
    nb.screenshot("flood-stopped")
    # The page still answers: a new cell can be typed, runs, and shows its output.
    after_flood = nb.run_new_cell("print('still responsive', 6 * 7)")
    expect(nb.output(after_flood)).to_have_text("still responsive 42")


def test_completion_files_and_a_local_plot(notebook_page: NotebookPage, lab_server: JupyterServer):
    nb = notebook_page
    start_notebook(nb, lab_server, "tools")

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
                                                          lab_server: JupyterServer):
    nb = notebook_page
    start_notebook(nb, lab_server, "restart")
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
