"""An emulated WebREPL in front of an emulated board's real REPL (``edgekernel board --webrepl PORT``).

Serves ``ws://127.0.0.1:PORT/`` the way MicroPython's ``webrepl`` does on an ESP8266 (DESIGN.md §4):

* the websocket upgrade on any path (a plain HTTP request gets a small page and is closed);
* ``Password: ``, then ``\\r\\nWebREPL connected\\r\\n>>> `` or ``\\r\\nAccess denied\\r\\n`` and a
  close; only the first 10 bytes typed count (so passwords are at most 9 characters);
* one client at a time: another is closed right after the upgrade;
* text frames are the REPL's input and output (bytes, not checked for UTF-8); pings get no answer;
  a close frame is answered and ends the session; a frame with a 64-bit length drops the connection;
* the binary file protocol byte for byte (82-byte ``<2sBBQLH64s`` request; put, get in ≤256-byte
  chunks pulled by ``\\x00``, version), with a failed open dropping the connection;
* the board outlives connections: REPL mode (raw stays raw), variables and files persist;
* a reset drops the client (a soft reset after sending ``MPY: soft reboot``; a hard reset with a
  TCP reset) and connections are refused until the board is back at a prompt (or for 1 s, when
  a main.py keeps running).

``faithful=True`` (``--webrepl-faithful``) reproduces the board's timing: every frame's header and
payload are written separately with Nagle's algorithm on (so a client that delays its ACKs waits
~40 ms per exchange), and the file protocol pauses 20 ms per chunk (``MICROPY_PY_WEBREPL_DELAY``).

Not emulated: WiFi latency and loss; the 256-byte stdin ring buffer (add ``--rx-buffer 256``);
one frame per ``print`` write (output is framed as the pty delivers it); the board's heap and
the file buffer's RAM; the listening gap is modelled as refused connections, not as a silent
board; a hard reset sends a TCP reset at once, where a real board goes silent and the client only
learns at its next write; file transfers are served even while code runs (a board serves them only
while its REPL waits for input); the board's own console messages (``dupterm: Exception ...``).

The password comes from an environment variable (``--webrepl-password-env``, default
``WEBREPL_PASSWORD``), never from the command line.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import socket
import struct
import sys

from .extensions import BoardExtension, RunningBoard, register_extension

PASSWORD_ENV = "WEBREPL_PASSWORD"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
REQUEST = struct.Struct("<2sBBQLH64s")   # 82 bytes
PUT_FILE, GET_FILE, GET_VER = 1, 2, 3
VERSION = (1, 29, 0)                     # the emulated interpreter's MicroPython version
CHUNK_DELAY_S = 0.020                    # ESP8266: MICROPY_PY_WEBREPL_DELAY
PUT_PIECE = 512                          # the board reads a put in 512-byte pieces
GET_PIECE = 256                          # and sends a get in 256-byte chunks
OUTPUT_HIGH_WATER = 256 * 1024           # pause the board's output while this much waits for the client
SOFT_REBOOT = b"MPY: soft reboot\r\n"
BOOT_LISTEN_S = 1.0                      # after a reset, listen again by then even without a prompt
_PROMPTS = (b">>> ", b"raw REPL; CTRL-B to exit\r\n>")
HTML = (b"HTTP/1.0 200 OK\r\n\r\n<html><head><title>WebREPL</title></head><body>"
        b"This is an emulated MicroPython WebREPL; connect with a WebREPL client.</body></html>\r\n")


def frame_header(opcode: int, length: int) -> bytes:
    """An unmasked, unfragmented frame's header, as the board writes it."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return bytes((0x80 | opcode, 126)) + length.to_bytes(2, "big")
    raise ValueError("the board cannot send frames of 64 KiB or more")


def _unmask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    if not n:
        return data
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


class _Drop(Exception):
    """End the connection without a close frame (what the board does on errors)."""


