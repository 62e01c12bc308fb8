"""What an execution on the board returns, and how board text is made readable."""
from __future__ import annotations

import ast
import codecs
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import DeviceError

CELL_FILE = "<cell>"

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]*)", line (?P<line>\d+)(?:, in (?P<func>\S+))?')
_EXC_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<message>.*))?$")


@dataclass
class TracebackFrame:
    file: str
    line: int
    function: str | None

    def __str__(self) -> str:
        where = f", in {self.function}" if self.function else ""
        return f'  File "{self.file}", line {self.line}{where}'


@dataclass
class BoardException:
    """An exception raised by code on the board, as the board reported it."""

    type: str
    message: str
    frames: list[TracebackFrame] = field(default_factory=list)

    @property
    def traceback_lines(self) -> list[str]:
        lines = ["Traceback (most recent call last):"] if self.frames else []
        lines += [str(f) for f in self.frames]
        lines.append(f"{self.type}: {self.message}" if self.message else self.type)
        return lines

    def __str__(self) -> str:
        return "\n".join(self.traceback_lines)


@dataclass
class InterruptReport:
    """Which step of the escalation ladder stopped the running code."""

    step: str          # "ctrl-c", "ctrl-c x2", "raw-repl", "soft-reset", "hard-reset"
    seconds: float


@dataclass
class ExecResult:
    output: bytes = b""                  # everything the code printed, exactly as sent
    value: str | None = None             # repr() of a trailing expression, if asked for and not None
    error: BoardException | None = None
    interrupted: InterruptReport | None = None
    reset: str | None = None             # "soft" or "hard" when the board rebooted under the code
    timed_out: bool = False              # the exec's own time limit ran out (it was then interrupted)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.reset is None

    @property
    def text(self) -> str:
        return board_text(self.output)


def parse_traceback(text: str, *, hide_files: tuple[str, ...] = (), rename: dict[str, str] | None = None) -> BoardException:
    """Parse MicroPython's traceback text (as printed by sys.print_exception).

    `hide_files` drops frames of our own wrapper; `rename` maps file names
    (e.g. "<string>" -> "<cell>") so the user sees where their code is.
    """
    rename = rename or {}
    frames: list[TracebackFrame] = []
    tail: list[str] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        if not raw.strip() or raw.startswith("Traceback (most recent call last)"):
            continue
        m = _FRAME.match(raw)
        if m and not tail:
            name = m["file"]
            if name in hide_files:
                continue
            frames.append(TracebackFrame(rename.get(name, name), int(m["line"]), m["func"]))
        else:
            tail.append(raw)
    if not tail:
        return BoardException("Exception", "", frames)
    m = _EXC_LINE.match(tail[0])
    if not m:
        return BoardException("Exception", "\n".join(tail), frames)
    message = "\n".join([m["message"] or ""] + tail[1:]).strip()
    return BoardException(m["type"], message, frames)


# C0 control bytes other than tab, newline, carriage return, backspace and ESC
# (ANSI colours) are shown as Unicode control pictures, so a stray \x04 or \x00
# is visible and harmless instead of silently corrupting a notebook's text.
_CONTROL_PICTURES = {c: 0x2400 + c for c in range(0x20) if c not in (0x08, 0x09, 0x0A, 0x0D, 0x1B)}
_CONTROL_PICTURES[0x7F] = 0x2421


class OutputDecoder:
    """Incremental bytes -> text for board output: UTF-8 with replacement
    characters (a sequence split across reads is kept whole), CRLF -> LF,
    control bytes made visible."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending_cr = False

    def decode(self, data: bytes, final: bool = False) -> str:
        text = self._utf8.decode(data, final)
        if self._pending_cr:
            text = "\r" + text
            self._pending_cr = False
        if text.endswith("\r") and not final:
            # It may be the first half of a CRLF split across two reads.
            text = text[:-1]
            self._pending_cr = True
        return text.replace("\r\n", "\n").translate(_CONTROL_PICTURES)


def board_text(data: bytes) -> str:
    """Decode a complete piece of board output."""
    return OutputDecoder().decode(data, final=True)


class ValuesFromExec:
    """eval() and run_internal() for any session whose exec() returns an ExecResult
    (BoardSession over a byte link, MqttSession through a broker)."""

    def exec(self, code: str, *, timeout: float | None = None, scratch: bool = False, **options: Any) -> ExecResult:
        raise NotImplementedError

    def eval(self, expression: str, timeout: float = 10.0) -> Any:
        """Evaluate an expression on the board and return it as a Python value.

        The board sends repr(); the host parses it with ast.literal_eval, never
        eval, so only plain data (numbers, strings, bytes, lists, dicts...) comes back.
        """
        # _ek.val reports the repr without touching the user's `_`. The expression runs among the
        # user's names (it may name them) and binds none: an expression statement.
        result = self.exec(f"_ek.val((\n{expression}\n))", timeout=timeout)
        if result.error:
            raise DeviceError(f"{result.error.type}: {result.error.message}")
        if result.value is None:
            return None
        try:
            return ast.literal_eval(result.value)
        except (ValueError, SyntaxError):
            raise DeviceError(f"the board's value is not plain data: {result.value[:80]}") from None

    def run_internal(self, code: str, timeout: float = 10.0) -> str:
        """Run helper code of our own in a namespace of its own (the user's globals are left
        alone); return its output, raise DeviceError if it failed."""
        result = self.exec(code, timeout=timeout, scratch=True)
        if result.error:
            raise DeviceError(f"{result.error.type}: {result.error.message}")
        return result.text
