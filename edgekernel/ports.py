"""Finding boards: serial ports with their USB IDs and a guess of what is on them."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from serial.tools import list_ports

from .boards import EMULATED_BRIDGE, ESP_BRIDGES
from .processes import alive

# USB vendor (and product) IDs of the bridges and boards MicroPython users meet.
_BRIDGES: dict[tuple[int, int | None], tuple[str, str]] = {
    (0x10C4, 0xEA60): ("CP210x", "ESP8266/ESP32 board (NodeMCU, DevKit)"),
    (0x10C4, None): ("CP210x", "ESP8266/ESP32 board"),
    (0x1A86, 0x7523): ("CH340", "ESP8266/ESP32 board (Wemos D1 mini, NodeMCU clone)"),
    (0x1A86, 0x55D4): ("CH9102", "ESP32 board"),
    (0x1A86, None): ("CH34x", "ESP8266/ESP32 board"),
    (0x0403, None): ("FTDI", "board behind an FTDI adapter (ESP8266/ESP32 likely)"),
    (0x303A, None): ("native USB", "ESP32-S2/S3/C3 (Espressif native USB)"),
    (0x2E8A, None): ("native USB", "Raspberry Pi Pico / RP2"),
    (0xF055, None): ("native USB", "pyboard (MicroPython)"),
    (0x0D28, 0x0204): ("DAPLink", "BBC micro:bit"),
    (0x239A, None): ("native USB", "Adafruit board"),
}


@dataclass
class PortInfo:
    device: str
    vid: int | None
    pid: int | None
    serial_number: str | None
    description: str
    bridge: str | None
    board_guess: str | None

    @property
    def usb_id(self) -> str:
        return f"{self.vid:04x}:{self.pid:04x}" if self.vid is not None and self.pid is not None else "-"

    @property
    def is_esp(self) -> bool:
        return self.bridge in ESP_BRIDGES

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data["usb_id"] = self.usb_id
        return data


def guess(vid: int | None, pid: int | None) -> tuple[str | None, str | None]:
    if vid is None:
        return None, None
    return _BRIDGES.get((vid, pid)) or _BRIDGES.get((vid, None)) or (None, None)


def list_serial_ports(include_plain: bool = False) -> list[PortInfo]:
    """Serial ports, USB ones first. `include_plain` keeps ports with no USB
    IDs (on-board UARTs like /dev/ttyS0, which are rarely a board)."""
    ports = []
    for p in list_ports.comports():
        if p.vid is None and not include_plain:
            continue
        bridge, board = guess(p.vid, p.pid)
        ports.append(PortInfo(p.device, p.vid, p.pid, p.serial_number, p.description or "", bridge, board))
    ports.extend(advertised_boards())
    ports.sort(key=lambda p: (p.bridge is None, p.device))
    return ports


def auto_port(prefer_esp: bool = False) -> tuple[str | None, list[PortInfo]]:
    """Pick the most likely board port; return it with everything considered."""
    ports = list_serial_ports()
    candidates = [p for p in ports if p.bridge] or ports
    if prefer_esp:
        candidates = [p for p in candidates if p.is_esp] or candidates
    return (candidates[0].device if candidates else None), ports


# -- emulated boards advertised on this machine (`edgekernel board --advertise`) ------------------
# An emulated board has no USB IDs, so nothing would find it; while it runs it leaves a small JSON
# file here, and `edgekernel devices` (so also `edgekernel gateway add`, run over SSH) lists it.
EMULATED = EMULATED_BRIDGE


def _advertised_dir(create: bool = True):
    from .runtime import runtime_dir
    return runtime_dir("boards", create=create)


def advertise_board(device: str, description: str) -> str:
    """Advertise an emulated board on `device` for as long as this process lives; returns the file
    to remove when the board stops (a file left by a dead process is ignored and removed)."""
    path = _advertised_dir() / f"{os.getpid()}.json"
    path.write_text(json.dumps({"device": device, "description": description, "pid": os.getpid()}))
    return str(path)


def advertised_boards() -> list[PortInfo]:
    found = []
    for path in sorted(_advertised_dir(create=False).glob("*.json")):
        try:
            entry = json.loads(path.read_text())
            if not alive(int(entry["pid"])):
                raise ValueError("its board process is gone")
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # its board process is gone
            continue
        if os.path.exists(entry["device"]):
            found.append(PortInfo(entry["device"], None, None, None, entry.get("description", ""),
                                  EMULATED, entry.get("description") or "emulated MicroPython board"))
    return found
