"""MQTT plumbing for telemetry (paho-mqtt): broker addresses, subscriptions, publish, presence.

Knows nothing of IPython. Every failure a user can cause raises TelemetryError with one line that
says what to do; passwords never appear in messages, reprs or logs.
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

DEFAULT_URL = "mqtt://127.0.0.1:1883"
ENV_URL = "EDGEKERNEL_MQTT"
STATUS_TOPIC = "edgekernel/+/status"
CONNECT_TIMEOUT = 5.0


class TelemetryError(Exception):
    """A telemetry command failed; the message is one line saying what to do."""


@dataclass(frozen=True)
class BrokerAddress:
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


def parse_broker_url(url: str) -> BrokerAddress:
    """mqtt://[user@]host[:port] or mqtts://... A password in the URL is refused (it would end up in
    notebooks and histories): it comes from an environment variable or a prompt instead."""
    if "://" not in url:
        url = "mqtt://" + url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise TelemetryError(f"bad broker URL {_redact(url)!r}: use mqtt://[user@]host[:port]") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise TelemetryError(f"bad broker URL scheme {parts.scheme!r}: use mqtt:// or mqtts://")
    if parts.password is not None:
        raise TelemetryError("do not put the password in the broker URL: use mqtt://user@host with "
                             "--password-env VAR (or answer the prompt)")
    if not parts.hostname:
        raise TelemetryError(f"bad broker URL {_redact(url)!r}: no host (use mqtt://[user@]host[:port])")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname, port or (8883 if tls else 1883),
                         unquote(parts.username) if parts.username else None, None, tls)


def _redact(url: str) -> str:
    head, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        cred, _, host = rest.partition("@")
        return f"{head}{sep}{cred.split(':', 1)[0]}@{host}"
    return url


def default_url() -> str:
    return os.environ.get(ENV_URL) or DEFAULT_URL


def password_from_env(var: str) -> str:
    value = os.environ.get(var)
    if value is None:
        raise TelemetryError(f"environment variable {var} is not set: export it with the broker password")
    return value


# mosquitto answers a wrong password with 5 (not authorised) as often as with 4: say both.
_LOGIN_REFUSED = "refused the login (bad user name or password, or not authorised): check the user and --password-env"
_REFUSALS = {4: _LOGIN_REFUSED, 5: _LOGIN_REFUSED}


def connect(address: BrokerAddress, *, client_id: str | None = None, timeout: float = CONNECT_TIMEOUT,
            on_message: Callable[[mqtt.Client, object, mqtt.MQTTMessage], None] | None = None) -> mqtt.Client:
    """A connected paho client with its network thread running, or TelemetryError."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"ek-tele-{uuid.uuid4().hex[:10]}",
                         protocol=mqtt.MQTTv311)
    if address.user is not None:
        client.username_pw_set(address.user, address.password)
    if address.tls:
        client.tls_set()
    connected = threading.Event()
    outcome: list[object] = []

    def on_connect(c, userdata, flags, reason, properties) -> None:
        outcome.append(reason)
        connected.set()

    client.on_connect = on_connect
    if on_message is not None:
        client.on_message = on_message
    try:
        client.connect(address.host, address.port, keepalive=30)
    except ConnectionRefusedError:
        raise TelemetryError(f"cannot reach the MQTT broker at {address.url} (connection refused): "
                             "start one (%mqtt broker start) or fix the URL") from None
    except OSError as exc:
        raise TelemetryError(f"cannot reach the MQTT broker at {address.url} ({exc.strerror or exc}): "
                             "check the host and port") from None
    client.loop_start()
    if not connected.wait(timeout):
        close(client)
        raise TelemetryError(f"the MQTT broker at {address.url} did not answer within {timeout:g} s: "
                             "check that it is an MQTT broker")
    reason = outcome[0]
    if getattr(reason, "is_failure", False):
        close(client)
        code = getattr(reason, "value", reason)
        why = _REFUSALS.get(code, f"refused the connection ({reason})")
        # MQTT 3.1.1 return codes map onto paho's v5 reason codes: 134/135 = bad login/not authorised.
        if code in (134, 135):
            why = _LOGIN_REFUSED
        raise TelemetryError(f"the MQTT broker at {address.url} {why}")
    return client


