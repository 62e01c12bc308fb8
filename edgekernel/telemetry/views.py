"""Live views of a recording: a plot (PNG from matplotlib's Agg renderer) and a latest-value table.

A view is shown once, in the cell that asked for it, and afterwards only its data changes: the
refresher thread re-renders views whose recording changed, at most `rate` times a second, and
hands the result to an update callback (the IPython layer turns that into update_display).
Nothing here prints: output from a background thread would land in whatever cell is running.
"""
from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from matplotlib.dates import DateFormatter
from matplotlib.figure import Figure

from .recording import Recording, numeric_columns

#: Redraws per second, at most, per view (a PNG render costs tens of milliseconds).
DEFAULT_RATE = 2.0


def render_plot(frame: pd.DataFrame, ys: list[str] | None, title: str) -> bytes:
    """A PNG of the numeric fields over time, one line per topic and field."""
    figure = Figure(figsize=(7, 3.2), dpi=80)
    axes = figure.add_subplot()
    columns = ys or numeric_columns(frame)
    topics = frame["topic"].unique() if len(frame) else []
    lines = 0
    for topic in topics:
        part = frame[frame["topic"] == topic]
        for column in columns:
            if column not in part:
                continue
            values = pd.to_numeric(part[column], errors="coerce")
            if values.notna().any():
                label = column if len(topics) == 1 else f"{topic} {column}"
                axes.plot(part["time"], values, label=label, linewidth=1)
                lines += 1
    axes.set_title(f"{title}: {len(frame)} messages" if len(frame) else f"{title}: waiting for messages")
    if lines:
        axes.legend(loc="upper left", fontsize="small")
    axes.xaxis.set_major_formatter(DateFormatter("%H:%M:%S"))
    figure.autofmt_xdate()
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def render_table(frame: pd.DataFrame, title: str) -> str:
    """HTML: one row per topic with its latest fields."""
    return f"<b>{title}</b>: latest value per topic" + frame.to_html(na_rep="", max_rows=100)


@dataclass
class View:
    """One live view: `render()` gives the new content, `update(content)` shows it."""

    recording: Recording
    render: Callable[[], Any]
    update: Callable[[Any], None]
    min_interval: float
    drawn_version: int = -1
    drawn_at: float = 0.0
    errors: int = 0
    last_error: str = ""

    def due(self, now: float) -> bool:
        return self.recording.version != self.drawn_version and now - self.drawn_at >= self.min_interval

    def refresh(self, now: float) -> None:
        version = self.recording.version
        try:
            self.update(self.render())
        except Exception as exc:  # never let a thread's traceback reach a cell
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
        self.drawn_version, self.drawn_at = version, now


@dataclass
class Refresher:
    """One background thread that keeps every live view up to date."""

    tick: float = 0.05
    views: list[View] = field(default_factory=list)
    after_tick: list[Callable[[], None]] = field(default_factory=list)   # e.g. CSV flushes
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def add(self, view: View) -> None:
        with self._lock:
            self.views.append(view)
        self._ensure_running()

    def remove_for(self, recording: Recording) -> list[View]:
        with self._lock:
            gone = [v for v in self.views if v.recording is recording]
            self.views = [v for v in self.views if v.recording is not recording]
        return gone

    def add_task(self, task: Callable[[], None]) -> None:
        with self._lock:
            self.after_tick.append(task)
        self._ensure_running()

    def remove_task(self, task: Callable[[], None]) -> None:
        with self._lock:
            if task in self.after_tick:
                self.after_tick.remove(task)

    def _ensure_running(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="edgekernel-telemetry-views", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            now = time.monotonic()
            with self._lock:
                views = list(self.views)
                tasks = list(self.after_tick)
            for view in views:
                if view.due(now):
                    view.refresh(now)
            for task in tasks:
                try:
                    task()
                except Exception:
                    pass  # tasks keep their own error state

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
