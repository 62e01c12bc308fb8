"""The one place edgekernel talks to an MQTT broker through paho: URLs, connecting, board status.

Used by :class:`edgekernel.mqtt.session.MqttSession` (cells on a board), the telemetry magics
(edgekernel.telemetry.client) and the agent tools (edgekernel.mqtt.agent). No Jupyter here.

- URLs: ``mqtt[s]://[user@]host[:port]`` for a broker, ``.../DEVICE_ID`` for a board. A password in a
  URL is refused before anything else looks at the URL, so no message can echo it.
- :func:`connect_client`: a connected paho client with its network thread running, or a
  :class:`MqttClientError` whose message is one line saying what to do (board wording; the telemetry
  magics put it in notebook wording from the exception's fields).
- Board status: every agent keeps a retained JSON status on ``edgekernel/<device-id>/status``
  (``{"state": "online", ...}``, last will ``{"state": "offline"}``).
"""
from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import paho.mqtt.client as mqtt

TOPIC_PREFIX = "edgekernel"
CONNECT_TIMEOUT = 5.0
KEEPALIVE = 30
BOARD_URL_USAGE = "mqtt://[user@]broker[:port]/DEVICE_ID"
BROKER_URL_USAGE = "mqtt:// or mqtts://, as mqtt://[user@]host[:port]"
PASSWORD_IN_URL = ("put no password in the URL (it would show in logs and history): "
                   "use --password-env VAR or answer the prompt")

MessageCallback = Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]


# -- addresses and URLs ------------------------------------------------------------------------

@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker is and who logs in. The password never shows in repr() or :attr:`url`."""

    host: str
    port: int
    user: str | None = None
    password: str | None = field(default=None, repr=False, compare=False)
    tls: bool = False

    @property
    def url(self) -> str:
        """The address as a URL, without the password."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.user}@" if self.user else ""
        return f"{scheme}://{user}{self.host}:{self.port}"

    def with_password(self, password: str | None) -> "BrokerAddress":
        return BrokerAddress(self.host, self.port, self.user, password, self.tls)


@dataclass(frozen=True)
class MqttUrl:
    """``mqtt[s]://[user@]host[:port]/DEVICE_ID``. Never carries a password (see :func:`parse_mqtt_url`)."""

    scheme: str
    host: str
    port: int
    device_id: str
    user: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    @property
    def broker(self) -> str:
        return f"{self.scheme}://{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    def address(self, password: str | None = None) -> BrokerAddress:
        return BrokerAddress(self.host, self.port, self.user, password, self.tls)

    def __str__(self) -> str:
        return f"{self.broker}/{self.device_id}"


def _split_url(url: str, usage: str) -> tuple[SplitResult, int]:
    """The URL's parts and port; ValueError (one line, never with a password) when it is no MQTT URL."""
    parts = urlsplit(url)
    if parts.password is not None:   # checked first: no later message may echo the URL with it
        raise ValueError(PASSWORD_IN_URL)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"not an MQTT URL: {url!r} (use {usage})")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise ValueError(f"bad port in {url!r} (use {usage})") from None
    if not parts.hostname:
        raise ValueError(f"the URL names no broker: {url!r} (use {usage})")
    return parts, port


def parse_broker_address(url: str) -> BrokerAddress:
    """``mqtt[s]://[user@]host[:port]`` (or a bare ``host[:port]``); a path is ignored. ValueError if
    it is not one, or if it holds a password: that comes from an environment variable or a prompt."""
    parts, port = _split_url(url if "://" in url else "mqtt://" + url, BROKER_URL_USAGE)
    return BrokerAddress(parts.hostname or "", port, unquote(parts.username) if parts.username else None,
                         None, parts.scheme == "mqtts")


def parse_mqtt_url(url: str) -> MqttUrl:
    """Parse a board URL. A password in it is refused: it would end up in logs and history."""
    parts, port = _split_url(url, BOARD_URL_USAGE)
    device_id = parts.path.strip("/")
    if not device_id or "/" in device_id or "+" in device_id or "#" in device_id:
        raise ValueError(f"the URL needs the board's device id as its path: mqtt://broker/DEVICE_ID (got {url!r})")
    return MqttUrl(parts.scheme, parts.hostname or "", port, device_id,
                   unquote(parts.username) if parts.username else None)


