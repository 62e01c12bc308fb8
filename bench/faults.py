"""Fault campaign: every operation x every fault x every target, seeded, with the checks after each trial.

    python bench/faults.py --seed 1 --minutes 30
    python bench/faults.py --trials 200 --targets unix,microbit --ops cell,put_big --faults reset,kill

Each trial starts one operation on a board (device layer: BoardSession/BoardFiles/MqttSession, as the
kernel and the CLI use them) and injects one fault at a random moment:

  reset      the reset button (the emulated board's SIGUSR1)
  kill       the board process killed: the cable pulled (a new board on the same flash comes after)
  stall      the link stalled (the board process SIGSTOPped) for 0.2-2 s, then resumed
  drop       bytes dropped at an ESP8266-like 256-byte receive buffer drained at 5 KB/s (the board runs so)
  ws_drop    the WebREPL connection dropped under the session (its socket shut down)
  broker     the MQTT broker (real mosquitto) restarted on the same port
  interrupt  a host-side Ctrl-C (Board.interrupt(), what Kernel -> Interrupt calls) at a random moment

Then it checks: the operation ended within its own stated limit (for a fault that ends it: within
NOTICE seconds of the fault) with a one-line error that names the fault; the next operation works
(after a pulled cable: on the board plugged in again); a file the operation wrote holds the old or
the new content, never a third; no cell ran twice (cells append their trial id to a journal file on
the board's flash); no output line before the last one received is missing; no thread, process or
temporary file is left (host temp files, `.ek-tmp` files on the board's flash).

The last line is exactly ``faults: N trials, H hangs, P partial files, D duplicated cells, L lost output,
K leaks``; the line before it counts unclear errors and failed next operations.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edgekernel.device import BoardSession  # noqa: E402
from edgekernel.device.files import BoardFiles, temp_name  # noqa: E402
from edgekernel.emulator import start_board  # noqa: E402
from edgekernel.processes import alive, children_of  # noqa: E402

TARGETS = ("unix", "unix-115200", "microbit", "webrepl", "mqtt")
OPS = ("cell", "cell50k", "flood", "input", "put_small", "put_big", "get", "lsrm", "interrupt", "soft_reset",
       "mip", "mount")
FAULTS = ("reset", "kill", "stall", "drop", "ws_drop", "broker", "interrupt")
#: A fault that ends the operation must be noticed within this many seconds.
NOTICE = 15.0
#: Past its limit (or the notice), an operation still running counts as a hang; we then wait this much
#: more for it to end before the board is pulled to free it.
HANG_GRACE = 5.0
WEBREPL_PASSWORD = "flt-pw1"

# Words a one-line error must contain to name each fault (any one of them).
FAULT_WORDS = {
    "reset": ("reset", "reboot", "went offline"),   # over MQTT the broker's last will is all the host sees
    "kill": ("closed", "disconnected", "gone", "unplugged", "lost", "no longer", "went away", "not respond",
             "no answer", "hung up", "cable", "offline", "reset", "dropped the connection"),
    "ws_drop": ("closed", "dropped", "connection", "disconnected", "lost", "reset"),
    "broker": ("broker",),
    "interrupt": ("interrupt",),
    "stall": ("respond", "answer", "timed out", "did not finish", "stalled", "limit"),
    "drop": ("damaged", "drops bytes", "lost bytes", "link"),
    "none": (),
}
#: Targets in use (their files in the private temp folder are theirs, not leaks).
LIVE: dict[str, "Target"] = {}


def applicable(target: str, op: str, fault: str) -> bool:
    """Whether a combination makes sense (a fault the target's link has, an op the board can do)."""
    if fault == "drop" and target not in ("unix", "unix-115200"):
        return False
    if fault == "ws_drop" and target != "webrepl":
        return False
    if fault == "broker" and target != "mqtt":
        return False
    if fault == "none":
        return True
    if target == "mqtt" and op in ("mount", "soft_reset", "input", "cell50k"):
        # By design: %mount and input() need a byte stream, the agent's soft reset is a reboot of the
        # agent, and it takes cells up to 16 KB (larger ones are refused at once: upload them as files).
        return False
    if target == "microbit" and op in ("mount", "mip", "cell50k"):
        return False   # 1.9.2: no os.mount; 16 KB of RAM cannot compile a 50 KB cell (refused before sending)
    if op == "interrupt" and fault == "interrupt":
        return False   # the op is a host interrupt already
    if op == "soft_reset" and fault == "interrupt":
        return False   # a soft reset is not interruptible code
    return True


# -- targets ---------------------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    drop: bool = False                 # the 256-byte receive buffer that drops overflow
    board: Any = None                  # BoardProcess (or AgentBoard for mqtt)
    session: Any = None
    files: BoardFiles | None = None
    flash: str | None = None
    broker: Any = None
    broker_port: int = 0
    url: str = ""
    own_flash: bool = False
    mount_dir: str | None = None
    session_log: bytearray = field(default_factory=bytearray)

    @property
    def key(self) -> str:
        return self.name + ("+rx256" if self.drop else "")

    @property
    def process(self):
        return getattr(self.board, "board", self.board)

    def start(self) -> None:
        if self.flash is None and self.name != "microbit":
            self.flash = tempfile.mkdtemp(prefix="ekfaults-flash-")
            self.own_flash = True
        opts: dict[str, Any] = {}
        if self.drop:
            opts.update(rx_buffer=256, rx_rate=5000)
        if self.name == "unix":
            self.board = start_board("unix", timeout=20, flash_dir=self.flash, **opts)
        elif self.name == "unix-115200":
            self.board = start_board("unix", baud=115200, timeout=20, flash_dir=self.flash, **opts)
        elif self.name == "microbit":
            self.board = start_board("microbit", timeout=60)
        elif self.name == "webrepl":
            self.board = start_board("unix", timeout=20, flash_dir=self.flash, webrepl=0,
                                     webrepl_password=WEBREPL_PASSWORD, webrepl_faithful=True, rx_buffer=256)
        elif self.name == "mqtt":
            from edgekernel.mqtt.agent import start_agent_board
            from edgekernel.mqtt.broker import start_mosquitto
            if self.broker is None:
                self.broker = start_mosquitto(self.broker_port)
                self.broker_port = self.broker.port
            self.url = f"mqtt://127.0.0.1:{self.broker_port}/ekf{os.getpid()}"
            self.board = start_agent_board(self.url, flash_dir=self.flash)
        self.connect()

    def connect(self) -> None:
        self.session_log = bytearray()
        if self.name == "mqtt":
            from edgekernel.mqtt.session import MqttSession
            self.session = MqttSession.open(self.url, timeout=10)
        elif self.name == "webrepl":
            self.session = BoardSession.open(self.board.webrepl, timeout=10, log=self.session_log.extend,
                                             link_options={"password": WEBREPL_PASSWORD})
        else:
            self.session = BoardSession.open(self.board.port, timeout=30, log=self.session_log.extend)
        self.files = BoardFiles.for_board(self.session)

    def restart_broker(self) -> None:
        from edgekernel.mqtt.broker import start_mosquitto
        self.broker.stop()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.broker = start_mosquitto(self.broker_port)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close_session(self) -> None:
        if self.session is not None:
            try:
                self.session.close()
            except Exception:
                pass
            self.session = None

    def replug(self) -> None:
        """After a pulled cable (or a wedged board): a board on the same flash, connected again."""
        self.close_session()
        if self.board is not None:
            try:
                self.board.kill() if hasattr(self.board, "kill") else self.board.stop()
            except Exception:
                pass
        if self.mount_dir:
            shutil.rmtree(self.mount_dir, ignore_errors=True)
        self.mount_dir = None
        if self.name == "mqtt" and self.flash:
            # The agent board boots straight into the agent (main.py): it is written again at start.
            for name in ("main.py",):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.flash, name))
        try:
            self.start()
        except Exception:
            time.sleep(2)   # a loaded machine: one more try before the campaign gives up on the target
            self.start()

    def stop(self) -> None:
        self.close_session()
        if self.board is not None:
            self.board.stop()
            self.board = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self.own_flash and self.flash:
            shutil.rmtree(self.flash, ignore_errors=True)
        if self.mount_dir:
            shutil.rmtree(self.mount_dir, ignore_errors=True)

    def pids(self) -> set[int]:
        out: set[int] = set()
        for p in (self.process, self.broker):
            pid = getattr(p, "pid", None)
            if pid and alive(pid):
                out.add(pid)
                out.update(_descendants(pid))
        return out

    def flash_read(self, name: str) -> bytes | None:
        """A file on the board's flash, read from the host side (unix boards) or through the session."""
        if self.flash is not None:
            try:
                with open(os.path.join(self.flash, name), "rb") as f:
                    return f.read()
            except FileNotFoundError:
                return None
        names = {e.name for e in self.files.ls()}
        return self.files.get(name) if name in names else None

    def flash_write(self, name: str, data: bytes) -> None:
        if self.flash is not None:
            with open(os.path.join(self.flash, name), "wb") as f:
                f.write(data)
        else:
            self.files.put(data, name)

    def temp_files(self) -> list[str]:
        if self.flash is not None:
            return [os.path.basename(p) for p in glob.glob(os.path.join(self.flash, ".*.ek-tmp"))]
        return []


