"""``edgekernel board``: run an emulated board until Ctrl-C/SIGTERM, printing its serial port.

    edgekernel board --emulator unix                   # prints /dev/pts/N
    edgekernel board --emulator unix --baud 115200 --rx-buffer 256 --link /tmp/ttyESP --json

Signals: SIGTERM/SIGINT/SIGHUP stop the board (everything it started is stopped and reaped);
SIGUSR1 presses its reset button.

Extensions (``--webrepl PORT``, ``--mqtt URL``, ...) are added by registering a
:class:`BoardExtension`: it adds its options to the parser and is started once the board and its
link run, with a :class:`RunningBoard` to tap the board's output and inject input.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import shutil
import signal
import sys
import tempfile

from . import BOARD_KINDS, BoardError
from .extensions import BUILTIN_EXTENSIONS, EXTENSIONS, Cleanup, RunningBoard
from .linksim import SerialLine

DEFAULT_HEAPSIZE = "1M"  # kept in step with unix_board.DEFAULT_HEAPSIZE (not imported: keeps --help light)


def _load_builtin_extensions() -> None:
    for target in BUILTIN_EXTENSIONS:
        module, _, register = target.partition(":")
        getattr(importlib.import_module(module), register)()


def add_board_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``edgekernel board``."""
    _load_builtin_extensions()
    parser.add_argument("--emulator", choices=BOARD_KINDS, default="unix",
                        help="unix: MicroPython's unix port; microbit: QEMU micro:bit (default: unix)")
    parser.add_argument("--baud", type=int, metavar="B",
                        help="throttle the link to B baud, 8N1 (115200 = 11,520 bytes/s each way)")
    parser.add_argument("--latency-ms", type=float, default=0.0, metavar="MS",
                        help="one-way latency added to every byte (default 0)")
    parser.add_argument("--rx-buffer", type=int, metavar="N",
                        help="unix: board receive buffer of N bytes that drops overflow (ESP8266: 256)")
    parser.add_argument("--rx-rate", type=float, metavar="BPS",
                        help="unix: the board drains its receive buffer at most this fast (bytes/s); "
                             "default: as fast as MicroPython reads")
    parser.add_argument("--flash", metavar="DIR",
                        help="unix: the board's filesystem (its working directory); default: a temp dir "
                             "removed at exit")
    parser.add_argument("--heapsize", default=DEFAULT_HEAPSIZE, help="unix: MicroPython heap (default 1M)")
    parser.add_argument("--link", metavar="SYMLINK", help="also make SYMLINK point at the port")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON object (port, pid, kind, flash, ...) instead of the port path")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the board to boot")
    parser.add_argument("--advertise", action="store_true",
                        help="list this board in `edgekernel devices` while it runs (e.g. on a Pi gateway)")
    parser.add_argument("--watch-stdin", action="store_true", help=argparse.SUPPRESS)  # exit on stdin EOF
    for ext in EXTENSIONS:
        ext.add_arguments(parser)


def run_board(args: argparse.Namespace) -> int:
    """Run the board described by ``args`` until told to stop. Returns the exit status."""
    try:
        return asyncio.run(_serve(args))
    except BoardError as e:
        print(f"edgekernel board: {e}", file=sys.stderr)
        if args.json:  # start_board re-raises it with its type (e.g. EmulatorNotInstalled)
            print(json.dumps({"error": str(e), "error_type": type(e).__name__}), flush=True)
        return 1


def _make_board(args: argparse.Namespace, flash: str | None):
    if args.emulator == "microbit":
        from .microbit import MicrobitBoard
        return MicrobitBoard(rx_buffer=args.rx_buffer)
    from .unix_board import UnixBoard
    if args.rx_rate is not None and args.rx_buffer is None:
        raise BoardError("--rx-rate needs --rx-buffer")
    return UnixBoard(flash, heapsize=args.heapsize, rx_buffer=args.rx_buffer, rx_rate=args.rx_rate)


async def _serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    tmp_flash = None
    flash = None
    if args.emulator == "unix":
        flash = os.path.abspath(args.flash) if args.flash else tempfile.mkdtemp(prefix="edgekernel-flash-")
        tmp_flash = None if args.flash else flash
    board = None
    link = None
    cleanups: list[Cleanup] = []
    status = 0
    try:
        board = _make_board(args, flash)
        await board.start(args.timeout)
        link = SerialLine(board, baud=args.baud, latency_ms=args.latency_ms, symlink=args.link)
        link.start()
        loop.add_signal_handler(signal.SIGUSR1, board.hard_reset)
        info = {"port": link.port, "pty": link.front.path, "pid": os.getpid(), "kind": args.emulator,
                "flash": flash, "board_pid": board.pid, "baud": args.baud, "latency_ms": args.latency_ms,
                "rx_buffer": args.rx_buffer}
        running = RunningBoard(board, link, info, loop)
        for ext in EXTENSIONS:
            cleanup = await ext.start(args, running)
            if cleanup is not None:
                cleanups.append(cleanup)
        if getattr(args, "advertise", False):
            from ..ports import advertise_board
            advert = advertise_board(link.port, f"emulated MicroPython board ({args.emulator})")
            cleanups.append(lambda: _unadvertise(advert))
        print(json.dumps(info) if args.json else link.port, flush=True)
        if args.watch_stdin:
            try:
                loop.add_reader(0, lambda: _on_stdin(stop))
            except PermissionError:  # not pollable (a file, /dev/null): it is at EOF already
                stop.set()
        waits = [asyncio.ensure_future(stop.wait())]
        died = getattr(board, "died", None)
        if died is not None:
            waits.append(asyncio.ensure_future(died.wait()))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        if died is not None and died.is_set():
            print(f"edgekernel board: {board.death_reason}", file=sys.stderr)
            status = 1
    finally:
        for cleanup in reversed(cleanups):
            await cleanup()
        if link is not None:
            link.close()
        if board is not None and hasattr(board, "stop"):
            await board.stop()
        if tmp_flash:
            shutil.rmtree(tmp_flash, ignore_errors=True)
    return status


async def _unadvertise(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _on_stdin(stop: asyncio.Event) -> None:
    try:
        data = os.read(0, 4096)
    except OSError:
        data = b""
    if not data:
        asyncio.get_running_loop().remove_reader(0)
        stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgekernel.emulator",
                                     description="Run an emulated MicroPython board on a pseudo-terminal.")
    add_board_arguments(parser)
    return run_board(parser.parse_args(argv))
