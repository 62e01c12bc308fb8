"""Connecting magics: %serialconnect, %websocketconnect, %mqttconnect, %disconnect, %reboot.

Thin: each parses its words and asks the kernel's Connection. Passwords are asked
with a hidden prompt in the front end, or read from an environment variable named by
--password-env; they go to the link only: never to the cell, the state file that lets
a restarted kernel reconnect, the session log, or an error.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

from ..links import url_scheme
from .magics import REGISTRY as magics
from .magics import HostError


def _serialconnect_args(p: Any) -> None:
    p.add_argument("--port", "-p", help="device path or pyserial URL (default: auto-detect by USB ID)")
    p.add_argument("--baud", "-b", type=int, default=None, help="baud rate (default 115200)")
    p.add_argument("--emulator", choices=["unix", "microbit"], help="start and connect an emulated board")


@magics.add("serialconnect", "connect to a board on a serial port (auto-detected by USB ID)",
            arguments=_serialconnect_args)
def _serialconnect(kernel: Any, args: Any, body: str) -> None:
    connection = kernel.connection
    if args.emulator:
        connection.start_emulator(args.emulator)
        return
    port = args.port
    if port and url_scheme(port) in ("ws", "wss"):
        raise HostError("UsageError", f"{port} is a WebREPL: connect with %websocketconnect {port} "
                                      "(it asks for the password)")
    if port and url_scheme(port) in ("mqtt", "mqtts"):
        raise HostError("UsageError", f"{port} is a board behind an MQTT broker: connect with %mqttconnect {port}")
    if port is None:
        if connection.profile.emulator:
            connection.start_emulator(connection.profile.emulator)
            return
        port = connection.auto_port()
        if port is None:
            raise HostError("NoBoardFound", "no USB serial board found: plug one in or give --port PATH "
                                            "(no hardware at hand? %serialconnect --emulator unix)")
    connection.connect(port, args.baud)


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


@magics.add("websocketconnect", "connect to a board's WebREPL (ws://HOST:8266); asks for the password",
            arguments=_websocketconnect_args)
def _websocketconnect(kernel: Any, args: Any, body: str) -> None:
    _refuse_password_in_cell(args)
    url = args.url if "://" in args.url else f"ws://{args.url}"
    if url_scheme(url) not in ("ws", "wss"):
        raise HostError("UsageError", f"not a WebREPL address: {args.url} (expected ws://HOST:8266)")
    kernel.connection.connect(url, password_env=args.password_env)


def _mqttconnect_args(p: Any) -> None:
    p.add_argument("url", help="mqtt://[user@]broker[:port]/DEVICE_ID (mqtts:// for TLS)")
    _password_args(p)
    p.add_argument("--ca", metavar="FILE", help="CA certificate of the broker (mqtts://)")
    p.add_argument("--insecure", action="store_true", help="mqtts:// without checking the certificate")


@magics.add("mqttconnect", "run board cells through an MQTT broker and the board's agent", arguments=_mqttconnect_args)
def _mqttconnect(kernel: Any, args: Any, body: str) -> None:
    _refuse_password_in_cell(args)
    if url_scheme(args.url) not in ("mqtt", "mqtts"):
        raise HostError("UsageError", f"not an MQTT board address: {args.url} "
                                      "(expected mqtt://[user@]broker[:port]/DEVICE_ID)")
    options = [f"ca={quote(args.ca)}"] if args.ca else []
    options += ["insecure=1"] if args.insecure else []
    url = args.url + ("?" + "&".join(options) if options else "")
    kernel.connection.connect(url, password_env=args.password_env)


@magics.add("disconnect", "release the board's port (leaves it in its friendly REPL)")
def _disconnect(kernel: Any, args: Any, body: str) -> None:
    was = kernel.connection.disconnect(forget=True)
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
