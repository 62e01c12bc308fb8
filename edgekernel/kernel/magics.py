"""Magic commands: a registry of argparse parsers with real argument errors.

A magic is a function taking the kernel and its parsed arguments. Magics stay
thin: they parse, then call the kernel or the device layer.
"""
from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class MagicError(Exception):
    """A magic was used wrongly; the message says how to use it."""


class MagicHelp(Exception):
    """--help was asked for; the message is the help text."""


class MagicParser(argparse.ArgumentParser):
    """argparse that reports errors instead of exiting the kernel."""

    def __init__(self, name: str, description: str) -> None:
        super().__init__(prog=f"%{name}", description=description, add_help=False, exit_on_error=False,
                         formatter_class=lambda prog: argparse.HelpFormatter(prog, width=1000))
        self.add_argument("-h", "--help", action="store_true", help="show this help")

    def error(self, message: str) -> None:  # type: ignore[override]
        raise MagicError(f"{self.prog}: {message} (usage: {self.format_usage().strip()[7:]})")

    def parse_line(self, line: str) -> argparse.Namespace:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise MagicError(f"{self.prog}: {exc}") from None
        try:
            args = self.parse_args(words)
        except argparse.ArgumentError as exc:
            self.error(str(exc))
        if args.help:
            raise MagicHelp(self.format_help())
        return args


Handler = Callable[[Any, argparse.Namespace, str], Any]


@dataclass
class Magic:
    name: str
    summary: str
    parser: MagicParser
    handler: Handler
    is_cell: bool = False   # %%name: takes the rest of the cell as its body


class MagicRegistry:
    def __init__(self) -> None:
        self.magics: dict[str, Magic] = {}

    def add(self, name: str, summary: str, *, cell: bool = False,
            arguments: Callable[[MagicParser], None] | None = None) -> Callable[[Handler], Handler]:
        """Decorator registering `handler` as %name (or %%name with cell=True)."""
        def register(handler: Handler) -> Handler:
            parser = MagicParser(("%" if cell else "") + name, summary)
            if arguments:
                arguments(parser)
            self.magics[("%" if cell else "") + name] = Magic(name, summary, parser, handler, cell)
            return handler
        return register

    def lookup(self, word: str) -> Magic | None:
        """`word` is what follows the first '%' of a line ('name' or '%name')."""
        return self.magics.get(word)

    def summary_lines(self) -> list[str]:
        width = max(len(k) for k in self.magics) + 2
        return [f"%{key:<{width}}{m.summary}" for key, m in sorted(self.magics.items(), key=lambda kv: kv[0].lstrip("%"))]


def split_leading_magics(code: str) -> tuple[list[str], str]:
    """Split a cell into its leading %magic lines and the code after them.

    Blank lines and comments between leading magics are skipped. A %%cell
    magic ends the scan: everything after its line is its body.
    """
    lines = code.split("\n")
    magics: list[str] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("%"):
            magics.append(stripped)
            i += 1
            if stripped.startswith("%%"):
                break
        elif not stripped or (stripped.startswith("#") and magics):
            i += 1
        else:
            break
    if not magics:
        return [], code
    # Keep line numbers of board code matching the cell: blank out consumed lines.
    rest = "\n" * i + "\n".join(lines[i:]) if not magics[-1].startswith("%%") else "\n".join(lines[i:])
    return magics, rest
