"""Extensions of `edgekernel board`: front ends added to a running emulated board.

An extension (``--webrepl PORT``, ``--mqtt URL``, ...) registers a :class:`BoardExtension`: it adds
its options to the parser and is started once the board and its link run, with a
:class:`RunningBoard` to tap the board's output and inject input. The built-in ones are
modules named in BUILTIN_EXTENSIONS, imported when `edgekernel board` builds its options
(so this module imports none of them, and they import only this one).
"""
from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .linksim import SerialLine

#: "module:function" that registers each built-in extension (it may be called more than once).
BUILTIN_EXTENSIONS = ("edgekernel.emulator.webrepl:register_board_extension",
                      "edgekernel.mqtt.agent:register_board_extension")


@dataclass
class RunningBoard:
    """What an extension gets: the board (``rx(bytes)`` injects input as if from the serial line),
    the link (``add_listener(cb)`` receives every byte of board output) and the info dict that is
    printed with ``--json`` (add your own keys, e.g. ``info["webrepl"] = "ws://..."``)."""

    board: object
    link: SerialLine
    info: dict
    loop: asyncio.AbstractEventLoop


Cleanup = Callable[[], Awaitable[None]]


@dataclass
class BoardExtension:
    """A front end added to a running board. ``start`` returns an async cleanup or None (e.g. when its
    option was not given)."""

    name: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    start: Callable[[argparse.Namespace, RunningBoard], Awaitable[Cleanup | None]]


EXTENSIONS: list[BoardExtension] = []


def register_extension(extension: BoardExtension) -> None:
    """Add an extension (once); call before `edgekernel board` builds its parser."""
    if not any(ext.name == extension.name for ext in EXTENSIONS):
        EXTENSIONS.append(extension)


