"""A session with one MicroPython board over a byte link: the raw REPL engine.

This module speaks the wire protocol (raw REPL, raw-paste, Ctrl-C/D) and
knows nothing of Jupyter. One BoardSession owns one link; one operation runs
at a time, except `interrupt()`, which may be called from any thread while
`exec()` runs.

How the board's answer is framed: see onboard.py. In short, cells run inside
a small helper that reports output, value, error and completion after a
per-execution random marker, so no byte a program prints can be mistaken for
the end of its output.
"""
from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..links import Link, LinkClosed, LinkError, open_link
from . import onboard
from .board import Capabilities
from .errors import BoardBusy, BoardNotResponding, CodeTooLarge, DeviceError
from .result import BoardException, ExecResult, InterruptReport, ValuesFromExec, parse_traceback

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"
SOFT_REBOOT = b"soft reboot\r\n"
TRACEBACK_HEAD = b"Traceback (most recent call last):"
MEMORY_HEAD = b"MemoryError:"
HEAP_LOCKED = "heap is locked"  # MicroPython's MemoryError text while micropython.heap_lock() is on
NATIVE_END = b"\x04>"

# A reset shows itself by one of these, then a prompt, then silence.
_RESET_SIGNS = (
    (SOFT_REBOOT, "soft"),
    (b'Type "help()" for more information.', "hard"),
    (b"rst cause:", "hard"),      # ESP8266 ROM, when the baud rate happens to match
    (b"rst:0x", "hard"),          # ESP32 ROM
)
_PROMPT_ENDINGS = (RAW_BANNER, b">>> ", b"raw REPL; CTRL-B to exit\n>")
# What a rebooted board's REPL says when bytes the host still sent reach it: the friendly prompt,
# and its line editor's answer to Ctrl-A on a line that is not empty (the cursor moves left: by
# backspaces up to 4 places, by an escape sequence beyond).
_FRIENDLY_PROMPT = b">>> "
_LINE_EDITOR_ANSWER = re.compile(rb"\x1b\[\d*D|\x08|\.\.\. |=== |\x01")
_LINE_EDITOR_PARTIAL = re.compile(rb"(\x1b(\[\d*)?|\.{1,3}|={1,3})\Z")
# How far after reboot text its prompt may come (boot.py and main.py may print in between).
_PROMPT_AFTER_SIGN = 4096

# Code up to this size goes in one plain raw-REPL write: it fits the receive
# buffer of any board with raw-paste (ESP8266: 256 bytes) and saves raw-paste's
# extra round trip.
SMALL_CODE = 240
# Without raw-paste the board has no flow control: write small pieces no faster
# than a 115200-baud wire would deliver them (the micro:bit keeps 64 bytes and
# drops the rest; a native-USB board could otherwise be flooded).
PACED_CHUNK = 16
PACED_RATE = 11520  # bytes/s
# A paced cell the board's helper reports damaged (a length check: nothing ran) is sent again,
# each time at half the pace: a board that drains slower than a wire (an emulated CPU on a busy
# host, a board busy in interrupts) then gets what it can take. Never below a 9600-baud wire.
DAMAGED_RESENDS = 3
# Bytes from a board while it takes a paced program pause the upload until this long without more.
UPLOAD_NOISE_QUIET = 0.5
END_BYTE_NUDGE = 1.0  # seconds of silence after a paced program's \x04 before sending another
SLOWEST_PACED_RATE = 960

OutputCallback = Callable[[bytes], None]
InputCallback = Callable[[str], "str | None"]

# Escalation ladder for interrupts: (seconds after the first Ctrl-C, step name).
QUIET = 0.03        # silence that confirms an ending which could also be output
PROBE_WAIT = 0.5    # how long a board at its prompt may take to answer Ctrl-A
PROBE_RETRIES = 2   # asks again after a silent PROBE_WAIT
_LADDER = ((0.5, "ctrl-c x2"), (1.0, "raw-repl"), (2.0, "soft-reset"), (4.0, "hard-reset"), (7.0, "give-up"))


