"""The link between a host and an emulated board: a pseudo-terminal the host opens, and a wire model.

Every emulated board is reached through a :class:`SerialLine`. Without options the link is a plain relay
(bytes go straight through). With a baud rate and/or a latency it behaves like a serial line:

* **Baud rate** — each direction is a transmitter that sends one byte every ``bits_per_byte / baud``
  seconds (10 bits for 8N1, so 11,520 bytes/s at 115200). Every byte gets its own arrival time
  ``start + (i + 1) * byte_time + latency``, computed from when the wire becomes free, so pacing is
  exact on average however the bytes were chunked; delivery happens in ~1 ms batches (the event
  loop's timer resolution), so individual bytes may arrive up to ~1 ms late but never early.
* **Latency** — a constant one-way delay added to every byte (USB-serial adapters add 1–16 ms). A
  command/answer round trip therefore costs at least ``2 * latency``.
* **Transmit FIFO** — the board's side stops producing output (its ``print`` blocks) while more than
  :data:`TX_FIFO` bytes wait for the wire, like a UART's transmit FIFO. Without that, a print flood
  would queue megabytes in the link and Ctrl-C would take minutes to show its traceback.
* **Host side** — the link stops reading the host's writes while more than :data:`HOST_TX_BUFFER`
  bytes wait for the wire, so a host ``write()`` blocks roughly as it does on a real serial port.

The receive buffer of a small board (``--rx-buffer``) is *not* modelled here: it is the board's own
UART buffer and needs to know when the board reads its input, which only the board can tell (see
:mod:`edgekernel.emulator.unix_board`). The link hands bytes to the board at the moment they would
arrive at its RX pin.

Nobody connected = nobody listening: while no process has the pty open, board output is discarded,
like a UART transmitting into an unplugged cable (a pty would otherwise hand stale output to the
next client).
"""
from __future__ import annotations

import asyncio
import collections
import errno
import os
import pty
import select
import time
import tty
from typing import Protocol

from . import BoardError

#: Board output waiting for the wire above which the board is paused (a UART TX FIFO is 128 bytes
#: on an ESP8266; 256 leaves room for a 1 ms batch at high baud rates).
TX_FIFO = 256
#: Host input waiting for the wire above which the link stops reading the host (a tty's buffer).
HOST_TX_BUFFER = 4096
#: Without a wire model: board output queued for a slow host above which the board is paused.
UNPACED_OUT_LIMIT = 65536
#: A message whose last byte is due this soon is delivered at that exact time (see _on_timer).
PRECISE_TAIL_S = 0.0015
#: How often to look for a host while nobody has the pty open.
HANGUP_POLL_S = 0.01


class BoardEnd(Protocol):
    """What a link needs from a board (implemented by the unix and micro:bit boards)."""

    def rx(self, data: bytes) -> None:
        """Bytes arrive at the board's RX pin. Never blocks; the board buffers or drops."""

    def rx_backlog(self) -> int:
        """Bytes the board has accepted but not yet consumed (the link stops feeding above a limit)."""

    def set_tx(self, sink: "TxSink") -> None:
        """Where the board sends its output."""


class TxSink(Protocol):
    def tx(self, data: bytes) -> None:
        """Bytes leave the board's TX pin."""


