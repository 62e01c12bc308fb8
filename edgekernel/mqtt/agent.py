"""The board agent (firmware/ekagent.py): install it on a board, or run it on an emulated one.

    edgekernel agent install --port /dev/ttyUSB0 --broker mqtt://pi.local --device-id kitchen \\
        --wifi-ssid home --wifi-password-env WIFI_PASSWORD
    edgekernel board --emulator unix --mqtt mqtt://127.0.0.1:1883/kitchen

    from edgekernel.mqtt.agent import start_agent_board
    with start_agent_board("mqtt://127.0.0.1:1883/kitchen") as board:   # a unix board running the agent
        ...

The agent's settings (broker, device id, credentials, WiFi) live in ``ek_settings.json`` on the board
and ``main.py`` starts the agent at boot. Secrets go to the board's file only: never to a command
line, the terminal or a log.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..data_files import firmware_dir
from .client import MqttUrl, parse_mqtt_url, status_topic, wait_presence

__all__ = ["agent_settings", "agent_files", "install_agent", "wait_presence", "AgentBoard", "start_agent_board",
           "write_agent_to_flash", "register_board_extension", "add_agent_command", "cmd_agent_install",
           "firmware_dir", "MqttUrl", "parse_mqtt_url"]

AGENT_FILES = ("ekagent.py", "ekmqtt.py")
SETTINGS_FILE = "ek_settings.json"
MAIN_MARK = "# edgekernel MQTT agent"
MAIN_PY = f"{MAIN_MARK} (written by `edgekernel agent install`)\nimport ekagent\nekagent.main()\n"


def agent_settings(url: MqttUrl, *, password: str | None = None, wifi_ssid: str | None = None,
                   wifi_password: str | None = None, keepalive: int = 30) -> dict[str, Any]:
    settings: dict[str, Any] = {"device_id": url.device_id, "broker": url.host, "port": url.port,
                                "ssl": url.tls, "keepalive": keepalive}
    if url.user is not None:
        settings["user"] = url.user
        settings["password"] = password
    if wifi_ssid:
        settings["wifi_ssid"] = wifi_ssid
        settings["wifi_password"] = wifi_password or ""
    return settings


def agent_files(settings: dict[str, Any], *, main: bool = True) -> dict[str, bytes]:
    """Board file name -> contents: the agent, its MQTT client, its settings, and main.py."""
    src = firmware_dir()
    files = {name: (src / name).read_bytes() for name in AGENT_FILES}
    files[SETTINGS_FILE] = json.dumps(settings).encode()
    if main:
        files["main.py"] = MAIN_PY.encode()
    return files


def install_agent(board: Any, settings: dict[str, Any], *, main: bool = True, force_main: bool = False,
                  compile: bool = True) -> list[str]:
    """Write the agent onto a connected board (a BoardSession); return what was done, one line each.

    An existing main.py that is not ours is left alone (and said so) unless force_main.
    """
    from ..device.files import BoardFiles

    files = BoardFiles(board)
    notes = []
    if main and not force_main:
        try:
            current = files.get("main.py").decode(errors="replace")
        except Exception:
            current = ""
        if current and MAIN_MARK not in current:
            main = False
            notes.append("main.py exists and is not the agent's: left alone; add `import ekagent; ekagent.main()` "
                         "to it, or rerun with --force-main")
    contents = agent_files(settings, main=main)
    if compile:
        contents, note = _compiled(board, contents)
        notes.append(note)
    for name, data in contents.items():
        files.put(data, name)
        notes.append(f"wrote {name} ({len(data)} bytes)")
        if name.endswith(".mpy"):
            try:  # a stale .py of the same module would be imported instead
                files.rm(name[:-4] + ".py")
            except Exception:
                pass
    return notes


def _compiled(board: Any, contents: dict[str, bytes]) -> tuple[dict[str, bytes], str]:
    """The agent as .mpy for this board (an ESP8266 has too little RAM to compile a 17 KB .py at
    import time); the .py files, and why, when mpy-cross or the board cannot do it."""
    import tempfile

    from ..toolchain import FirmwareError, board_mpy_info, compile_for_board

    try:
        info = board_mpy_info(board)
        out = dict(contents)
        with tempfile.TemporaryDirectory() as tmp:
            for name in AGENT_FILES:
                src = Path(tmp) / name
                src.write_bytes(contents[name])
                out[name[:-3] + ".mpy"] = compile_for_board(src, info).read_bytes()
                del out[name]
        return out, f"compiled the agent to .mpy (version {info.version}) for this board"
    except (FirmwareError, OSError) as exc:
        return contents, f"kept the agent as .py (no .mpy: {exc})"


# -- emulated boards running the agent ---------------------------------------------------------

class AgentBoard:
    """An emulated unix board whose main.py runs the agent (see :func:`start_agent_board`)."""

    def __init__(self, board: Any, url: MqttUrl, status: dict[str, Any]) -> None:
        self.board = board          # edgekernel.emulator.BoardProcess
        self.url = url
        self.status = status        # its retained "online" status

    @property
    def pid(self) -> int:
        return self.board.pid

    def stop(self) -> None:
        self.board.stop()

    def kill(self) -> None:
        """Pull the cable: the broker publishes the board's last will."""
        self.board.kill()

    def __enter__(self) -> "AgentBoard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_agent_board(url: str | MqttUrl, *, password: str | None = None, timeout: float = 30.0,
                      **board_options: Any) -> AgentBoard:
    """Start an emulated unix board running the agent against the broker in `url`
    (``mqtt://[user@]host:port/DEVICE_ID``); return once the board is online."""
    from ..emulator import start_board

    url = url if isinstance(url, MqttUrl) else parse_mqtt_url(url)
    board = start_board("unix", **board_options)
    try:
        write_agent_to_flash(board.flash_dir, agent_settings(url, password=password))
        board.hard_reset()  # boots like power-on: main.py starts the agent
        status = wait_presence(url, "online", password=password, timeout=timeout)
    except BaseException:
        board.stop()
        raise
    return AgentBoard(board, url, status)


