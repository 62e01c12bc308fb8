"""Byte links to boards, chosen by URL (like pyserial's serial_for_url).

- a device path (/dev/ttyUSB0, /dev/pts/3, COM3) or a pyserial URL
  (socket://host:port, rfc2217://host:port, loop://)      -> SerialLink
- ws://host:8266 (or wss://), a board's WebREPL          -> WebReplLink (needs password=...)
"""
from __future__ import annotations

from .base import Link, LinkClosed, LinkError
from .serial_link import DEFAULT_BAUD, SerialLink

__all__ = ["Link", "LinkClosed", "LinkError", "SerialLink", "open_link", "DEFAULT_BAUD", "is_webrepl_url"]


def is_webrepl_url(url: str) -> bool:
    return url.startswith(("ws://", "wss://"))


def open_link(url: str, *, baudrate: int = DEFAULT_BAUD, **options: object) -> Link:
    """Open the link named by `url`. Transports register by URL scheme here."""
    if is_webrepl_url(url):
        from .webrepl_link import WebReplLink
        options.pop("esp_reset_lines", None)
        return WebReplLink(url, **options)  # type: ignore[arg-type]
    return SerialLink(url, baudrate, **options)  # type: ignore[arg-type]