def _descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        for c in children_of(todo.pop()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


# -- operations ------------------------------------------------------------------------------------

@dataclass
class Trial:
    number: int
    target: Target
    op: str
    fault: str
    rng: random.Random
    output: bytearray = field(default_factory=bytearray)
    error: str | None = None
    result: Any = None
    lines_expected: int = 0
    journal_id: str = ""
    file: str | None = None
    old: bytes | None = None
    new: bytes | None = None
    limit: float = 20.0
    started: float = 0.0
    ended: float = 0.0
    fault_at: float | None = None
    stalled: float = 0.0
    #: Set when the operation itself starts (after its setup: the old file written, say): faults land after.
    go: threading.Event = field(default_factory=threading.Event)


def _big(t: Trial) -> int:
    return {"unix": 400_000, "webrepl": 400_000, "mqtt": 100_000, "unix-115200": 40_000,
            "microbit": 3_000}[t.target.name] // (8 if t.target.drop else 1)


def _journal_line(t: Trial) -> str:
    if t.target.name == "microbit":
        # 1.9.2's flat filesystem has no append mode: count this trial's runs in a global of the user's
        # namespace, of constant size (a growing journal would eat the 10 KB heap itself).
        return "_fj=(%r,_fj[1]+1 if globals().get('_fj',('',0))[0]==%r else 1)\n" % (t.journal_id, t.journal_id)
    return "_f=open('fj.txt','a')\n_f.write(%r)\n_f.close()\n" % (t.journal_id + "\n")


def _exec(t: Trial, code: str, **kw) -> None:
    t.go.set()
    r = t.target.session.exec(code, on_output=t.output.extend, timeout=t.limit, **kw)
    _outcome(t, r)


def _outcome(t: Trial, r: Any) -> None:
    t.result = r
    if r.error is not None:
        t.error = f"{r.error.type}: {r.error.message}"
    elif getattr(r, "reset", None):
        t.error = f"the board reset ({r.reset} reset) while the cell ran"   # as the kernel and the CLI say
    elif getattr(r, "timed_out", False):
        t.error = "timed out"


def op_cell(t: Trial) -> None:
    t.lines_expected = 20
    _exec(t, _journal_line(t) + "import time\nfor i in range(20):\n print('L%d' % i)\n time.sleep(0.02)\n")


def op_cell50k(t: Trial) -> None:
    t.lines_expected = 20
    body = "".join(f"v{i} = {i}  # {'x' * 30}\n" for i in range(1200))   # ~50 KB of code
    _exec(t, _journal_line(t) + body + "for i in range(20):\n print('L%d' % i)\n")


def op_flood(t: Trial) -> None:
    n = 300 if t.target.name == "microbit" else 3000
    t.lines_expected = n
    _exec(t, _journal_line(t) + f"for i in range({n}):\n print('L%d' % i)\n")


def op_input(t: Trial) -> None:
    t.lines_expected = 2

    def answer(prompt: str) -> str:
        time.sleep(0.3)   # a person typing: the cell waits in input() meanwhile
        return "abc"
    t.go.set()
    r = t.target.session.exec(_journal_line(t) + "print('L0')\ns=input('? ')\nprint('L1', s)\n",
                              on_output=t.output.extend, on_input=answer, timeout=t.limit)
    _outcome(t, r)


def _put(t: Trial, size: int) -> None:
    t.file = "fp.bin"
    old = t.rng.randbytes(max(1, size // 3))
    t.target.flash_write(t.file, old)
    t.old, t.new = old, t.rng.randbytes(size)
    t.started = time.monotonic()
    t.go.set()
    t.target.files.put(t.new, t.file)


def op_put_small(t: Trial) -> None:
    _put(t, 300)


def op_put_big(t: Trial) -> None:
    _put(t, _big(t))


def op_get(t: Trial) -> None:
    t.file = "fg.bin"
    data = t.rng.randbytes(_big(t) // 4)
    t.target.flash_write(t.file, data)
    t.old = t.new = data
    t.started = time.monotonic()
    t.go.set()
    got = t.target.files.get(t.file)
    if got != data:
        t.error = f"PARTIAL GET: {len(got)} of {len(data)} bytes, differing"


def op_lsrm(t: Trial) -> None:
    t.file = "fr.txt"
    t.target.flash_write(t.file, b"to remove\n")
    t.old, t.new = b"to remove\n", None
    t.started = time.monotonic()
    t.go.set()
    names = [e.name for e in t.target.files.ls(long=True)]
    if t.file not in names:
        t.error = f"LS MISSED {t.file}"
        return
    t.target.files.rm(t.file)


def op_interrupt(t: Trial) -> None:
    t.lines_expected = -1   # unknown: the loop runs until interrupted
    session = t.target.session
    t.go.set()
    timer = threading.Timer(t.rng.uniform(0.05, 0.8), session.interrupt)
    timer.start()
    try:
        _exec(t, _journal_line(t) + "import time\ni=0\nwhile True:\n print('L%d' % i)\n i+=1\n time.sleep(0.01)\n")
    finally:
        timer.cancel()
    if t.error and "KeyboardInterrupt" in t.error:
        t.error = None   # the interrupt the op asked for


def op_soft_reset(t: Trial) -> None:
    t.go.set()
    t.target.session.soft_reset(timeout=t.limit)


def op_mip(t: Trial) -> None:
    from edgekernel.device.mip import install
    t.file = "lib/ekfmod.py"
    src = t.rng.randbytes(3000).hex().encode()
    mod = tempfile.mkdtemp(prefix="ekfaults-mip-")
    try:
        path = os.path.join(mod, "ekfmod.py")
        with open(path, "wb") as f:
            f.write(b"X = '" + src + b"'\n")
        if t.target.flash is not None:
            os.makedirs(os.path.join(t.target.flash, "lib"), exist_ok=True)
        old = b"X = 'old'\n"
        t.target.flash_write(t.file, old)
        t.old, t.new = old, b"X = '" + src + b"'\n"
        t.started = time.monotonic()
        t.go.set()
        install(t.target.files, [path], target="lib", mpy=False)
    finally:
        shutil.rmtree(mod, ignore_errors=True)


def op_mount(t: Trial) -> None:
    from edgekernel.device.mount import active_mount, mount_folder
    tg = t.target
    t.go.set()   # mounting is part of the op
    if tg.mount_dir is None:
        tg.mount_dir = tempfile.mkdtemp(prefix="ekfaults-mount-")
        with open(os.path.join(tg.mount_dir, "data.txt"), "w") as f:
            f.write("\n".join(f"L{i}" for i in range(20)) + "\n")
    if active_mount(tg.session) is None:
        mount_folder(tg.session, tg.mount_dir, say=lambda s: None)
    t.lines_expected = 20
    _exec(t, "import os\nos.chdir('/')\n" + _journal_line(t) + "for l in open('/remote/data.txt'):\n print(l.strip())\n")


def unmount_after(t: Trial) -> None:
    """%mount makes the mount the board's current directory: the other ops work in the flash."""
    from edgekernel.device.mount import active_mount, unmount_folder
    if t.target.session is not None and active_mount(t.target.session) is not None:
        with contextlib.suppress(Exception):
            unmount_folder(t.target.session)


OP_FUNCS: dict[str, Callable[[Trial], None]] = {
    "cell": op_cell, "cell50k": op_cell50k, "flood": op_flood, "input": op_input, "put_small": op_put_small,
    "put_big": op_put_big, "get": op_get, "lsrm": op_lsrm, "interrupt": op_interrupt,
    "soft_reset": op_soft_reset, "mip": op_mip, "mount": op_mount}

# Each operation's own stated limit (seconds), as the operation promises it to its caller.
OP_LIMITS = {"cell": 20, "cell50k": 40, "flood": 30, "input": 20, "put_small": 30, "put_big": 90, "get": 60,
             "lsrm": 30, "interrupt": 20, "soft_reset": 20, "mip": 60, "mount": 30}
# Rough op durations per target (seconds), so the fault lands while the op runs.
_DUR: dict[tuple[str, str], float] = {}


def _fault_delay(t: Trial) -> float:
    est = _DUR.get((t.target.key, t.op), 1.0)
    return t.rng.uniform(0.0, max(0.05, est * 1.1))


def inject(t: Trial, done: threading.Event) -> None:
    tg = t.target
    if t.fault in ("drop", "none"):
        return   # the board runs with the dropping buffer for the whole trial
    while not t.go.wait(0.05):
        if done.is_set():
            return   # the op failed in its setup
    if done.wait(_fault_delay(t)):
        return   # the op ended first: nothing to inject (a fault that missed)
    t.fault_at = time.monotonic()
    if t.fault == "reset":
        tg.process.hard_reset()
    elif t.fault == "kill":
        tg.process.kill()
    elif t.fault == "stall":
        pid = tg.process.pid
        pause = t.rng.uniform(0.2, 2.0)
        # The board process relays the link; the board itself (MicroPython, QEMU) keeps running, its
        # output blocking as a UART's does when nobody reads: a USB-serial adapter that stalls.
        os.kill(pid, signal.SIGSTOP)
        time.sleep(pause)
        os.kill(pid, signal.SIGCONT)
        t.stalled = pause
    elif t.fault == "ws_drop":
        import socket
        ws = getattr(tg.session.link, "_ws", None)
        if ws is not None and ws.sock is not None:
            try:
                ws.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    elif t.fault == "broker":
        tg.restart_broker()
    elif t.fault == "interrupt":
        tg.session.interrupt()


# -- the checks ------------------------------------------------------------------------------------

@dataclass
class Counts:
    trials: int = 0
    hangs: int = 0
    partial: int = 0
    duplicated: int = 0
    lost: int = 0
    leaks: int = 0
    unclear: int = 0
    next_failed: int = 0
    missed: int = 0
    stale: int = 0    # a put's temporary file left on the flash by a pulled cable   # the op ended before the fault came (the fault was then injected between ops)

    def add(self, other: "Counts") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


def _lines(output: bytes) -> list[int]:
    """Numbers of the complete output lines "L<n>" (a last line cut by the fault is not counted)."""
    return [int(m) for m in re.findall(rb"(?m)^L(\d+)\b[^\n]*\n", output)]


def run_trial(t: Trial, log: Callable[[str], None]) -> Counts:
    c = Counts(trials=1)
    tg = t.target
    t.limit = OP_LIMITS[t.op]
    # Longer than 10 characters: MicroPython interns shorter string literals for good (a leak per trial).
    t.journal_id = f"journal-{t.number}-{t.rng.randrange(10**6)}"
    threads_before = set(threading.enumerate())
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    done = threading.Event()
    box: dict[str, BaseException] = {}

    def body() -> None:
        try:
            OP_FUNCS[t.op](t)
        except BaseException as exc:   # noqa: BLE001 - the trial records whatever the op raised
            box["exc"] = exc
        finally:
            t.ended = time.monotonic()
            done.set()

    t.started = time.monotonic()
    worker = threading.Thread(target=body, daemon=True, name="ekfaults-op")
    injector = threading.Thread(target=inject, args=(t, done), daemon=True, name="ekfaults-fault")
    worker.start()
    injector.start()
    injector.join(30)
    # The op's own limit; a fault that ends the op (reset, pulled cable, dropped connection) must be
    # noticed within NOTICE seconds, never waited out to a size-based limit.
    ends_op = t.fault in ("reset", "kill", "ws_drop")
    while not done.is_set():
        now = time.monotonic()
        limit_at = t.started + t.limit + t.stalled
        if t.fault_at is not None and ends_op:
            limit_at = min(limit_at, t.fault_at + NOTICE)
        if now > limit_at + HANG_GRACE:
            break
        done.wait(0.1)
    hung = not done.is_set()
    log_seen = bytes(tg.session_log)
    if hung:
        c.hangs += 1
        log(f"  HANG {tg.key} {t.op} {t.fault}: still running {time.monotonic() - (t.fault_at or t.started):.1f} s "
            f"after the {'fault' if t.fault_at else 'start'}")
        if not done.wait(120):
            tg.process.kill()   # pull the cable to free the op
            done.wait(30)
    else:
        took = t.ended - (t.fault_at if (t.fault_at and ends_op) else t.started)
        if t.fault_at is None or t.fault in ("drop", "none"):
            _DUR[(tg.key, t.op)] = t.ended - t.started
    if t.fault_at is None and t.fault not in ("drop", "none"):
        c.missed += 1
    exc = box.get("exc")
    if exc is not None:
        t.error = str(exc) or type(exc).__name__

    # A one-line error that names the fault.
    if t.error is not None:
        if t.error.startswith(("PARTIAL GET", "LS MISSED")):
            c.partial += 1
            log(f"  PARTIAL {tg.key} {t.op} {t.fault}: {t.error}")
        elif "\n" in t.error.strip() or (t.fault_at is not None or t.fault == "drop") and t.fault != "stall" and not any(
                w in t.error.lower() for w in FAULT_WORDS[t.fault]):
            c.unclear += 1
            log(f"  UNCLEAR {tg.key} {t.op} {t.fault}: {t.error[:300]!r}")
        elif t.fault_at is None and t.fault != "drop":
            c.unclear += 1   # no fault came, yet the op failed
            log(f"  FAILED-WITHOUT-FAULT {tg.key} {t.op}: {t.error[:300]!r}")
        if isinstance(exc, BaseException) and not isinstance(exc, Exception):
            log(f"  ESCAPED {type(exc).__name__}")
    if exc is not None and type(exc).__name__ in ("AttributeError", "TypeError", "KeyError", "IndexError",
                                                 "AssertionError", "ValueError", "UnboundLocalError"):
        c.unclear += 1
        log("  BUG " + "".join(traceback.format_exception(exc)).replace("\n", "\n    ")[:2000])

    # Next operation: on the same session, reconnecting by itself where the link allows; after a pulled
    # cable, on the board plugged in again (a new session, as a user would connect).
    if t.fault == "kill" and t.fault_at is not None or hung:
        try:
            tg.replug()
        except Exception as e:
            log(f"  REPLUG FAILED {tg.key}: {e}")
            raise
    elif t.fault == "broker" and t.fault_at is not None:
        pass
    ok = False
    why = ""
    # The agent reconnects to a restarted broker (or boots after a reset) by itself, with its backoff.
    # A reset pressed as the op ended may reboot the board while the next op starts: that op then says
    # so (as it should), and the one after it must work.
    late_reset_seen = False
    attempt = 0
    while attempt < (8 if tg.name == "mqtt" else 1):
        attempt += 1
        try:
            r = tg.session.exec("print(6*7)", timeout=20)
            ok = r.error is None and b"42" in r.output
            why = "" if ok else f"{r.error} {r.output[-80:]!r} (reset: {r.reset})"
            if not ok and r.reset is not None and t.fault == "reset" and not late_reset_seen:
                late_reset_seen = True
                attempt -= 1
                continue
        except Exception as e:   # noqa: BLE001
            why = str(e)
        if ok:
            break
        time.sleep(4)
    if not ok:
        c.next_failed += 1
        log(f"  NEXT-OP FAILED {tg.key} after {t.op} {t.fault}: {why[:300]}")
        tg.replug()

    # Files: the old content or the new, never a third (no file at all after a failed put only where the
    # board has no os.rename and says so; rm: present or gone). Not checked when the op's own setup
    # (writing the old content) failed: the op never ran, so there is no old content to compare.
    if t.file is not None and t.op != "get" and t.old is not None:
        try:
            now = tg.flash_read(t.file)
        except Exception as e:   # noqa: BLE001
            now = b"<unreadable: " + str(e).encode() + b">"
        allowed = [t.old, t.new]
        if tg.name == "microbit" and t.error is not None:
            allowed.append(None)
        if t.op == "mip" and t.error is None:
            allowed = [t.new]
        if now not in allowed:
            c.partial += 1
            log(f"  PARTIAL FILE {tg.key} {t.op} {t.fault}: {t.file} holds {len(now) if now else now} bytes "
                f"(old {len(t.old) if t.old else t.old}, new {len(t.new) if t.new else t.new}); error {t.error!r}")
        elif t.error is None and t.op.startswith("put") and now != t.new:
            c.partial += 1
            log(f"  PUT SAID OK BUT {tg.key} {t.fault}: file is not the new content")

    # Cells: ran at most once; output lines in order with none missing before the last one received.
    if t.journal_id:
        try:
            if tg.name == "microbit":
                j = tg.session.eval("globals().get('_fj',('',0))", timeout=10)
                runs = j[1] if j[0] == t.journal_id else 0
            else:
                j = (tg.flash_read("fj.txt") or b"").decode(errors="replace")
                runs = j.split("\n").count(t.journal_id)
        except Exception as e:   # noqa: BLE001
            runs, j = 0, str(e)
        if runs > 1:
            c.duplicated += 1
            log(f"  DUPLICATED {tg.key} {t.op} {t.fault}: the cell ran {runs} times")
        if t.op in ("cell", "cell50k", "flood", "input", "interrupt", "mount"):
            seen = _lines(bytes(t.output))
            if len(seen) > 1 and seen[-1] != len(seen) - 1 and str(len(seen) - 1).startswith(str(seen[-1])):
                # A line the fault cut ("L16" of L166) that the reboot text's own newline ended: what the
                # board printed, not output lost.
                seen.pop()
            if seen != list(range(len(seen))):
                c.lost += 1
                gap = next((i for i, v in enumerate(seen) if v != i), None)
                log(f"  LOST OUTPUT {tg.key} {t.op} {t.fault}: lines {seen[:3]}..{seen[-3:]} (first gap at {gap})")
            elif t.error is None and t.lines_expected > 0 and t.op != "input" and len(seen) != t.lines_expected:
                c.lost += 1
                log(f"  LOST OUTPUT {tg.key} {t.op} {t.fault}: ok but {len(seen)} of {t.lines_expected} lines")
            if log_seen and seen and tg.name != "mqtt":
                # Everything shown was in the session log too (the journal of the board's bytes).
                if not re.search(rb"(?<!\d)L%d\b" % seen[-1], log_seen):
                    c.lost += 1
                    log(f"  LOST FROM SESSION LOG {tg.key} {t.op} {t.fault}: L{seen[-1]}")
    if t.op == "mount":
        unmount_after(t)
    # Leaks: threads, host temp files, temp files on the board's flash.
    time.sleep(0)
    extra = [th for th in threading.enumerate() if th not in threads_before and th.is_alive()
             and th.name not in ("ekfaults-fault",)]
    if tg.name == "mqtt":
        # The live session's own client thread (a new one after it reconnected) is not a leak; more are.
        paho = [th for th in threading.enumerate() if th.name.startswith("paho-mqtt-client-") and th.is_alive()]
        if len(paho) <= 1:
            extra = [th for th in extra if th not in paho]
    deadline = time.monotonic() + 3
    while extra and time.monotonic() < deadline:
        time.sleep(0.05)
        extra = [th for th in extra if th.is_alive()]
    # A restarted broker's folder is the broker's (the campaign's end checks that none is left).
    new_tmp = {n for n in set(os.listdir(tempfile.gettempdir())) - tmp_before
               - set().union(*(_board_files(x) for x in LIVE.values())) if not n.startswith("edgekernel-mosquitto-")}
    # After a pulled cable nobody can remove a put's temporary file: the next put of that name replaces
    # it. Counted apart (stale), not as a leak of a session that could have cleaned up.
    leftovers = tg.temp_files()
    announced = t.error is not None and "may be left (the next put of this file replaces it)" in t.error
    if leftovers and (t.fault == "kill" or announced):
        c.stale += 1
        log(f"  STALE TEMP FILE {tg.key} {t.op} {t.fault}: {leftovers} ({'announced' if announced else 'pulled cable'})")
        for name in leftovers:
            os.unlink(os.path.join(tg.flash, name))
        leftovers = []
    if extra or leftovers or new_tmp:
        c.leaks += 1
        log(f"  LEAK {tg.key} {t.op} {t.fault}: threads {[th.name for th in extra]}, board temp files {leftovers}, "
            f"host temp files {sorted(new_tmp)}")
        for name in leftovers:
            os.unlink(os.path.join(tg.flash, name))
    return c


def _board_files(tg: Target) -> set[str]:
    """Names in the temp folder that belong to a live target (its board's log and flash, its mount)."""
    p = tg.process
    paths = [getattr(p, "_log_path", "") or "", *(getattr(p, "_tmp_dirs", []) or []), tg.flash or "", tg.mount_dir or ""]
    return {os.path.basename(x) for x in paths if x}


# -- the campaign ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--trials", type=int, default=None, help="stop after this many trials")
    ap.add_argument("--minutes", type=float, default=None, help="stop after this long (default: 5 without --trials)")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--quiet", action="store_true", help="no line per trial")
    args = ap.parse_args(argv)
    targets = [s for s in args.targets.split(",") if s]
    ops = [s for s in args.ops.split(",") if s]
    faults = [s for s in args.faults.split(",") if s]
    for kind, given, known in (("target", targets, TARGETS), ("op", ops, OPS), ("fault", faults, FAULTS)):
        bad = [g for g in given if g not in known]
        if bad:
            ap.error(f"unknown {kind} {', '.join(bad)} (choose from {', '.join(known)})")
    combos = [(tg, op, f) for tg in targets for op in ops for f in faults if applicable(tg, op, f)]
    if not combos:
        ap.error("no combination of these targets, ops and faults applies")
    rng = random.Random(args.seed)
    minutes = args.minutes if args.minutes is not None else (None if args.trials else 5.0)
    end_at = time.monotonic() + minutes * 60 if minutes else float("inf")
    max_trials = args.trials if args.trials is not None else 10**9

    def log(line: str) -> None:
        print(line, flush=True)

    # A temp folder of our own: whatever is left in it that no live board owns is a leak of ours
    # (other programs' temp files never count).
    private_tmp = tempfile.mkdtemp(prefix="ekfaults-tmp-")
    os.environ["TMPDIR"] = private_tmp
    tempfile.tempdir = private_tmp
    live = LIVE
    per: dict[tuple[str, str, str], Counts] = defaultdict(Counts)
    total = Counts()
    pids_before = _descendants(os.getpid())
    order = list(combos)
    n = 0
    try:
        while n < max_trials and time.monotonic() < end_at:
            if n % len(order) == 0:
                rng.shuffle(order)
            tname, op, fault = order[n % len(order)]
            key = tname + ("+rx256" if fault == "drop" else "")
            if key not in live:
                tg = Target(tname, drop=fault == "drop")
                tg.start()
                live[key] = tg
            tg = live[key]
            # First learn how long the op takes here (a trial without a fault), so faults land while it runs.
            for f in (["none"] if (key, op) not in _DUR else []) + [fault]:
                t = Trial(n, tg, op, f, random.Random(rng.random()))
                c = run_trial(t, log)
                per[(key, op, f)].add(c)
                total.add(c)
                if not args.quiet:
                    log(f"trial {n}: {key} {op} {f}: "
                        f"{'ok' if t.error is None else t.error[:140]!r} ({t.ended - t.started:.2f} s"
                        f"{', fault missed' if c.missed else ''})")
                n += 1
    finally:
        for tg in live.values():
            try:
                tg.stop()
            except Exception as e:   # noqa: BLE001
                log(f"stopping {tg.key}: {e}")
    # Processes left once every board and broker is stopped.
    time.sleep(0.5)
    left = _descendants(os.getpid()) - pids_before
    left = {p for p in left if alive(p)}
    if left:
        total.leaks += 1
        log(f"LEAK: processes left after the campaign: {sorted(left)}")
    if os.listdir(private_tmp):
        total.leaks += 1
        log(f"LEAK: temp files left after the campaign: {sorted(os.listdir(private_tmp))}")
    shutil.rmtree(private_tmp, ignore_errors=True)
    log("")
    log(f"{'target':<14} {'op':<11} {'fault':<10} {'trials':>6} {'missed':>6} {'hangs':>5} {'partial':>7} "
        f"{'dup':>4} {'lost':>4} {'leaks':>5} {'unclear':>7} {'next':>4}")
    for (key, op, fault), c in sorted(per.items()):
        log(f"{key:<14} {op:<11} {fault:<10} {c.trials:>6} {c.missed:>6} {c.hangs:>5} {c.partial:>7} "
            f"{c.duplicated:>4} {c.lost:>4} {c.leaks:>5} {c.unclear:>7} {c.next_failed:>4}")
    log(f"checks: {total.unclear} unclear errors, {total.next_failed} failed next operations, "
        f"{total.missed} faults that came after the operation ended, "
        f"{total.stale} temporary files left on the flash by a pulled cable or a board that did not come back "
        "in time (the put says so; the next put replaces them)")
    log(f"faults: {total.trials} trials, {total.hangs} hangs, {total.partial} partial files, "
        f"{total.duplicated} duplicated cells, {total.lost} lost output, {total.leaks} leaks")
    return 0 if not (total.hangs or total.partial or total.duplicated or total.lost or total.leaks) else 1


if __name__ == "__main__":
    sys.exit(main())
