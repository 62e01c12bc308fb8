"""The loopback brokers used by tests, benchmarks and `%mqtt broker start`."""
from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest

from edgekernel.mqtt.broker import BrokerError, start_broker, start_mosquitto


def round_trip(url_host: str, port: int, *, user: str | None = None, password: str | None = None) -> bytes:
    got = threading.Event()
    payload: list[bytes] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if user:
        client.username_pw_set(user, password)
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, m: (payload.append(m.payload), got.set())
    client.connect(url_host, port)
    client.loop_start()
    try:
        client.subscribe("ek/test")
        assert subscribed.wait(5)
        client.publish("ek/test", b"hello", qos=1)
        assert got.wait(5)
    finally:
        client.loop_stop()
        client.disconnect()
    return payload[0]


@pytest.mark.parametrize("fixture", ["mosquitto", "amqtt_broker"])
def test_broker_relays_a_message(fixture, request):
    broker = request.getfixturevalue(fixture)
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    assert round_trip(broker.host, broker.port) == b"hello"


def test_mosquitto_with_passwords_refuses_a_wrong_one(mosquitto):
    from edgekernel.mqtt.broker import mosquitto_path
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install --no-install-recommends mosquitto)")
    with start_mosquitto(users={"lab": "s3cret-pw"}) as broker:
        assert round_trip(broker.host, broker.port, user="lab", password="s3cret-pw") == b"hello"
        refused: list[object] = []
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.username_pw_set("lab", "wrong")
        done = threading.Event()
        client.on_connect = lambda c, u, f, rc, p: (refused.append(rc), done.set())
        client.connect(broker.host, broker.port)
        client.loop_start()
        assert done.wait(5)
        client.loop_stop()
        assert refused[0].is_failure


def test_unknown_broker_kind_is_a_clear_error():
    with pytest.raises(BrokerError, match="use mosquitto or amqtt"):
        start_broker("hivemq")
