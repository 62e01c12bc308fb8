"""The kinds of board edgekernel has a kernel for: one table, read by the kernel's
profiles, `edgekernel install` and the tests that hold kernelspecs/ to it.

kernelspecs/NAME/kernel.json stays the source of the installed specs (with their
logos); tests/test_board_kinds.py checks that each agrees with its row here.
A new board kind is one row here plus its kernelspec folder.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BoardKind:
    #: EDGEKERNEL_PROFILE in the kernelspec's env.
    profile: str
    #: The kernelspec's folder name under kernelspecs/ and its display name in the launcher.
    kernelspec: str
    display: str
    #: Auto-connect picks ESP boards (CP210x, CH340, FTDI bridges) over other USB boards.
    prefer_esp: bool = False
    #: The board's DTR/RTS drive EN/GPIO0 (NodeMCU wiring): kept equal, and pulsed for a hard reset.
    esp_reset_lines: bool = False
    #: The kind of emulated board this kernel starts by itself ("" for none).
    emulator: str = ""
    #: The kernel connects through an MQTT broker (EDGEKERNEL_MQTT_URL in its kernelspec's env).
    mqtt: bool = False
    #: USB serial bridges (edgekernel.ports names them by USB id) whose boards are of this kind.
    usb_bridges: frozenset[str] = frozenset()
    #: What a gateway calls a board of this kind found on a Pi ("MicroPython ESP8266 on pi1 (ttyUSB0)").
    gateway_display: str = "MicroPython"


ESP_BRIDGES = frozenset({"CP210x", "CH340", "CH9102", "CH34x", "FTDI"})
EMULATED_BRIDGE = "emulated"   # what `edgekernel board --advertise` lists as an emulated board's bridge

BOARD_KINDS: tuple[BoardKind, ...] = (
    BoardKind("esp8266", "micropython-esp8266", "MicroPython ESP8266", prefer_esp=True, esp_reset_lines=True,
              usb_bridges=ESP_BRIDGES, gateway_display="MicroPython ESP8266"),
    BoardKind("serial", "micropython", "MicroPython (serial)"),
    BoardKind("emulator", "micropython-emulator", "MicroPython (emulated board)", emulator="unix",
              usb_bridges=frozenset({EMULATED_BRIDGE}), gateway_display="MicroPython (emulated board)"),
    BoardKind("mqtt", "micropython-mqtt", "MicroPython (MQTT)", mqtt=True),
)

DEFAULT_PROFILE = "serial"


def kind_for_bridge(bridge: str | None) -> BoardKind:
    """The kind of a board found behind a USB bridge (or advertised as emulated); plain serial otherwise."""
    for kind in BOARD_KINDS:
        if bridge in kind.usb_bridges:
            return kind
    return board_kind(DEFAULT_PROFILE)


def board_kind(profile: str | None) -> BoardKind:
    """The row for a kernelspec's EDGEKERNEL_PROFILE (the serial kernel's for an unknown one)."""
    for kind in BOARD_KINDS:
        if kind.profile == profile:
            return kind
    return board_kind(DEFAULT_PROFILE)