class Wire:
    """One direction of a serial line: byte-time pacing plus a constant one-way latency."""

    def __init__(self, baud: int | None, latency_s: float = 0.0, bits_per_byte: int = 10) -> None:
        self.byte_time = bits_per_byte / baud if baud else 0.0
        self.latency = latency_s
        self._free_at = 0.0  # when the transmitter finishes the last byte queued so far
        # (start, data, delivered): byte i of data has fully arrived at start + (i+1)*byte_time + latency
        self._chunks: collections.deque[list] = collections.deque()

    @property
    def paced(self) -> bool:
        return self.byte_time > 0 or self.latency > 0

    def send(self, data: bytes, now: float) -> None:
        if not data:
            return
        start = max(now, self._free_at)
        self._chunks.append([start, data, 0])
        self._free_at = start + len(data) * self.byte_time

    def unsent(self, now: float) -> int:
        """Bytes not yet transmitted (the transmitter's queue; in-flight latency not counted)."""
        if self.byte_time == 0:
            return 0
        return max(0, int((self._free_at - now) / self.byte_time + 0.999))

    def pending(self) -> int:
        """Bytes not yet delivered."""
        return sum(len(c[1]) - c[2] for c in self._chunks)

    def take_due(self, now: float) -> bytes:
        """Remove and return every byte whose arrival time has passed."""
        out = bytearray()
        while self._chunks:
            chunk = self._chunks[0]
            start, data, done = chunk
            if self.byte_time:
                arrived = int((now - start - self.latency) / self.byte_time)
            else:
                arrived = len(data) if now >= start + self.latency else 0
            arrived = min(len(data), arrived)
            if arrived > done:
                out += data[done:arrived]
                chunk[2] = arrived
            if arrived < len(data):
                break
            self._chunks.popleft()
        return bytes(out)

    def last_arrival(self) -> float | None:
        """When the last byte queued so far will have arrived."""
        if not self._chunks:
            return None
        start, data, _ = self._chunks[-1]
        return start + len(data) * self.byte_time + self.latency

    def next_arrival(self) -> float | None:
        if not self._chunks:
            return None
        start, data, done = self._chunks[0]
        return start + (done + 1) * self.byte_time + self.latency


class PtyFront:
    """The pseudo-terminal a host opens. Raw mode (no echo, no CR/LF mangling), non-blocking master."""

    def __init__(self, symlink: str | None = None) -> None:
        master, slave = pty.openpty()
        tty.setraw(slave)  # the slave's termios outlive our fd: clients get a raw line
        tty.setraw(master)
        self.path = os.ttyname(slave)
        # Closing our slave fd lets us see (POLLHUP) when no client has the port open.
        os.close(slave)
        os.set_blocking(master, False)
        self.fd = master
        self.symlink = symlink
        if symlink:
            if os.path.islink(symlink):  # a stale link from an earlier run
                os.unlink(symlink)
            elif os.path.exists(symlink):
                os.close(master)
                raise BoardError(f"--link {symlink}: exists and is not a symlink")
            os.symlink(self.path, symlink)

    def connected(self) -> bool:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return not any(ev & select.POLLHUP for _, ev in poller.poll(0))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.symlink and os.path.islink(self.symlink) and os.readlink(self.symlink) == self.path:
            os.unlink(self.symlink)


