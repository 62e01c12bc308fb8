"""The device layer: sessions with MicroPython boards. No Jupyter here."""
from .errors import BoardBusy, BoardNotResponding, CodeTooLarge, DeviceError, LinkClosed, LinkError
from .result import BoardException, ExecResult, InterruptReport, OutputDecoder, TracebackFrame, board_text
from .session import BoardSession

__all__ = [
    "BoardSession", "ExecResult", "BoardException", "TracebackFrame", "InterruptReport", "OutputDecoder",
    "board_text", "DeviceError", "BoardNotResponding", "CodeTooLarge", "BoardBusy", "LinkError", "LinkClosed",
]