# -- connecting --------------------------------------------------------------------------------

class MqttClientError(Exception):
    """The broker could not be used. The message is one line that says what to do."""


class BrokerConnectError(MqttClientError):
    """Connecting to the broker at `address` failed; subclasses say how."""

    def __init__(self, address: BrokerAddress, message: str) -> None:
        super().__init__(message)
        self.address = address


class BrokerUnreachable(BrokerConnectError):
    """Nothing answers at the address (`why`: "connection refused", "Name or service not known", ...)."""

    def __init__(self, address: BrokerAddress, why: str) -> None:
        super().__init__(address, f"no MQTT broker answers at {address.host}:{address.port} ({why}): "
                                  "start one (e.g. mosquitto) or fix the URL")
        self.why = why


class BrokerTlsFailed(BrokerConnectError):
    """The TLS handshake failed (`why`: e.g. CERTIFICATE_VERIFY_FAILED)."""

    def __init__(self, address: BrokerAddress, why: str) -> None:
        super().__init__(address, f"TLS with {address.url} failed ({why}): check mqtts:// and the broker's certificate")
        self.why = why


class BrokerRefused(BrokerConnectError):
    """The broker answered the connect with a failure; `login` when it was the user name or password."""

    def __init__(self, address: BrokerAddress, reason: Any) -> None:
        self.reason = str(reason)
        # MQTT 3.1.1 return codes 4/5 arrive as paho's v5 reason codes 134/135 (bad login / not authorised);
        # mosquitto answers a wrong password with either.
        self.login = (getattr(reason, "value", None) in (4, 5, 134, 135) or "user name" in self.reason
                      or "authori" in self.reason.lower())
        where = f"the broker at {address.host}:{address.port}"
        if self.login:
            message = (f"{where} refused the login ({self.reason}): check the user name in the URL and the "
                       "password (--password-env VAR)")
        else:
            message = f"{where} refused the connection ({self.reason})"
        super().__init__(address, message)


class BrokerSilent(BrokerConnectError):
    """Something accepted the TCP connection but sent no MQTT answer within `timeout` seconds."""

    def __init__(self, address: BrokerAddress, timeout: float) -> None:
        super().__init__(address, f"the broker at {address.host}:{address.port} did not accept the connection "
                                  f"within {timeout:.0f} s")
        self.timeout = timeout


class SubscriptionFailed(MqttClientError):
    """The broker did not confirm a subscription, or refused it."""


