"""A real Jupyter server (JupyterLab or Notebook 7) and a real Chromium page driven as a person drives it.

The server runs in its own process group with temp Jupyter, IPython and XDG directories and
edgekernel's kernelspecs installed there; it is stopped by PID and every process it started
(kernels, the emulated boards they start) is checked gone. Pages are driven through Playwright
with Debian's chromium: clicks on the launcher, the toolbar and the menus, text typed into cells,
Shift+Enter. Assertions are about what the page shows; waits have generous ceilings that only
turn a hang into a clear failure.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.sync_api import Locator, Page, expect

from kernel_fixtures import describe, descendants, kill_leftovers, wait_gone

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
EMULATED = "MicroPython (emulated board)"
EMULATED_KERNEL = "micropython-emulator"

# Hang guards (milliseconds for Playwright): a loaded 2-core machine must not turn a slow page into
# a failure, but a page that never shows the answer must fail with what it did show.
SERVER_START_GUARD = 90.0
PAGE_GUARD_MS = 60_000
CELL_GUARD_MS = 60_000


def chromium_executable() -> str | None:
    """Debian's chromium (Playwright cannot download its own browser here)."""
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the server ---------------------------------------------------------------------------------

def jupyter_environment(root: Path) -> dict[str, str]:
    """This process's environment with every per-user directory moved under root and edgekernel's
    kernelspecs installed there (so the emulated board's flash folder is private to the server)."""
    from edgekernel.install import install

    installed = install(prefix=str(root / "prefix"))
    assert {name for name, _ in installed} >= {EMULATED_KERNEL}
    dirs = {
        "JUPYTER_PATH": "prefix/share/jupyter",
        "JUPYTER_CONFIG_DIR": "config",
        "JUPYTER_DATA_DIR": "data",
        "JUPYTER_RUNTIME_DIR": "runtime",
        "IPYTHONDIR": "ipython",
        "XDG_DATA_HOME": "xdg-data",
        "XDG_CONFIG_HOME": "xdg-config",
        "XDG_CACHE_HOME": "xdg-cache",
        "EDGEKERNEL_RUNTIME_DIR": "edgekernel-run",
        "HOME": "home",
        "MPLCONFIGDIR": "matplotlib",
        "TMPDIR": "tmp",  # temp files of kernels and notebooks (the telemetry notebook's CSV)
    }
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EDGEKERNEL_", "JUPYTER_", "XDG_RUNTIME_DIR"))}
    for key, sub in dirs.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        env[key] = str(root / sub)
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    # Kernels import this checkout's edgekernel (the python3 kernel for the telemetry notebook too).
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # No "would you like news?" toast and no update check: they would cover the page's corner.
    notification = root / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True, exist_ok=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return env


