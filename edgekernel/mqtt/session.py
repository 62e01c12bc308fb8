"""Run code on a board through an MQTT broker and the board's agent (firmware/ekagent.py).

:class:`MqttSession` has the public surface of :class:`edgekernel.device.BoardSession` that the kernel
uses (exec, eval, run_internal, interrupt, soft_reset, close, closed, running, link.description), so
the kernel works unchanged above it. No Jupyter here.

Wire format (topics under ``edgekernel/<device-id>/``; only ``status`` is ever retained):

=========  ==========  =====  ===========================================================================
topic      direction   QoS    payload
=========  ==========  =====  ===========================================================================
status     board→host  1, R   JSON ``{"state": "online", "impl", "version", "mem_free", "max_part", ...}``;
                              last will ``{"state": "offline"}`` (retained)
exec       host→board  1      ``<rid> <i>/<n> <size>\\n`` + part *i* of *n* of a *size*-byte cell
ctl        host→board  1      ``int <rid>``: interrupt that request
out        board→host  0      ``<rid> <seq> <kind>\\n<data>``; kinds: ``a`` accepted, ``o`` output,
                              ``v`` repr of the trailing expression, ``e`` traceback, ``b`` refused,
                              ``d`` done (``ok|err|int <ms>``, always last)
=========  ==========  =====  ===========================================================================

Request ids are ``<session>-<n>``: a host ignores output of other sessions, and the agent runs a
redelivered (QoS 1) request once. Output is QoS 0: MQTT keeps order on one connection, and ``seq``
shows a loss. How the agent interrupts running code is described in firmware/ekagent.py.
"""
from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from ..device import onboard
from ..device.board import Capabilities
from ..device.errors import BoardBusy, BoardNotResponding, DeviceError, LinkClosed
from ..device.result import BoardException, ExecResult, InterruptReport, ValuesFromExec, parse_traceback
from .client import (TOPIC_PREFIX, MqttClientError, MqttUrl, close_client, connect_client, parse_mqtt_url,
                     read_status, status_topic)

DEFAULT_MAX_PART = 1800          # the agent announces its own limit in its status
ACK_TIMEOUT = 10.0               # a board that does not start a request within this is not answering
INTERRUPT_GRACE = 3.0            # after an interrupt, how long the board may take to say it stopped
BROKER_LOST_GRACE = 1.0          # after the board's last will: how long to look for the broker going away
STATUS_WAIT = 2.0                # how long to wait for the board's retained status when connecting

OutputCallback = Callable[[bytes], None]
InputCallback = Callable[[str], "str | None"]


class MqttError(DeviceError):
    """The broker could not be used (down, refused the login, TLS). The message says what to do."""


class BoardOffline(BoardNotResponding):
    """The board's retained status says it is offline, or it went offline during a request."""


def topics(device_id: str, prefix: str = TOPIC_PREFIX) -> dict[str, str]:
    base = f"{prefix}/{device_id}/"
    return {"status": status_topic(device_id, prefix), **{k: base + k for k in ("exec", "ctl", "out")}}


def split_cell(rid: str, code: bytes, max_part: int) -> list[bytes]:
    """The exec messages of one cell (at least one, even for empty code)."""
    pieces = [code[i:i + max_part] for i in range(0, len(code), max_part)] or [b""]
    n = len(pieces)
    return [f"{rid} {i}/{n} {len(code)}\n".encode() + piece for i, piece in enumerate(pieces)]


class _Where:
    """Stands in for a byte link where the kernel asks for ``board.link.description``."""

    def __init__(self, description: str) -> None:
        self.description = description


