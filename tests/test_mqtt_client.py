"""edgekernel.mqtt.client: the one MQTT client module (URLs, connecting, board status), against a real
mosquitto and a real TLS handshake."""
from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading

import paho.mqtt.client as mqtt
import pytest

from edgekernel.mqtt import client as mc
from edgekernel.mqtt.broker import free_port
from edgekernel.mqtt.session import MqttError, MqttSession
from edgekernel.telemetry import client as telemetry


@pytest.mark.parametrize("url", ["mqtt://u:pw-77@h:notaport/d", "ftp://u:pw-77@h/d", "mqtt://u:pw-77@/d",
                                 "mqtts://u:pw-77@h"])
def test_a_password_is_refused_before_anything_else_is_checked(url):
    for parse in (mc.parse_mqtt_url, mc.parse_broker_address):
        with pytest.raises(ValueError) as refused:
            parse(url)
        assert "pw-77" not in str(refused.value) and "--password-env" in str(refused.value)


def test_board_and_broker_urls_share_one_parser():
    board = mc.parse_mqtt_url("mqtts://lab@pi.lan/kitchen")
    assert (board.host, board.port, board.user, board.tls, board.device_id) == ("pi.lan", 8883, "lab", True, "kitchen")
    assert board.address("pw") == mc.parse_broker_address("mqtts://lab@pi.lan").with_password("pw")
    assert board.broker == board.address().url == "mqtts://lab@pi.lan:8883"
    with pytest.raises(ValueError, match="bad port in 'mqtt://h:x/d'"):
        mc.parse_mqtt_url("mqtt://h:x/d")
    with pytest.raises(ValueError, match="device id"):
        mc.parse_mqtt_url("mqtt://h/a/b")


def _self_signed(tmp_path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


@pytest.fixture
def tls_server(tmp_path):
    """A TLS server with a self-signed certificate that completes handshakes and then says nothing
    (no MQTT): the handshake is real, the broker is silent."""
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            try:
                conn.settimeout(5)
                held.append(context.wrap_socket(conn, server_side=True))
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], cert
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in held:
            conn.close()
        assert not thread.is_alive()


def test_tls_failures_are_one_line(tls_server):
    port, cert = tls_server
    address = mc.BrokerAddress("127.0.0.1", port, tls=True)
    with pytest.raises(mc.BrokerTlsFailed) as failed:
        mc.connect_client(address, timeout=2)
    assert str(failed.value) == (f"TLS with mqtts://127.0.0.1:{port} failed (CERTIFICATE_VERIFY_FAILED): "
                                 "check mqtts:// and the broker's certificate")
    with pytest.raises(MqttError, match=f"^TLS with mqtts://127.0.0.1:{port} failed"):
        MqttSession.open(f"mqtts://127.0.0.1:{port}/dev", timeout=2)
    # Trusting its certificate (or not checking it) gets through TLS to a server that is no MQTT broker.
    for options in ({"ca_file": cert}, {"insecure": True}):
        with pytest.raises(mc.BrokerSilent, match=f"127.0.0.1:{port} did not accept the connection within 1 s"):
            mc.connect_client(address, timeout=1, **options)


def test_connect_failures_in_board_and_notebook_words(mosquitto):
    address = mc.BrokerAddress("127.0.0.1", free_port())
    with pytest.raises(mc.BrokerUnreachable) as down:
        mc.connect_client(address, timeout=2)
    assert down.value.why == "connection refused"
    assert str(down.value).startswith(f"no MQTT broker answers at 127.0.0.1:{address.port} (connection refused)")
    with pytest.raises(telemetry.TelemetryError, match="cannot reach the MQTT broker at .*%mqtt broker start"):
        telemetry.connect(address, timeout=2)
    client = mc.connect_client(mc.BrokerAddress("127.0.0.1", mosquitto.port), timeout=5)
    try:
        assert client.is_connected()
    finally:
        mc.close_client(client)
    assert not client.is_connected()


def test_board_statuses_are_read_from_the_retained_messages(mosquitto):
    address = mc.BrokerAddress("127.0.0.1", mosquitto.port)
    publisher = mc.connect_client(address, timeout=5)
    try:
        for device, payload in (("kitchen", json.dumps({"state": "online", "mem_free": 100})),
                                ("garage", json.dumps({"state": "offline"})), ("odd", "not json")):
            publisher.publish(mc.status_topic(device), payload, qos=1, retain=True).wait_for_publish(5)
        publisher.publish("edgekernel/kitchen/out", b"not a status", qos=1).wait_for_publish(5)
    finally:
        mc.close_client(publisher)
    assert mc.read_statuses(address) == {"garage": {"state": "offline"}, "kitchen": {"state": "online", "mem_free": 100},
                                         "odd": {"state": "not json"}}
    url = mc.parse_mqtt_url(f"mqtt://127.0.0.1:{mosquitto.port}/kitchen")
    assert mc.wait_presence(url, "online", timeout=5) == {"state": "online", "mem_free": 100}
    with pytest.raises(TimeoutError, match="kitchen did not report offline"):
        mc.wait_presence(url, "offline", timeout=1)


def test_on_connected_runs_on_connect_and_a_drop_is_reported(mosquitto):
    """on_connected runs on a connect (the session subscribes there); on_lost when the connection drops."""
    connects: list[mqtt.Client] = []
    lost = threading.Event()
    client = mc.connect_client(mc.BrokerAddress("127.0.0.1", mosquitto.port), timeout=5,
                               on_connected=connects.append, on_lost=lambda why: lost.set())
    try:
        assert connects == [client] and not lost.is_set()
        mosquitto.stop()
        assert lost.wait(10)
    finally:
        mc.close_client(client)
