"""Board output to Jupyter stream messages: decoded, coalesced, bounded, thread-safe.

The board's bytes arrive on the worker thread that runs the cell; the kernel's
event loop flushes them as one stream message per interval, so a 2000-line
print becomes a handful of messages instead of 2000 (and still appears while
the board prints, not at the end).

A cell's output in the page is bounded: a print flood of megabytes makes the
browser slow to take the Stop button and the server's IOPub rate limit drops
its end. Past the limit the text is held back (counted, the latest lines
kept) and one display shows the latest lines in place, so the page always
ends with the end of the output and says what it left out.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable

from ..device import OutputDecoder

FLUSH_INTERVAL = 0.05  # seconds before the first stream message of a cell
MAX_FLUSH_INTERVAL = 0.5  # the interval doubles up to this while output keeps flowing

OUTPUT_LIMIT_ENV = "EDGEKERNEL_OUTPUT_LIMIT"
DEFAULT_OUTPUT_LIMIT = 256 * 1024  # characters of one cell's output sent to the page
TAIL_LINES = 40  # the latest lines shown once a cell is over its limit
TAIL_CHARS = 8 * 1024


def output_limit_from_env() -> int | None:
    """The per-cell limit: $EDGEKERNEL_OUTPUT_LIMIT characters (0: no limit)."""
    text = os.environ.get(OUTPUT_LIMIT_ENV, "").strip()
    try:
        limit = int(text) if text else DEFAULT_OUTPUT_LIMIT
    except ValueError:
        limit = DEFAULT_OUTPUT_LIMIT
    return limit if limit > 0 else None


def human_size(chars: int) -> str:
    for unit, size in (("MB", 1 << 20), ("KB", 1 << 10)):
        if chars >= size:
            return f"{chars / size:.1f} {unit}"
    return f"{chars} characters"


class StreamCoalescer:
    """Board bytes in (any thread), stream messages out (flush, on the event loop).

    send(text): one stream message. show_tail(text): the display of the latest
    lines once the cell is over `limit` characters (None: unbounded); called
    again to update it in place. where_all: where the whole output can be found,
    for the line that says what was left out.
    """

    def __init__(self, send: Callable[[str], None], *, limit: int | None = None,
                 show_tail: Callable[[str], None] | None = None, where_all: str = "") -> None:
        self._send = send
        self._show_tail = show_tail
        self._where_all = where_all
        self._decoder = OutputDecoder()
        self._pending: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self.flushes = 0
        self._room = limit        # characters the page can still take (None: no limit)
        self.over_limit = False
        self.shown_lines = 0      # newlines sent to the page
        self.held_chars = 0       # characters held back past the limit
        self.held_lines = 0
        self._tail: deque[str] = deque()
        self._tail_size = 0
        self._tail_changed = False

    def feed(self, data: bytes) -> None:
        """Called from the worker thread with raw board bytes."""
        text = self._decoder.decode(data)
        if text:
            with self._lock:
                self._take(text)

    def _take(self, text: str) -> None:
        if self._room is None:
            self._pending.append(text)
            self._size += len(text)
            return
        if not self.over_limit:
            budget = self._room - self._size
            if len(text) <= budget:
                self._pending.append(text)
                self._size += len(text)
                return
            # Send whole lines up to the limit; hold back the rest.
            cut = text.rfind("\n", 0, budget) + 1 if budget > 0 else 0
            if cut:
                self._pending.append(text[:cut])
                self._size += cut
            text = text[cut:]
            self.over_limit = True
        self._hold(text)

    def _hold(self, text: str) -> None:
        self.held_chars += len(text)
        self.held_lines += text.count("\n")
        self._tail.append(text)
        self._tail_size += len(text)
        while self._tail_size - len(self._tail[0]) >= TAIL_CHARS:
            self._tail_size -= len(self._tail.popleft())
        self._tail_changed = True

    def tail_text(self) -> str:
        """The latest lines held back (at most TAIL_LINES, starting at a line's start)."""
        text = "".join(self._tail)[-TAIL_CHARS:]
        lines = text.split("\n")
        if len(lines) > 1 and self.held_chars > len(text):
            lines = lines[1:]   # the first one is cut
        return "\n".join(lines[-(TAIL_LINES + 1):])

    def _tail_report(self, final: bool) -> str:
        tail = self.tail_text()
        hidden_chars = self.held_chars - len(tail)
        hidden_lines = self.held_lines - tail.count("\n")
        first = self.shown_lines + 1
        if final:
            what = (f"[{hidden_lines:,} lines ({human_size(hidden_chars)}) of this cell's output are not shown here"
                    f" (lines {first:,} to {first + hidden_lines - 1:,}), to keep the page responsive"
                    if hidden_lines > 0 else
                    f"[{human_size(hidden_chars)} of this cell's output are not shown here, to keep the page responsive")
            where = f"; {self._where_all}" if self._where_all else ""
            return f"{what}{where}. Its end:]\n{tail}"
        return (f"[output past the page's limit is held back: {human_size(self.held_chars)} so far "
                f"(the whole output will be kept); the latest lines:]\n{tail}")

    def flush(self, final: bool = False) -> bool:
        """Send what is pending as one stream message (and, over the limit, update the
        display of the latest lines); True if something was sent."""
        with self._lock:
            if final:
                tail = self._decoder.decode(b"", final=True)
                if tail:
                    self._take(tail)
            text = "".join(self._pending)
            self._pending.clear()
            if self._room is not None:
                self._room -= self._size
            self._size = 0
            self.shown_lines += text.count("\n")
            report = None
            if self.over_limit and self._show_tail is not None and (self._tail_changed or final):
                report = self._tail_report(final)
                self._tail_changed = False
        if text:
            self.flushes += 1
            self._send(text)
        if report is not None:
            self._show_tail(report)
        return bool(text) or report is not None
