"""Boards for the scenario suite: one set of scenarios, run on every target.

Targets
  unix         unix-port MicroPython on a pty (emulated board, unthrottled)
  unix-115200  the same behind the link simulator at 115200 baud
  microbit     QEMU micro:bit, MicroPython 1.9.2, 16 KB RAM, no raw-paste
  webrepl      the unix board behind the emulated WebREPL (ws://127.0.0.1), in its board-faithful
               mode (header/payload written apart with Nagle on, 20 ms per file chunk), with a
               256-byte input buffer that drops overflow
  real         the board on $EDGEKERNEL_HIL_PORT (baud: $EDGEKERNEL_HIL_BAUD, default 115200)

Emulated boards are started once per target and shared (QEMU boots in
seconds); a test that damages its board (kills it, wedges it) or fails marks
it so and the next test gets a fresh one. Every test gets its own connected
BoardSession, soft-reset (clean heap, no globals), in the raw REPL with the
helper installed.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import pytest

from edgekernel.device import BoardSession, DeviceError, LinkError
from edgekernel.processes import alive

REAL_PORT = os.environ.get("EDGEKERNEL_HIL_PORT")
REAL_BAUD = int(os.environ.get("EDGEKERNEL_HIL_BAUD", "115200"))
TARGETS = ["unix", "unix-115200", "microbit", "webrepl", "real"]
#: The emulated WebREPL's password (handed to the board process in its environment).
WEBREPL_PASSWORD = "hil-pw1"


@dataclass
class Target:
    """What a scenario needs to know about the board it runs on."""

    name: str
    port: str = ""
    baud: int = 115200
    process: object | None = None    # emulator BoardProcess, None for a real board
    ram_small: bool = False          # 16 KB class: no big scripts, no 2000-line buffers
    raw_paste: bool = True
    soft_reset_on_exit: bool = True  # sys.exit() soft-resets (current firmware; not 1.9.2)
    slow: bool = False               # throttled link: size expectations accordingly
    link_options: dict = field(default_factory=dict)   # e.g. the WebREPL password
    damaged: bool = field(default=False, repr=False)

    @property
    def emulated(self) -> bool:
        return self.process is not None

    def require_emulated(self, why: str) -> None:
        if not self.emulated:
            pytest.skip(f"{self.name}: {why} needs an emulated board")


class BoardPool:
    """Emulated boards, started on first use and reused while healthy."""

    def __init__(self) -> None:
        self.boards: dict[str, object] = {}
        self.pids: set[int] = set()

    def start(self, name: str):
        from edgekernel.emulator import start_board
        if name == "unix":
            proc = start_board("unix", timeout=20)
        elif name == "unix-115200":
            proc = start_board("unix", baud=115200, timeout=20)
        elif name == "microbit":
            proc = start_board("microbit", timeout=30)
        elif name == "webrepl":
            # An ESP8266's 256-byte input buffer that drops overflow, as its WebREPL feeds it.
            proc = start_board("unix", timeout=20, webrepl=0, webrepl_password=WEBREPL_PASSWORD,
                               webrepl_faithful=True, rx_buffer=256)
        else:
            raise ValueError(name)
        self.pids.add(proc.pid)
        return proc

    def get(self, name: str):
        proc = self.boards.get(name)
        if proc is None or not alive(proc.pid):
            if proc is not None:
                self.discard(name)
            proc = self.boards[name] = self.start(name)
        return proc

    def discard(self, name: str) -> None:
        proc = self.boards.pop(name, None)
        if proc is None:
            return
        try:
            proc.stop()
        except Exception:
            pass
        _reap(proc.pid)

    def close(self) -> None:
        for name in list(self.boards):
            self.discard(name)
        for pid in self.pids:
            _reap(pid)


def _reap(pid: int) -> None:
    """Make sure a board process we started is gone."""
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@pytest.fixture(scope="session")
def pool():
    p = BoardPool()
    yield p
    p.close()
    leftovers = [pid for pid in p.pids if alive(pid)]
    assert not leftovers, f"board processes still running: {leftovers}"


@pytest.fixture(params=TARGETS)
def target(request, pool) -> Target:
    name = request.param
    if name == "real":
        if not REAL_PORT:
            pytest.skip("real: set EDGEKERNEL_HIL_PORT=/dev/ttyUSB0 (and EDGEKERNEL_HIL_BAUD) to test a real board")
        t = Target("real", REAL_PORT, REAL_BAUD)
        yield t
        return
    try:
        import edgekernel.emulator as emulator
        emulator.start_board  # noqa: B018
    except (ImportError, AttributeError):
        pytest.skip("edgekernel.emulator.start_board is not available")
    try:
        proc = pool.get(name)
    except Exception as exc:  # noqa: BLE001 - a target that cannot start is skipped with the reason
        pytest.skip(f"{name}: could not start the emulated board: {exc}")
    t = Target(name, proc.port, 115200, proc)
    if name == "webrepl":
        t.port, t.link_options = proc.webrepl, {"password": WEBREPL_PASSWORD}
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("WEBREPL_PASSWORD", WEBREPL_PASSWORD)   # for the CLI the scenarios run
            yield t
        if t.damaged:
            pool.discard(name)
        return
    if name == "microbit":
        t.ram_small, t.raw_paste, t.soft_reset_on_exit = True, False, False
    if name == "unix-115200":
        t.slow = True
    yield t
    if t.damaged:
        pool.discard(name)


class WireLog:
    """The last bytes the board sent, shown when a scenario fails."""

    def __init__(self, keep: int = 3000) -> None:
        self.keep = keep
        self.data = bytearray()

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > 2 * self.keep:
            del self.data[: -self.keep]

    def tail(self) -> bytes:
        return bytes(self.data[-self.keep:])


def _connect(target: Target, log: WireLog, timeout: float = 15.0) -> BoardSession:
    return BoardSession.open(target.port, target.baud, timeout=timeout, log=log, link_options=target.link_options)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.call_failed = report.failed
    return report


@pytest.fixture
def board(request, target: Target, pool) -> BoardSession:
    """A connected session (raw REPL, helper installed) on the target."""
    log = WireLog()
    try:
        session = _connect(target, log)
    except (DeviceError, LinkError):
        if not target.emulated:
            raise
        # The previous test left the board wedged: start a fresh one.
        pool.discard(target.name)
        proc = pool.get(target.name)
        target.process, target.port = proc, (proc.webrepl or proc.port)
        session = _connect(target, log)
    # A known state: a clean heap and no globals left by the previous scenario
    # (a soft reset from the raw REPL: main.py does not run).
    session.soft_reset(timeout=20)
    session.target = target   # type: ignore[attr-defined]
    yield session
    if getattr(request.node, "call_failed", False):
        print(f"\n--- last bytes from {target.name} ({target.port}) ---\n{log.tail()!r}")
        target.damaged = True   # start the next test on a fresh board
    try:
        session.close()
    except Exception:
        target.damaged = True


@pytest.fixture
def free_port(target: Target) -> str:
    """The target's port with no session open on it (for other programs: CLI, mpremote)."""
    return target.port
