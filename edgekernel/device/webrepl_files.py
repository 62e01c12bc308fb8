"""WebREPL's own file protocol (binary frames), for sessions on a ws:// link.

Wire (DESIGN.md §4): an 82-byte little-endian request ``<2sBBQLH64s`` = (``WA``, op, 0, 0, size,
name length, name). Put: the board answers ``WB`` + u16 0, takes ``size`` bytes, answers ``WB`` + 0
again. Get: ``WB`` + 0, then for each ``\\x00`` the client sends, u16 length + up to 256 bytes; length
0 ends it, then ``WB`` + 0. Version: 3 bytes. A board that cannot open the file does not answer: it
drops the connection. That is reported, and the session connects again.

Transfers run at the board's idle prompt with the session held, so nothing else talks meanwhile.
Verification (length and hash computed on the board) is BoardFiles' job, as for the REPL path.
"""
from __future__ import annotations

import struct
import time
from collections.abc import Callable

from ..links import LinkClosed, LinkError
from .errors import DeviceError
from .board import Board
from .session import BoardSession

REQUEST = struct.Struct("<2sBBQLH64s")
PUT_FILE, GET_FILE, GET_VER = 1, 2, 3
OK = b"WB\x00\x00"
PUT_FRAME = 1024    # what the official clients send; the board reads 512 bytes at a time

Progress = Callable[[int, int], None]


class WebReplFileError(DeviceError):
    """A WebREPL file transfer failed; the message says what happened and what is left."""


def supports_file_protocol(board: Board) -> bool:
    return board.capabilities.file_protocol


def _request(op: int, name: str, size: int = 0) -> bytes:
    raw = name.encode()
    if len(raw) > 63:
        raise WebReplFileError(f"{name}: WebREPL file names are at most 63 bytes")
    return REQUEST.pack(b"WA", op, 0, 0, size, len(raw), raw)


class WebReplFiles:
    """put/get/version over WebREPL's binary frames."""

    def __init__(self, session: BoardSession, *, timeout: float = 30.0) -> None:
        if not supports_file_protocol(session):
            raise WebReplFileError(f"{session.link.description}: not a WebREPL link")
        channel = session.link.binary_channel
        assert channel is not None
        self.session = session
        self.channel = channel
        self.timeout = timeout

    def _reply(self, what: str, deadline: float) -> None:
        code = self.channel.read_binary(4, deadline)
        if code != OK:
            raise WebReplFileError(f"{what}: the board answered {code!r} instead of WB 0")

    def _dropped(self, what: str, during: str) -> WebReplFileError:
        """The board dropped the connection: connect again so the session goes on, and say so."""
        try:
            # The session is held (exclusive()): reopen without taking it again.
            self.session.reopen_after_drop()
            again = "reconnected"
        except (LinkError, DeviceError) as exc:
            again = f"reconnecting failed too ({exc})"
        return WebReplFileError(f"{what} failed: the board dropped the WebREPL connection {during}; {again}")

    def version(self) -> tuple[int, int, int]:
        with self.session.exclusive():
            self.channel.write_binary(_request(GET_VER, ""))
            v = self.channel.read_binary(3, time.monotonic() + self.timeout)
        return v[0], v[1], v[2]

    def put(self, data: bytes, dest: str, progress: Progress | None = None) -> None:
        what = f"put {dest} (WebREPL file protocol)"
        request = _request(PUT_FILE, dest, len(data))
        with self.session.exclusive():
            deadline = time.monotonic() + self.timeout + len(data) / 2000
            opened = False
            try:
                self.channel.write_binary(request)
                self._reply(what, deadline)
                opened = True
                view = memoryview(data)
                for i in range(0, len(data), PUT_FRAME):
                    self.channel.write_binary(bytes(view[i: i + PUT_FRAME]))
                    if progress is not None:
                        progress(min(len(data), i + PUT_FRAME), len(data))
                self._reply(what, deadline)
            except LinkClosed:
                raise self._dropped(what, "mid-transfer (a partial file may be left)" if opened else
                                    "instead of opening the file (does its folder exist?)") from None

    def get(self, src: str, progress: Progress | None = None, total: int | None = None) -> bytes:
        what = f"get {src} (WebREPL file protocol)"
        out = bytearray()
        with self.session.exclusive():
            deadline = time.monotonic() + self.timeout
            opened = False
            try:
                self.channel.write_binary(_request(GET_FILE, src))
                self._reply(what, deadline)
                opened = True
                while True:
                    # One chunk per pull, strictly in turn (as the board expects).
                    self.channel.write_binary(b"\x00")
                    deadline = time.monotonic() + self.timeout
                    n = int.from_bytes(self.channel.read_binary(2, deadline), "little")
                    if n == 0:
                        break
                    out += self.channel.read_binary(n, deadline)
                    if progress is not None and total:
                        progress(min(total, len(out)), total)
                self._reply(what, deadline)
            except LinkClosed:
                raise self._dropped(what, "mid-transfer" if opened else
                                    "instead of opening the file (does it exist?)") from None
        return bytes(out)
