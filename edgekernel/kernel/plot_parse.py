"""Printed lines to plot samples, for %%plot (pure: no Jupyter, no board).

A line is one sample when it holds only numbers, optionally named, the way the Arduino serial plotter
and Thonny read a board's output:

    21.5 40             -> col1=21.5, col2=40    (separated by spaces, commas, tabs or semicolons)
    temp:21.5 hum:40    -> temp=21.5, hum=40     (also `temp=21.5`, `temp: 21.5`: print("temp:", t))
    t=3, 1.5            -> t=3, col1=1.5         (unnamed values are numbered among the unnamed ones)

Numbers are what MicroPython prints: -3, +2.5, .5, 1e-05, 1.5E+10, nan, inf, -inf. Any other text on a
line (a word, a unit, a bracket) makes the whole line ordinary output: no guessing.
"""
from __future__ import annotations

import codecs
import math
import re
import threading
from typing import Any

NUMBER = r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf(?:inity)?)"
NAME = r"[A-Za-z_][A-Za-z0-9_.]*"
UNNAMED = "col{}"  # the name of the n-th unnamed value of a line (1-based)
MAX_LINE = 4096    # a longer line without a newline is not a sample: dropped from the parser's buffer

_SEPARATOR = re.compile(r"[\s,;]*")
_TOKEN = re.compile(rf"(?:(?P<name>{NAME})\s*[:=]\s*)?(?P<value>{NUMBER})(?=[\s,;]|$)", re.IGNORECASE)
_SPLIT = re.compile(r"[\s,;]+")
_EDGES = " \t\r\n\f\v,;"
_NAMES = [UNNAMED.format(n) for n in range(1, 33)]


def _unnamed(n: int) -> str:
    return _NAMES[n - 1] if n <= len(_NAMES) else UNNAMED.format(n)


def parse_line(line: str) -> dict[str, float] | None:
    """The sample a line holds ({series: value}, in the line's order), or None if it is ordinary text."""
    if line.isascii() and ":" not in line and "=" not in line and "_" not in line:
        # Unnamed numbers (the common, fast case): for ASCII without "_", float() takes exactly NUMBER.
        words = line.strip(_EDGES)
        if not words:
            return None
        try:
            return {_unnamed(n): float(word) for n, word in enumerate(_SPLIT.split(words), 1)}
        except ValueError:
            return None
    sample: dict[str, float] = {}
    unnamed = 0
    pos = _SEPARATOR.match(line).end()  # type: ignore[union-attr]
    while pos < len(line):
        token = _TOKEN.match(line, pos)
        if token is None:
            return None
        name = token.group("name")
        if name is None:
            unnamed += 1
            name = _unnamed(unnamed)
        sample[name] = float(token.group("value"))
        pos = _SEPARATOR.match(line, token.end()).end()  # type: ignore[union-attr]
    return sample or None


class PlotData:
    """Samples parsed from board output as it arrives (feed on the board worker, read from other threads).

    Bytes may end anywhere: in the middle of a line, of a number or of a UTF-8 sequence; the
    unfinished line waits for its newline (or for finish(), which takes it as the last line).
    Values are kept per series (NaN where a line did not have it), so a DataFrame or a chart of
    100,000 samples is made from arrays, not rebuilt row by row.
    """

    def __init__(self) -> None:
        self.columns: list[str] = []         # series names in order of first appearance
        self.text_lines = 0                  # complete lines that were not samples
        self.version = 0                     # bumped by every batch of new samples
        self._values: dict[str, list[float]] = {}
        self._count = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._skipping = False
        self._lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        self.feed_text(self._decoder.decode(data))

    def feed_text(self, text: str) -> None:
        if not text:
            return
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        if self._skipping:
            # The rest of an overlong line: not a sample, whatever it ends with.
            if not lines:
                self._partial = ""
                return
            lines.pop(0)
            self._skipping = False
        if len(self._partial) > MAX_LINE:
            self._partial = ""
            self._skipping = True
            self.text_lines += 1
        self._take(lines)

    def finish(self) -> None:
        """The output ended: an unfinished last line counts as a line."""
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        if rest and not self._skipping:
            self._take([rest])

    def _take(self, lines: list[str]) -> None:
        parsed = []
        for line in lines:
            sample = parse_line(line.rstrip("\r"))
            if sample is None:
                if line.strip():
                    self.text_lines += 1
            else:
                parsed.append(sample)
        if not parsed:
            return
        with self._lock:
            values = self._values
            for sample in parsed:
                for name, value in sample.items():
                    column = values.get(name)
                    if column is None:
                        values[name] = column = [math.nan] * self._count
                        self.columns.append(name)
                    column.append(value)
                self._count += 1
                if len(sample) < len(values):
                    for column in values.values():
                        if len(column) < self._count:
                            column.append(math.nan)
            self.version += 1

    def snapshot(self, last: int | None = None) -> tuple[int, list[str], dict[str, list[float]], int, int]:
        """(version, columns, each series' values (the last `last` samples only), the first of those
        samples' index, how many samples)."""
        with self._lock:
            start = max(0, self._count - last) if last else 0
            series = {name: column[start:] for name, column in self._values.items()}
            return self.version, list(self.columns), series, start, self._count - start

    def __len__(self) -> int:
        return self._count

    @property
    def samples(self) -> list[dict[str, float]]:
        """The samples as {series: value}, without the series a line did not have (or printed as nan)."""
        _, columns, series, _, count = self.snapshot()
        return [{name: series[name][i] for name in columns if not math.isnan(series[name][i])} for i in range(count)]

    def frame(self) -> Any:
        """All the samples as a pandas DataFrame: one column per series, one row per sample (index
        `sample`, from 0); NaN where a line did not have that series."""
        import numpy as np
        import pandas as pd

        _, columns, series, _, count = self.snapshot()
        frame = pd.DataFrame({name: np.asarray(series[name], dtype="float64") for name in columns},
                             index=pd.RangeIndex(count, name="sample"), columns=columns)
        return frame