def close(client: mqtt.Client) -> None:
    try:
        client.disconnect()
    finally:
        client.loop_stop()


class Subscription:
    """Topics (wildcards allowed) on one broker; each message goes to `deliver(topic, payload)`,
    which runs on paho's network thread and must be quick."""

    def __init__(self, address: BrokerAddress, topics: list[str], deliver: Callable[[str, bytes], None],
                 *, qos: int = 0, timeout: float = CONNECT_TIMEOUT) -> None:
        for topic in topics:
            _check_filter(topic)
        self.address = address
        self.topics = topics
        self._deliver = deliver
        self.client = connect(address, timeout=timeout, on_message=self._on_message)
        done = threading.Event()
        granted: list[object] = []

        def on_subscribe(c, userdata, mid, reasons, properties) -> None:
            granted.extend(reasons)
            done.set()

        self.client.on_subscribe = on_subscribe
        result, _ = self.client.subscribe([(t, qos) for t in topics])
        if result != mqtt.MQTT_ERR_SUCCESS or not done.wait(timeout):
            self.close()
            raise TelemetryError(f"the MQTT broker at {address.url} did not confirm the subscription: try again")
        if any(getattr(g, "is_failure", False) for g in granted):
            self.close()
            raise TelemetryError(f"the MQTT broker at {address.url} refused the subscription to "
                                 f"{' '.join(topics)}: check the broker's ACL")

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self._deliver(message.topic, message.payload)

    def close(self) -> None:
        close(self.client)


def _check_filter(topic: str) -> None:
    """MQTT topic filter rules: '#' only last and alone in its level, '+' alone in its level."""
    levels = topic.split("/")
    bad = (not topic or "\x00" in topic
           or any("#" in lv and (lv != "#" or i != len(levels) - 1) for i, lv in enumerate(levels))
           or any("+" in lv and lv != "+" for lv in levels))
    if bad:
        raise TelemetryError(f"bad topic filter {topic!r}: '+' and '#' must fill a whole level, '#' only at the end")


def publish(address: BrokerAddress, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1,
            timeout: float = CONNECT_TIMEOUT) -> None:
    """Publish one message and wait until the broker has it (QoS 1) or it is written (QoS 0)."""
    if not topic or "+" in topic or "#" in topic:
        raise TelemetryError(f"cannot publish to {topic!r}: a topic to publish to has no wildcards")
    client = connect(address, timeout=timeout)
    try:
        info = client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TelemetryError(f"the MQTT broker at {address.url} did not acknowledge the message: try again")
    finally:
        close(client)


def presence(address: BrokerAddress, *, settle: float = 0.3, timeout: float = CONNECT_TIMEOUT) -> dict[str, dict]:
    """Every agent's retained status (edgekernel/<id>/status): {device id: {"state": ..., ...}}.

    Retained messages arrive right after the subscription is granted; wait until none has come
    for `settle` seconds."""
    found: dict[str, dict] = {}
    last = [time.monotonic()]

    def deliver(topic: str, payload: bytes) -> None:
        device = topic.split("/")[1]
        try:
            status = json.loads(payload)
        except ValueError:
            status = {"state": payload.decode(errors="replace")}
        if not isinstance(status, dict):
            status = {"state": str(status)}
        found[device] = status
        last[0] = time.monotonic()

    sub = Subscription(address, [STATUS_TOPIC], deliver, qos=1, timeout=timeout)
    try:
        last[0] = time.monotonic()
        end = time.monotonic() + timeout
        while time.monotonic() < end and time.monotonic() - last[0] < settle:
            time.sleep(0.02)
    finally:
        sub.close()
    return dict(sorted(found.items()))