class MqttSession(ValuesFromExec):
    """A board reached through an MQTT broker and its agent.

    >>> with MqttSession.open("mqtt://127.0.0.1:1883/kitchen") as board:
    ...     board.exec("print(1+1)").text
    '2\\n'
    """

    raw_paste = None

    def __init__(self, url: str | MqttUrl, *, password: str | None = None, ca_file: str | None = None,
                 insecure: bool = False, log: Callable[[bytes], None] | None = None,
                 prefix: str = TOPIC_PREFIX) -> None:
        self.url = url if isinstance(url, MqttUrl) else parse_mqtt_url(url)
        self.link = _Where(str(self.url))
        self.log = log
        self.topics = topics(self.url.device_id, prefix)
        self.presence: dict[str, Any] | None = None
        self.closed = False
        self._password = password
        self._ca_file = ca_file
        self._insecure = insecure
        self._session_id = secrets.token_hex(3)
        self._counter = 0
        self._lock = threading.Lock()
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._rid: str | None = None
        self._interrupt_at: float | None = None
        self._status_seen = threading.Event()
        self._client: mqtt.Client | None = None

    @property
    def description(self) -> str:
        return str(self.url)

    @property
    def summary(self) -> str:
        """How it is connected, for the connect message."""
        if self.online is not True:
            return f"through the broker: {self.describe_presence()}; cells wait for it up to 10 s"
        return f"through the broker: {self.describe_presence()}"

    @property
    def capabilities(self) -> Capabilities:
        interrupt = (self.presence or {}).get("interrupt") or "agent"
        return Capabilities(raw_paste=None, hard_reset=False, byte_stream=False, file_protocol=False,
                            interrupt=str(interrupt), reconnects=True)

    # -- connecting ------------------------------------------------------------------

    @classmethod
    def open(cls, url: str | MqttUrl, *, password: str | None = None, timeout: float = 10.0,
             **options: Any) -> "MqttSession":
        session = cls(url, password=password, **options)
        session.connect(timeout)
        return session

    def connect(self, timeout: float = 10.0) -> None:
        """Connect to the broker, subscribe, and read the board's retained status."""
        try:
            self._client = connect_client(
                self.url.address(self._password), client_id=f"ek-host-{self._session_id}", ca_file=self._ca_file,
                insecure=self._insecure, timeout=timeout, on_message=self._on_message,
                on_connected=self._subscribe,   # again after a broker restart
                on_lost=lambda why: self._inbox.put(("broker-lost", why)))
        except MqttClientError as exc:
            raise MqttError(str(exc)) from None
        self._status_seen.wait(STATUS_WAIT)

    def _subscribe(self, client: mqtt.Client) -> None:
        client.subscribe([(self.topics["status"], 1), (self.topics["out"], 0)])

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.topic == self.topics["status"]:
            self.presence = read_status(message.payload)
            self._status_seen.set()
            self._inbox.put(("status", self.presence))
        else:
            self._inbox.put(("out", message.payload))

    @property
    def online(self) -> bool | None:
        """True/False from the board's retained status; None when it never announced itself."""
        return None if self.presence is None else self.presence.get("state") == "online"

    def describe_presence(self) -> str:
        p = self.presence
        if p is None:
            return f"no agent has announced itself as {self.url.device_id!r} on this broker yet"
        if p.get("state") != "online":
            return f"{self.url.device_id} is {p.get('state', 'offline')}"
        return (f"{self.url.device_id} is online: {p.get('impl', '?')} {p.get('version', '?')} on "
                f"{p.get('platform', '?')}, {p.get('mem_free', '?')} bytes free, interrupt: {p.get('interrupt', '?')}")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._stop_client()

    def _stop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            close_client(client)

    def __enter__(self) -> "MqttSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- executing -------------------------------------------------------------------

    def exec(self, code: str | bytes, *, on_output: OutputCallback | None = None,
             on_input: InputCallback | None = None, show_value: bool = False,
             timeout: float | None = None, filename: str = "<cell>", scratch: bool = False) -> ExecResult:
        """Run `code` on the board; same meaning as BoardSession.exec. input() on the board raises
        (there is no way to answer it over MQTT), so on_input is never called."""
        if not self._lock.acquire(blocking=False):
            raise BoardBusy(f"{self.link.description}: the board is busy with another operation")
        try:
            if scratch:
                # A namespace of its own, as the serial helper gives (any agent version runs this):
                # `print` is the cell namespace's, which the agent may have pointed at its capture.
                text = code.decode() if isinstance(code, bytes) else code
                code = f"exec({text!r},{{'_ek':_ek,'print':print}})"
            return self._exec_locked(code, on_output, show_value, timeout, filename)
        finally:
            self._rid = None
            self._interrupt_at = None
            self._lock.release()

    def _check_usable(self) -> None:
        if self.closed or self._client is None:
            raise LinkClosed(f"{self.link.description}: the session is closed; connect again")
        if self.online is False:
            # The board's last will may come from a broker that is shutting down: then say the broker.
            self._broker_lost_within(BROKER_LOST_GRACE)
        if not self._client.is_connected():
            raise MqttError(f"not connected to the broker at {self.url.host}:{self.url.port} "
                            "(it went away; edgekernel keeps retrying): start it again, then rerun the cell")
        if self.online is False:
            raise BoardOffline(f"{self.url.device_id} is offline (its status on the broker says so): power the "
                               "board or check its WiFi; cells run again once it is back online")

    def _exec_locked(self, code: str | bytes, on_output: OutputCallback | None, show_value: bool,
                     timeout: float | None, filename: str) -> ExecResult:
        self._check_usable()
        start = time.monotonic()
        source = code.decode() if isinstance(code, bytes) else code
        if show_value:
            source = onboard.show_trailing_expression(source)
        data = source.encode()
        limit = int((self.presence or {}).get("max_cell", 1 << 30))
        if len(data) > limit:
            raise DeviceError(f"the cell is {len(data)} bytes, more than this board takes at once ({limit}): "
                              "upload it as a file (%sendtofile) and import it")
        max_part = int((self.presence or {}).get("max_part", DEFAULT_MAX_PART)) - 64  # room for the header
        self._counter += 1
        rid = f"{self._session_id}-{self._counter}"
        while True:  # what is left of earlier requests (late output) is not ours
            try:
                self._inbox.get_nowait()
            except queue.Empty:
                break
        self._rid = rid
        for message in split_cell(rid, data, max(64, max_part)):
            self._client.publish(self.topics["exec"], message, qos=1)  # type: ignore[union-attr]
        deadline = start + timeout if timeout is not None else float("inf")
        return self._follow(rid, start, deadline, on_output, filename)

    def _follow(self, rid: str, start: float, deadline: float, on_output: OutputCallback | None,
                filename: str) -> ExecResult:
        result = ExecResult()
        output = bytearray()
        accepted = False
        expected_seq = 0
        lost = 0
        timed_out = False
        prefix = rid.encode() + b" "
        while True:
            now = time.monotonic()
            if now >= deadline and not timed_out:
                timed_out = True
                self.interrupt()
            if self._interrupt_at is not None and now > self._interrupt_at + INTERRUPT_GRACE:
                raise BoardNotResponding(
                    f"{self.url.device_id} did not stop within {INTERRUPT_GRACE:.0f} s of the interrupt "
                    f"(interrupt: {(self.presence or {}).get('interrupt', '?')}): reset the board")
            if not accepted and now > start + ACK_TIMEOUT:
                raise BoardNotResponding(
                    f"{self.url.device_id} did not answer within {ACK_TIMEOUT:.0f} s ({self.describe_presence()}): "
                    "is its agent running? Its serial console says why")
            wait = min(0.25, max(0.0, deadline - now) if deadline != float("inf") else 0.25)
            try:
                what, payload = self._inbox.get(timeout=max(wait, 0.001))
            except queue.Empty:
                continue
            if what == "status":
                if payload.get("state") != "online":
                    # A broker that shuts down may publish the board's last will just before it drops us:
                    # that is the broker going away, not the board.
                    lost = self._broker_lost_within(BROKER_LOST_GRACE)
                    if lost is not None:
                        raise self._broker_lost(lost)
                    raise BoardOffline(f"{self.url.device_id} went offline while the cell ran (the broker "
                                       "delivered its last will): what the cell did is unknown; it runs cells "
                                       "again once it is back online")
                continue
            if what == "broker-lost":
                raise self._broker_lost(payload)
            if what != "out" or not payload.startswith(prefix):
                continue
            head, _, body = payload.partition(b"\n")
            try:
                _, seq_text, kind = head.decode().split(" ")
                seq = int(seq_text)
            except ValueError:
                continue
            if seq != expected_seq:
                lost += max(0, seq - expected_seq)
            expected_seq = seq + 1
            if self.log is not None:
                self.log(body if kind == "o" else head + b"\n" + body + b"\n")
            if kind == "a":
                accepted = True
            elif kind == "o":
                output += body
                if on_output is not None:
                    on_output(body)
            elif kind == "v":
                result.value = body.decode(errors="replace")
            elif kind == "e":
                result.error = self._parse_error(body.decode(errors="replace"), filename)
            elif kind == "b":
                accepted = True
                result.error = BoardException("CellRefused", body.decode(errors="replace"))
            elif kind == "d":
                status = body.split(b" ")[0]
                if status == b"int" or (self._interrupt_at is not None and result.error is not None
                                        and result.error.type == "KeyboardInterrupt"):
                    at = self._interrupt_at or time.monotonic()
                    result.interrupted = InterruptReport("mqtt", time.monotonic() - at)
                    if result.error is None:
                        result.error = BoardException("KeyboardInterrupt", "interrupted before the code started")
                break
        if lost:
            note = f"\n[edgekernel: {lost} output message(s) were lost on the way]\n".encode()
            output += note
            if on_output is not None:
                on_output(note)
        result.output = bytes(output)
        result.timed_out = timed_out
        result.seconds = time.monotonic() - start
        return result

    def _broker_lost(self, why: object) -> MqttError:
        return MqttError(f"lost the connection to the broker at {self.url.host}:{self.url.port} while the "
                         f"cell ran ({why}): start it again, then rerun the cell")

    def _broker_lost_within(self, seconds: float) -> str | None:
        """Why the broker connection was lost, if it is within `seconds` (None: it is still up)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                what, payload = self._inbox.get(timeout=max(0.001, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if what == "broker-lost":
                return str(payload)

    @staticmethod
    def _parse_error(text: str, filename: str) -> BoardException:
        error = parse_traceback(text, rename={"<string>": filename})
        # Frames above the cell are the agent's own.
        first = next((i for i, f in enumerate(error.frames) if f.file == filename), 0)
        error.frames = error.frames[first:]
        return error

    # -- interrupt and resets ----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._rid is not None

    def interrupt(self) -> None:
        """Ask the agent to stop the running request (callable from any thread)."""
        rid, client = self._rid, self._client
        if rid is not None and client is not None and self._interrupt_at is None:
            self._interrupt_at = time.monotonic()
            client.publish(self.topics["ctl"], f"int {rid}".encode(), qos=1)

    def soft_reset(self, timeout: float = 10.0) -> None:
        """A fresh namespace on the board (the agent keeps running and connected)."""
        self.run_internal("_ek.soft()", timeout=timeout)

    def hard_reset(self, timeout: float = 10.0) -> None:
        raise DeviceError("a board cannot be reset over MQTT: press its reset button, or connect by serial")


def open_mqtt_board(url: str, *, secret: Callable[[str], str] | None = None, timeout: float = 10.0,
                    log: Callable[[bytes], None] | None = None, ca: str | None = None,
                    insecure: str | None = None) -> MqttSession:
    """edgekernel.device.board.open_board's opener for mqtt:// and mqtts:// (options: ?ca=FILE&insecure=1).
    A user named in the URL gets their password from `secret`, never from the URL."""
    parsed = parse_mqtt_url(url)
    password = None
    if parsed.user is not None:
        if secret is None:
            raise MqttError(f"{parsed.broker}: user {parsed.user} needs a password: set it in the environment "
                            "or connect where it can be asked")
        password = secret(f"MQTT password for {parsed.user}@{parsed.host}: ")
    return MqttSession.open(parsed, password=password, timeout=timeout, log=log, ca_file=ca,
                            insecure=insecure not in (None, "", "0", "false", "no"))