def connect_client(address: BrokerAddress, *, client_id: str | None = None, ca_file: str | None = None,
                   insecure: bool = False, timeout: float = CONNECT_TIMEOUT,
                   on_message: MessageCallback | None = None,
                   on_connected: Callable[[mqtt.Client], object] | None = None,
                   on_lost: Callable[[str], None] | None = None) -> mqtt.Client:
    """A paho client (MQTT 3.1.1, clean session) connected to `address` with its network thread running.

    `on_connected(client)` runs on every successful (re)connect, e.g. to subscribe; `on_lost(reason)`
    when the connection drops after it was up (paho then keeps reconnecting). A failed login is not
    retried. Raises a :class:`BrokerConnectError` subclass."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"ek-{secrets.token_hex(5)}",
                         protocol=mqtt.MQTTv311, clean_session=True)
    if address.user is not None:
        client.username_pw_set(address.user, address.password)
    if address.tls:
        client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_NONE if insecure else ssl.CERT_REQUIRED)
        if insecure:
            client.tls_insecure_set(True)
    connected = threading.Event()
    answered = threading.Event()
    refusal: list[Any] = []

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            refusal.append(reason)
            answered.set()
            c.disconnect()  # no retrying with the same wrong password
            return
        if on_connected is not None:
            on_connected(c)
        connected.set()
        answered.set()

    def on_disconnect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if connected.is_set() and on_lost is not None:
            on_lost(str(reason))

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    if on_message is not None:
        client.on_message = on_message
    try:
        client.connect(address.host, address.port, keepalive=KEEPALIVE)
    except ssl.SSLError as exc:
        raise BrokerTlsFailed(address, exc.reason or str(exc)) from None
    except OSError as exc:   # refused, unknown host, timed out, unreachable network
        why = "connection refused" if isinstance(exc, ConnectionRefusedError) else (exc.strerror or str(exc))
        raise BrokerUnreachable(address, why) from None
    client.loop_start()
    if not answered.wait(timeout) or not connected.is_set():
        close_client(client)
        if refusal:
            raise BrokerRefused(address, refusal[0])
        raise BrokerSilent(address, timeout)
    return client


def close_client(client: mqtt.Client) -> None:
    """Disconnect and stop the network thread."""
    try:
        client.disconnect()
    finally:
        client.loop_stop()


def subscribe_confirmed(client: mqtt.Client, address: BrokerAddress, subscriptions: list[tuple[str, int]],
                        timeout: float = CONNECT_TIMEOUT) -> None:
    """Subscribe and wait for the broker's answer; SubscriptionFailed if it does not come or refuses."""
    done = threading.Event()
    granted: list[Any] = []

    def on_subscribe(c: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        granted.extend(reasons)
        done.set()

    client.on_subscribe = on_subscribe
    result, _ = client.subscribe(subscriptions)
    if result != mqtt.MQTT_ERR_SUCCESS or not done.wait(timeout):
        raise SubscriptionFailed(f"the MQTT broker at {address.url} did not confirm the subscription: try again")
    if any(getattr(g, "is_failure", False) for g in granted):
        raise SubscriptionFailed(f"the MQTT broker at {address.url} refused the subscription to "
                                 f"{' '.join(t for t, _ in subscriptions)}: check the broker's ACL")


# -- the boards' retained status ---------------------------------------------------------------

def status_topic(device_id: str = "+", prefix: str = TOPIC_PREFIX) -> str:
    """A board's status topic (``+``: every board's)."""
    return f"{prefix}/{device_id}/status"


def device_of(topic: str) -> str:
    """The device id in a board topic (``edgekernel/<id>/...``)."""
    return topic.split("/")[1]


def read_status(payload: bytes | bytearray) -> dict[str, Any]:
    """A board's status message as a dict; a payload that is no JSON object becomes its ``state``."""
    try:
        status = json.loads(bytes(payload) or b"{}")
    except ValueError:
        return {"state": payload.decode(errors="replace")}
    return status if isinstance(status, dict) else {"state": str(status)}


def wait_presence(url: MqttUrl, state: str, *, password: str | None = None, timeout: float = 20.0,
                  ca_file: str | None = None, insecure: bool = False) -> dict[str, Any]:
    """Wait until the board's retained status says `state` ("online"/"offline"); return it.
    TimeoutError if it does not within `timeout`; a BrokerConnectError if the broker cannot be used."""
    seen = threading.Event()
    box: dict[str, Any] = {}
    topic = status_topic(url.device_id)

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        status = read_status(message.payload)
        if status.get("state") == state:
            box.update(status)
            seen.set()

    deadline = time.monotonic() + timeout
    client = connect_client(url.address(password), ca_file=ca_file, insecure=insecure, timeout=timeout,
                            on_message=on_message, on_connected=lambda c: c.subscribe(topic, 1))
    try:
        if not seen.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"{url.device_id} did not report {state} on {url.broker} within {timeout:.0f} s")
    finally:
        close_client(client)
    return box


def read_statuses(address: BrokerAddress, *, settle: float = 0.3,
                  timeout: float = CONNECT_TIMEOUT) -> dict[str, dict[str, Any]]:
    """Every board's retained status: {device id: {"state": ..., ...}}, sorted by device id.

    Retained messages arrive right after the subscription is granted; wait until none has come
    for `settle` seconds."""
    found: dict[str, dict[str, Any]] = {}
    last = [time.monotonic()]

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        found[device_of(message.topic)] = read_status(message.payload)
        last[0] = time.monotonic()

    client = connect_client(address, timeout=timeout, on_message=on_message)
    try:
        subscribe_confirmed(client, address, [(status_topic(), 1)], timeout)
        last[0] = time.monotonic()
        end = time.monotonic() + timeout
        while time.monotonic() < end and time.monotonic() - last[0] < settle:
            time.sleep(0.02)
    finally:
        close_client(client)
    return dict(sorted(found.items()))
