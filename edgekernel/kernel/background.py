"""Board cells that run in the background (%%bg): long jobs that outlive the cell.

The job owns the board while it runs (other board cells get a "board busy"
error); its output is kept here and in the session log as it arrives, so
closing and reopening the notebook page loses nothing.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from ..device import DeviceError, ExecResult, LinkError, board_text
from ..device.board import Board

KEEP_BYTES = 1 << 20  # the latest output kept in memory (everything is in the session log)


class BackgroundJob:
    """One %%bg cell. `submit(work)` queues it where board I/O runs (the kernel's board worker).

    `observe` (e.g. %%plot --bg's parser) sees every byte the board prints, on the board worker.
    """

    def __init__(self, board: Board, code: str, submit: Callable[[Callable[[], None]], Future[None]], *,
                 observe: Callable[[bytes], None] | None = None) -> None:
        self.board = board
        self.code = code
        self.observe = observe
        self.started = time.time()
        self.finished: float | None = None
        self.result: ExecResult | None = None
        self.failure: str | None = None  # host-side failure (lost link...)
        self._output = bytearray()
        self._lock = threading.Lock()
        self._future = submit(self._run)

    def _record(self, data: bytes) -> None:
        with self._lock:
            self._output += data
            if len(self._output) > KEEP_BYTES:
                del self._output[: len(self._output) - KEEP_BYTES]
        if self.observe is not None:
            self.observe(data)

    def _run(self) -> None:
        try:
            self.result = self.board.exec(self.code, on_output=self._record, show_value=True)
        except (LinkError, DeviceError) as exc:
            self.failure = str(exc)
        finally:
            self.finished = time.time()

    @property
    def running(self) -> bool:
        return not self._future.done()

    def output_text(self, last_lines: int | None = None) -> str:
        with self._lock:
            text = board_text(bytes(self._output))
        if last_lines is not None:
            text = "\n".join(text.split("\n")[-last_lines - 1:])
        return text

    def stop(self, timeout: float = 10.0) -> None:
        """Interrupt the job (the device layer's ladder) and wait for it to end."""
        self.board.interrupt()
        try:
            self._future.result(timeout)
        except Exception:
            pass   # its status says what happened

    def status(self) -> str:
        elapsed = (self.finished or time.time()) - self.started
        if self.running:
            return f"running for {elapsed:.1f} s"
        if self.failure:
            return f"failed after {elapsed:.1f} s: {self.failure}"
        r = self.result
        assert r is not None
        if r.interrupted:
            return f"stopped after {elapsed:.1f} s ({r.interrupted.step})"
        if r.reset:
            return f"ended after {elapsed:.1f} s: the board rebooted ({r.reset} reset)"
        if r.error:
            return f"ended after {elapsed:.1f} s with {r.error.type}: {r.error.message}"
        value = f"; value {r.value}" if r.value is not None else ""
        return f"finished after {elapsed:.1f} s{value}"