class BoardSession(ValuesFromExec):
    """Run code on a MicroPython board.

    >>> with BoardSession.open("/dev/ttyUSB0") as board:
    ...     board.exec("print(sum(range(10)))").text
    '45\\n'
    """

    def __init__(self, link: Link, *, framed_limit: int = 4096,
                 log: Callable[[bytes], None] | None = None) -> None:
        self.link = link
        #: Cells up to this size run inside the on-board helper; larger programs
        #: stream through raw-paste so their source never sits in the board's RAM.
        self.framed_limit = framed_limit
        #: Called with every byte received from the board (the session log).
        self.log = log
        self.raw_paste: bool | None = None   # learned on first use, per connection
        self.free_ram: int | None = None
        #: Bytes/s for boards without flow control; lowered when a cell arrives damaged.
        self.paced_rate = PACED_RATE
        self._window = 0                     # raw-paste window, learned when raw-paste starts
        self._buf = bytearray()
        self._at_prompt = False              # a raw-REPL '>' was consumed; the board waits for code
        self._helpers = False
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._interrupt_at: float | None = None
        self._resync_after_run = False  # stray bytes may reach the prompt: re-enter raw REPL next time
        # The running exec saw reboot text: bytes for the program's stdin would reach a rebooted REPL.
        self._reset_suspected = False
        self._fed_stdin = False              # this run's program was sent stdin data (write_during_exec)
        self._reader_may_wait = False        # ... and the link was lost under it (see _reopen_after_reset)
        #: How long to wait for a board that dropped the link on reset (WebREPL) to take it back. An
        #: ESP32 rejoins its WiFi within seconds of a reset; a board still away after this is unpowered
        #: or off the network, which the operation says at once (the next one tries again).
        self.link_reopen_timeout = 12.0
        self.closed = False
        # Board requests (see set_request_handler) and board setups (see set_board_setup).
        self._request_handlers: dict[str, BoardRequestHandler] = {}
        self._setups: dict[str, tuple[str, Callable[[ExecResult], None] | None]] = {}
        self._in_setup = False

    @property
    def description(self) -> str:
        return self.link.description

    @property
    def summary(self) -> str:
        """How it is connected, for the connect message: "at 115200 baud (raw-paste)"."""
        return f"{self.link.connection_summary} ({'raw-paste' if self.raw_paste is not False else 'raw REPL'})"

    @property
    def capabilities(self) -> Capabilities:
        link = self.link
        return Capabilities(raw_paste=self.raw_paste, hard_reset=link.can_hard_reset, byte_stream=True,
                            file_protocol=link.binary_channel is not None,
                            interrupt="ctrl-c", reconnects=link.can_reopen)

    # -- opening and closing -------------------------------------------------

    @classmethod
    def open(cls, url: str, baudrate: int = 115200, *, connect: bool = True, timeout: float = 10.0,
             link_options: dict[str, Any] | None = None, **options: Any) -> "BoardSession":
        link = open_link(url, baudrate=baudrate, **(link_options or {}))
        session = cls(link, **options)
        if connect:
            try:
                session.connect(timeout)
            except BaseException:
                link.close()
                raise
        return session

    def connect(self, timeout: float = 10.0) -> None:
        """Bring the board to the raw REPL from whatever it was doing. Never resets it."""
        with self._lock:
            self._enter_raw_repl(time.monotonic() + timeout)
            self._install_helpers(time.monotonic() + timeout)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the session for a transfer that speaks to the link directly (WebREPL's file
        protocol): the board must be idle at its prompt, and nothing else may talk meanwhile."""
        if not self._lock.acquire(blocking=False):
            raise BoardBusy(f"{self.link.description}: the board is busy with another operation")
        try:
            self._check_open()
            self._reopen_if_dropped(time.monotonic() + self.link_reopen_timeout)
            if not self._at_prompt:
                self._enter_raw_repl(time.monotonic() + 10.0)
            yield
        finally:
            self._lock.release()

    def reconnect(self, timeout: float | None = None) -> None:
        """Connect again after the board dropped a link that can reopen (WebREPL)."""
        with self._lock:
            self._check_open()
            self._reopen_after_reset(time.monotonic() + (self.link_reopen_timeout if timeout is None else timeout))

    def close(self, *, leave_raw_repl: bool = True) -> None:
        """Leave the board in its friendly REPL and close the link."""
        if self.closed:
            return
        self.closed = True
        try:
            if leave_raw_repl and self._at_prompt:
                self.link.write(b"\r\x02")
        except Exception:
            pass
        self.link.close()

    def __enter__(self) -> "BoardSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------

    def _read_more(self, timeout: float) -> bool:
        # Long waits are cut into 1 s reads: callers loop against their own deadline.
        data = self.link.read(65536, max(0.0, min(timeout, 1.0)))
        if not data:
            return False
        if self.log is not None:
            self.log(data)
        self._buf += data
        return True

    def _read_until(self, suffix: bytes, deadline: float, what: str) -> bytes:
        """Read through the first occurrence of `suffix` (boards add chatter before it)."""
        searched = 0
        while True:
            i = self._buf.find(suffix, searched)
            if i >= 0:
                data = bytes(self._buf[: i + len(suffix)])
                del self._buf[: i + len(suffix)]
                return data
            searched = max(0, len(self._buf) - len(suffix) + 1)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read_more(remaining):
                if time.monotonic() >= deadline:
                    raise BoardNotResponding(
                        f"{self.link.description}: no {what} from the board "
                        f"(last bytes received: {bytes(self._buf[-60:])!r}); "
                        "is it a MicroPython board at this baud rate?")

    # -- raw REPL entry --------------------------------------------------------

    def _enter_raw_repl(self, deadline: float) -> None:
        self._at_prompt = False
        attempts = 0
        while True:
            # CR first so a half-typed line cannot absorb the control byte;
            # Ctrl-C twice for programs that catch the first one.
            self.link.write(b"\r\x03")
            self._read_more(0.05)
            self.link.write(b"\x03")
            self._read_more(0.02)
            self._buf.clear()
            self.link.write(b"\r\x01")
            attempt_end = min(deadline, time.monotonic() + 1.5)
            attempts += 1
            try:
                self._read_until(RAW_BANNER, attempt_end, "raw REPL banner")
                if attempts > 1:
                    self._sync_raw_repl(min(deadline, time.monotonic() + 3.0))
                break
            except BoardNotResponding:
                if time.monotonic() >= deadline:
                    raise BoardNotResponding(
                        f"{self.link.description}: could not enter the raw REPL "
                        f"(last bytes: {bytes(self._buf[-60:])!r}); check the port and baud rate, "
                        "or reset the board") from None
        self._at_prompt = True

    def _sync_raw_repl(self, deadline: float) -> None:
        """After more than one attempt to enter the raw REPL, answers to the earlier attempts' bytes (a
        second banner) may still be on their way, and would read as the answer to what we send next (a
        late banner looks like firmware without raw-paste). The board answers in order: run a tiny
        program with an answer of its own and drop everything before that answer."""
        n = secrets.randbelow(90000) + 10000
        self.link.write(b"print(%d*7)\x04" % n)
        self._read_until(b"%d" % (n * 7), deadline, "answer in the raw REPL")
        self._read_until(b"\x04>", deadline, "raw REPL prompt")

    def _install_helpers(self, deadline: float) -> None:
        for attempt in range(3):
            try:
                return self._install_helpers_once(deadline)
            except _UploadReset as reset:
                # The board reset while the helper went over (the button during a connect or a soft
                # reset): it is a fresh board now. Enter its raw REPL and install again.
                if attempt == 2:
                    raise BoardNotResponding(f"{self.link.description}: the board keeps resetting ({reset.kind} "
                                             "reset) while edgekernel connects; check its power and main.py") from None
                self._enter_raw_repl(deadline)

    def _install_helpers_once(self, deadline: float) -> None:
        for resend in range(DAMAGED_RESENDS + 1):
            try:
                self._run_native(onboard.HELPER_SOURCE.encode(), deadline)
                break
            except DeviceError:
                # The helper is known-good code: refused on a link without flow control, it lost
                # bytes on the way. Send it again, slower (as damaged cells are).
                if self.raw_paste is True or resend == DAMAGED_RESENDS:
                    raise
                self.paced_rate = max(SLOWEST_PACED_RATE, self.paced_rate // 2)
        self._helpers = True
        if self.free_ram is None:
            # Binds no name: the user's globals stay as they are.
            out = self._run_native(b"print((lambda gc: (gc.collect(), gc.mem_free())[1])(__import__('gc')))", deadline)
            try:
                self.free_ram = int(out.split()[-1])
            except (ValueError, IndexError):
                self.free_ram = None
        self._rerun_setups(deadline)

    def _run_native(self, code: bytes, deadline: float) -> bytes:
        """Run internal code with the raw REPL's own framing; return its stdout."""
        self._send_program(code, deadline)
        out = self._read_until(b"\x04", deadline, "output")[:-1]
        err = self._read_until(NATIVE_END, deadline, "end of output")[:-2]
        self._at_prompt = True
        if err:
            raise DeviceError(f"board refused edgekernel's helper code: {err.decode(errors='replace').strip()}")
        return out

    # -- sending code ----------------------------------------------------------

    def _send_program(self, code: bytes, deadline: float) -> None:
        """Send a program at the raw prompt; return once the board has taken all of it.

        Raises _UploadInterrupted when interrupt() came before the board had it all.
        """
        if self._at_prompt and (self._buf or self._read_more(0)):
            # Bytes at an idle prompt: the board reset or printed on its own. Sending
            # now could land in the friendly REPL (where \x04 soft-resets): resync first.
            self._buf.clear()
            self._at_prompt = False
        if not self._at_prompt:
            self._enter_raw_repl(deadline)
        self._at_prompt = False
        if len(code) <= SMALL_CODE and self.raw_paste is not False:
            # Boards with raw-paste have at least a 256-byte receive buffer; older
            # ones (the micro:bit keeps 64 bytes) always get paced writes.
            self.link.write(code + b"\x04")
            self._expect_ok(deadline)
            return
        if self.raw_paste is not False and self._start_raw_paste(deadline):
            self._raw_paste_write(code, deadline)
            return
        limit = self.paced_limit
        if limit is not None and len(code) > limit:
            self._at_prompt = True
            raise CodeTooLarge(
                f"{len(code):,} bytes of code is more than this board can take without raw-paste "
                f"(about {limit:,} with {self.free_ram:,} bytes free): split the cell or upload it as a file")
        next_write = time.monotonic()
        text = bytearray()
        for i in range(0, len(code), PACED_CHUNK):
            # Each piece waits for the previous one's wire time; a late wake-up is
            # never made up with a burst, which is what overflows a small buffer.
            wait = next_write - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            next_write = time.monotonic() + PACED_CHUNK / self.paced_rate
            if self._interrupt_at is not None:
                # Ctrl-C at the raw prompt cleared what the board had; sending the
                # rest (or the final \x04) would run a fragment or soft-reset it.
                self._at_prompt = False
                raise _UploadInterrupted
            held = len(self._buf)
            if self._read_more(0):
                # The raw REPL says nothing while it takes a program: bytes now may be a board that
                # reset, whose new REPL would run the rest a line at a time. Send nothing until they
                # are known: reboot text (raises), or a pause in them (a late banner: go on).
                while True:
                    self._check_upload_reset(text, deadline, self._buf[held:])
                    held = len(self._buf)
                    quiet = min(UPLOAD_NOISE_QUIET, deadline - time.monotonic())
                    if quiet <= 0 or not self._read_more(quiet):
                        break
                next_write = time.monotonic()
            self.link.write(code[i: i + PACED_CHUNK])
        # The end byte keeps the pace too: lost in a full buffer, it would leave the board waiting.
        wait = next_write - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.link.write(b"\x04")
        if not self._read_more(min(END_BYTE_NUDGE, max(0.0, deadline - time.monotonic()))) and not self._buf:
            # Silence where an OK comes within milliseconds: the end byte was lost. A second one makes
            # the board compile what it has, which the helper's length check refuses (and we resend).
            # Were the board only slow, the spare \x04 runs an empty program whose answer is resynced.
            self.link.write(b"\x04")
        self._expect_ok(deadline)

    @property
    def paced_limit(self) -> int | None:
        """Largest program for the plain raw REPL, which holds all of it in RAM before compiling."""
        if self.free_ram is None:
            return None
        return max(1024, self.free_ram // 2)

    def _read_at_least(self, n: int, deadline: float, what: str) -> None:
        while len(self._buf) < n:
            if not self._read_more(deadline - time.monotonic()) and time.monotonic() >= deadline:
                raise BoardNotResponding(f"{self.link.description}: no {what} from the board "
                                         f"(received {bytes(self._buf[-60:])!r})")

    def _expect_ok(self, deadline: float) -> None:
        self._read_at_least(2, deadline, "acknowledgement of the code")
        # A raw banner may precede OK: the echo of an earlier resync (Ctrl-A).
        while self._buf.startswith(RAW_BANNER) or (self._buf and RAW_BANNER.startswith(bytes(self._buf))):
            if self._buf.startswith(RAW_BANNER):
                del self._buf[: len(RAW_BANNER)]
                self._read_at_least(2, deadline, "acknowledgement of the code")
            else:
                self._read_at_least(len(self._buf) + 1, deadline, "acknowledgement of the code")
        if self._buf[:2] != b"OK":
            # Reboot text instead of OK: the board reset while it took the code (it never ran). Its
            # first bytes may not say so yet (an ESP's ROM chatter, then a pause while it boots).
            self._check_upload_reset(bytearray(), deadline)
            settle = min(deadline, time.monotonic() + 2.0)
            while time.monotonic() < settle:
                self._read_more(max(0.0, settle - time.monotonic()))
                self._check_upload_reset(bytearray(), deadline)
            got = bytes(self._buf[:60])
            self._buf.clear()
            raise DeviceError(f"{self.link.description}: expected OK from the raw REPL, got {got!r}")
        del self._buf[:2]

    def _start_raw_paste(self, deadline: float) -> bool:
        self.link.write(b"\x05A\x01")
        while True:
            self._read_at_least(2, deadline, "answer to the raw-paste request")
            head = bytes(self._buf[:2])
            if head == b"R\x01":
                self._read_at_least(5, deadline, "raw-paste window size")
                self._window = int.from_bytes(self._buf[2:4], "little")
                # The size itself grants one window; the \x01 after it grants a second.
                self._credit = self._window * 2 if self._buf[4] == 1 else self._window
                del self._buf[:5]
                self.raw_paste = True
                return True
            if head == b"R\x00":
                del self._buf[:2]
                break
            # Firmware without raw-paste takes \x01 as "raw REPL again" and reprints the banner. A board
            # that reset meanwhile answers with reboot text instead: that says nothing about raw-paste
            # (remembered for the whole connection), and its banner never comes.
            while RAW_BANNER not in self._buf:
                self._check_upload_reset(bytearray(), deadline)
                if not self._read_more(max(0.0, deadline - time.monotonic())) and time.monotonic() >= deadline:
                    self._check_upload_reset(bytearray(), deadline)
                    raise BoardNotResponding(f"{self.link.description}: no raw REPL banner from the board "
                                             f"(last bytes received: {bytes(self._buf[-60:])!r}); "
                                             "is it a MicroPython board at this baud rate?")
            del self._buf[: self._buf.find(RAW_BANNER) + len(RAW_BANNER)]
            if self.raw_paste is not True:
                break
            # This board has answered with raw-paste before, and firmware does not change under a
            # connection: the banner is a late answer to an earlier Ctrl-A (a reset probe's, a resync's)
            # and the answer to this request comes after it.
        self.raw_paste = False
        return False

    def _check_upload_reset(self, text: bytearray, deadline: float, data: bytes | bytearray | None = None) -> None:
        """While code is sent (before it runs), the board answers with control bytes or OK only: reboot
        text among what arrived (`data`, default the whole buffer; gathered in `text`) means it reset.
        Then raise _UploadReset once its REPL has settled: the code never ran."""
        text += (self._buf if data is None else data).translate(None, b"\x01\x04")
        del text[:-_PROMPT_AFTER_SIGN]
        kind = _reset_kind(text)
        if kind is None:
            return
        # Let the rebooted REPL finish talking (boot text, echo of bytes still in flight) so the next
        # run starts from a known state; bounded: the reset is certain already.
        settle = min(deadline, time.monotonic() + 2.0)
        while self._read_more(max(0.0, min(0.2, settle - time.monotonic()))) and time.monotonic() < settle:
            pass
        self._buf.clear()
        self._at_prompt = self._helpers = False
        raise _UploadReset(kind)

    def _raw_paste_write(self, code: bytes, deadline: float) -> None:
        window, credit, sent = self._window, self._credit, 0
        view = memoryview(code)
        # Raw-paste answers with control bytes only (\x01 credit, \x04 stop) until the program runs:
        # text there is a rebooted board talking (the reset button, a brown-out), which grants no more
        # credit. Noticed, the upload stops at once instead of waiting out its size-based limit.
        text = bytearray()
        while sent < len(code) and self._interrupt_at is None:
            # Read credit whenever the board has sent some, not only when we run dry.
            wait = 0.0 if credit > 0 else max(0.0, deadline - time.monotonic())
            if self._read_more(wait) or self._buf:
                self._check_upload_reset(text, deadline)
                for byte in bytes(self._buf):
                    if byte == 0x01:
                        credit += window
                    elif byte == 0x04:
                        # The board stopped reading. After a syntax error it waits for our
                        # \x04; after our Ctrl-C it is already back at its prompt, where a
                        # \x04 would soft-reset it.
                        self._buf.clear()
                        if self._interrupt_at is None:
                            self.link.write(b"\x04")
                        else:
                            self._resync_after_run = True
                        return
                self._buf.clear()
            elif credit <= 0 and time.monotonic() >= deadline:
                raise BoardNotResponding(f"{self.link.description}: the board stopped granting raw-paste credit")
            if credit > 0 and self._interrupt_at is None:
                n = min(credit, len(code) - sent)
                self.link.write(bytes(view[sent: sent + n]))
                sent += n
                credit -= n
        if self._interrupt_at is not None:
            # Our Ctrl-C is on its way: the board answers \x04 and raises
            # KeyboardInterrupt; data we sent after it may sit at its prompt.
            self._resync_after_run = True
            while b"\x04" not in self._buf:
                if not self._read_more(deadline - time.monotonic()) and time.monotonic() >= deadline:
                    raise BoardNotResponding(f"{self.link.description}: the board did not stop the upload")
            del self._buf[: self._buf.find(b"\x04") + 1]
            return
        self.link.write(b"\x04")
        # The board answers \x04 once it has compiled everything; credit bytes may still precede it.
        while True:
            i = self._buf.find(b"\x04")
            if i >= 0:
                self._check_upload_reset(text, deadline, self._buf[:i])
                del self._buf[: i + 1]
                return
            self._check_upload_reset(text, deadline)
            self._buf.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read_more(remaining):
                if time.monotonic() >= deadline:
                    raise BoardNotResponding(f"{self.link.description}: the board did not finish compiling")

    # -- executing -------------------------------------------------------------

    def exec(self, code: str | bytes, *, on_output: OutputCallback | None = None,
             on_input: InputCallback | None = None, show_value: bool = False,
             timeout: float | None = None, filename: str = "<cell>", scratch: bool = False) -> ExecResult:
        """Run `code` on the board and return what happened.

        on_output gets stdout bytes as the board prints them. on_input is asked
        for a line when the code calls input(); returning None makes input()
        raise on the board. show_value reports a trailing expression's repr.
        timeout is an overall limit (None: run until done or interrupted).
        filename names the code in tracebacks. scratch runs the code in a namespace of
        its own (only ``_ek`` in it): nothing it binds reaches the user's globals, which is
        how edgekernel runs its own programs (files, probes, completion).
        """
        if not self._lock.acquire(blocking=False):
            raise BoardBusy(f"{self.link.description}: the board is busy with another operation")
        try:
            return self._exec_locked(code, on_output, on_input, show_value, timeout, filename, scratch)
        except LinkClosed:
            # A program fed stdin data reads it with Ctrl-C off (a put's receiver): on a board the link
            # lost without a reset it still waits for bytes, and must get them on the next connection.
            self._reader_may_wait = self._fed_stdin
            raise
        finally:
            self._lock.release()

    def _exec_locked(self, code: str | bytes, on_output: OutputCallback | None,
                     on_input: InputCallback | None, show_value: bool, timeout: float | None,
                     filename: str, scratch: bool = False) -> ExecResult:
        self._check_open()
        start = time.monotonic()
        deadline = start + timeout if timeout is not None else float("inf")
        setup_deadline = min(deadline, start + 10.0)
        source = code.decode() if isinstance(code, bytes) else code
        if show_value:
            source = onboard.show_trailing_expression(source, onboard.SHOW_CALL)
        marker = onboard.new_marker()
        helper_retry = damaged_resends = 0
        self._reopen_if_dropped(min(deadline, start + self.link_reopen_timeout))
        while True:
            if not self._helpers:
                if not self._at_prompt:
                    self._enter_raw_repl(setup_deadline)
                self._install_helpers(setup_deadline)
            # edgekernel's own programs are small and always framed: streamed code would run in the
            # user's globals.
            framed = scratch or len(source.encode()) <= self.framed_limit
            if framed:
                program = onboard.framed_call(marker, source, check_length=self.raw_paste is not True,
                                              scratch=scratch)
            else:
                try:
                    self._run_native(onboard.set_marker_call(marker), setup_deadline)
                except _UploadReset as reset:
                    result = ExecResult(reset=reset.kind)   # the code never went: reported as a reset
                    break
                program = (source + onboard.STREAM_TRAILER).encode()
            self._interrupt_at = None
            self._resync_after_run = False
            self._reset_suspected = False
            self._fed_stdin = False
            self._running.set()
            # Uploads get time in proportion to their size (1 KB/s at worst).
            upload_deadline = min(deadline, time.monotonic() + 10.0 + len(program) / 1000)
            try:
                try:
                    self._send_program(program, upload_deadline)
                except _UploadInterrupted:
                    result = ExecResult(error=BoardException("KeyboardInterrupt", "interrupted before the code started"),
                                        interrupted=InterruptReport("ctrl-c", time.monotonic() - (self._interrupt_at or start)))
                except _UploadReset as reset:
                    # Reported like a reset while the code ran: no error of the code's, reset named.
                    result = ExecResult(reset=reset.kind)
                else:
                    result = _Follower(self, marker, framed, on_output, on_input, deadline, filename).run()
            finally:
                self._running.clear()
                self._interrupt_at = None
                if self._resync_after_run:
                    self._at_prompt = False
            if not helper_retry and _helpers_missing(result):
                # The board was reset behind our back; the cell did not run. Reinstall and retry.
                helper_retry = 1
                self._helpers = False
                continue
            if _arrived_damaged(result) and damaged_resends < DAMAGED_RESENDS:
                # The helper refused the cell before running it: sending it again is safe.
                damaged_resends += 1
                self.paced_rate = max(SLOWEST_PACED_RATE, self.paced_rate // 2)
                continue
            break
        result.seconds = time.monotonic() - start
        if result.reset:
            self._helpers = False
            self._restore_setups_after_reset()
        return result

    # -- interrupt and resets ------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running.is_set()

    def interrupt(self) -> None:
        """Stop running code (callable from any thread). exec() then escalates
        if Ctrl-C is not enough and reports which step worked."""
        if self._running.is_set() and self._interrupt_at is None:
            self._interrupt_at = time.monotonic()
            self.link.write(b"\x03")

    def soft_reset(self, timeout: float = 10.0) -> None:
        """Ctrl-D at the raw prompt: a clean heap; main.py does not run (raw mode)."""
        with self._lock:
            self._check_open()
            deadline = time.monotonic() + timeout
            self._reopen_if_dropped(deadline)
            if not self._at_prompt:
                self._enter_raw_repl(deadline)
            self._soft_reset_at_prompt(deadline)

    def _soft_reset_at_prompt(self, deadline: float) -> None:
        self._buf.clear()
        self._at_prompt = self._helpers = False
        self.link.write(b"\x04")
        try:
            if self._await_soft_reboot(deadline) == "hard":
                # The chip reset meanwhile (the button, a brown-out): it comes back in the friendly
                # REPL, not raw mode. A reset is what was asked for; enter the raw REPL from there.
                self._enter_raw_repl(deadline)
        except LinkClosed:
            if not self.link.can_reopen:
                raise
            # As long as any reopen waits, not the whole soft reset's limit: a board that does not come
            # back in that time is gone (unplugged), which is said at once.
            self._reopen_after_reset(min(deadline, time.monotonic() + self.link_reopen_timeout))
        self._at_prompt = True
        self._install_helpers(deadline)

    def _await_soft_reboot(self, deadline: float) -> str:
        """Read through the soft reboot's text and the raw banner after it ("soft"), or through a
        hard reset's text and the friendly prompt after it ("hard": a reset overtook the soft one)."""
        while True:
            hard = max((self._buf.rfind(sign) for sign, kind in _RESET_SIGNS if kind == "hard"), default=-1)
            i = self._buf.find(SOFT_REBOOT)
            # boot.py may print between the reboot line and the banner (a board's banner too).
            banner = self._buf.find(RAW_BANNER, i) if i >= 0 else -1
            if banner >= 0 and hard < banner:
                del self._buf[: banner + len(RAW_BANNER)]
                return "soft"
            if hard >= 0 and self._buf.find(_FRIENDLY_PROMPT, hard) >= 0:
                self._buf.clear()
                return "hard"
            remaining = deadline - time.monotonic()
            if (remaining <= 0 or not self._read_more(remaining)) and time.monotonic() >= deadline:
                what = "raw REPL banner after soft reboot" if i >= 0 else "soft reboot"
                raise BoardNotResponding(
                    f"{self.link.description}: no {what} from the board "
                    f"(last bytes received: {bytes(self._buf[-60:])!r}); press its reset button or unplug it, "
                    "then reconnect")

    # -- board requests and board setups (the board asks the host while code runs: %mount) ----------

    def set_request_handler(self, kind: str, handler: "BoardRequestHandler | None") -> None:
        """Answer the board's requests of `kind` (one letter) with `handler(payload) -> reply`; None removes it.

        While any code runs under the helper (a cell, a %%bg job, a magic's program), board code may ask
        the host something and wait for the answer on its stdin. It prints, after the helper's current
        marker ``_ek.m``::

            <marker>Q<kind><payload><marker>q

        with 0x04, 0x1b and 0x1e in the payload written as ESC + (byte + 0x40), so neither a marker
        nor the raw REPL's end can appear inside it. The session passes the unescaped payload to the
        handler and writes the reply to the board's stdin framed as three length bytes (7 bits each,
        least significant first, top bit set) and the body with 0x01-0x05 and 0x1b written as ESC +
        (byte + 0x40) (see frame_board_reply). So a raw 0x03 on the board's stdin during a request is
        always the host's Ctrl-C, and a reply the board never read holds no byte the raw REPL acts on.
        Every request is answered: with no handler for `kind`, or a handler that raised, the reply is
        empty, which board code must take as "the host cannot answer". A reply holds at most 2 MB - 1.
        Handlers run on the thread that runs exec(), between reads of the board's output.
        """
        if len(kind) != 1:
            raise ValueError(f"a board request kind is one letter, not {kind!r}")
        if handler is None:
            self._request_handlers.pop(kind, None)
        else:
            self._request_handlers[kind] = handler

    def answer_board_request(self, request: bytes) -> None:
        """Answer one request the board printed (its kind letter and escaped payload): see set_request_handler."""
        handler = self._request_handlers.get(chr(request[0])) if request else None
        reply = b""
        if handler is not None:
            try:
                reply = handler(unescape_board_request(request[1:]))
            except Exception:
                logging.getLogger(__name__).exception("board request handler failed")
                reply = b""
        framed = frame_board_reply(reply)
        if len(framed) - 3 > MAX_BOARD_REPLY:
            logging.getLogger(__name__).error("board request reply too long (%d bytes)", len(framed))
            framed = frame_board_reply(b"")
        self.link.write(framed)

    def set_board_setup(self, key: str, program: str | None,
                        after: Callable[[ExecResult], None] | None = None) -> None:
        """Board code to run again each time the board starts afresh (a soft or hard reset found by
        exec(), soft_reset(), hard_reset(), a reinstalled helper); None removes it.

        It runs in a throw-away namespace (as scratch code) right after the helper is installed, and
        `after` gets its result (to tell the user, e.g. "remounted"). Registering does not run it.
        """
        if program is None:
            self._setups.pop(key, None)
        else:
            self._setups[key] = (program, after)

    def _rerun_setups(self, deadline: float) -> None:
        if not self._setups or self._in_setup:
            return
        self._in_setup = True
        try:
            for program, after in list(self._setups.values()):
                result = self._exec_locked(program, None, None, False, max(1.0, deadline - time.monotonic()),
                                           "<setup>", scratch=True)
                if after is not None:
                    after(result)
        finally:
            self._in_setup = False

    def _restore_setups_after_reset(self) -> None:
        """A run ended in a reset: with setups registered, reinstall the helper and rerun them now (not at
        the next cell), so the board is set up again as soon as it is back; failing that, at the next exec."""
        if not self._setups or self._in_setup:
            return
        try:
            self._install_helpers(time.monotonic() + 10.0)
        except (DeviceError, LinkError):
            self._helpers = False

    # -- for transfers that speak to the board beside exec (device/files.py, webrepl_files.py) ----

    @property
    def raw_paste_window(self) -> int:
        """The board's raw-paste flow-control window in bytes (0 before raw-paste was used, or without it)."""
        return self._window if self.raw_paste else 0

    def write_during_exec(self, data: bytes) -> None:
        """Bytes for the running program's stdin while exec() streams its output (a streamed put's
        data, sent from its on_output callback as the board grants credit)."""
        if not self._running.is_set():
            raise DeviceError(f"{self.link.description}: nothing runs on the board to read these bytes")
        if self._reset_suspected:
            # The board printed reboot text: the program that would read these bytes may be gone,
            # and a rebooted REPL would echo and line-edit them (0x01/0x05 in data change its mode),
            # hiding the prompt exec() needs to see. Nothing more goes until the run ends.
            return
        self._fed_stdin = True
        self.link.write(data)

    @property
    def reset_suspected(self) -> bool:
        """During exec(): the board printed reboot text (exec confirms or clears it before returning)."""
        return self._reset_suspected

    def reopen_after_drop(self) -> None:
        """Within exclusive(): the board dropped a link that can reopen (WebREPL, after a failed file
        open): connect again and re-enter the raw REPL."""
        self._reopen_after_reset(time.monotonic() + self.link_reopen_timeout)

    def _reopen_if_dropped(self, deadline: float) -> None:
        """Before an operation: a link the board (or the network) dropped since the last one connects
        again by itself where it can (WebREPL), so the operation runs instead of failing."""
        if not self.link.can_reopen:
            return
        if not self.link.dropped:
            # A drop while nobody read (the board reset between operations) shows only when read:
            # look now, before any code is sent. Bytes that came stay for _send_program's check.
            try:
                self._read_more(0)
            except LinkClosed:
                pass
        if self.link.dropped:
            self._reopen_after_reset(deadline)

    def _reopen_after_reset(self, deadline: float) -> None:
        """The board dropped the link as it reset (WebREPL clients go with a reset): connect
        again and re-enter the raw REPL (the mode survives the reset, the prompt text does not)."""
        self._buf.clear()
        self._at_prompt = self._helpers = False
        self.link.reopen(max(1.0, deadline - time.monotonic()))
        if self._reader_may_wait:
            # The receiver reads up to a window at a time and stops at a 0x03 among what it read: a
            # window of them ends it wherever it is (it removes its partial file); the rest reach the
            # raw REPL, where Ctrl-C at the prompt does nothing.
            self._reader_may_wait = False
            self.link.write(b"\x03" * (max(self._window, 64) + 8))
        self._enter_raw_repl(deadline)

    def hard_reset(self, timeout: float = 10.0) -> None:
        """Reset the chip through the link (DTR/RTS on ESP boards), then re-enter the raw REPL."""
        with self._lock:
            self._check_open()
            self._hard_reset(time.monotonic() + timeout)

    def _hard_reset(self, deadline: float) -> None:
        self._at_prompt = self._helpers = False
        self.link.hard_reset()
        self._buf.clear()
        # Boot output (ROM chatter, boot.py, main.py) ends in the friendly prompt,
        # unless main.py runs forever; entering the raw REPL interrupts it either way.
        try:
            self._read_until(b">>> ", min(deadline, time.monotonic() + 3.0), "boot prompt")
        except BoardNotResponding:
            pass
        self._enter_raw_repl(deadline)
        self._install_helpers(deadline)

    def _check_open(self) -> None:
        if self.closed:
            raise LinkClosed(f"{self.link.description}: the session is closed; connect again")


class _UploadInterrupted(Exception):
    """interrupt() arrived while a program was still being sent."""


class _UploadReset(Exception):
    """The board reset while a program was still being sent: it never ran."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _reset_kind(data: bytes | bytearray) -> str | None:
    """"soft"/"hard" if `data` holds a board's reboot text."""
    found = None
    for sign, kind in _RESET_SIGNS:
        if sign in data:
            found = "hard" if kind == "hard" else (found or kind)
    return found


def _arrived_damaged(result: ExecResult) -> bool:
    return (result.error is not None and result.error.type == "OSError"
            and onboard.DAMAGED_CELL in result.error.message and not result.output)


def _helpers_missing(result: ExecResult) -> bool:
    return (result.error is not None and result.error.type == "NameError"
            and "_ek" in result.error.message and not result.output)


class _Follower:
    """Reads one execution's answer: output, value, error, end; handles input()
    and the interrupt ladder. One instance per exec."""

    def __init__(self, session: BoardSession, marker: bytes, framed: bool, on_output: OutputCallback | None,
                 on_input: InputCallback | None, deadline: float, filename: str) -> None:
        self.s = session
        # Where the user's code shows in board tracebacks, and what we call it.
        if framed:
            self.hide_files: tuple[str, ...] = (onboard.HELPER_FILE,)
            self.rename = {onboard.EXEC_FILE: filename}
        else:
            self.hide_files = ()
            self.rename = {onboard.HELPER_FILE: filename}
        self.marker = marker
        self.framed = framed
        self.on_output = on_output
        self.on_input = on_input
        self.deadline = deadline
        self.result = ExecResult()
        self.output = bytearray()
        self.state = "out"          # out | value | error | prompt | echo | tail
        self.field = bytearray()    # text of the current value/error/prompt
        self.ladder_step = 0
        self.last_step = "ctrl-c"
        self.reset_suspect: str | None = None
        self.scan_from = 0          # where to look for reset signs next
        self.sign_end = 0           # where the last reset sign ended (output positions; the buffer follows)
        self.seen_marker = False
        self.probe_at: float | None = None  # when we asked a possibly-reset board for its banner
        self.probes_left = 0                # further asks after a silent one
        self.line_cleared = False           # Ctrl-C was sent to clear a rebooted REPL's line

    # Output goes to the caller as soon as it is known not to be framing.
    def emit(self, data: bytes) -> None:
        if data:
            self.output += data
            if self.on_output is not None:
                self.on_output(data)

    def run(self) -> ExecResult:
        try:
            return self._run()
        except LinkClosed:
            # A link that reopens (WebREPL) loses its connection when the board resets: with a
            # reset in evidence, connect again and report the reset; anything else is a lost link.
            s = self.s
            evidence = (self.reset_suspect in ("soft", "hard") or self.state == "tail"
                        or SOFT_REBOOT in self.recent())
            if not (s.link.can_reopen and evidence):
                raise
            s._running.clear()
            s._reopen_after_reset(time.monotonic() + s.link_reopen_timeout)
            r = self.result
            r.output = bytes(self.output)
            r.reset = "hard" if self.reset_suspect == "hard" else "soft"
            if s._interrupt_at is not None:
                r.interrupted = InterruptReport(self.last_step, time.monotonic() - s._interrupt_at)
            return r

    def _run(self) -> ExecResult:
        s = self.s
        while True:
            done = self.parse()
            if done:
                break
            now = time.monotonic()
            if now >= self.deadline:
                # Out of time: interrupt like a user would; the ladder takes it from there.
                self.deadline = float("inf")
                self.result.timed_out = True
                s.interrupt()
            # Short reads: an interrupt() must be able to start the ladder on time.
            wait = min(self.deadline - now, 0.25)
            if s._interrupt_at is not None:
                wait = min(wait, self.escalate(now))
            if self.probe_at is not None:
                wait = min(wait, max(0.0, self.probe_at + PROBE_WAIT - now))
                if not s._read_more(wait) and time.monotonic() >= self.probe_at + PROBE_WAIT:
                    if self.line_cleared and not self.probes_left:
                        # A line editor answered: this is a rebooted REPL, not a program, whatever
                        # mode the data still in flight left it in. The reset is certain; the next
                        # run enters the raw REPL by the full procedure.
                        self.end_probe(confirmed=True, at_raw_prompt=False)
                        break
                    if self.probes_left and (not s._buf or self.line_cleared):
                        # Silence: a board still booting, or one that lost the byte (no flow control),
                        # may not have seen it. Ask again before believing it is a running program.
                        self.probes_left -= 1
                        self.probe_at = time.monotonic()
                        if self.line_cleared:
                            # What the cleared line printed is output. Data that arrived after our Ctrl-C
                            # may have put the REPL in paste mode or on a new line: clear it again.
                            self.emit(bytes(s._buf))
                            s._buf.clear()
                            s.link.write(b"\x03\x01")
                        else:
                            s.link.write(b"\x01")
                    else:
                        self.end_probe(confirmed=False)
                continue
            quiet_check = self.end_candidate() or self.reset_candidate()
            if quiet_check:
                wait = min(wait, QUIET)
            if not s._read_more(wait) and quiet_check:
                if self.finish_quiet():
                    break
        r = self.result
        r.output = bytes(self.output)
        if s._interrupt_at is not None:
            r.interrupted = InterruptReport(self.last_step, time.monotonic() - s._interrupt_at)
            if r.error is None and r.reset is None:
                r.error = BoardException("KeyboardInterrupt", "")
            if self.ladder_step > 1:
                s._resync_after_run = True  # resync bytes may still be on their way
        return r

    # -- parsing -----------------------------------------------------------------

    def parse(self) -> bool:
        buf = self.s._buf
        m = self.marker
        if self.probe_at is not None:
            return self.parse_probe_answer()
        while True:
            if self.state == "tail":
                return self.parse_tail()
            i = buf.find(m)
            if i >= 0 and len(buf) > i + len(m):
                kind = chr(buf[i + len(m)])
                before = bytes(buf[:i])
                del buf[: i + len(m) + 1]
                self.reset_suspect = None  # the helper is alive: whatever looked like a reset was output
                self.s._reset_suspected = False
                self.seen_marker = True
                self.end_field(before)
                self.begin_field(kind)
                continue
            if i >= 0:
                return False  # the marker's letter has not arrived yet
            # No complete marker: release what cannot be the start of one.
            keep = _partial_suffix(buf, m)
            if self.state == "out":
                cut = len(buf) - keep
                hold = self.native_end_start(cut) if self.native_end_possible() else None
                if hold is not None:
                    cut = hold
                # Before the caller sees the bytes: a put's data must stop at the first sign of a reset.
                self.check_reset_signs()
                self.emit(bytes(buf[:cut]))
                del buf[:cut]
            elif self.state != "echo" and keep < len(buf):
                self.field += buf[: len(buf) - keep]
                del buf[: len(buf) - keep]
            elif self.state == "echo":
                if _reset_kind(buf) is not None:
                    # Reboot text where the echo of a typed line belongs: the board reset while the
                    # program waited in input(). From here it is output, read for the reset's prompt.
                    self.state = "out"
                    continue
                # The last bytes wait for the next read: reboot text split across reads is seen whole.
                del buf[: max(0, len(buf) - max(keep, 40))]
            return False

    def end_field(self, data: bytes) -> None:
        if self.state == "out":
            self.emit(data)
        elif self.state != "echo":
            self.field += data
            text = self.field.decode(errors="replace")
            if self.state == "value":
                self.result.value = text
            elif self.state == "error":
                self.result.error = parse_traceback(text, hide_files=self.hide_files, rename=self.rename)
            elif self.state == "prompt":
                self.answer_input(text)
            elif self.state == "request":
                self.s.answer_board_request(bytes(self.field))
        self.field = bytearray()

    def begin_field(self, kind: str) -> None:
        self.state = {"R": "value", "E": "error", "I": "prompt", "W": "echo",
                      "i": "out", "D": "tail", "Q": "request", "q": "out"}.get(kind, "out")

    def answer_input(self, prompt: str) -> None:
        line = self.on_input(prompt) if self.on_input is not None else None
        self.s._read_more(0)
        if any(self.marker + end in self.s._buf for end in (b"i", b"E", b"D")):
            # The program stopped waiting while the person typed (input() failed, or the program ended):
            # the line would land at the raw prompt and run as the start of the next program.
            return
        if self.s._interrupt_at is not None or _reset_kind(self.s._buf) is not None:
            # Interrupted while the person typed: the program is ending (or has ended) with
            # KeyboardInterrupt, so the line would land at the raw prompt and run as code. Or the
            # board reset while the person typed: the line would run in its fresh REPL.
            return
        if line is None:
            reply = self.marker[1:] + onboard.NO_STDIN_SUFFIX.encode()
        else:
            reply = line.replace("\r", " ").replace("\n", " ").encode()
        self.s.link.write(reply + b"\r")

    def parse_tail(self) -> bool:
        """After the done marker the raw REPL itself must say \\x04\\x04>."""
        buf = self.s._buf
        if len(buf) < 3:
            if b"\x04\x04>".startswith(bytes(buf)):
                return False
        if buf[:3] == b"\x04\x04>":
            del buf[:3]
            self.s._at_prompt = True
            return True
        # Anything else after a finished run: sys.exit() soft-resets current ports.
        # The helper is done, so what follows is the board's own reboot text.
        if RAW_BANNER in buf or buf.endswith(b">>> "):
            self.result.reset = "soft"
            self.s._helpers = False
            self.s._at_prompt = RAW_BANNER in buf
            buf.clear()
            return True
        return False

    # -- the raw REPL's own end (code ran outside the helper, or the helper itself failed)

    def native_end_start(self, limit: int) -> int | None:
        """Index of a \\x04 in buf[:limit] that may begin the raw REPL's own
        "\\x04 traceback \\x04>" ending; output from there is held back until
        it is known whether it is the end or just bytes the program printed."""
        buf = self.s._buf
        start = 0
        while True:
            i = buf.find(b"\x04", start, limit)
            if i < 0:
                return None
            if _could_be_native_end(bytes(buf[i + 1:])):
                return i
            start = i + 1

    def native_end_possible(self) -> bool:
        """Inside the helper the raw REPL's own ending means the helper itself
        failed: it was missing (nothing came before), or our Ctrl-C hit it
        mid-report. Anything else that looks like that ending is output."""
        if not self.framed:
            return True
        return self.s._interrupt_at is not None or (not self.output and not self.seen_marker)

    def end_candidate(self) -> bool:
        buf = self.s._buf
        if not (self.state == "out" and buf.endswith(NATIVE_END) and buf[:1] == b"\x04"
                and self.native_end_possible() and _could_be_native_end(bytes(buf[1:]), complete=True)):
            return False
        return (not self.framed or b"KeyboardInterrupt" in buf or b"_ek" in buf
                or _compile_failure(bytes(buf[1:-2])) is not None)

    def recent(self) -> bytes:
        return bytes(self.output[-64:]) + bytes(self.s._buf)

    def reset_candidate(self) -> bool:
        if self.state != "out" or self.reset_suspect is None:
            return False
        if self.recent().endswith(_PROMPT_ENDINGS):
            return True
        if self.reset_suspect not in ("soft", "hard"):
            return False
        # Bytes the host was still sending when the board reset reach the rebooted REPL, which echoes
        # them after its prompt (or takes 0x05/0x01 in them as paste or raw mode): a prompt after the
        # reboot text, then silence, is reason enough to ask.
        start = self.sign_end
        after = bytes(self.output[start: start + _PROMPT_AFTER_SIGN])
        if len(after) < _PROMPT_AFTER_SIGN:
            in_buf = max(0, start - len(self.output))
            after += bytes(self.s._buf[in_buf: in_buf + _PROMPT_AFTER_SIGN - len(after)])
        return _FRIENDLY_PROMPT in after or RAW_BANNER in after

    def finish_quiet(self) -> bool:
        """Nothing more came after a possible ending: it was the ending."""
        s = self.s
        if self.end_candidate():
            err = bytes(s._buf[1:-2])
            s._buf.clear()
            s._at_prompt = True
            failure = _compile_failure(err) if self.framed else None
            if failure == "SyntaxError":
                # The framed call is valid Python whatever the cell holds: bytes were lost on the way.
                # Said like the helper's own refusal, so the cell is sent again, slower.
                self.result.error = BoardException(
                    "OSError", f"edgekernel: {onboard.DAMAGED_CELL} (the board could not parse the call "
                               "that carries it): the link drops bytes")
            elif failure == "MemoryError":
                detail = err.decode(errors="replace").strip().splitlines()[-1].split(": ", 1)[-1]
                if HEAP_LOCKED in detail:
                    # Compiling allocates, and the raw REPL (unlike the friendly one) never unlocks.
                    message = ("the board's heap is locked (micropython.heap_lock() with no heap_unlock() after "
                               "it), so it can take no code in: soft-reset the board")
                else:
                    message = (f"the board has too little free memory to take this cell in ({detail}): make the "
                               "cell smaller, free memory (del big objects, then gc.collect()) or soft-reset the board")
                self.result.error = BoardException("MemoryError", message)
            elif err:
                self.result.error = parse_traceback(err.decode(errors="replace"),
                                                    hide_files=self.hide_files, rename=self.rename)
            return True
        if self.reset_candidate():
            # A program could print reboot text and a prompt and then pause: ask.
            # An idle REPL (raw or friendly) answers Ctrl-A with the raw banner;
            # a running program does not (the byte waits in its input).
            self.emit(bytes(s._buf))
            s._buf.clear()
            self.probe_at = time.monotonic()
            self.probes_left = PROBE_RETRIES
            self.line_cleared = False
            s.link.write(b"\x01")
        return False

    def parse_probe_answer(self) -> bool:
        buf = self.s._buf
        if RAW_BANNER in buf:
            return self.end_probe(confirmed=True)
        if self.line_cleared:
            return False  # a new line and prompt come before the banner; PROBE_WAIT bounds the wait
        if self.reset_suspect in ("soft", "hard") and (_LINE_EDITOR_ANSWER.search(buf) or self.s._fed_stdin):
            # A friendly REPL with bytes on its line (a transfer's data that reached the rebooted
            # board) takes Ctrl-A as "start of line"; in a continued line or paste mode it prints a
            # prompt or echoes it. A program does none of this. Ctrl-C clears the line (or leaves
            # paste mode), then Ctrl-A enters the raw REPL. A program that was fed stdin data (a
            # put's receiver) prints no reboot text of its own: bytes after the probe are the
            # rebooted REPL echoing data still in flight, however they look.
            self.emit(bytes(buf))
            buf.clear()
            self.line_cleared = True
            self.probe_at = time.monotonic()
            self.probes_left = PROBE_RETRIES
            self.s.link.write(b"\x03\x01")
            return False
        if self.reset_suspect in ("soft", "hard") and _LINE_EDITOR_PARTIAL.fullmatch(buf):
            return False  # the start of such an answer
        if buf and not (b"\r\n" + RAW_BANNER).startswith(bytes(buf)) and not RAW_BANNER.startswith(bytes(buf)):
            self.end_probe(confirmed=False)
            return self.parse()
        return False

    def end_probe(self, confirmed: bool, at_raw_prompt: bool = True) -> bool:
        s = self.s
        self.probe_at = None
        if not confirmed:
            # Still running: what looked like a reset was output. The Ctrl-A we
            # sent waits in the board's input; the next raw entry absorbs it.
            self.reset_suspect = None
            s._reset_suspected = False
            s._resync_after_run = True
            return False
        if self.reset_suspect != "resync":
            self.result.reset = self.reset_suspect
            s._helpers = False
        s._buf.clear()
        s._at_prompt = at_raw_prompt
        return True

    def check_reset_signs(self) -> None:
        """Look for reboot text in what the board sent (a reset mid-exec)."""
        out = self.output
        base = max(0, self.scan_from - 40)
        window = bytes(out[base:]) + bytes(self.s._buf)
        self.scan_from = len(out)
        # A sign alone proves nothing (a program may print it): a prompt and
        # silence must follow before reset_candidate() believes it.
        for sign, kind in _RESET_SIGNS:
            at = window.rfind(sign)
            if at >= 0 and self.reset_suspect != "hard":
                self.reset_suspect = kind
                self.sign_end = max(self.sign_end, base + at + len(sign))
                self.s._reset_suspected = True

    # -- interrupt ladder -------------------------------------------------------------

    def escalate(self, now: float) -> float:
        """Take the next step of the ladder when its time has come; return the
        seconds until the one after."""
        s = self.s
        started = s._interrupt_at
        assert started is not None
        while self.ladder_step < len(_LADDER) and now - started >= _LADDER[self.ladder_step][0]:
            step = _LADDER[self.ladder_step][1]
            self.ladder_step += 1
            if step == "ctrl-c x2":
                s.link.write(b"\x03")
                time.sleep(0.01)
                s.link.write(b"\x03")
            elif step == "raw-repl":
                s.link.write(b"\r\x03\x03\r\x01")
                self.reset_suspect = self.reset_suspect or "resync"
            elif step == "soft-reset":
                s.link.write(b"\r\x03\x03\x04")
                self.reset_suspect = "soft"
                s._reset_suspected = True
            elif step == "hard-reset":
                if s.link.can_hard_reset:
                    s.link.hard_reset()
                    self.reset_suspect = "hard"
                    s._reset_suspected = True
                else:
                    continue
            elif step == "give-up":
                raise BoardNotResponding(
                    f"{s.link.description}: the board ignores Ctrl-C and a soft reset; "
                    "press its reset button or unplug it, then reconnect")
            self.last_step = step
        if self.ladder_step < len(_LADDER):
            return max(0.0, started + _LADDER[self.ladder_step][0] - now)
        return 1.0


BoardRequestHandler = Callable[[bytes], bytes]
MAX_BOARD_REPLY = (1 << 21) - 1
_REQUEST_ESCAPE = re.compile(rb"\x1b(.)", re.DOTALL)
_REPLY_SPECIAL = re.compile(rb"[\x01-\x05\x1b]")


def unescape_board_request(payload: bytes) -> bytes:
    """A board request's payload as the board meant it (ESC + (byte + 0x40) stands for the byte)."""
    if b"\x1b" not in payload:
        return payload
    return _REQUEST_ESCAPE.sub(lambda m: bytes((m.group(1)[0] - 0x40,)), payload)


def frame_board_reply(reply: bytes) -> bytes:
    """A reply as it goes to the board's stdin: three length bytes (7 bits each, top bit set) and the body
    with 0x01-0x05 and 0x1b escaped, so no byte of it can be Ctrl-C or act on the raw REPL."""
    body = _REPLY_SPECIAL.sub(lambda m: b"\x1b" + bytes((m.group()[0] + 0x40,)), reply)
    k = len(body)
    return bytes((0x80 | k & 127, 0x80 | k >> 7 & 127, 0x80 | k >> 14 & 127)) + body


def _partial_suffix(buf: bytearray, marker: bytes) -> int:
    """Length of the longest tail of buf that is a proper prefix of marker."""
    j = buf.rfind(marker[:1], max(0, len(buf) - len(marker) + 1))
    if j < 0:
        return 0
    tail = bytes(buf[j:])
    return len(tail) if marker.startswith(tail) else 0


def _compile_failure(err: bytes) -> str | None:
    """"SyntaxError" or "MemoryError" when the raw REPL's own error text says it could not compile
    the program at all (no frame is "in" any function or module), else None."""
    text = err.replace(b"\r\n", b"\n").strip()
    if b", in " in text:
        return None
    last = text.rsplit(b"\n", 1)[-1]
    for kind in (b"SyntaxError", b"MemoryError"):
        if last.startswith(kind) and (text.startswith(TRACEBACK_HEAD) or text == last):
            return kind.decode()
    return None


def _could_be_native_end(rest: bytes, complete: bool = False) -> bool:
    """Could "\\x04" + rest be (the start of) the raw REPL's own ending?"""
    if rest == b"\x04>" or (not complete and b"\x04>".startswith(rest)):
        return True
    # A program the board had no memory to compile: the error alone, no traceback.
    head = MEMORY_HEAD if rest.startswith(MEMORY_HEAD[:1]) else TRACEBACK_HEAD
    if len(rest) < len(head):
        return not complete and head.startswith(rest)
    if not rest.startswith(head):
        return False
    j = rest.find(b"\x04", len(head))
    if j < 0:
        return not complete
    tail = rest[j:]
    return tail == b"\x04>" or (not complete and b"\x04>".startswith(tail))
