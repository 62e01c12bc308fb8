"""The byte-link interface every transport implements.

A link moves bytes to and from a board and knows nothing of the REPL protocol
spoken over it. Reads wait on the OS (select) rather than polling with sleeps:
that is what keeps a command round trip near the wire's floor.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

#: Where a link gets a secret (a WebREPL password): called with a prompt such as
#: "WebREPL password for ws://host:8266", returns it or raises LinkError. Secrets come
#: from the environment or a prompt, never from the URL.
SecretSource = Callable[[str], str]


class BinaryChannel(Protocol):
    """Frames beside the REPL's bytes on the same connection (WebREPL's file protocol)."""

    def write_binary(self, data: bytes) -> None: ...

    def read_binary(self, n: int, deadline: float) -> bytes: ...


class LinkError(Exception):
    """A link could not be opened or used. The message says what to do."""


class LinkClosed(LinkError):
    """The link went away (port vanished, cable pulled, peer closed)."""


class Link(ABC):
    """A bidirectional byte stream to one board."""

    #: Human-readable name of the other end, e.g. "/dev/ttyUSB0".
    description: str = "?"
    #: What a user calls this kind of link in messages ("serial", "WebREPL").
    kind: str = "link"
    #: Which magic connects such a link again (for messages after it is lost).
    connect_hint: str = "%serialconnect"

    @classmethod
    def from_url(cls, url: str, *, baudrate: int, secret: SecretSource | None = None, **options: Any) -> "Link":
        """Open the link that `url` names (transports in edgekernel.links.LINK_SCHEMES define it)."""
        raise LinkError(f"{cls.__name__} cannot be opened by URL")

    def __init__(self) -> None:
        # Interrupts are written from another thread while a reader is busy.
        self._write_lock = threading.Lock()

    @abstractmethod
    def read(self, max_bytes: int, timeout: float | None) -> bytes:
        """Return 1..max_bytes bytes, or b"" when nothing arrived within timeout.

        Raises LinkClosed when the other end is gone.
        """

    @abstractmethod
    def _write(self, data: bytes) -> None: ...

    def write(self, data: bytes) -> None:
        with self._write_lock:
            self._write(data)

    @abstractmethod
    def close(self) -> None: ...

    @property
    def can_reopen(self) -> bool:
        """True when the link can connect again after the board dropped it (WebREPL: a reset does)."""
        return False

    def reopen(self, timeout: float | None = None) -> None:
        raise LinkClosed(f"{self.description}: the board disconnected")

    @property
    def dropped(self) -> bool:
        """True when the board dropped the connection and the link has not reopened it yet."""
        return False

    @property
    def binary_channel(self) -> BinaryChannel | None:
        """A second channel for binary frames beside the REPL (WebREPL's file protocol), or None."""
        return None

    @property
    def can_hard_reset(self) -> bool:
        """True when the link can reset the board itself (DTR/RTS wiring)."""
        return False

    def hard_reset(self) -> None:
        raise LinkError(f"{self.description}: this link cannot reset the board; press its reset button")

    @property
    def baudrate(self) -> int | None:
        """The line's baud rate, where there is one."""
        return None

    @property
    def connection_summary(self) -> str:
        """How the link is connected, for the connect message ("at 115200 baud", "over WebREPL")."""
        return f"over {self.kind}"

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
