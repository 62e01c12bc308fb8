"""Emulated MicroPython boards on pseudo-terminals, for tests, benchmarks and demos.

Each board runs in its own process (``python -m edgekernel.emulator``), so killing that process is
pulling the cable. Any serial tool can open :attr:`BoardProcess.port`::

    from edgekernel.emulator import start_board
    with start_board("unix", baud=115200) as board:
        serial.Serial(board.port, 115200)   # or: mpremote connect <board.port> ...

Kinds: ``unix`` (MicroPython's unix port, wrapped to act like a board: see ``unix_board``; its flash
folder is its whole filesystem, as on a board: see ``sandbox``) and
``microbit`` (QEMU + Debian's micro:bit firmware: see ``microbit``). ``baud``/``latency_ms`` put the
link simulator in front (``linksim``); ``rx_buffer`` models a small board's receive buffer.
"""
from __future__ import annotations

import atexit
import ctypes
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from ..processes import alive, children_of

__all__ = ["start_board", "check_installed", "BoardProcess", "BoardError", "EmulatorNotInstalled",
           "SandboxUnavailable", "BOARD_KINDS"]

BOARD_KINDS = ("unix", "microbit")

_libc = ctypes.CDLL(None, use_errno=True)


class BoardError(RuntimeError):
    """An emulated board could not be started; the message says why in one line."""


class EmulatorNotInstalled(BoardError):
    """Software the emulated board runs on is missing (MicroPython's unix port, QEMU, the micro:bit
    firmware); the message is one line that says what to install."""


class SandboxUnavailable(BoardError):
    """The unix board cannot be isolated from the host's files here (see ``sandbox``), so it refuses
    to start; the message says why and what to do."""


_ERROR_TYPES = {cls.__name__: cls for cls in (BoardError, EmulatorNotInstalled, SandboxUnavailable)}


def error_from_report(report: dict) -> BoardError:
    """The exception a board process reported as ``{"error": message, "error_type": name}``."""
    return _ERROR_TYPES.get(report.get("error_type", ""), BoardError)(report["error"])


def check_installed(kind: str) -> None:
    """Raise :class:`EmulatorNotInstalled` (one line: what to install) if board ``kind`` cannot run
    here, or :class:`SandboxUnavailable` for a unix board off Linux."""
    if kind == "unix":
        from .unix_board import micropython_command
        micropython_command()
    elif kind == "microbit":
        from .microbit import qemu_command
        qemu_command()


def exit_with_parent_preexec() -> None:
    """``preexec_fn`` for a board's emulator process: SIGKILL it when the board process dies, even
    by SIGKILL, so a pulled cable leaves nothing behind."""
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_live: "weakref.WeakSet[BoardProcess]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for board in list(_live):
        board.stop()


class BoardProcess:
    """A running emulated board. Use as a context manager, or call :meth:`stop`."""

    port: str
    pid: int
    flash_dir: str | None

    def __init__(self, proc: subprocess.Popen, info: dict, *, tmp_dirs: list[str], log_path: str) -> None:
        self._proc = proc
        self.info = info
        self.port = info["port"]
        self.pid = proc.pid
        self.kind: str = info["kind"]
        self.flash_dir = info.get("flash")
        #: ws://127.0.0.1:PORT/ when the board serves an emulated WebREPL (start_board(webrepl=...)).
        self.webrepl: str | None = info.get("webrepl")
        self._tmp_dirs = tmp_dirs
        self._log_path = log_path
        self._inner: set[int] = set()
        _live.add(self)

    def __enter__(self) -> "BoardProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<BoardProcess {self.kind} port={self.port} pid={self.pid}>"

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def board_pids(self) -> list[int]:
        """PIDs of the emulator processes (micropython / qemu) the board process runs right now."""
        return children_of(self.pid) if self.alive else []

    def hard_reset(self) -> None:
        """Press the reset button (the board process handles SIGUSR1)."""
        if self.alive:
            os.kill(self.pid, signal.SIGUSR1)

    def stop(self) -> None:
        """Clean shutdown: the board process stops its emulator, removes its pty; then temp dirs go."""
        if self.alive:
            self._inner.update(children_of(self.pid))
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._finish()

    def kill(self) -> None:
        """Abrupt: SIGKILL the board process; its pty vanishes like a pulled cable."""
        if self.alive:
            self._inner.update(children_of(self.pid))
            self._proc.kill()
            self._proc.wait()
        self._finish()

    def _finish(self) -> None:
        # The emulators die with the board process (PR_SET_PDEATHSIG); make sure, by PID.
        deadline = time.monotonic() + 3
        for pid in self._inner:
            while alive(pid):
                if time.monotonic() > deadline:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    break
                time.sleep(0.01)
        self._inner.clear()
        if self._proc.stdin and not self._proc.stdin.closed:
            self._proc.stdin.close()
        if self._proc.stdout and not self._proc.stdout.closed:
            self._proc.stdout.close()
        for d in self._tmp_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._tmp_dirs = []
        if self._log_path and os.path.exists(self._log_path):
            os.unlink(self._log_path)
        _live.discard(self)

    def log(self) -> str:
        """What the board process wrote to stderr so far (diagnostics)."""
        try:
            with open(self._log_path, errors="replace") as f:
                return f.read()
        except (OSError, TypeError):
            return ""


