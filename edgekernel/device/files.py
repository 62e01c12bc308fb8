"""Files on the board: fast, verified transfers over any connected Board.

The programs this runs on the board are in board_programs.py.

No Jupyter here. Every operation is one or a few programs run through
``BoardSession.exec``; what the board can do is probed once per session.

Transfers, fastest first:

* **stream** (board has ``sys.stdin.buffer``, ``micropython.kbd_intr`` and
  ``sys.stdout.buffer``): a small receiver reads raw bytes from stdin with
  ``kbd_intr(-1)`` (so a 0x03 in the data is data) and grants credit one
  window at a time, like raw-paste: the host never has more than two windows
  in flight, which fits a 256-byte UART buffer. Blocks that compress are sent
  deflated when the board has ``deflate``. Reading back, the board writes the
  file's bytes to ``sys.stdout.buffer`` with only 0x04, 0x1b and 0x1e escaped
  (the session's framing bytes).
* **literal** (anything else, e.g. the micro:bit's MicroPython 1.9.2): a few
  hundred bytes per program as base64 or a bytes literal, whichever is shorter.

On a WebREPL link (ws://) there is a second way: WebREPL's own binary file protocol
(``webrepl_files``). Which of the two is faster depends on the board and the network (its
websocket round trip can cost ~40 ms per chunk), so it is measured once per session and
direction: the session's first large transfer goes by REPL and is timed, a round trip and a
1 KB probe time the file protocol, and later transfers take the path predicted to be faster for
their size; ``last_path`` says which and why.

Every transfer ends with the board's length and hash of what is in its file
(sha256 where ``hashlib`` exists, else Adler-32 computed in Python on the
board) compared with the host's. A failure raises ``FileTransferError`` whose
one-line message says what is left on the board.
"""
from __future__ import annotations

import ast
import hashlib
import os
import re
import time
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import board_programs as programs
from .errors import BoardBusy, DeviceError, LinkError
from .session import BoardSession
from .webrepl_files import WebReplFileError, WebReplFiles, supports_file_protocol

Progress = Callable[[int, int], None]
"""progress(done_bytes, total_bytes), called as a transfer advances."""


class FileTransferError(DeviceError):
    """A file operation failed; the message says what is left on the board."""


class _StrayCtrlC(FileTransferError):
    """The stream receiver met a 0x03 while the host had not interrupted: the put is retried once."""


@dataclass
class Caps:
    stat: bool = False
    ilistdir: bool = False
    statvfs: bool = False
    listdir: bool = False
    size: bool = False
    sha256: bool = False
    base64: bool = False
    deflate: bool = False
    stdout: bool = False
    stdin: bool = False
    kbd_intr: bool = False
    bytesio: bool = False
    rename: bool = False
    rmdir: bool = False
    mkdir: bool = False
    free_ram: int = 0

    @property
    def stream(self) -> bool:
        return self.stdin and self.stdout and self.kbd_intr


@dataclass(frozen=True)
class Entry:
    name: str
    is_dir: bool
    size: int | None

    def __str__(self) -> str:
        return self.name + ("/" if self.is_dir else "")


_ESCAPES = {b"E": b"\x1b", b"R": b"\x1e", b"D": b"\x04"}
_ESC_RE = re.compile(rb"\x1b([ERD])")

_caps_cache: "weakref.WeakKeyDictionary[BoardSession, Caps]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class TransferPath:
    """Which way a transfer went and why (shown by %sendtofile/%fetchfile and the CLI)."""

    name: str     # "repl" (raw-REPL transfer) or "webrepl" (WebREPL's binary file protocol)
    reason: str

    def __str__(self) -> str:
        label = "WebREPL file protocol" if self.name == "webrepl" else "REPL transfer"
        return f"{label} ({self.reason})" if self.reason else label


#: Cost models per session and direction: {"put": {"repl": (fixed s, s per byte), "webrepl": (...)}, ...}.
_path_costs: "weakref.WeakKeyDictionary[BoardSession, dict[str, dict[str, tuple[float, float]]]]" = \
    weakref.WeakKeyDictionary()


def _predict(model: dict[str, tuple[float, float]], size: int) -> dict[str, float]:
    return {path: fixed + size * per_byte for path, (fixed, per_byte) in model.items()}
PROBE_SIZE = 1024     # random bytes; small: on the WebREPL path a probe costs a few 20 ms chunk turns
PROBE_MIN = 8192      # the first transfer at least this large each way is timed (by REPL) and compared
PROBE_NAME = ".ek_probe"
#: After a failed put, how long a board that comes back by itself (an MQTT agent) has to take the clean-up.
CLEANUP_WAIT = 10.0


