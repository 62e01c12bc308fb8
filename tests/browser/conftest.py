"""Fixtures for the browser tests: Chromium driven by Playwright, a real Jupyter server per module.

A failing test saves a screenshot of each of its pages (to `$EDGEKERNEL_SCREENSHOTS` if set, else a
pytest temp folder) and the failure report names the files and shows the end of the server's log.
With `$EDGEKERNEL_SCREENSHOTS` set, the tests also keep pictures of the pages at their checkpoints.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from jupyter_pages import JupyterServer, NotebookPage, chromium_executable
from kernel_fixtures import no_leftover_processes  # noqa: F401 (a fixture the servers depend on)

SCREENSHOTS_ENV = "EDGEKERNEL_SCREENSHOTS"
# Hang guards for Playwright's waits (not speed checks): the page of a loaded 2-core machine running
# kernels, boards and a browser may take seconds to show what it will show.
ACTION_GUARD_MS = 30_000
EXPECT_GUARD_MS = 20_000
expect.set_options(timeout=EXPECT_GUARD_MS)


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get(SCREENSHOTS_ENV)
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


# Module-scoped, after no_leftover_processes: Chromium's processes are stopped before that fixture
# checks that nothing a module started is left.
@pytest.fixture(scope="module")
def playwright(no_leftover_processes: None) -> Iterator[Playwright]:
    if chromium_executable() is None:
        pytest.skip("chromium is not installed (apt-get install --no-install-recommends chromium)")
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # --no-sandbox: Chromium's sandbox refuses to run as root, which CI is.
    browser = playwright.chromium.launch(executable_path=chromium_executable(), args=["--no-sandbox"])
    try:
        yield browser
    finally:
        browser.close()


def start_server(app: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    server = JupyterServer.start(app, tmp_path_factory.mktemp(f"jupyter-{app}"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def lab_server(no_leftover_processes: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    yield from start_server("lab", tmp_path_factory)


@pytest.fixture(scope="module")
def notebook_server(no_leftover_processes: None,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    yield from start_server("notebook", tmp_path_factory)


@pytest.fixture
def lab(lab_server: JupyterServer) -> Iterator[JupyterServer]:
    """The module's JupyterLab server; the test's kernels are shut down (and checked gone) after it,
    so a module's kernels and boards do not pile up on a 2-core machine."""
    yield lab_server
    lab_server.shut_down_kernels()


@pytest.fixture
def notebook7(notebook_server: JupyterServer) -> Iterator[JupyterServer]:
    """The module's Notebook 7 server; the test's kernels are shut down (and checked gone) after it."""
    yield notebook_server
    notebook_server.shut_down_kernels()


@pytest.fixture
def page(browser: Browser, screenshot_dir: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context (no stored state) and page for one test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(ACTION_GUARD_MS)
    page = context.new_page()
    # Read by pytest_runtest_makereport when the test fails (every page of the context: tabs too).
    request.node.browser_context = context
    request.node.browser_screenshot_dir = screenshot_dir
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def shots(screenshot_dir: Path, request: pytest.FixtureRequest) -> Path | None:
    """Where a test keeps checkpoint pictures: only when $EDGEKERNEL_SCREENSHOTS asks for them."""
    return screenshot_dir / request.node.name if os.environ.get(SCREENSHOTS_ENV) else None


@pytest.fixture
def notebook_page(page: Page, shots: Path | None) -> NotebookPage:
    return NotebookPage(page, shots)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if not report.failed or report.when == "teardown":
        return
    context = getattr(item, "browser_context", None)
    if context is None:
        return
    pages = context.pages
    folder: Path = item.browser_screenshot_dir
    saved = []
    for n, page in enumerate(pages):
        path = folder / f"{item.name}-failed-{report.when}-{n}.png"
        try:
            page.screenshot(path=str(path))
            saved.append(str(path))
        except Exception as exc:  # a crashed page: say so instead of hiding the test's own failure
            saved.append(f"{path}: no screenshot ({exc})")
    report.sections.append(("browser screenshots", "\n".join(saved)))
    for fixture in ("lab", "notebook7"):
        server = item.funcargs.get(fixture)
        if server is not None:
            report.sections.append((f"end of the jupyter {server.app} log ({server.log_path})",
                                    "\n".join(server.log().splitlines()[-40:])))
