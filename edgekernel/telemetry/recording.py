"""Messages recorded into a pandas DataFrame, fast enough for thousands of messages a second.

The MQTT thread only appends a tuple to a list (O(1)); every CHUNK rows become one small DataFrame,
and the full DataFrame is built from those chunks when someone looks (a cell starts, a CSV flush,
`%mqtt stop`). Appending row by row to a DataFrame would copy it on every message.
Knows nothing of IPython or MQTT.
"""
from __future__ import annotations

import csv
import json
import threading
import time
from datetime import datetime, timezone
from collections import deque
from collections.abc import Callable
from typing import Any

import pandas as pd

#: Rows gathered before they become a DataFrame chunk.
CHUNK = 4096


def parse_payload(payload: bytes) -> dict[str, Any]:
    """A message's fields: a JSON object's keys, else {"value": number or JSON value or text}."""
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return {"value": payload.hex()}
    try:
        value = json.loads(text)
    except ValueError:
        return {"value": text}
    if isinstance(value, dict):
        return value
    return {"value": value}


class Recording:
    """Rows of (time, topic, fields...) arriving from any thread.

    max_rows bounds what is kept (the oldest rows go); None keeps everything.
    recent_rows bounds the window plots read without building the DataFrame.
    """

    def __init__(self, name: str, topics: list[str], *, max_rows: int | None = None, recent_rows: int = 1000) -> None:
        self.name = name
        self.topics = topics
        self.max_rows = max_rows
        self.received = 0           # messages seen since the start (kept or not)
        self.version = 0            # bumps on every message: views redraw when it changed
        self._lock = threading.Lock()
        self._pending: list[tuple[float, str, dict[str, Any]]] = []
        self._chunks: list[pd.DataFrame] = []
        self._chunk_rows = 0
        self._frame: pd.DataFrame | None = None   # cache of the last materialised frame
        self._frame_version = -1
        self.latest: dict[str, tuple[float, dict[str, Any]]] = {}
        self.recent: deque[tuple[float, str, dict[str, Any]]] = deque(maxlen=recent_rows)
        self.taps: list[Callable[[tuple[float, str, dict[str, Any]]], None]] = []   # e.g. a CSV recorder

    # -- writer side (the MQTT thread) -------------------------------------------------
    def add(self, topic: str, payload: bytes, when: float | None = None) -> None:
        fields = parse_payload(payload)
        row = (time.time() if when is None else when, topic, fields)
        with self._lock:
            self._pending.append(row)
            self.recent.append(row)
            self.latest[topic] = (row[0], fields)
            self.received += 1
            self.version += 1
            for tap in self.taps:
                tap(row)
            if len(self._pending) >= CHUNK:
                self._seal()

    def _seal(self) -> None:
        """Turn pending rows into a DataFrame chunk (called with the lock held)."""
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        chunk = rows_to_frame(rows)
        self._chunks.append(chunk)
        self._chunk_rows += len(chunk)
        if self.max_rows is not None:
            while self._chunks and self._chunk_rows - len(self._chunks[0]) >= self.max_rows:
                self._chunk_rows -= len(self._chunks.pop(0))

    # -- reader side --------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        """Every kept row as one DataFrame (columns: time, topic, then the payload fields)."""
        with self._lock:
            if self._frame is not None and self._frame_version == self.version:
                return self._frame
            self._seal()
            chunks = list(self._chunks)
            version = self.version
        if not chunks:
            frame = empty_frame()
        else:
            frame = pd.concat(chunks, ignore_index=True, sort=False) if len(chunks) > 1 else chunks[0]
            if self.max_rows is not None and len(frame) > self.max_rows:
                frame = frame.iloc[-self.max_rows:].reset_index(drop=True)
        with self._lock:
            # One chunk from now on: the next frame() only concatenates what arrived since.
            if chunks and all(a is b for a, b in zip(self._chunks, chunks)) and len(self._chunks) >= len(chunks):
                self._chunks[:len(chunks)] = [frame]
                self._chunk_rows = sum(len(c) for c in self._chunks)
            self._frame, self._frame_version = frame, version
        return frame

    def window(self, rows: int) -> pd.DataFrame:
        """The last `rows` messages (at most recent_rows), without building the whole frame."""
        with self._lock:
            recent = list(self.recent)[-rows:]
        return rows_to_frame(recent) if recent else empty_frame()

    def latest_frame(self) -> pd.DataFrame:
        """One row per topic: its latest message."""
        with self._lock:
            latest = sorted(self.latest.items())
        if not latest:
            return empty_frame().set_index("topic")
        frame = rows_to_frame([(ts, topic, fields) for topic, (ts, fields) in latest])
        return frame.set_index("topic")

    def want_recent(self, rows: int) -> None:
        """Make sure the recent window holds at least `rows` messages (a plot asked for it)."""
        with self._lock:
            if self.recent.maxlen is not None and self.recent.maxlen < rows:
                self.recent = deque(self.recent, maxlen=rows)

    def __len__(self) -> int:
        with self._lock:
            n = self._chunk_rows + len(self._pending)
        return min(n, self.max_rows) if self.max_rows is not None else n


