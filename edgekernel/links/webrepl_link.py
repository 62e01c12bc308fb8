"""WebREPL links: a board's REPL over a websocket (ws://HOST:8266, MicroPython's `webrepl`).

What the board does (see DESIGN.md §4) and how this link copes:

* It asks ``Password: `` after the upgrade and answers ``WebREPL connected`` or ``Access denied``
  (then closes). A second client is closed right after the upgrade: that is reported as "another
  client is connected".
* Text frames carry REPL bytes both ways, not necessarily UTF-8: they are bytes here.
* It never answers pings, so this link sends none and times nothing out on them.
* Frames of 64 KiB or more make it drop the connection: writes go in frames of at most
  :data:`MAX_FRAME` bytes.
* It writes a frame's header and payload separately; with Nagle on the board and delayed ACKs here
  each exchange would stall ~40 ms. The link asks Linux to ACK at once (TCP_QUICKACK) after reads.
* A board reset closes the socket. :meth:`reopen` logs in again with the password it holds, so
  the session can carry on after a soft reset. The password is never logged or put in a message.

Binary frames carry WebREPL's file protocol (``edgekernel.device.webrepl_files``); they are kept
apart from the REPL bytes (:meth:`read_binary`, :meth:`write_binary`).
"""
from __future__ import annotations

import select
import socket
import ssl
import time
from urllib.parse import urlsplit

import websocket

from typing import Any

from .base import Link, LinkClosed, LinkError, SecretSource

MAX_FRAME = 4096           # far below the board's 64 KiB limit; the board reads 512 bytes at a time anyway
LOGIN_OK = b"WebREPL connected\r\n>>> "
LOGIN_DENIED = b"Access denied"
PASSWORD_PROMPT = b"Password: "
DEFAULT_PORT = 8266
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class WebReplError(LinkError):
    """A WebREPL login failed (wrong password, another client, not a WebREPL)."""


