"""The one opener for board addresses: open_board(url).

Board addresses are URLs chosen by scheme, as pyserial's serial_for_url does
for ports: BOARD_SCHEMES names the schemes that are boards of their own kind
(MQTT); every other scheme is a byte link (edgekernel.links.LINK_SCHEMES) with
a BoardSession over it. Options travel in the URL's query
(``mqtts://broker/kitchen?ca=/etc/ca.pem``); secrets never do: they come from
`secret(prompt)`, which reads the environment or asks the user.
"""
from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..links import LINK_SCHEMES, LinkError, SecretSource, url_scheme
from .board import Board, OutputCallback
from .session import BoardSession

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
    return BoardSession.open(url, baud, timeout=timeout, log=log,
                             link_options={**(link_options or {}), "secret": secret})
