"""The contract every board implements, and the one opener for board addresses.

A *board* runs code and streams its output back: BoardSession does it over any
byte link (serial, WebREPL, ...), MqttSession through a broker and the board's
agent. Everything above the device layer (the kernel, the CLI, the gateway)
speaks to `Board` only, and opens one with `open_board(url)`.

Board addresses are URLs chosen by scheme, as pyserial's serial_for_url does
for ports: BOARD_SCHEMES names the schemes that are boards of their own kind
(MQTT); every other scheme is a byte link (edgekernel.links.LINK_SCHEMES) with
a BoardSession over it. Options travel in the URL's query
(``mqtts://broker/kitchen?ca=/etc/ca.pem``); secrets never do: they come from
`secret(prompt)`, which reads the environment or asks the user.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..links import LINK_SCHEMES, LinkError, SecretSource, url_scheme
from .result import ExecResult

OutputCallback = Callable[[bytes], None]
InputCallback = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Capabilities:
    """What a board can do over its connection; callers ask this instead of its type."""

    #: Raw-paste mode with flow control: None until the first large cell finds out.
    raw_paste: bool | None
    #: The connection can reset the chip itself (DTR/RTS wiring).
    hard_reset: bool
    #: A raw byte stream reaches the board: streamed file transfers and input() work.
    byte_stream: bool
    #: WebREPL's binary file protocol is available besides the REPL transfers.
    file_protocol: bool
    #: How Kernel -> Interrupt reaches running code ("ctrl-c" on the REPL, "agent" over MQTT, "none").
    interrupt: str
    #: The connection survives a soft reset by itself (a WebREPL board drops it and the link logs in again).
    reconnects: bool = False


@runtime_checkable
class Board(Protocol):
    """A MicroPython board the host runs code on. Implemented by BoardSession and MqttSession."""

    closed: bool

    @property
    def description(self) -> str:
        """Where the board is, for messages: "/dev/ttyUSB0", "ws://192.168.4.1:8266/", "mqtt://broker/kitchen"."""

    @property
    def summary(self) -> str:
        """How it is connected, for the connect message: "at 115200 baud (raw-paste)", "through the broker: ..."."""

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def running(self) -> bool:
        """True while code runs (completion and inspection then answer without asking the board)."""

    def exec(self, code: str | bytes, *, on_output: OutputCallback | None = None,
             on_input: InputCallback | None = None, show_value: bool = False,
             timeout: float | None = None, filename: str = "<cell>") -> ExecResult:
        """Run `code` in the user's namespace, streaming output to on_output."""

    def eval(self, expression: str, timeout: float = 10.0) -> Any:
        """The value of `expression` as host data (repr parsed with ast.literal_eval, never eval)."""

    def run_internal(self, code: str, timeout: float = 10.0) -> str:
        """Run edgekernel's own code in a throw-away namespace; its output, or DeviceError."""

    def interrupt(self) -> None:
        """Stop running code (callable from any thread)."""

    def soft_reset(self, timeout: float = 10.0) -> None: ...

    def hard_reset(self, timeout: float = 10.0) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Board": ...

    def __exit__(self, *exc: object) -> None: ...


#: URL scheme -> "module:function(url, *, secret, timeout, log, **options) -> Board" for boards
#: that are not a byte link with a REPL; imported on first use.
BOARD_SCHEMES: dict[str, str] = {
    "mqtt": "edgekernel.mqtt.session:open_mqtt_board",
    "mqtts": "edgekernel.mqtt.session:open_mqtt_board",
}


def board_schemes() -> list[str]:
    """Every scheme open_board accepts ("" is a device path)."""
    return sorted(set(LINK_SCHEMES) | set(BOARD_SCHEMES))


def split_options(url: str) -> tuple[str, dict[str, str]]:
    """("mqtts://h/kitchen", {"ca": "/x"}) from "mqtts://h/kitchen?ca=/x"; device paths as they are."""
    if not url_scheme(url):
        return url, {}
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="")), dict(parse_qsl(parts.query))


def open_board(url: str, *, baud: int = 115200, secret: SecretSource | None = None, timeout: float = 10.0,
               log: OutputCallback | None = None, link_options: dict[str, Any] | None = None) -> Board:
    """Open and connect the board that `url` names.

    `secret(prompt)` supplies passwords (WebREPL, an MQTT user's), from the
    environment or a prompt; `log` receives every byte the board sends;
    `link_options` go to a byte link (e.g. esp_reset_lines for SerialLink).
    """
    scheme = url_scheme(url)
    opener = BOARD_SCHEMES.get(scheme)
    if opener is not None:
        module, _, name = opener.partition(":")
        bare, options = split_options(url)
        return getattr(importlib.import_module(module), name)(bare, secret=secret, timeout=timeout, log=log, **options)
    if scheme not in LINK_SCHEMES:
        known = ", ".join(f"{s}://" for s in board_schemes() if s)
        raise LinkError(f"no way to reach a board at {url}: use a device path or one of {known}")
    from .session import BoardSession

    return BoardSession.open(url, baud, timeout=timeout, log=log,
                             link_options={**(link_options or {}), "secret": secret})