def write_agent_to_flash(flash_dir: str | os.PathLike, settings: dict[str, Any]) -> None:
    """An emulated board's flash is a host directory: write the agent's files straight into it."""
    for name, data in agent_files(settings).items():
        path = Path(flash_dir) / name
        path.write_bytes(data)
        if name == SETTINGS_FILE:
            path.chmod(0o600)


# -- `edgekernel board --mqtt URL` ------------------------------------------------------------------

def _board_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mqtt", metavar="URL",
                        help="unix: run the MQTT agent, as mqtt://[user@]broker[:port]/DEVICE_ID")
    parser.add_argument("--mqtt-password-env", metavar="VAR",
                        help="environment variable holding the MQTT password")


async def _start_on_board(args: argparse.Namespace, running: Any) -> Any:
    if not getattr(args, "mqtt", None):
        return None
    from ..emulator import BoardError

    if args.emulator != "unix":
        raise BoardError("--mqtt needs --emulator unix (the micro:bit has no network)")
    try:
        url = parse_mqtt_url(args.mqtt)
    except ValueError as exc:
        raise BoardError(str(exc)) from None
    password = _password_from_env(args.mqtt_password_env)
    write_agent_to_flash(running.info["flash"], agent_settings(url, password=password))
    running.board.hard_reset()
    running.info["mqtt"] = str(url)
    return None


def _password_from_env(var: str | None) -> str | None:
    if not var:
        return None
    value = os.environ.get(var)
    if value is None:
        from ..emulator import BoardError
        raise BoardError(f"environment variable {var} is not set (it should hold the MQTT password)")
    return value


def register_board_extension() -> None:
    """`edgekernel board --mqtt URL`: the agent runs on the emulated board."""
    from ..emulator.extensions import BoardExtension, register_extension

    register_extension(BoardExtension("mqtt", _board_arguments, _start_on_board))


# -- `edgekernel agent install` -----------------------------------------------------------------------

def add_agent_command(sub: Any) -> None:
    p = sub.add_parser("agent", help="the MQTT agent on a board: edgekernel agent install --port P --broker URL --device-id ID")
    agent_sub = p.add_subparsers(dest="agent_command", required=True)
    q = agent_sub.add_parser("install", help="write the agent, its settings and main.py to a board over serial")
    q.add_argument("--port", "-p", help="serial port of the board (default: $EDGEKERNEL_PORT or the first USB board)")
    q.add_argument("--baud", "-b", type=int, default=115200)
    q.add_argument("--broker", required=True, help="mqtt://[user@]host[:port] (mqtts:// for TLS)")
    q.add_argument("--device-id", required=True, help="the board's name on the broker: topics edgekernel/ID/...")
    q.add_argument("--password-env", metavar="VAR", help="environment variable holding the MQTT password")
    q.add_argument("--wifi-ssid", help="WLAN the board joins at boot")
    q.add_argument("--wifi-password-env", metavar="VAR", help="environment variable holding the WLAN password")
    q.add_argument("--no-main", action="store_true", help="do not write main.py (start the agent yourself)")
    q.add_argument("--force-main", action="store_true", help="replace a main.py that is not the agent's")
    q.add_argument("--no-mpy", action="store_true", help="write the agent as .py (default: .mpy compiled for the board)")
    q.set_defaults(func=cmd_agent_install)


def cmd_agent_install(args: argparse.Namespace) -> int:
    from ..device.opener import open_board
    from ..ports import auto_port

    broker = args.broker.rstrip("/")
    try:
        url = parse_mqtt_url(f"{broker}/{args.device_id}")
    except ValueError as exc:
        print(f"edgekernel: {exc}", file=sys.stderr)
        return 2
    password = wifi_password = None
    for var, what in ((args.password_env, "the MQTT password"), (args.wifi_password_env, "the WLAN password")):
        if var and var not in os.environ:
            print(f"edgekernel: environment variable {var} is not set (it should hold {what})", file=sys.stderr)
            return 2
    if args.password_env:
        password = os.environ[args.password_env]
    if url.user is not None and password is None:
        print("edgekernel: the broker URL names a user: give its password with --password-env VAR", file=sys.stderr)
        return 2
    if args.wifi_password_env:
        wifi_password = os.environ[args.wifi_password_env]
    port = args.port or os.environ.get("EDGEKERNEL_PORT") or auto_port(prefer_esp=True)[0]
    if port is None:
        print("edgekernel: no board found: plug one in or pass --port PATH", file=sys.stderr)
        return 2
    settings = agent_settings(url, password=password, wifi_ssid=args.wifi_ssid, wifi_password=wifi_password)
    with open_board(port, baud=args.baud) as board:
        for note in install_agent(board, settings, main=not args.no_main, force_main=args.force_main,
                                  compile=not args.no_mpy):
            print(note)
    print(f"agent installed for {url} on {port}: reset the board to start it "
          f"(its status appears on {status_topic(url.device_id)})")
    return 0