@dataclass
class JupyterServer:
    """`jupyter lab` or `jupyter notebook` on 127.0.0.1 with a random token, serving `notebooks`."""

    app: str
    root: Path
    notebooks: Path
    port: int
    token: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, app: str, root: Path) -> JupyterServer:
        env = jupyter_environment(root)
        notebooks = root / "notebooks"
        notebooks.mkdir()
        port, token = free_port(), secrets.token_hex(16)
        log_path = root / f"jupyter-{app}.log"
        # The token goes in through the environment: never in a command line other users can read.
        env["JUPYTER_TOKEN"] = token
        argv = [sys.executable, "-m", "jupyter", app, "--no-browser", "--ip", "127.0.0.1", "--port", str(port),
                f"--ServerApp.root_dir={notebooks}", "--ServerApp.port_retries=0", "--allow-root"]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=notebooks,
                                       start_new_session=True)
        server = cls(app, root, notebooks, port, token, process, log_path)
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str, **query: str) -> str:
        """An address in the server with the token (and any other query items)."""
        items = [k if v == "" else f"{k}={v}" for k, v in query.items()] + [f"token={self.token}"]
        return f"{self.base}{path}?{'&'.join(items)}"

    def api(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(f"{self.base}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            body = reply.read()
        return json.loads(body) if body else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_GUARD
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"jupyter {self.app} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                self.api("/api/status")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"jupyter {self.app} did not answer /api/status within the "
                                     f"{SERVER_START_GUARD:.0f} s hang guard:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def kernels(self) -> list[dict[str, Any]]:
        return self.api("/api/kernels")

    def shut_down_kernels(self) -> None:
        """Shut every kernel down through the REST API (as the Running panel does) and check that
        everything the server started is gone: the kernels and the emulated boards they started."""
        started = descendants(self.process.pid)
        for kernel in self.kernels():
            self.api(f"/api/kernels/{kernel['id']}", method="DELETE")
        left = wait_gone(started, timeout=20)
        if left:
            kill_leftovers(left)
            raise AssertionError(f"processes left after the server shut its kernels down: {describe(left)}")

    def write_notebook(self, name: str, cells: list[str], kernel_name: str = EMULATED_KERNEL,
                       display_name: str = EMULATED) -> Path:
        """A notebook file in the served folder whose metadata names the kernel (as a saved notebook does)."""
        import nbformat

        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": kernel_name, "display_name": display_name, "language": "python"}
        nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
        path = self.notebooks / name
        nbformat.write(nb, path)
        return path

    def stop(self) -> None:
        """SIGTERM (the server shuts its kernels down), then check that the server, its kernels and
        their boards are gone."""
        pids = {self.process.pid} | descendants(self.process.pid)
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            raise AssertionError(f"jupyter {self.app} (pid {self.process.pid}) ignored SIGTERM for 30 s")
        left = wait_gone(pids, timeout=20)
        if left:
            kill_leftovers(left)
            raise AssertionError(f"processes left after jupyter {self.app} stopped: {describe(left)}")


# -- a notebook in the page -----------------------------------------------------------------------

PROMPT_DONE = re.compile(r"^\[(\d+)\]:$")
KERNEL_INFO_REPLY = re.compile(rb'"msg_type"\s*:\s*"kernel_info_reply"')


class NotebookPage:
    """The visible notebook of a JupyterLab or Notebook 7 page, used through its UI."""

    def __init__(self, page: Page, shots: Path | None = None) -> None:
        self.page = page
        self.shots = shots
        # The page's kernel connections: the front end runs a cell only once its kernel has answered
        # kernel_info on the websocket (a cell run before that is silently not sent), and the
        # toolbar's indicator can say "idle" before the connection even starts.
        self.kernel_info_replies = 0
        page.on("websocket", self._watch_websocket)

    def _watch_websocket(self, websocket: Any) -> None:
        def received(payload: str | bytes) -> None:
            data = payload.encode() if isinstance(payload, str) else payload
            if KERNEL_INFO_REPLY.search(data):
                self.kernel_info_replies += 1

        websocket.on("framereceived", received)

    # where things are
    @property
    def panel(self) -> Locator:
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")

    @property
    def cells(self) -> Locator:
        return self.panel.locator(".jp-Notebook .jp-Cell")

    def cell(self, index: int) -> Locator:
        return self.cells.nth(index)

    def output(self, index: int) -> Locator:
        return self.cell(index).locator(".jp-OutputArea")

    def prompt(self, index: int) -> Locator:
        return self.cell(index).locator(".jp-InputPrompt")

    def output_text(self, index: int) -> str:
        return self.output(index).inner_text()

    def editor_text(self, index: int) -> str:
        return self.cell(index).locator(".cm-content").inner_text()

    def cell_sources(self) -> list[str]:
        """Every cell's source as the notebook model holds it (markdown cells rendered or not)."""
        return self.cells.evaluate_all(
            "cells => cells.map(c => { const e = c.querySelector('.cm-content');"
            " return e ? Array.from(e.querySelectorAll('.cm-line')).map(l => l.textContent).join('\\n') : ''; })")

    def select(self, index: int) -> None:
        """Make a cell the active one, in command mode (a click on its prompt area, then Escape)."""
        self.prompt(index).click()
        self.page.keyboard.press("Escape")
        expect(self.cell(index)).to_have_class(re.compile(r"\bjp-mod-active\b"))

    # waiting
    def wait_kernel_ready(self, replies_before: int, guard_ms: int = PAGE_GUARD_MS) -> None:
        """The notebook's kernel answered kernel_info on a connection made after `replies_before`
        was read (so its cells will be sent) and the toolbar's execution indicator says idle."""
        deadline = time.monotonic() + guard_ms / 1000
        while self.kernel_info_replies <= replies_before:
            assert time.monotonic() < deadline, \
                f"the page's kernel never answered kernel_info within the {guard_ms / 1000:.0f} s hang guard"
            self.page.wait_for_timeout(100)  # lets Playwright deliver the websocket events
        self.wait_kernel_idle(guard_ms)

    def wait_kernel_idle(self, guard_ms: int = PAGE_GUARD_MS) -> None:
        indicator = self.panel.locator(".jp-Notebook-ExecutionIndicator")
        expect(indicator).to_have_attribute("data-status", "idle", timeout=guard_ms)

    def wait_done(self, index: int, guard_ms: int = CELL_GUARD_MS) -> int:
        """Wait until the cell's input prompt shows [N]; return N."""
        prompt = self.prompt(index)
        expect(prompt).to_have_text(PROMPT_DONE, timeout=guard_ms)
        return int(PROMPT_DONE.match(prompt.inner_text().strip()).group(1))

    # typing and running
    def type_into(self, index: int, code: str) -> None:
        """Put code into a cell as a person pasting it (insert_text: key-by-key typing would auto-indent)."""
        editor = self.cell(index).locator(".cm-content")
        editor.click()
        self.page.keyboard.press("ControlOrMeta+a")
        self.page.keyboard.press("Delete")
        self.page.keyboard.insert_text(code)

    def run_new_cell(self, code: str, wait: bool = True) -> int:
        """Type code into the last cell (it is empty: Shift+Enter on the last cell adds one) and run it
        with Shift+Enter. Returns the cell's index."""
        index = self.cells.count() - 1
        if self.editor_text(index).strip():
            self.cell(index).click()
            self.page.keyboard.press("Escape")
            self.page.keyboard.press("b")  # command mode: insert a cell below
            expect(self.cells).to_have_count(index + 2)
            index += 1
        self.type_into(index, code)
        self.page.keyboard.press("Shift+Enter")
        if wait:
            self.wait_done(index)
        return index

    # toolbar and menus
    def toolbar_button(self, command: str) -> Locator:
        return self.panel.locator(f'.jp-Toolbar [data-command="{command}"]').first

    def menu(self, menu_title: str, command: str) -> None:
        """Open a menu of the menu bar by its title and click the item running `command`."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu_title}$")).first.click()
        item = self.page.locator(f'.lm-Menu-item[data-command="{command}"]').first
        expect(item).to_be_visible(timeout=10_000)
        item.click()

    def screenshot(self, name: str) -> Path | None:
        """Keep a picture of the page (only where a screenshot folder was asked for)."""
        if self.shots is None:
            return None
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path