class WebReplServer:
    """The emulated WebREPL of one board. ``start()`` binds 127.0.0.1:port (0 = any free port)."""

    def __init__(self, running: RunningBoard, port: int, password: str, *, faithful: bool = False,
                 chunk_delay: float | None = None) -> None:
        self.running = running
        self.board = running.board
        self.port = port
        self._password = password.encode()
        self.faithful = faithful
        self.chunk_delay = CHUNK_DELAY_S if (faithful and chunk_delay is None) else (chunk_delay or 0.0)
        self.flash = os.path.realpath(running.info.get("flash") or os.getcwd())
        self.client: _Client | None = None     # the logged-in (or logging-in) session
        self._server: asyncio.AbstractServer | None = None
        self._restarts = self._board_restarts()
        self._ready = True                     # False from a reset until the board's next prompt
        self._tail = b""
        self.stats = {"connections": 0, "rejected": 0, "denied": 0}

    def _board_restarts(self) -> int:
        return getattr(self.board, "stats", {}).get("restarts", 0)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.running.link.add_listener(self._on_board_output)

    async def close(self) -> None:
        if self.client is not None:
            self.client.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- board output --------------------------------------------------------------------------

    def _on_board_output(self, data: bytes) -> None:
        restarts = self._board_restarts()
        if restarts != self._restarts:
            # The board reset: its network stack goes with it, and so does our client.
            self._restarts = restarts
            self._ready = False
            self._tail = b""
            # boot.py starts the WebREPL early: listen again at the prompt, or after a moment
            # when a main.py keeps running.
            self.running.loop.call_later(BOOT_LISTEN_S, self._listen_again, restarts)
            client, self.client = self.client, None
            if client is not None:
                if data.startswith(SOFT_REBOOT):
                    client.send_output(SOFT_REBOOT)
                    client.drop()
                else:
                    client.reset()
            return
        if not self._ready:
            self._tail = (self._tail + data)[-64:]
            if self._tail.endswith(_PROMPTS):
                self._ready = True   # boot.py has run webrepl.start() again
            return
        client = self.client
        if client is not None and client.logged_in:
            client.send_output(data)

    def _listen_again(self, restarts: int) -> None:
        if restarts == self._restarts:
            self._ready = True

    # -- connections -----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._ready:
            _abort(writer)   # rebooting: nobody listens yet
            return
        self.stats["connections"] += 1
        client = _Client(self, reader, writer)
        try:
            await client.run()
        except (_Drop, ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            if self.client is client:
                self.client = None
            client.drop()

    def attach(self, client: "_Client") -> bool:
        if self.client is not None:
            self.stats["rejected"] += 1
            print("emulated WebREPL: concurrent connection rejected", file=sys.stderr, flush=True)
            return False
        self.client = client
        return True

    def board_path(self, name: bytes) -> str:
        """A request's file name as a path in the board's flash (a failed open if it leaves it)."""
        text = name.split(b"\0", 1)[0].decode("utf-8", "replace")
        path = os.path.realpath(os.path.join(self.flash, text.lstrip("/")))
        if path != self.flash and not path.startswith(self.flash + os.sep):
            raise _Drop
        return path


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


class _Client:
    def __init__(self, server: WebReplServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.logged_in = False
        self.dropped = False
        self._paused_board = False
        sock = writer.get_extra_info("socket")
        if sock is not None and server.faithful:
            # lwIP on the board runs Nagle's algorithm; asyncio turns it off by default.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)

    # -- sending -----------------------------------------------------------------------------------

    def send_frame(self, opcode: int, payload: bytes) -> None:
        if self.dropped:
            return
        header = frame_header(opcode, len(payload))
        if self.server.faithful:
            # modwebsocket.c writes the header, then the payload: two segments.
            self.writer.write(header)
            if payload:
                self.writer.write(payload)
        else:
            self.writer.write(header + payload)

    def send_output(self, data: bytes) -> None:
        for i in range(0, len(data), 65535):
            self.send_frame(0x1, data[i: i + 65535])
        transport = self.writer.transport
        if not self._paused_board and transport.get_write_buffer_size() > OUTPUT_HIGH_WATER \
                and hasattr(self.server.board, "pause_tx"):
            # The board's print blocks while its socket's send buffer is full.
            self._paused_board = True
            self.server.board.pause_tx()
            asyncio.ensure_future(self._resume_board())

    async def _resume_board(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._paused_board = False
            self.server.board.resume_tx()

    def drop(self) -> None:
        if not self.dropped:
            self.dropped = True
            try:
                self.writer.close()
            except Exception:
                pass

    def reset(self) -> None:
        if not self.dropped:
            self.dropped = True
            _abort(self.writer)

    # -- receiving ------------------------------------------------------------------------------

    async def read_frame(self) -> tuple[int, bytes]:
        head = await self.reader.readexactly(2)
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            raise _Drop   # the board cannot take 64-bit lengths: it drops the connection
        key = await self.reader.readexactly(4) if head[1] & 0x80 else b""
        payload = await self.reader.readexactly(length) if length else b""
        return opcode, _unmask(payload, key) if key else payload

    async def run(self) -> None:
        if not await self.handshake():
            return
        if not self.server.attach(self):
            return   # another client is connected: closed right after the upgrade
        self.send_frame(0x1, b"Password: ")
        typed = bytearray()
        files = _FileProtocol(self)
        last_data_opcode = 0x1
        while True:
            opcode, payload = await self.read_frame()
            if opcode == 0x8:
                self.send_frame(0x8, b"")
                raise _Drop
            if opcode in (0x9, 0xA):
                continue   # the board never answers pings
            if opcode in (0x1, 0x2):
                last_data_opcode = opcode
            if not self.logged_in:
                for byte in payload:
                    if byte in (0x0D, 0x0A):
                        if bytes(typed) == self.server._password:
                            self.logged_in = True
                            self.send_frame(0x1, b"\r\nWebREPL connected\r\n>>> ")
                        else:
                            self.server.stats["denied"] += 1
                            self.send_frame(0x1, b"\r\nAccess denied\r\n")
                            raise _Drop
                        break
                    if len(typed) < 10:
                        typed.append(byte)
                continue
            if last_data_opcode == 0x2:
                await files.feed(payload)
            elif payload:
                self.server.board.rx(payload)

    async def handshake(self) -> bool:
        request = await self.reader.readuntil(b"\r\n\r\n")
        headers = {}
        for line in request.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get(b"sec-websocket-key")
        if (key is None or b"upgrade" not in headers.get(b"connection", b"").lower()
                or headers.get(b"upgrade", b"").lower() != b"websocket"):
            self.writer.write(HTML)
            return False
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        return True


class _FileProtocol:
    """WebREPL's binary file protocol, fed with the payload of binary frames."""

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.buf = bytearray()
        self.state = "request"
        self.file = None
        self.left = 0

    def reply(self, data: bytes) -> None:
        self.client.send_frame(0x2, data)

    async def pause(self) -> None:
        if self.client.server.chunk_delay:
            await asyncio.sleep(self.client.server.chunk_delay)

    async def feed(self, data: bytes) -> None:
        self.buf += data
        while self.buf:
            if self.state == "request":
                if len(self.buf) < REQUEST.size:
                    return
                _sig, op, _flags, _offset, size, _name_len, name = REQUEST.unpack(bytes(self.buf[:REQUEST.size]))
                del self.buf[:REQUEST.size]
                await self.request(op, size, name)
            elif self.state == "put":
                while self.buf and self.left:
                    piece = bytes(self.buf[:min(PUT_PIECE, self.left)])
                    del self.buf[:len(piece)]
                    self.file.write(piece)
                    self.left -= len(piece)
                    await self.pause()
                if not self.left:
                    self.finish_put()
            elif self.state == "get":
                pulls = self.buf.count(0)
                self.buf.clear()
                for _ in range(pulls):
                    if self.state != "get":
                        break
                    await self.get_chunk()
            else:
                self.buf.clear()

    async def request(self, op: int, size: int, name: bytes) -> None:
        server = self.client.server
        if op == GET_VER:
            self.reply(bytes(VERSION))
            return
        if op not in (PUT_FILE, GET_FILE):
            raise _Drop
        path = server.board_path(name)
        try:
            self.file = open(path, "wb" if op == PUT_FILE else "rb")
        except OSError as exc:
            # The board raises inside dupterm's read: the session is deactivated, the socket dropped.
            print(f"emulated WebREPL: dupterm: Exception in read() method, deactivating: {exc!r}",
                  file=sys.stderr, flush=True)
            raise _Drop from None
        self.reply(b"WB\x00\x00")
        if op == PUT_FILE:
            self.state, self.left = "put", size
            if size == 0:
                self.finish_put()
        else:
            self.state = "get"

    def finish_put(self) -> None:
        self.file.close()
        self.file = None
        self.state = "request"
        self.reply(b"WB\x00\x00")

    async def get_chunk(self) -> None:
        data = self.file.read(GET_PIECE)
        self.reply(len(data).to_bytes(2, "little") + data)
        await self.pause()
        if not data:
            self.file.close()
            self.file = None
            self.state = "request"
            self.reply(b"WB\x00\x00")


# -- edgekernel board --webrepl PORT -----------------------------------------------------------------

def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--webrepl", type=int, metavar="PORT",
                        help="also serve the board's REPL as a WebREPL on ws://127.0.0.1:PORT (0: any free port)")
    parser.add_argument("--webrepl-password-env", default=PASSWORD_ENV, metavar="VAR",
                        help=f"environment variable holding the WebREPL password (default {PASSWORD_ENV})")
    parser.add_argument("--webrepl-faithful", action="store_true",
                        help="the ESP8266's timing: header and payload written apart with Nagle on, "
                             "20 ms per file-transfer chunk")


async def _start(args: argparse.Namespace, running: RunningBoard):
    if args.webrepl is None:
        return None
    from . import BoardError
    password = os.environ.get(args.webrepl_password_env, "")
    if not password:
        raise BoardError(f"--webrepl needs a password in ${args.webrepl_password_env} (4-9 characters)")
    if len(password) > 9:
        raise BoardError(f"${args.webrepl_password_env}: WebREPL passwords are at most 9 characters")
    server = WebReplServer(running, args.webrepl, password, faithful=args.webrepl_faithful)
    try:
        await server.start()
    except OSError as exc:
        raise BoardError(f"--webrepl {args.webrepl}: cannot listen on 127.0.0.1:{args.webrepl} ({exc.strerror})") from None
    running.info["webrepl"] = f"ws://127.0.0.1:{server.port}/"
    running.info["webrepl_faithful"] = server.faithful
    return server.close


def register_board_extension() -> None:
    """`edgekernel board --webrepl PORT`."""
    register_extension(BoardExtension("webrepl", _add_arguments, _start))
