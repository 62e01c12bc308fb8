"""Connecting magics: %serialconnect, %websocketconnect, %mqttconnect, %disconnect, %reboot,
and the notebook's boards: %board, %boards, %%on.

Thin: each parses its words and asks the kernel (`kernel.connect_board`, `kernel.boards`) or
the board's Connection. Passwords are asked with a hidden prompt in the front end, or read
from an environment variable named by --password-env; they go to the link only: never to the
cell, the state file that lets a restarted kernel reconnect, the session log, or an error.

`--as NAME` on a connect magic adds a board to the notebook under that name (without it the
magic connects the current board, replacing what it was connected to, as a one-board notebook
always has); the board connected becomes the one later cells run on.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

from ..links import url_scheme
from .magics import REGISTRY as magics
from .magics import HostError


def _as_arg(p: Any) -> None:
    p.add_argument("--as", dest="name", metavar="NAME",
                   help="add the board to the notebook under this name (%%board NAME switches to it, "
                        "%%%%on NAME runs one cell there); default: connect the current board")


def _serialconnect_args(p: Any) -> None:
    p.add_argument("--port", "-p", help="device path or pyserial URL (default: auto-detect by USB ID)")
    p.add_argument("--baud", "-b", type=int, default=None, help="baud rate (default 115200)")
    p.add_argument("--emulator", choices=["unix", "microbit"], help="start and connect an emulated board")
    _as_arg(p)


@magics.add("serialconnect", "connect to a board on a serial port (auto-detected by USB ID); --as NAME adds one",
            arguments=_serialconnect_args)
async def _serialconnect(kernel: Any, args: Any, body: str) -> None:
    port = args.port
    if port and url_scheme(port) in ("ws", "wss"):
        raise HostError("UsageError", f"{port} is a WebREPL: connect with %websocketconnect {port} "
                                      "(it asks for the password)")
    if port and url_scheme(port) in ("mqtt", "mqtts"):
        raise HostError("UsageError", f"{port} is a board behind an MQTT broker: connect with %mqttconnect {port}")
    emulator = args.emulator or (kernel.profile.emulator if port is None else None)

    def connect(connection: Any) -> None:
        if emulator:
            connection.start_emulator(emulator)
            return
        found = port or connection.auto_port()
        if found is None:
            raise HostError("NoBoardFound", "no USB serial board found: plug one in or give --port PATH "
                                            "(no hardware at hand? %serialconnect --emulator unix)")
        connection.connect(found, args.baud)

    await kernel.connect_board(args.name, connect, target=f"emulator {emulator}" if emulator else port)


def _password_args(p: Any) -> None:
    p.add_argument("--password-env", metavar="VAR",
                   help="read the password from this environment variable of the kernel (default: ask for it)")
    p.add_argument("--password", help="not accepted: a password in a cell ends up in the notebook file")


def _refuse_password_in_cell(args: Any) -> None:
    if args.password is not None:
        raise HostError("UsageError", "a password in a cell would be saved in the notebook: leave out --password "
                                      "to be asked for it, or use --password-env VAR")


def _websocketconnect_args(p: Any) -> None:
    p.add_argument("url", help="the board's WebREPL, ws://HOST:8266 (the ESP8266's own network: ws://192.168.4.1:8266)")
    _password_args(p)
    _as_arg(p)


@magics.add("websocketconnect", "connect to a board's WebREPL (ws://HOST:8266); asks for the password",
            arguments=_websocketconnect_args)
async def _websocketconnect(kernel: Any, args: Any, body: str) -> None:
    _refuse_password_in_cell(args)
    url = args.url if "://" in args.url else f"ws://{args.url}"
    if url_scheme(url) not in ("ws", "wss"):
        raise HostError("UsageError", f"not a WebREPL address: {args.url} (expected ws://HOST:8266)")
    await kernel.connect_board(args.name, lambda connection: connection.connect(url, password_env=args.password_env),
                               target=url)


def _mqttconnect_args(p: Any) -> None:
    p.add_argument("url", help="mqtt://[user@]broker[:port]/DEVICE_ID (mqtts:// for TLS)")
    _password_args(p)
    p.add_argument("--ca", metavar="FILE", help="CA certificate of the broker (mqtts://)")
    p.add_argument("--insecure", action="store_true", help="mqtts:// without checking the certificate")
    _as_arg(p)


@magics.add("mqttconnect", "run board cells through an MQTT broker and the board's agent", arguments=_mqttconnect_args)
async def _mqttconnect(kernel: Any, args: Any, body: str) -> None:
    _refuse_password_in_cell(args)
    if url_scheme(args.url) not in ("mqtt", "mqtts"):
        raise HostError("UsageError", f"not an MQTT board address: {args.url} "
                                      "(expected mqtt://[user@]broker[:port]/DEVICE_ID)")
    options = [f"ca={quote(args.ca)}"] if args.ca else []
    options += ["insecure=1"] if args.insecure else []
    url = args.url + ("?" + "&".join(options) if options else "")
    await kernel.connect_board(args.name, lambda connection: connection.connect(url, password_env=args.password_env),
                               target=url)


def _disconnect_args(p: Any) -> None:
    p.add_argument("name", nargs="?", help="the board to disconnect (default: the current one); "
                                           "a named board leaves the notebook")


@magics.add("disconnect", "release the board's port (leaves it in its friendly REPL)", arguments=_disconnect_args)
async def _disconnect(kernel: Any, args: Any, body: str) -> None:
    was = await kernel.disconnect_board(args.name)
    kernel.say(f"disconnected from {was}\n" if was else "not connected\n")


def _reboot_args(p: Any) -> None:
    p.add_argument("--hard", action="store_true", help="reset the chip (DTR/RTS on ESP boards) instead of a soft reset")


@magics.add("reboot", "soft-reset the board (clean heap, boot.py runs); --hard resets the chip", arguments=_reboot_args)
def _reboot(kernel: Any, args: Any, body: str) -> None:
    board = kernel.require_board()
    if args.hard:
        kernel.connection.hard_reset()
        return
    board.soft_reset()
    kernel.say("soft reset done: the board's variables are cleared\n")


# -- several boards ------------------------------------------------------------------------------

def _board_args(p: Any) -> None:
    p.add_argument("name", nargs="?", help="the board later cells run on (%%boards lists them)")


@magics.add("board", "make the named board the one later cells run on (--as NAME names a board); "
                     "alone: which board is active", arguments=_board_args, host_only=True)
def _board(kernel: Any, args: Any, body: str) -> None:
    boards = kernel.boards
    if args.name is None:
        if not boards.names():
            raise HostError("NoBoards", "no board is connected yet: connect one with %serialconnect --port PATH "
                                        "(or --emulator unix); --as NAME names it")
        slot = boards.active_slot
        kernel.say(f"the active board is {slot.name!r}: {slot.connection.where}, {slot.state_text()}\n")
        return
    slot = boards.activate(args.name)
    kernel.say(f"cells now run on {slot.name!r}: {slot.connection.where}, {slot.state_text()}\n")


@magics.add("boards", "list the notebook's boards: name, URL, state, which one is active", host_only=True)
def _boards(kernel: Any, args: Any, body: str) -> None:
    rows = kernel.boards.rows()
    if not rows:
        kernel.say("no board is connected yet (the first board cell connects one; %serialconnect ... --as NAME "
                   "adds a named one)\n")
        return
    table = [("", "name", "url", "state")] + [("*" if active else "", name, where, state)
                                                for name, where, state, active in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3] for row in table]
    kernel.say("\n".join(line.rstrip() for line in lines) + "\n* the active board: cells run on it "
               "(%board NAME switches, %%on NAME runs one cell elsewhere)\n")


def _on_args(p: Any) -> None:
    p.add_argument("name", help="the board this cell runs on")


@magics.add("on", "run this cell on the named board (it may start with magics: %%on left, then %ls or %%bg)",
            cell=True, arguments=_on_args)
async def _on(kernel: Any, args: Any, body: str) -> Any:
    # A leading newline keeps the board code's line numbers those of the notebook cell.
    return await kernel.run_cell_on(args.name, "\n" + body)