def empty_frame() -> pd.DataFrame:
    return pd.DataFrame({"time": pd.Series([], dtype="datetime64[ns]"), "topic": pd.Series([], dtype=object)})


def rows_to_frame(rows: list[tuple[float, str, dict[str, Any]]]) -> pd.DataFrame:
    fields = pd.DataFrame.from_records([r[2] for r in rows])
    frame = pd.DataFrame({"time": pd.to_datetime([r[0] for r in rows], unit="s"),
                          "topic": [r[1] for r in rows]})
    if len(fields.columns):
        # Payload fields named "time" or "topic" keep their values under a suffixed name.
        fields.columns = [f"{c}_" if c in ("time", "topic") else c for c in fields.columns]
        frame = pd.concat([frame, fields], axis=1)
    return frame


def numeric_columns(frame: pd.DataFrame) -> list[str]:
    """Payload columns that hold numbers (what a plot can draw)."""
    out = []
    for column in frame.columns:
        if column in ("time", "topic"):
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.notna().any() and not all(isinstance(v, bool) for v in frame[column].dropna()):
            out.append(column)
    return out



class CsvRecorder:
    """Writes a recording to a CSV file: what is recorded now, then new rows as they come.

    The MQTT thread only appends to a list; `flush()` (the refresher thread, and `close()`) writes.
    The columns are fixed by the first rows written; fields that appear later are counted in
    `dropped_fields`, not written (a CSV cannot grow columns).
    """

    def __init__(self, recording: Recording, path: str) -> None:
        self.recording = recording
        self.path = path
        self.rows_written = 0
        self.dropped_fields = 0
        self.error = ""
        self._pending: list[tuple[float, str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._columns: list[str] | None = None
        self._file = open(path, "w", newline="")
        self._writer = csv.writer(self._file)
        # Take the snapshot and start listening under the recording's lock: no row is lost or doubled.
        with recording._lock:
            recording._seal()
            chunks = list(recording._chunks)
            recording.taps.append(self._tap)
        snapshot = pd.concat(chunks, ignore_index=True, sort=False) if chunks else None
        if snapshot is not None and len(snapshot):
            self._columns = [c for c in snapshot.columns if c not in ("time", "topic")]
            snapshot.to_csv(self._file, index=False, date_format="%Y-%m-%dT%H:%M:%S.%f")
            self.rows_written = len(snapshot)
            self._file.flush()

    def _tap(self, row: tuple[float, str, dict[str, Any]]) -> None:
        self._pending.append(row)

    def flush(self) -> None:
        with self.recording._lock:
            rows, self._pending = self._pending, []
        if not rows or self._file.closed:
            return
        with self._lock:
            if self._columns is None:
                seen: dict[str, None] = {}
                for _, _, fields in rows:
                    seen.update(dict.fromkeys(fields))
                self._columns = list(seen)
                self._writer.writerow(["time", "topic", *self._columns])
            known = set(self._columns)
            for ts, topic, fields in rows:
                if not known.issuperset(fields):
                    self.dropped_fields += 1
                stamp = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
                self._writer.writerow([stamp, topic, *(_csv_value(fields.get(c)) for c in self._columns)])
            self.rows_written += len(rows)
            self._file.flush()

    def close(self) -> None:
        with self.recording._lock:
            if self._tap in self.recording.taps:
                self.recording.taps.remove(self._tap)
        self.flush()
        with self._lock:
            self._file.close()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value
