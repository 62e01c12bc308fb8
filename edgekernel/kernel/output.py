"""Board output to Jupyter stream messages: decoded, coalesced, thread-safe.

The board's bytes arrive on the worker thread that runs the cell; the kernel's
event loop flushes them as one stream message per interval, so a 2000-line
print becomes a handful of messages instead of 2000 (and still appears while
the board prints, not at the end).
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from ..device import OutputDecoder

FLUSH_INTERVAL = 0.05  # seconds before the first stream message of a cell
MAX_FLUSH_INTERVAL = 0.5  # the interval doubles up to this while output keeps flowing
MAX_PENDING = 1 << 20  # flush early past this many characters


class StreamCoalescer:
    def __init__(self, send: Callable[[str], None]) -> None:
        self._send = send
        self._decoder = OutputDecoder()
        self._pending: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self.flushes = 0

    def feed(self, data: bytes) -> None:
        """Called from the worker thread with raw board bytes."""
        text = self._decoder.decode(data)
        if not text:
            return
        with self._lock:
            self._pending.append(text)
            self._size += len(text)
            big = self._size >= MAX_PENDING
        if big:
            self.flush()

    def flush(self, final: bool = False) -> bool:
        """Send what is pending as one stream message; True if something was sent."""
        with self._lock:
            if final:
                tail = self._decoder.decode(b"", final=True)
                if tail:
                    self._pending.append(tail)
            if not self._pending:
                return False
            text = "".join(self._pending)
            self._pending.clear()
            self._size = 0
        self.flushes += 1
        self._send(text)
        return True
