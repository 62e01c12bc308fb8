"""The contract every board implements.

A *board* runs code and streams its output back: BoardSession does it over any
byte link (serial, WebREPL, ...), MqttSession through a broker and the board's
agent. Everything above the device layer (the kernel, the CLI, the agent
installer) speaks to `Board` only, and opens one with
edgekernel.device.opener.open_board(url).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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
