"""%mpy-cross and %esptool: thin magics over edgekernel.toolchain."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import toolchain
from .magics import REGISTRY as magics
from .magics import HostError


def _mpy_cross_args(p: Any) -> None:
    p.add_argument("source", help="a .py file on this computer")
    p.add_argument("--out", help="where to write the .mpy (default: beside the source)")


@magics.add("mpy-cross", "compile a .py file for the connected board's bytecode version and architecture",
            arguments=_mpy_cross_args)
def _mpy_cross(kernel: Any, args: Any, body: str) -> None:
    source = Path(args.source).expanduser()
    if not source.is_file():
        raise HostError("FileNotFoundError", f"no such file on this computer: {source}")
    try:
        info = toolchain.board_mpy_info(kernel.require_board())
        out = toolchain.compile_for_board(source, info, args.out)
    except toolchain.FirmwareError as exc:
        raise HostError(type(exc).__name__, str(exc)) from None
    kernel.say(f"compiled {source} for {info.describe()} -> {out} ({out.stat().st_size:,} bytes)\n")


def _esptool_args(p: Any) -> None:
    p.add_argument("action", choices=["detect", "erase", "write", "read_mac"])
    p.add_argument("image", nargs="?", help="firmware image (.bin) for write")
    p.add_argument("--chip", default="auto", help="esp8266, esp32, esp32s2, esp32s3, esp32c3... (default: detect)")
    p.add_argument("--baud", type=int, default=460800, help="flashing baud rate (default 460800)")
    p.add_argument("--offset", type=lambda v: int(v, 0), help="flash offset (default: MicroPython's for the chip)")
    p.add_argument("--no-erase", action="store_true", help="write without erasing the flash first")


@magics.add("esptool", "detect, erase or flash an ESP chip (the kernel releases the port and reconnects after)",
            arguments=_esptool_args)
def _esptool(kernel: Any, args: Any, body: str) -> None:
    connection = kernel.connection
    if not connection.connected or connection.url is None:
        raise HostError("NotConnected", "connect first (%serialconnect --port PATH): %esptool flashes that port")
    port, baud = connection.url, connection.baud
    if args.action == "write" and not args.image:
        raise HostError("UsageError", "%esptool write needs the firmware image: %esptool write FIRMWARE.bin")

    def release() -> None:
        connection.disconnect()

    def reacquire() -> None:
        try:
            connection.connect(port, baud, note="after esptool")
        except Exception as exc:  # a freshly erased chip has no MicroPython to answer
            kernel.say(f"not reconnected ({exc}); run %serialconnect when the board is ready\n", name="stderr")

    try:
        if args.action == "write":
            result = toolchain.flash_micropython(port, args.image, release, reacquire, kernel.say, chip=args.chip,
                                                erase=not args.no_erase, baud=args.baud, offset=args.offset)
        else:
            command = toolchain.esptool_args(args.action, port, chip=args.chip, baud=args.baud)
            result = toolchain.run_esptool(command, release, reacquire, kernel.say)
    except toolchain.FirmwareError as exc:
        raise HostError(type(exc).__name__, str(exc)) from None
    if getattr(result, "chip", None):
        kernel.say(f"chip: {result.chip}" + (f", MAC {result.mac}" if result.mac else "") + "\n")
