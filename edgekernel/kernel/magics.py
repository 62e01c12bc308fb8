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


class HostError(Exception):
    """A failure on the host side, reported to the front end as an error reply."""

    def __init__(self, ename: str, evalue: str) -> None:
        super().__init__(evalue)
        self.ename = ename
        self.evalue = evalue


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
        if "-h" in words or "--help" in words:
            # Before parsing: help must not need the required arguments it explains.
            raise MagicHelp(self.format_help())
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
    host_only: bool = False  # never talks to the board: runs at once, even while the board is busy


class MagicRegistry:
    def __init__(self) -> None:
        self.magics: dict[str, Magic] = {}

    def add(self, name: str, summary: str, *, cell: bool = False, takes_body: bool = False, host_only: bool = False,
            arguments: Callable[[MagicParser], None] | None = None) -> Callable[[Handler], Handler]:
        """Decorator registering `handler` as %name (or %%name with cell=True).

        takes_body: a %line magic that, as a cell's first line, takes the rest
        of the cell as its body (like %sendtofile). host_only: it never talks to
        the board (it runs on the event loop, not the board worker).
        """
        def register(handler: Handler) -> Handler:
            parser = MagicParser(("%" if cell else "") + name, summary)
            if arguments:
                arguments(parser)
            key = ("%" if cell else "") + name
            self.magics[key] = Magic(name, summary, parser, handler, cell or takes_body, host_only)
            return handler
        return register

    def lookup(self, word: str) -> Magic | None:
        """`word` is what follows the first '%' of a line ('name' or '%name')."""
        return self.magics.get(word)

    @property
    def body_magics(self) -> frozenset[str]:
        """Names of %line magics that take the rest of the cell."""
        return frozenset(k for k, m in self.magics.items() if m.is_cell and not k.startswith("%"))

    def summary_lines(self) -> list[str]:
        width = max(len(k) for k in self.magics) + 2
        return [f"%{key:<{width}}{m.summary}" for key, m in sorted(self.magics.items(), key=lambda kv: kv[0].lstrip("%"))]


def split_leading_magics(code: str, body_magics: frozenset[str] = frozenset()) -> tuple[list[str], str]:
    """Split a cell into its leading %magic lines and the code after them.

    Blank lines and comments between leading magics are skipped. A %%cell
    magic, or a %line magic named in body_magics, ends the scan: everything
    after its line is its body, verbatim.
    """
    lines = code.split("\n")
    magics: list[str] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("%"):
            magics.append(stripped)
            i += 1
            if stripped.startswith("%%") or stripped[1:].split(" ", 1)[0] in body_magics:
                break
        elif not stripped or (stripped.startswith("#") and magics):
            i += 1
        else:
            break
    if not magics:
        return [], code
    # Keep line numbers of board code matching the cell: blank out consumed lines.
    last = magics[-1]
    if last.startswith("%%") or last[1:].split(" ", 1)[0] in body_magics:
        return magics, "\n".join(lines[i:])
    return magics, "\n" * i + "\n".join(lines[i:])


#: The kernel's magics (registered by kernel.py and file_magics.py).
REGISTRY = MagicRegistry()