def normalize_url(url: str) -> str:
    """ws://HOST[:PORT][/path] with the default port 8266 filled in."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise LinkError(f"not a WebREPL address: {url} (expected ws://HOST:8266)")
    port = parts.port or DEFAULT_PORT
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}{parts.path or '/'}"


class WebReplLink(Link):
    """A board's REPL over WebREPL. `password` comes from the caller (prompt or environment)."""

    kind = "WebREPL"
    connect_hint = "%websocketconnect"

    @classmethod
    def from_url(cls, url: str, *, baudrate: int = 0, secret: SecretSource | None = None,
                 **options: Any) -> "WebReplLink":
        url = normalize_url(url)
        options.pop("esp_reset_lines", None)   # a serial option: no modem lines here
        password = options.pop("password", None)   # a caller that holds it already (tests, benchmarks)
        if password is None:
            if secret is None:
                raise WebReplError(f"{url}: a WebREPL password is needed to connect")
            password = secret(f"WebREPL password for {url}: ")
        return cls(url, password, **options)

    def __init__(self, url: str, password: str, *, timeout: float = 10.0, reconnect_timeout: float = 15.0) -> None:
        super().__init__()
        self.url = normalize_url(url)
        self.description = self.url
        if not password:
            raise WebReplError(f"{self.url}: a WebREPL password is needed to connect")
        if len(password) > 9:
            raise WebReplError(f"{self.url}: WebREPL passwords are at most 9 characters (webrepl_setup allows 4-9); "
                               "the board would never accept this one")
        self._password = password
        self.reconnect_timeout = reconnect_timeout
        self._ws: websocket.WebSocket | None = None
        self._text = bytearray()     # REPL bytes received, not yet read
        self._binary = bytearray()   # file-protocol bytes received, not yet read
        self._closed = False
        self._closed_after: LinkClosed | None = None   # a close seen right after data, raised next
        self.reconnects = 0
        self._login(time.monotonic() + timeout)

    def __repr__(self) -> str:  # never the password
        return f"<WebReplLink {self.url}>"

    # -- connecting ---------------------------------------------------------------------------

    def _open_socket(self, deadline: float) -> websocket.WebSocket:
        ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=True)
        try:
            ws.connect(self.url, timeout=max(0.5, deadline - time.monotonic()), suppress_origin=True)
        except (ConnectionRefusedError, socket.timeout, TimeoutError, websocket.WebSocketTimeoutException) as exc:
            raise _Unreachable(f"{self.url}: no WebREPL answers ({exc.__class__.__name__}); "
                               "is the board on this network and webrepl started?") from None
        except (OSError, websocket.WebSocketException) as exc:
            raise _Unreachable(f"{self.url}: cannot connect to the WebREPL ({exc})") from None
        sock = ws.sock
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        # Reads wait in select() first; this only bounds the wait for the rest of a started frame.
        sock.settimeout(10.0)
        return ws

    def _login(self, deadline: float) -> None:
        ws = self._open_socket(deadline)
        self._ws = ws
        self._text.clear()
        self._binary.clear()
        seen = bytearray()
        asked = False
        try:
            while not seen.endswith(PASSWORD_PROMPT):
                chunk = self._recv_text(deadline)
                if chunk is None:
                    raise WebReplError(f"{self.url}: no password prompt from the board; is this a MicroPython WebREPL?")
                seen += chunk
            asked = True
            self._send_frame(self._password.encode() + b"\r", websocket.ABNF.OPCODE_TEXT)
            seen.clear()
            while LOGIN_OK not in seen:
                if LOGIN_DENIED in seen:
                    raise WebReplError(f"{self.url}: wrong WebREPL password (the board said Access denied); "
                                       "check it and connect again")
                chunk = self._recv_text(deadline)
                if chunk is None:
                    raise WebReplError(f"{self.url}: the board did not confirm the login in time")
                seen += chunk
        except LinkClosed:
            seen += self._text   # what arrived just before the close
            self._drop_socket()
            if LOGIN_DENIED in seen:
                raise WebReplError(f"{self.url}: wrong WebREPL password (the board said Access denied); "
                                   "check it and connect again") from None
            if not asked and not seen:
                raise WebReplError(f"{self.url}: the board closed the connection at once: another client is "
                                   "connected to its WebREPL (one at a time; close the other one)") from None
            raise WebReplError(f"{self.url}: the board closed the connection during login") from None
        except BaseException:
            self._drop_socket()
            raise
        # What followed the login text is REPL output (a board left in raw mode says nothing).
        self._text += seen[seen.find(LOGIN_OK) + len(LOGIN_OK):]

    def _recv_text(self, deadline: float) -> bytes | None:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self._pump(remaining) and self._text:
                data = bytes(self._text)
                self._text.clear()
                return data

    @property
    def can_reopen(self) -> bool:
        return not self._closed

    @property
    def dropped(self) -> bool:
        return not self._closed and (self._ws is None or self._closed_after is not None)

    def reopen(self, timeout: float | None = None) -> None:
        """Log in again after the board dropped the connection (a reset does). Retries while the
        board reboots; raises LinkClosed if it does not come back in time."""
        if self._closed:
            raise LinkClosed(f"{self.url}: the link is closed; connect again")
        self._drop_socket()
        self._closed_after = None
        started = time.monotonic()
        deadline = started + (self.reconnect_timeout if timeout is None else timeout)
        while True:
            try:
                self._login(deadline)
                self.reconnects += 1
                return
            except _Unreachable as exc:
                last = str(exc)
            except WebReplError as exc:
                if "wrong WebREPL password" in str(exc):
                    raise
                last = str(exc)
            if time.monotonic() >= deadline:
                raise LinkClosed(f"{self.url}: the board dropped the connection and did not take a new one "
                                 f"within {time.monotonic() - started:.0f} s ({last.split(': ', 1)[-1]}); check its "
                                 "power and WiFi: the next operation connects again")
            time.sleep(0.1)

    def _drop_socket(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.shutdown()
            except Exception:
                pass

    # -- frames -------------------------------------------------------------------------------

    def _quickack(self) -> None:
        if _QUICKACK is not None and self._ws is not None and self._ws.sock is not None:
            try:
                self._ws.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass

    def _pump(self, timeout: float | None) -> bool:
        """Receive frames that arrive within `timeout`; True if any data frame came."""
        if self._closed_after is not None:
            closed, self._closed_after = self._closed_after, None
            raise closed
        ws = self._ws
        if ws is None or ws.sock is None:
            raise LinkClosed(f"{self.url}: the board disconnected")
        sock = ws.sock
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
        if not pending:
            self._quickack()
            ready, _, _ = select.select([sock], [], [], timeout)
            if not ready:
                return False
        got = False
        while True:
            try:
                # A frame's header may come before its payload (the board writes them apart):
                # this waits for the rest, which is on its way.
                opcode, data = ws.recv_data(control_frame=True)
            except (websocket.WebSocketConnectionClosedException, OSError, websocket.WebSocketException) as exc:
                self._drop_socket()
                closed = LinkClosed(f"{self.url}: the board disconnected ({exc.__class__.__name__})")
                if got:
                    # Its last words first (a reset says "soft reboot", then drops us); the close next time.
                    self._closed_after = closed
                    return True
                raise closed from None
            self._quickack()
            if opcode == websocket.ABNF.OPCODE_TEXT or opcode == websocket.ABNF.OPCODE_CONT:
                self._text += data
                got = True
            elif opcode == websocket.ABNF.OPCODE_BINARY:
                self._binary += data
                got = True
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                self._drop_socket()
                closed = LinkClosed(f"{self.url}: the board closed the connection (disconnected)")
                if got:
                    self._closed_after = closed
                    return True
                raise closed
            # Take whatever else has already arrived in the same go.
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()) and not select.select([sock], [], [], 0)[0]:
                return got

    def _send_frame(self, data: bytes, opcode: int) -> None:
        ws = self._ws
        if ws is None:
            raise LinkClosed(f"{self.url}: the board disconnected")
        view = memoryview(data)
        try:
            for i in range(0, max(len(data), 1), MAX_FRAME):
                ws.send(bytes(view[i: i + MAX_FRAME]), opcode)
        except (websocket.WebSocketConnectionClosedException, OSError, websocket.WebSocketException) as exc:
            self._drop_socket()
            raise LinkClosed(f"{self.url}: the board disconnected ({exc.__class__.__name__})") from None

    # -- Link -----------------------------------------------------------------------------------

    def read(self, max_bytes: int, timeout: float | None) -> bytes:
        if not self._text:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._text:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._pump(remaining)
                if deadline is not None and time.monotonic() >= deadline and not self._text:
                    return b""
        data = bytes(self._text[:max_bytes])
        del self._text[:max_bytes]
        return data

    def _write(self, data: bytes) -> None:
        self._send_frame(data, websocket.ABNF.OPCODE_TEXT)

    # -- the file protocol's channel ---------------------------------------------------------------

    @property
    def binary_channel(self) -> "WebReplLink":
        return self

    def write_binary(self, data: bytes) -> None:
        with self._write_lock:
            self._send_frame(data, websocket.ABNF.OPCODE_BINARY)

    def read_binary(self, n: int, deadline: float) -> bytes:
        """Exactly n bytes of binary frames; LinkClosed if the board drops the connection
        (it does when it cannot open the file)."""
        while len(self._binary) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkError(f"{self.url}: the board stopped answering the file transfer")
            self._pump(min(remaining, 1.0))
        data = bytes(self._binary[:n])
        del self._binary[:n]
        return data

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                # A close frame: the board answers it and detaches the session at once.
                ws.close(timeout=0.5)
            except Exception:
                try:
                    ws.shutdown()
                except Exception:
                    pass


class _Unreachable(WebReplError):
    """Nothing accepted the connection (yet): worth retrying while a board reboots."""