def start_board(kind: str = "unix", *, baud: int | None = None, latency_ms: float = 0, rx_buffer: int | None = None,
                flash_dir: str | None = None, timeout: float = 20, heapsize: str | None = None,
                rx_rate: float | None = None, webrepl: int | None = None, webrepl_password: str | None = None,
                webrepl_faithful: bool = False) -> BoardProcess:
    """Start an emulated board in its own process and return once its REPL has answered.

    ``baud``/``latency_ms`` put the link simulator in front; ``rx_buffer`` (unix only) models a small
    board's receive buffer that drops overflow, ``rx_rate`` how fast the board drains it (bytes/s).
    ``flash_dir`` (unix) is the board's filesystem; default: a fresh temp dir removed at stop.
    ``webrepl`` serves an emulated WebREPL on that 127.0.0.1 port (0: any free one; the URL is
    ``info["webrepl"]``) with ``webrepl_password`` (handed over in the environment, never in argv);
    ``webrepl_faithful`` gives it the ESP8266's timing (see ``edgekernel.emulator.webrepl``).
    Raises :class:`BoardError` with a one-line reason if the board cannot start:
    :class:`EmulatorNotInstalled` if software it needs is missing, :class:`SandboxUnavailable` if the
    unix board cannot be isolated from this computer's files.
    """
    if kind not in BOARD_KINDS:
        raise BoardError(f"unknown board kind {kind!r} (choose from {', '.join(BOARD_KINDS)})")
    check_installed(kind)  # here, so the caller gets EmulatorNotInstalled at once
    tmp_dirs: list[str] = []
    cmd = [sys.executable, "-m", "edgekernel.emulator", "--emulator", kind, "--json", "--watch-stdin",
           "--timeout", str(timeout)]
    if kind == "unix":
        if flash_dir is None:
            flash_dir = tempfile.mkdtemp(prefix="edgekernel-flash-")
            tmp_dirs.append(flash_dir)
        cmd += ["--flash", flash_dir]
    if baud:
        cmd += ["--baud", str(baud)]
    if latency_ms:
        cmd += ["--latency-ms", str(latency_ms)]
    if rx_buffer is not None:
        cmd += ["--rx-buffer", str(rx_buffer)]
    if rx_rate is not None:
        cmd += ["--rx-rate", str(rx_rate)]
    if heapsize:
        cmd += ["--heapsize", heapsize]
    # The child must import this very package, installed or not.
    env = dict(os.environ)
    if webrepl is not None:
        cmd += ["--webrepl", str(webrepl), "--webrepl-password-env", "EDGEKERNEL_WEBREPL_PASSWORD"]
        if webrepl_faithful:
            cmd.append("--webrepl-faithful")
        env["EDGEKERNEL_WEBREPL_PASSWORD"] = webrepl_password or os.environ.get("WEBREPL_PASSWORD", "")
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    fd, log_path = tempfile.mkstemp(prefix="edgekernel-board-", suffix=".log")
    try:
        # stdin is a pipe we never write: the board process exits when it reaches EOF, i.e. when
        # this process dies without calling stop().
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=fd, env=env,
                                start_new_session=True)
    finally:
        os.close(fd)
    line = b""
    deadline = time.monotonic() + timeout + 5
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            break
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        line += chunk
    report = json.loads(line) if line.endswith(b"\n") else None
    if report is None or "error" in report:
        board = BoardProcess(proc, {"port": "", "kind": kind}, tmp_dirs=tmp_dirs, log_path=log_path)
        reason = board.log().strip().splitlines()
        board.kill()
        if report is not None:  # the board process said why, with the error's type
            raise error_from_report(report)
        if reason:
            raise BoardError(reason[-1].removeprefix("edgekernel board: "))
        raise BoardError(f"{kind} board did not start within {timeout:g} s")
    return BoardProcess(proc, report, tmp_dirs=tmp_dirs, log_path=log_path)