class SerialLine:
    """Relays a :class:`PtyFront` to a board, optionally through a :class:`Wire` in each direction."""

    def __init__(self, board: BoardEnd, *, baud: int | None = None, latency_ms: float = 0.0,
                 symlink: str | None = None) -> None:
        self.board = board
        self.front = PtyFront(symlink)
        self.port = self.front.symlink or self.front.path
        self.up = Wire(baud, latency_ms / 1000)    # board -> host
        self.down = Wire(baud, latency_ms / 1000)  # host -> board
        self._out = bytearray()  # bytes due at the host that the pty did not take yet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._reading = False
        self._writing = False
        self._hup_handle: asyncio.TimerHandle | None = None
        self._paused_board = False
        self._listeners: list = []  # extra taps on board output (e.g. a future WebREPL front)
        self.stats = {"to_board": 0, "to_host": 0, "discarded": 0}
        #: Largest chunk a board should hand to :meth:`tx` at once (boards read their output this way).
        self.tx_chunk = TX_FIFO if self.up.paced else 65536

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.board.set_tx(self)
        self._watch_host()

    def close(self) -> None:
        if self._timer:
            self._timer.cancel()
        if self._hup_handle:
            self._hup_handle.cancel()
        if self._loop and self.front.fd >= 0:
            if self._reading:
                self._loop.remove_reader(self.front.fd)
            if self._writing:
                self._loop.remove_writer(self.front.fd)
        self.front.close()

    def add_listener(self, callback) -> None:
        """Also give board output to ``callback(bytes)`` (unpaced, never blocks the board)."""
        self._listeners.append(callback)

    # -- board -> host ------------------------------------------------------------------------
    def tx(self, data: bytes) -> None:
        for cb in self._listeners:
            cb(data)
        if not self.front.connected():
            self.stats["discarded"] += len(data)
            return
        if self.up.paced:
            self.up.send(data, time.monotonic())
            self._schedule()
        else:
            self._out += data
            self._flush_out()
        self._check_board_pause()

    def _check_board_pause(self) -> None:
        now = time.monotonic()
        backlog = len(self._out) + (self.up.unsent(now) if self.up.paced else 0)
        limit = TX_FIFO if self.up.paced else UNPACED_OUT_LIMIT
        pause = backlog > limit
        if pause != self._paused_board and hasattr(self.board, "pause_tx"):
            self._paused_board = pause
            (self.board.pause_tx if pause else self.board.resume_tx)()

    def _flush_out(self) -> None:
        if not self._out or self.front.fd < 0:
            return
        try:
            n = os.write(self.front.fd, self._out)
        except BlockingIOError:
            n = 0
        except OSError as e:  # EIO: the client went away between our check and the write
            if e.errno != errno.EIO:
                raise
            self.stats["discarded"] += len(self._out)
            self._out.clear()
            n = 0
        if n:
            del self._out[:n]
            self.stats["to_host"] += n
        want = bool(self._out)
        if want != self._writing:
            self._writing = want
            if want:
                self._loop.add_writer(self.front.fd, self._on_writable)
            else:
                self._loop.remove_writer(self.front.fd)

    def _on_writable(self) -> None:
        self._flush_out()
        self._check_board_pause()

    # -- host -> board ------------------------------------------------------------------------
    def _watch_host(self) -> None:
        """Read the host while someone has the pty open; otherwise poll for a connection."""
        self._hup_handle = None
        if self.front.fd < 0:
            return
        if self.front.connected():
            if not self._reading:
                self._reading = True
                self._loop.add_reader(self.front.fd, self._on_host_readable)
        else:
            if self._reading:
                self._reading = False
                self._loop.remove_reader(self.front.fd)
            # Output queued for a host that left goes nowhere, as on a pulled cable.
            self.stats["discarded"] += len(self._out)
            self._out.clear()
            if self._writing:
                self._writing = False
                self._loop.remove_writer(self.front.fd)
            self._check_board_pause()
            self._hup_handle = self._loop.call_later(HANGUP_POLL_S, self._watch_host)

    def _on_host_readable(self) -> None:
        now = time.monotonic()
        room = HOST_TX_BUFFER - self.down.unsent(now) - self.board.rx_backlog()
        if room <= 0:
            # Stop reading until the wire/board catches up; the host's write() then blocks.
            self._loop.remove_reader(self.front.fd)
            self._reading = False
            self._loop.call_later(0.002, self._watch_host)
            return
        try:
            data = os.read(self.front.fd, min(room, 65536))
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""
        if not data:  # the host closed the port
            self._watch_host()
            return
        if self.down.paced:
            self.down.send(data, now)
            self._schedule()
        else:
            self.stats["to_board"] += len(data)
            self.board.rx(data)

    # -- the wire's clock ---------------------------------------------------------------------
    def _schedule(self) -> None:
        times = [t for t in (self.up.next_arrival(), self.down.next_arrival()) if t is not None]
        if not times:
            return
        at = min(times)
        if self._timer and not self._timer.cancelled() and self._timer_at <= at:
            return
        if self._timer:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = time.monotonic()
        # The event loop's timers fire up to ~1 ms late (epoll's millisecond
        # timeouts). When a message's last byte is due within PRECISE_TAIL_S,
        # sleep until exactly then, so a command/answer turn costs its wire time
        # and not an extra millisecond each way. Never early.
        tails = [t for t in (self.down.last_arrival(), self.up.last_arrival()) if t is not None]
        if tails and min(tails) - now <= PRECISE_TAIL_S:
            time.sleep(max(0.0, min(tails) - now))
            now = time.monotonic()
        down = self.down.take_due(now)
        if down:
            self.stats["to_board"] += len(down)
            self.board.rx(down)
        up = self.up.take_due(now)
        if up:
            if self.front.connected():
                self._out += up
                self._flush_out()
            else:
                self.stats["discarded"] += len(up)
        self._check_board_pause()
        self._schedule()