def _indent(code: str) -> str:
    return "".join(" " + line + "\n" for line in code.splitlines())


def _adler(data: bytes) -> int:
    return zlib.adler32(data) & 0xFFFFFFFF


class BoardFiles:
    """File operations on the board behind `session`.

    >>> files = BoardFiles(session)
    >>> files.put(b"print('hi')\\n", "main.py")
    >>> files.get("main.py")
    b"print('hi')\\n"
    """

    @classmethod
    def for_board(cls, board: Any) -> "BoardFiles":
        """Files of any Board: streamed transfers where a byte stream reaches it, literal ones elsewhere (MQTT)."""
        return cls(board, mode="auto" if board.capabilities.byte_stream else "literal")

    def __init__(self, session: BoardSession, *, mode: str = "auto") -> None:
        """mode: 'auto' (fastest the board allows), 'stream' or 'literal' (force one REPL way),
        'webrepl' (force WebREPL's file protocol, on ws:// links)."""
        self.session = session
        self.mode = mode
        self._caps: Caps | None = _caps_cache.get(session)
        #: How the last put/get went (TransferPath), for the user.
        self.last_path: TransferPath | None = None

    # -- capabilities ----------------------------------------------------------

    @property
    def caps(self) -> Caps:
        if self._caps is None:
            out = self._run(programs.PROBE, "probe the board")
            found = _last_value(out, "{")
            self._caps = Caps(**{k: (bool(v) if k != "free_ram" else int(v)) for k, v in found.items()})
            _caps_cache[self.session] = self._caps
        return self._caps

    def _use_stream(self) -> bool:
        if self.mode == "literal":
            return False
        if self.mode == "stream":
            return True
        return self.caps.stream

    @property
    def _hash_code(self) -> str:
        return _indent(programs.HASH_SHA if self.caps.sha256 else programs.HASH_ADLER)

    def host_digest(self, data: bytes) -> bytes | int:
        """The digest the board computes for `data` (sha256, or Adler-32 without hashlib)."""
        return hashlib.sha256(data).digest() if self.caps.sha256 else _adler(data)

    # -- running -------------------------------------------------------------------

    def _run(self, code: str, what: str, *, timeout: float = 30.0, on_output=None) -> str:
        # Every program of ours runs in a namespace of its own: the user's globals stay as they are.
        result = self.session.exec(code, on_output=on_output, timeout=timeout, scratch=True)
        if result.reset is not None and result.error is None:
            # The board rebooted under the program (or before it started): its answer is not there.
            raise FileTransferError(f"{what} failed: the board reset ({result.reset} reset) while it ran; "
                                    "run it again")
        if result.error is not None:
            raise FileTransferError(f"{what} failed on the board: {_one_line(result.error)}")
        if result.timed_out:
            raise FileTransferError(f"{what}: the board did not finish in {timeout:.0f} s")
        return result.output.decode(errors="replace")

    # -- simple operations ---------------------------------------------------------

    def ls(self, path: str = ".", long: bool = False) -> list[Entry]:
        """Entries of a directory on the board, sorted by name (sizes only with long=True)."""
        c = self.caps
        if c.ilistdir:
            code = ("import os\nr=[]\nfor e in os.ilistdir(%r):\n"
                    " s=e[3] if len(e)>3 else -1\n"
                    " if %d and s<0 and e[1]&0x4000==0:\n"
                    "  s=os.stat((%r+'/'+e[0]) if %r else e[0])[6]\n"
                    " r.append((e[0],e[1]&0x4000!=0,s))\n"
                    "print(repr(r))\n") % (path, long, path.rstrip("/"), path not in ("", "."))
        elif c.listdir:
            if path not in ("", ".", "/"):
                raise FileTransferError(f"ls {path}: this board has a flat filesystem (no directories)")
            size = "os.size(n)" if c.size else "-1"
            code = f"import os\nprint(repr([(n,False,{size} if {long:d} else -1) for n in os.listdir()]))\n"
        else:
            raise FileTransferError("ls: this board's os module cannot list files")
        out = self._run(code, f"ls {path}")
        entries = [Entry(n, bool(d), (s if s >= 0 and not d else None) if long else None)
                   for n, d, s in _last_value(out, "[")]
        return sorted(entries, key=lambda e: e.name)

    def cat(self, path: str) -> bytes:
        return self.get(path)

    def rm(self, path: str, recursive: bool = False) -> None:
        c = self.caps
        if recursive and c.ilistdir:
            code = ("import os\ndef _ekrm(p):\n"
                    " try:\n  os.remove(p);return\n except OSError:\n  pass\n"
                    " try:\n  l=[e[0] for e in os.ilistdir(p)]\n except OSError:\n  os.remove(p)\n"
                    " for n in l:\n  _ekrm(p+'/'+n)\n os.rmdir(p)\n"
                    "_ekrm(%r)\n") % path.rstrip("/")
        elif c.stat and c.rmdir:
            code = ("import os\ntry:\n os.remove(%r)\nexcept OSError:\n"
                    " if os.stat(%r)[0]&0x4000:\n  os.rmdir(%r)\n else:\n  raise\n") % (path, path, path)
        else:
            code = f"import os\nos.remove({path!r})\n"
        self._run(code, f"rm {path}")

    def mkdir(self, path: str, exist_ok: bool = False) -> None:
        if not self.caps.mkdir:
            raise FileTransferError(f"mkdir {path}: this board has a flat filesystem (no directories)")
        if exist_ok:
            code = (f"import os\ntry:\n os.mkdir({path!r})\nexcept OSError as e:\n"
                    f" if e.args[0]!=17:\n  raise\n")
        else:
            code = f"import os\nos.mkdir({path!r})\n"
        self._run(code, f"mkdir {path}")

    def df(self, path: str = ".") -> tuple[int, int]:
        """(free bytes, total bytes) of the filesystem holding `path`."""
        if not self.caps.statvfs:
            raise FileTransferError("df: this board has no os.statvfs, so its free space is unknown")
        out = self._run(f"import os\ns=os.statvfs({path!r})\nprint(repr((s[0]*s[4],s[1]*s[2])))\n", "df")
        free, total = _last_value(out, "(")
        return free, total

    def meminfo(self) -> int:
        """Free heap in bytes after a garbage collection."""
        out = self._run("import gc\ngc.collect()\nprint(gc.mem_free())\n", "meminfo")
        return int(out.split()[-1])

    def hash(self, path: str) -> tuple[int, bytes | int] | None:
        """(size, digest) of a file on the board, or None if it does not exist."""
        out = self._run(
            "def _ekh(p):\n" + self._hash_code +
            " try:\n  f=open(p,'rb')\n except OSError:\n  print('=None');return\n"
            " h=H();t=0\n while 1:\n  c=f.read(256)\n  if not c:\n   break\n  h.update(c);t+=len(c)\n"
            " f.close();print('='+repr((t,h.digest())))\n"
            f"_ekh({path!r})\n", f"hash {path}", timeout=120)
        return _after_eq(out)

    # -- put -----------------------------------------------------------------------

    def put(self, data: bytes | str | os.PathLike, dest: str, *, append: bool = False,
            progress: Progress | None = None) -> int:
        """Write bytes (or a local file's contents, given its path) to `dest` on the board.

        Returns the number of bytes written. Verified: the board's length and hash
        of what landed in the file must match, or FileTransferError is raised.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            with open(data, "rb") as f:
                data = f.read()
        data = bytes(data)
        self.last_path = self._choose_path("put", len(data), append=append)
        # Atomic: the data goes to a temporary file next to `dest`, which is renamed over `dest`
        # only once verified, so a reset, a lost link, a full flash or Ctrl-C leaves the old file.
        # Boards without os.rename (the micro:bit's flat filesystem) write `dest` in place.
        temp = temp_name(dest) if not append and self.caps.rename else None
        target = temp or dest
        started = time.perf_counter()
        try:
            try:
                s0, n, digest = self._put_via(self.last_path.name, data, target, append, progress, label=dest)
            except _StrayCtrlC:
                s0, n, digest = self._put_via(self.last_path.name, data, target, append, progress, label=dest)
        except FileTransferError as exc:
            if temp is None:
                if append:
                    raise
                raise FileTransferError(f"{exc} (this board has no os.rename, so a put writes the file in "
                                        "place: put it again)") from None
            raise FileTransferError(f"{exc}; {self._unchanged(dest, temp)}") from None
        except LinkError as exc:
            # A WebREPL board drops the connection when it resets (and a network can drop it): the link
            # reconnects for the clean-up, so the temporary file does not stay behind.
            link = getattr(self.session, "link", None)
            if temp is None or link is None or not link.can_reopen:
                raise
            raise FileTransferError(f"put {dest} failed: {exc} (a reset or the network dropped the connection); "
                                    f"{self._unchanged(dest, temp)}") from None
        except BoardBusy:
            raise   # refused before anything was written
        except DeviceError as exc:
            # The board stopped answering mid-put (an MQTT agent that went offline, a board that hung):
            # its temporary file is removed where the board comes back, and the message says which.
            if temp is None:
                raise
            raise FileTransferError(f"put {dest} failed: {exc}; {self._unchanged(dest, temp)}") from None
        seconds = time.perf_counter() - started
        if n != len(data) or digest != self.host_digest(data):
            what = (f"{n:,} bytes arrived of {len(data):,}" if n != len(data)
                    else "the board's hash of the file differs from the data sent")
            kept = self._unchanged(dest, temp) if temp else self._remove_after_failure(dest, append, s0)
            raise FileTransferError(f"put {dest}: verification failed ({what}); {kept}")
        if temp is not None:
            self._replace(temp, dest)
        self._learn("put", len(data), seconds)
        return n

    def _replace(self, temp: str, dest: str) -> None:
        # os.rename replaces an existing file on littlefs and on the unix port (POSIX rename);
        # MicroPython's FAT driver removes the old file and renames in one call, so there a reset
        # inside that call can lose `dest` (the verified data is then in `temp`). A VFS whose
        # rename refuses an existing name gets remove-then-rename here, with the same window.
        code = (f"import os\ntry:\n os.rename({temp!r},{dest!r})\nexcept OSError:\n"
                f" os.remove({dest!r})\n os.rename({temp!r},{dest!r})\n")
        try:
            self._run(code, f"put {dest}: replacing the old file")
        except FileTransferError as exc:
            raise FileTransferError(f"{exc}; {self._unchanged(dest, temp)}") from None

    def _unchanged(self, dest: str, temp: str) -> str:
        """After a failed put to `temp`: remove it if the board answers, and say what is left.

        A board that comes back by itself without a new link (an MQTT agent after a broker restart
        or a reset) gets CLEANUP_WAIT seconds to do so; a link that reopens waits in the session."""
        caps = self.session.capabilities
        patient = caps.reconnects and not caps.byte_stream
        deadline = time.monotonic() + (CLEANUP_WAIT if patient else 0.0)
        while True:
            try:
                self._run(f"import os\ntry:\n os.remove({temp!r})\nexcept OSError:\n pass\n", f"rm {temp}")
                return f"{dest} on the board is unchanged"
            except (DeviceError, LinkError):
                if time.monotonic() >= deadline:
                    return (f"{dest} on the board is unchanged; a temporary {temp} may be left "
                            "(the next put of this file replaces it)")
                time.sleep(0.5)

    def _put_via(self, path: str, data: bytes, dest: str, append: bool,
                 progress: Progress | None, label: str | None = None) -> tuple[int, int, bytes | int]:
        label = label or dest
        if path == "webrepl":
            try:
                WebReplFiles(self.session).put(data, dest, progress)
            except WebReplFileError as exc:
                raise FileTransferError(str(exc).replace(dest, label)) from None
            found = self.hash(dest)
            if found is None:
                raise FileTransferError(f"put {label}: the board has no such file after the transfer")
            return (0, *found)
        if self._use_stream():
            return self._put_stream(data, dest, append, progress, label)
        return self._put_literal(data, dest, append, progress, label)

    # -- choosing between the REPL and WebREPL's file protocol -----------------------------------

    def _choose_path(self, direction: str, size: int, *, append: bool = False) -> TransferPath:
        if not supports_file_protocol(self.session) or self.mode in ("stream", "literal"):
            return TransferPath("repl", "")
        if append:
            return TransferPath("repl", "WebREPL's file protocol cannot append")
        if self.mode == "webrepl":
            return TransferPath("webrepl", "asked for")
        models = _path_costs.setdefault(self.session, {})
        if direction not in models:
            # This transfer goes by REPL and is timed; _learn() then probes WebREPL's protocol.
            return TransferPath("repl", "small file; paths not measured yet" if size < PROBE_MIN else "measuring")
        predicted = _predict(models[direction], size)
        best = min(predicted, key=lambda k: predicted[k])
        return TransferPath(best, "measured; predicted for {:,} bytes: REPL {:.3f} s, WebREPL file protocol "
                                  "{:.3f} s".format(size, predicted["repl"], predicted["webrepl"]))

    def _learn(self, direction: str, size: int, seconds: float) -> None:
        """After a large first transfer by REPL: model its cost from its own time, model WebREPL's
        protocol from a round trip (version request) and a small probe file, and say which path
        later transfers take."""
        path = self.last_path
        if path is None or path.reason != "measuring" or size < PROBE_MIN:
            return
        probe = os.urandom(PROBE_SIZE)
        webrepl = (0.0, float("inf"))   # a failed probe: the file protocol is not used
        try:
            wr = WebReplFiles(self.session)
            start = time.perf_counter()
            wr.version()
            round_trip = time.perf_counter() - start
            if direction == "get":
                self._put_via("repl", probe, PROBE_NAME, False, None)
            start = time.perf_counter()
            if direction == "put":
                wr.put(probe, PROBE_NAME)
            else:
                wr.get(PROBE_NAME)
            transfer = time.perf_counter() - start
            start = time.perf_counter()
            self.hash(PROBE_NAME)   # the verification every transfer ends with
            verify = time.perf_counter() - start
            webrepl = (round_trip + verify, max(0.0, transfer - round_trip) / PROBE_SIZE)
        except (DeviceError, LinkError):
            pass   # the user's transfer is done and verified; the probe only informs the next one
        finally:
            link = getattr(self.session, "link", None)
            if not getattr(link, "dropped", False):
                # (A link that is gone would wait out another reconnect here: the next operation says it.)
                try:
                    self._run(f"import os\ntry:\n os.remove({PROBE_NAME!r})\nexcept OSError:\n pass\n", "rm probe")
                except (DeviceError, LinkError):
                    pass
        # The REPL path's fixed costs are in its own time: scaled with size (a little pessimistic).
        model = {"repl": (0.0, seconds / size), "webrepl": webrepl}
        _path_costs.setdefault(self.session, {})[direction] = model
        predicted = _predict(model, size)
        best = min(predicted, key=lambda k: predicted[k])
        self.last_path = TransferPath("repl", "measured {:,} bytes: REPL {:.3f} s (this transfer), WebREPL file "
                                      "protocol {:.3f} s (from a probe); next time: {}".format(
                                          size, predicted["repl"], predicted["webrepl"],
                                          "REPL" if best == "repl" else "WebREPL file protocol"))

    def _remove_after_failure(self, dest: str, append: bool, s0: int) -> str:
        if append:
            return f"the file on the board is kept and is damaged after byte {s0:,}"
        try:
            self._run(f"import os\ntry:\n os.remove({dest!r})\nexcept OSError:\n pass\n", f"rm {dest}")
        except DeviceError:
            pass
        return self._what_is_left(dest, "damaged")

    def _what_is_left(self, dest: str, kind: str) -> str:
        """Say, from the board's own answer, whether `dest` still exists."""
        try:
            out = self._run(f"try:\n f=open({dest!r},'rb');f.close();print('=1')\nexcept OSError:\n print('=0')\n",
                            f"check {dest}")
            exists = bool(_after_eq(out))
        except DeviceError:
            return f"the {kind} file may still be on the board: check with ls"
        return f"the {kind} file is still on the board: remove it" if exists else f"the {kind} file was removed from the board"

    def _stream_params(self) -> tuple[int, int, int]:
        """(window, board buffer size, deflate window bits or 0)."""
        s = self.session
        window = s.raw_paste_window or 64
        free = self.caps.free_ram
        buf = 16384 if free >= 256_000 else 4096 if free >= 48_000 else 1024 if free >= 16_000 else 512
        wbits = 0
        if self.caps.deflate and self.caps.bytesio:
            wbits = 12 if free >= 64_000 else 10 if free >= 24_000 else 0
        return window, max(buf, window), wbits

    @staticmethod
    def _frames(data: bytes, limit: int, wbits: int) -> bytes:
        """Frames of at most `limit` payload bytes on the wire (the board's buffer)."""
        out = bytearray()
        i = 0
        while i < len(data):
            size = limit
            while True:
                raw = data[i: i + size]
                kind, payload = b"R", raw
                if wbits:
                    comp = zlib.compressobj(9, zlib.DEFLATED, -wbits, 9)
                    z = comp.compress(raw) + comp.flush()
                    if len(z) < len(raw) * 0.9:
                        kind, payload = b"Z", z
                # 0x03 never travels: the emulated unix board holds a 0x03 up to 1 s
                # before treating it as data, and no board can mistake it for Ctrl-C.
                payload = payload.replace(b"\x1b", b"\x1bE").replace(b"\x03", b"\x1bC")
                if len(payload) <= limit:
                    break
                size = max(1, size * limit // len(payload) - 8)
            k = len(payload)   # 7 bits per byte with the top bit set: a raw 0x03 is always Ctrl-C
            out += kind + bytes((0x80 | k & 127, 0x80 | k >> 7 & 127, 0x80 | k >> 14 & 127)) + payload
            i += len(raw)
        return bytes(out)

    def _put_stream(self, data: bytes, dest: str, append: bool,
                    progress: Progress | None, label: str) -> tuple[int, int, bytes | int]:
        window, block, wbits = self._stream_params()
        wire = self._frames(data, block, wbits)
        n = len(wire)
        session = self.session
        state = {"credit": 0, "sent": 0, "started": False, "failed": False, "reported": False}
        out = bytearray()

        def on_output(chunk: bytes) -> None:
            out.extend(chunk)
            if state["failed"] or state["reported"]:
                return
            for byte in chunk:
                if byte == 0x3D:      # '=': the result, whose digest may hold any of these bytes
                    state["reported"] = True
                    break
                if byte == 0x23:      # '#'
                    state["credit"] += window
                elif byte == 0x53 and not state["started"]:   # 'S'
                    state["started"] = True
                    # The start byte (see RECEIVER) takes one byte of the first two windows.
                    session.write_during_exec(b"\x02")
                    state["credit"] += 2 * window - 1
                elif byte == 0x21:    # '!': the board stopped and reads up to our 0x03
                    state["failed"] = True
                    # Data never carries a raw 0x03 (it is escaped): it ends the board's drain.
                    session.write_during_exec(b"\x03")
                    return
            # A Ctrl-C (session.interrupt) is a raw 0x03 in the stream: the board stops at it,
            # provided the read it is in completes, so the data keeps flowing until '!'.
            k = min(state["credit"], n - state["sent"])
            if k > 0 and state["started"]:
                session.write_during_exec(wire[state["sent"]: state["sent"] + k])
                state["sent"] += k
                state["credit"] -= k
                if progress is not None:
                    progress(min(len(data), state["sent"] * len(data) // max(n, 1)), len(data))

        code = programs.RECEIVER.replace("{hash}", self._hash_code).replace(
            "{args}", f"{dest!r},{int(append)},{n},{window},{block},{wbits}")
        result = self.session.exec(code, on_output=on_output, timeout=60 + n / 500, scratch=True)
        text = out.decode(errors="replace")
        if result.reset is not None and not result.interrupted:
            raise FileTransferError(f"put {label} failed: the board reset ({result.reset} reset) during the "
                                    "transfer")
        if result.error is not None or result.timed_out:
            why = _one_line(result.error) if result.error is not None else "timed out"
            if why.startswith("KeyboardInterrupt"):
                if result.interrupted is None and not append:
                    # A 0x03 nobody here sent (a late byte of an earlier reset or resync, which the
                    # emulated board may hold until Ctrl-C is enabled again): if the receiver had
                    # reported the whole file, the transfer is done; otherwise it is sent again.
                    done = re.search(r"=(\(.*\))\n", text)
                    if done:
                        try:
                            return ast.literal_eval(done.group(1))
                        except (ValueError, SyntaxError):
                            pass
                    raise _StrayCtrlC(f"put {label} failed on the board: a stray Ctrl-C in the data")
                why = "interrupted"
            if append:
                left = "the file on the board is kept, possibly with part of the data appended"
            elif label != dest:
                left = ""   # put() says that the old file is unchanged
            elif "removed" in text:
                left = "the partial file was removed from the board"
            elif not state["started"]:
                left = "nothing was written"
            else:
                left = "a partial file may be left on the board"
            raise FileTransferError(f"put {label} failed on the board: {why}" + (f"; {left}" if left else ""))
        value = _after_eq(text)
        if value is None:
            raise FileTransferError(f"put {label}: the board did not report what it wrote: {text[-80:]!r}")
        return value

    def _literal_chunk(self) -> int:
        free = self.caps.free_ram
        return 96 if free < 16_000 else 512 if free < 64_000 else 2048

    def _put_literal(self, data: bytes, dest: str, append: bool,
                     progress: Progress | None, label: str) -> tuple[int, int, bytes | int]:
        c = self.caps
        if append:
            if not c.stat:
                raise FileTransferError(f"put {dest}: appending needs os.stat, which this board lacks; nothing was written")
            opening = (f"import os\ntry:\n s=os.stat({dest!r})[6]\nexcept OSError:\n s=0\n"
                       f"_ek.f=open({dest!r},'ab')\nprint('='+repr(s))\n")
        else:
            opening = f"_ek.f=open({dest!r},'wb')\nprint('=0')\n"
        s0 = _after_eq(self._run(opening, f"put {label}"))
        step = self._literal_chunk()
        if c.base64:
            self._run("import binascii\n_ek.a=binascii.a2b_base64\n", f"put {label}")
        try:
            for i in range(0, len(data), step):
                chunk = data[i: i + step]
                lit = repr(chunk)
                if c.base64:
                    import base64
                    b64 = base64.b64encode(chunk).decode()
                    if len(b64) + 8 < len(lit):
                        lit = f"_ek.a({b64!r})"
                self._run(f"_ek.f.write({lit})\n", f"put {label}")
                if progress is not None:
                    progress(min(len(data), i + step), len(data))
            self._run("_ek.f.close()\n_ek.f=_ek.a=None\n", f"put {label}")
        except DeviceError as exc:
            why = str(exc).split("failed on the board: ", 1)[-1]
            if why.startswith("AttributeError") and ("attribute 'f'" in why or "attribute 'a'" in why):
                # The file the opening program left on _ek is gone: the board (or the MQTT agent)
                # restarted between two chunks, faster than anything else showed it.
                why = "the board reset during the transfer (it lost the file being written)"
            try:
                self._run("try:\n _ek.f.close()\nexcept:\n pass\n_ek.f=_ek.a=None\n", "close")
            except DeviceError:
                pass
            if append:
                left = f"the file on the board is kept with part of the data appended after byte {s0:,}"
            elif label != dest:
                if why.startswith("KeyboardInterrupt"):
                    why = "interrupted"
                raise FileTransferError(f"put {label} failed on the board: {why}") from None   # put() cleans up
            else:
                try:
                    self._run(f"import os\ntry:\n os.remove({dest!r})\nexcept OSError:\n pass\n", f"rm {dest}")
                except DeviceError:
                    pass
                left = self._what_is_left(dest, "partial")
            raise FileTransferError(f"put {label} failed on the board: {why}; {left}") from None
        out = self._run(programs.VERIFY.replace("{hash}", self._hash_code).replace("{args}", f"{dest!r},{s0}"),
                        f"verify {label}", timeout=120)
        return _after_eq(out)

    # -- get -----------------------------------------------------------------------

    def get(self, src: str, *, progress: Progress | None = None) -> bytes:
        """The contents of `src` on the board, verified by length and hash."""
        total = None
        choosing = supports_file_protocol(self.session) and self.mode in ("auto", "webrepl")
        if progress is not None or choosing:
            try:
                total = self._size(src)
            except DeviceError:
                total = None
        if choosing and total is None and self.mode == "auto":
            # Missing or unreadable: the REPL path reports the board's own error.
            self.last_path = TransferPath("repl", "")
        else:
            self.last_path = self._choose_path("get", total or 0)
        started = time.perf_counter()
        data, (n, digest) = self._get_via(self.last_path.name, src, progress, total)
        seconds = time.perf_counter() - started
        if n != len(data) or digest != self.host_digest(data):
            raise FileTransferError(
                f"get {src}: verification failed (received {len(data):,} bytes, the board read {n:,}; "
                "hashes differ); the file on the board is unchanged")
        if progress is not None:
            progress(len(data), len(data))
        self._learn("get", len(data), seconds)
        return data

    def _get_via(self, path: str, src: str, progress: Progress | None, total: int | None):
        if path == "webrepl":
            try:
                data = WebReplFiles(self.session).get(src, progress, total)
            except WebReplFileError as exc:
                raise FileTransferError(str(exc)) from None
            found = self.hash(src)
            if found is None:
                raise FileTransferError(f"get {src}: the file vanished from the board during the transfer")
            return data, found
        if self.caps.stdout and self.mode != "literal":
            return self._get_stream(src, progress, total)
        return self._get_literal(src, progress, total)

    def _size(self, path: str) -> int:
        if self.caps.stat:
            return int(self.session.eval(f"__import__('os').stat({path!r})[6]"))
        if self.caps.size:
            return int(self.session.eval(f"__import__('os').size({path!r})"))
        raise FileTransferError("this board cannot tell a file's size")

    def _get_stream(self, src: str, progress: Progress | None, total: int | None):
        free = self.caps.free_ram
        block = 8192 if free >= 256_000 else 2048 if free >= 48_000 else 512
        out = bytearray()

        def on_output(chunk: bytes) -> None:
            out.extend(chunk)
            if progress is not None and total:
                progress(min(total, len(out)), total)

        code = programs.SENDER.replace("{hash}", self._hash_code).replace("{args}", f"{src!r},{block}")
        result = self.session.exec(code, on_output=on_output, timeout=60 + (total or 0) / 500, scratch=True)
        if result.reset is not None and result.error is None:
            raise FileTransferError(f"get {src} failed: the board reset ({result.reset} reset) during the transfer; "
                                    "the file on the board is unchanged")
        if result.error is not None or result.timed_out:
            why = _one_line(result.error) if result.error is not None else "timed out"
            raise FileTransferError(f"get {src} failed on the board: {why}; the file on the board is unchanged")
        start = out.find(b":")
        end = out.rfind(b"\x1bZ")
        if start < 0 or end < 0:
            raise FileTransferError(f"get {src}: the board's answer is incomplete: {bytes(out[-80:])!r}")
        data = _ESC_RE.sub(lambda m: _ESCAPES[m.group(1)], bytes(out[start + 1: end]))
        value = _after_eq(out[end + 2:].decode(errors="replace"))
        return data, value

    def _get_literal(self, src: str, progress: Progress | None, total: int | None):
        parts: list[bytes] = []
        pending = bytearray()
        got = [0]

        def on_output(chunk: bytes) -> None:
            pending.extend(chunk)
            while True:
                i = pending.find(b"\n")
                if i < 0:
                    break
                line = bytes(pending[:i]).strip()
                del pending[: i + 1]
                if line.startswith(b"b'") or line.startswith(b'b"'):
                    try:
                        parts.append(ast.literal_eval(line.decode(errors="replace")))
                    except (ValueError, SyntaxError):
                        # Cut by a reset (its reboot text runs into the line); the exec's result says
                        # so, and verification catches anything else.
                        continue
                    got[0] += len(parts[-1])
                    if progress is not None and total:
                        progress(min(total, got[0]), total)

        step = 64 if self.caps.free_ram < 16_000 else 256
        code = programs.LITERAL_READER.replace("{hash}", self._hash_code).replace("{args}", f"{src!r},{step}")
        result = self.session.exec(code, on_output=on_output, timeout=60 + (total or 0) / 200, scratch=True)
        if result.reset is not None and result.error is None:
            raise FileTransferError(f"get {src} failed: the board reset ({result.reset} reset) during the transfer; "
                                    "the file on the board is unchanged")
        if result.error is not None or result.timed_out:
            why = _one_line(result.error) if result.error is not None else "timed out"
            raise FileTransferError(f"get {src} failed on the board: {why}; the file on the board is unchanged")
        text = result.output.decode(errors="replace")
        i = text.rfind("\n=")
        value = _after_eq(text[i + 1:] if i >= 0 else text)
        return b"".join(parts), value

    # -- trees ---------------------------------------------------------------------

    def put_tree(self, local_dir: str | os.PathLike, dest: str = ".", *,
                 progress: Callable[[str, str], None] | None = None,
                 cancelled: Callable[[], bool] = lambda: False) -> list[tuple[str, str]]:
        """Copy a local directory tree to `dest` on the board. Files whose board-side
        length and hash already match are skipped. Returns [(board path, 'put'|'skipped')].
        `cancelled` is asked before each file: an interrupt between two files reaches no running code."""
        local_dir = os.fspath(local_dir)
        done: list[tuple[str, str]] = []
        base = dest.rstrip("/") or "."
        if base not in (".", ""):
            self.mkdir(base, exist_ok=True)
        for root, dirs, files in os.walk(local_dir):
            dirs.sort()
            rel = os.path.relpath(root, local_dir)
            board_root = base if rel == "." else f"{base}/{rel.replace(os.sep, '/')}"
            if board_root.startswith("./"):
                board_root = board_root[2:]
            if rel != ".":
                self.mkdir(board_root, exist_ok=True)
            for name in sorted(files):
                path = name if board_root in (".", "") else f"{board_root}/{name}"
                if cancelled():
                    raise FileTransferError(f"interrupted before {path}: {sum(w == 'put' for _, w in done)} "
                                            f"file(s) put, {sum(w == 'skipped' for _, w in done)} unchanged; "
                                            "put the folder again: files already there are skipped")
                with open(os.path.join(root, name), "rb") as f:
                    data = f.read()
                if self.hash(path) == (len(data), self.host_digest(data)):
                    done.append((path, "skipped"))
                else:
                    self.put(data, path)
                    done.append((path, "put"))
                if progress is not None:
                    progress(path, done[-1][1])
        return done


def temp_name(dest: str) -> str:
    """Where a put writes before renaming over `dest`: the same folder (so one filesystem), a
    hidden name that no user file is likely to have."""
    folder, _, name = dest.rpartition("/")
    return f"{folder}/.{name}.ek-tmp" if folder or dest.startswith("/") else f".{name}.ek-tmp"


def _one_line(error) -> str:
    msg = f"{error.type}: {error.message}" if error.message else error.type
    return msg.splitlines()[0] if msg else "error"


def _last_value(text: str, opener: str):
    i = text.rfind("\n" + opener)
    start = i + 1 if i >= 0 else text.find(opener)
    if start < 0:
        raise FileTransferError(f"unexpected answer from the board: {text[-80:]!r}")
    try:
        return ast.literal_eval(text[start:].strip())
    except (ValueError, SyntaxError):
        raise FileTransferError(f"unexpected answer from the board: {text[-80:]!r}") from None


def _after_eq(text: str):
    """The value printed after the first '=' (the board prints no '=' before it)."""
    i = text.find("=")
    if i < 0:
        raise FileTransferError(f"unexpected answer from the board: {text[-80:]!r}")
    try:
        return ast.literal_eval(text[i + 1:].strip())
    except (ValueError, SyntaxError):
        raise FileTransferError(f"unexpected answer from the board: {text[-80:]!r}") from None
