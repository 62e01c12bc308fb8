"""Byte links to boards, chosen by URL scheme (like pyserial's serial_for_url).

Each transport is one module with a `Link` subclass that has a `from_url`
constructor; LINK_SCHEMES maps URL schemes to it (imported on first use, so a
transport's library is only needed when it is used). A new transport, BLE
say, is one file `ble_link.py` plus one line `"ble": "edgekernel.links.ble_link:BleLink"`.

- a device path (/dev/ttyUSB0, /dev/pts/3, COM3) or a pyserial URL
  (socket://host:port, rfc2217://host:port, loop://)      -> SerialLink
- ws://host:8266 (or wss://), a board's WebREPL          -> WebReplLink (asks for its password)
"""
from __future__ import annotations

import importlib

from .base import BinaryChannel, Link, LinkClosed, LinkError, SecretSource
from .serial_link import DEFAULT_BAUD, SerialLink

__all__ = ["BinaryChannel", "Link", "LinkClosed", "LinkError", "SecretSource", "SerialLink", "open_link", "link_class", "url_scheme",
           "DEFAULT_BAUD", "LINK_SCHEMES"]

#: URL scheme -> "module:class" of its Link; "" is a device path.
LINK_SCHEMES: dict[str, str] = {
    "": "edgekernel.links.serial_link:SerialLink",
    "socket": "edgekernel.links.serial_link:SerialLink",
    "rfc2217": "edgekernel.links.serial_link:SerialLink",
    "loop": "edgekernel.links.serial_link:SerialLink",
    "spy": "edgekernel.links.serial_link:SerialLink",
    "ws": "edgekernel.links.webrepl_link:WebReplLink",
    "wss": "edgekernel.links.webrepl_link:WebReplLink",
}


def url_scheme(url: str) -> str:
    """'ws' for ws://host, '' for a device path (COM3, /dev/ttyUSB0)."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def link_class(url: str) -> type[Link] | None:
    """The Link class for `url`'s scheme, or None when no transport handles it."""
    target = LINK_SCHEMES.get(url_scheme(url))
    if target is None:
        return None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def open_link(url: str, *, baudrate: int = DEFAULT_BAUD, secret: SecretSource | None = None,
              **options: object) -> Link:
    """Open the link named by `url`. `secret(prompt)` is asked only by links that need one."""
    cls = link_class(url)
    if cls is None:
        known = ", ".join(f"{s}://" for s in LINK_SCHEMES if s)
        raise LinkError(f"no transport for {url_scheme(url)}:// (known: a device path, {known})")
    return cls.from_url(url, baudrate=baudrate, secret=secret, **options)
