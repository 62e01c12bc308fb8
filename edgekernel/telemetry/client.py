"""MQTT for the telemetry magics: broker addresses, subscriptions, publish, presence.

Built on edgekernel.mqtt.client (URLs, connecting, board status); knows nothing of IPython. Every failure a user can cause raises TelemetryError with one line that
says what to do; passwords never appear in messages, reprs or logs.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import paho.mqtt.client as mqtt

from ..mqtt import client as mqtt_client
from ..mqtt.client import BrokerAddress, close_client as close

DEFAULT_URL = "mqtt://127.0.0.1:1883"
ENV_URL = "EDGEKERNEL_MQTT"
STATUS_TOPIC = mqtt_client.status_topic()
CONNECT_TIMEOUT = mqtt_client.CONNECT_TIMEOUT

__all__ = ["BrokerAddress", "TelemetryError", "parse_broker_url", "default_url", "password_from_env", "connect",
           "close", "Subscription", "publish", "presence", "DEFAULT_URL", "ENV_URL", "STATUS_TOPIC",
           "CONNECT_TIMEOUT"]


class TelemetryError(Exception):
    """A telemetry command failed; the message is one line saying what to do."""


def parse_broker_url(url: str) -> BrokerAddress:
    """mqtt://[user@]host[:port] or mqtts://... A password in the URL is refused (it would end up in
    notebooks and histories): it comes from an environment variable or a prompt instead."""
    try:
        return mqtt_client.parse_broker_address(url)
    except ValueError as exc:
        raise TelemetryError(str(exc)) from None


def default_url() -> str:
    return os.environ.get(ENV_URL) or DEFAULT_URL


def password_from_env(var: str) -> str:
    value = os.environ.get(var)
    if value is None:
        raise TelemetryError(f"environment variable {var} is not set: export it with the broker password")
    return value


LOGIN_REFUSED = "refused the login (bad user name or password, or not authorised): check the user and --password-env"


def notebook_error(exc: mqtt_client.MqttClientError) -> TelemetryError:
    """The client's error in the words of a notebook (which can start a broker with %mqtt broker start)."""
    if not isinstance(exc, mqtt_client.BrokerConnectError):
        return TelemetryError(str(exc))
    broker = f"MQTT broker at {exc.address.url}"
    if isinstance(exc, mqtt_client.BrokerUnreachable) and exc.why == "connection refused":
        return TelemetryError(f"cannot reach the {broker} (connection refused): start one (%mqtt broker start) "
                              "or fix the URL")
    if isinstance(exc, (mqtt_client.BrokerUnreachable, mqtt_client.BrokerTlsFailed)):
        return TelemetryError(f"cannot reach the {broker} ({exc.why}): check the host and port")
    if isinstance(exc, mqtt_client.BrokerRefused):
        why = LOGIN_REFUSED if exc.login else f"refused the connection ({exc.reason})"
        return TelemetryError(f"the {broker} {why}")
    if isinstance(exc, mqtt_client.BrokerSilent):
        return TelemetryError(f"the {broker} did not answer within {exc.timeout:g} s: check that it is an MQTT broker")
    return TelemetryError(str(exc))


def connect(address: BrokerAddress, *, client_id: str | None = None, timeout: float = CONNECT_TIMEOUT,
            on_message: Callable[[mqtt.Client, object, mqtt.MQTTMessage], None] | None = None) -> mqtt.Client:
    """A connected paho client with its network thread running, or TelemetryError."""
    try:
        return mqtt_client.connect_client(address, client_id=client_id or f"ek-tele-{uuid.uuid4().hex[:10]}",
                                          timeout=timeout, on_message=on_message)
    except mqtt_client.MqttClientError as exc:
        raise notebook_error(exc) from None


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
        try:
            mqtt_client.subscribe_confirmed(self.client, address, [(t, qos) for t in topics], timeout)
        except mqtt_client.MqttClientError as exc:
            self.close()
            raise notebook_error(exc) from None

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
    """Every agent's retained status (edgekernel/<id>/status): {device id: {"state": ..., ...}}."""
    try:
        return mqtt_client.read_statuses(address, settle=settle, timeout=timeout)
    except mqtt_client.MqttClientError as exc:
        raise notebook_error(exc) from None
