"""%mqtt in a real IPython shell against real brokers (mosquitto and amqtt) and a real emulated board."""
from __future__ import annotations

import csv
import json
import os
import time

import paho.mqtt.client as mqtt
import pytest
from IPython.core.error import UsageError

from edgekernel.mqtt.broker import free_port, mosquitto_path, start_mosquitto

SECRET = "Tele-s3cret-9f2"


@pytest.fixture
def ip():
    from IPython.testing.globalipapp import get_ipython
    shell = get_ipython()
    shell.run_line_magic("load_ext", "edgekernel.telemetry")
    yield shell
    shell.run_line_magic("unload_ext", "edgekernel.telemetry")


@pytest.fixture(params=["mosquitto", "amqtt_broker"])
def broker(request):
    return request.getfixturevalue(request.param)


def publisher(broker, user=None, password=None) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if user:
        client.username_pw_set(user, password)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def send(client: mqtt.Client, topic: str, payload, retain: bool = False) -> None:
    data = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    client.publish(topic, data, qos=1, retain=retain).wait_for_publish(5)


def wait_rows(ip, name: str, rows: int) -> None:
    ip.run_line_magic("mqtt", f"wait {name} --rows {rows} --timeout 20")


def cell(ip, code: str):
    """Run a cell as a notebook would (pre_run_cell refreshes the recordings)."""
    result = ip.run_cell(code)
    assert result.success, result.error_in_exec or result.error_before_exec
    return result.result


def test_sub_records_wildcard_topics_into_a_dataframe(ip, broker, capsys):
    ip.run_line_magic("mqtt", f"connect {broker.url}")
    ip.run_line_magic("mqtt", "sub lab/+/env/# lab/solo --as env")
    assert "recording lab/+/env/# lab/solo" in capsys.readouterr().out
    pub = publisher(broker)
    try:
        send(pub, "lab/d1/env/air", {"temperature": 21.5, "humidity": 40})
        send(pub, "lab/d2/env/air/inside", {"temperature": 19.0})
        send(pub, "lab/d1/other", {"temperature": 99})       # not matched
        send(pub, "lab/solo", "12.5")
        send(pub, "lab/solo", "door open")
        wait_rows(ip, "env", 4)
        time.sleep(0.2)   # anything wrongly matched would have arrived by now
        frame = cell(ip, "env")
    finally:
        pub.loop_stop()
        pub.disconnect()
    assert frame["topic"].tolist() == ["lab/d1/env/air", "lab/d2/env/air/inside", "lab/solo", "lab/solo"]
    assert frame["temperature"].tolist()[:2] == [21.5, 19.0]
    assert frame["humidity"].iloc[0] == 40
    assert frame["value"].tolist()[2:] == [12.5, "door open"]
    assert str(frame["time"].dtype).startswith("datetime64")
    ip.run_line_magic("mqtt", "stop env")


def test_the_dataframe_is_refreshed_when_a_cell_starts_and_kept_after_stop(ip, mosquitto):
    ip.run_line_magic("mqtt", f"connect {mosquitto.url}")
    ip.run_line_magic("mqtt", "sub t/# --as t")
    pub = publisher(mosquitto)
    try:
        assert cell(ip, "len(t)") == 0
        for i in range(50):
            send(pub, "t/x", {"i": i})
        wait_rows(ip, "t", 50)
        assert cell(ip, "len(t)") == 50
        ip.run_line_magic("mqtt", "stop t")
        send(pub, "t/x", {"i": 50})
        time.sleep(0.3)
        assert cell(ip, "t.i.tolist()") == list(range(50))   # stopped: nothing new
        status = ip.run_line_magic("mqtt", "status")
        assert not status.loc["t", "recording"] and status.loc["t", "rows"] == 50
        # A stopped recording's name can be recorded again.
        ip.run_line_magic("mqtt", "sub t/# --as t")
        send(pub, "t/x", {"i": 51})
        wait_rows(ip, "t", 1)
        assert cell(ip, "t.i.tolist()") == [51]
    finally:
        pub.loop_stop()
        pub.disconnect()
    ip.run_line_magic("mqtt", "stop --all")


def test_a_name_the_user_reassigned_is_left_alone(ip, mosquitto):
    ip.run_line_magic("mqtt", f"connect {mosquitto.url}")
    ip.run_line_magic("mqtt", "sub u/# --as u")
    cell(ip, "u = 'mine'")
    ip.run_line_magic("mqtt", "pub u/1 1")
    wait_rows(ip, "u", 1)
    assert cell(ip, "u") == "mine"
    ip.run_line_magic("mqtt", "stop u")


def test_max_rows_bounds_the_recording(ip, mosquitto):
    ip.run_line_magic("mqtt", f"connect {mosquitto.url}")
    ip.run_line_magic("mqtt", "sub m --as m --max-rows 10")
    pub = publisher(mosquitto)
    try:
        for i in range(30):
            send(pub, "m", str(i))
        deadline = time.monotonic() + 10
        while ip.run_line_magic("mqtt", "status").loc["m", "received"] < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        pub.loop_stop()
        pub.disconnect()
    assert cell(ip, "m.value.tolist()") == list(range(20, 30))
    ip.run_line_magic("mqtt", "stop m")


def test_pub_retain_reaches_a_later_subscriber_and_plain_pub_does_not(ip, broker):
    ip.run_line_magic("mqtt", f"connect {broker.url}")
    ip.run_line_magic("mqtt", 'pub lab/led {"on": true, "level": 3} --retain')
    ip.run_line_magic("mqtt", "pub lab/note not kept")
    ip.run_line_magic("mqtt", "sub lab/# --as late")
    wait_rows(ip, "late", 1)
    time.sleep(0.3)
    frame = cell(ip, "late")
    assert frame["topic"].tolist() == ["lab/led"]
    assert bool(frame["on"].iloc[0]) is True and frame["level"].iloc[0] == 3
    # JSON without quotes around it keeps its own quotes; a quoted payload is one word.
    ip.run_line_magic("mqtt", "pub lab/text 'two words'")
    wait_rows(ip, "late", 2)
    assert cell(ip, "late.value.tolist()[-1]") == "two words"
    ip.run_line_magic("mqtt", "stop late")
    ip.run_line_magic("mqtt", "pub lab/led '' --retain")   # clear the retained message


def test_record_writes_a_csv_until_stop(ip, mosquitto, tmp_path):
    ip.run_line_magic("mqtt", f"connect {mosquitto.url}")
    ip.run_line_magic("mqtt", "sub r/+ --as r")
    ip.run_line_magic("mqtt", "pub r/a '{\"x\": 1}'")
    wait_rows(ip, "r", 1)
    path = tmp_path / "r.csv"
    ip.run_line_magic("mqtt", f"record r {path}")
    ip.run_line_magic("mqtt", "pub r/b '{\"x\": 2}'")
    wait_rows(ip, "r", 2)
    ip.run_line_magic("mqtt", "stop r")
    ip.run_line_magic("mqtt", "pub r/c '{\"x\": 3}'")
    rows = list(csv.DictReader(path.open()))
    assert [(r["topic"], r["x"]) for r in rows] == [("r/a", "1"), ("r/b", "2")]


def test_devices_shows_presence_from_retained_status(ip, broker):
    ip.run_line_magic("mqtt", f"connect {broker.url}")
    pub = publisher(broker)
    try:
        send(pub, "edgekernel/esp1/status", {"state": "online", "impl": "micropython", "version": "1.24.1",
                                             "mem_free": 31000}, retain=True)
        send(pub, "edgekernel/esp2/status", {"state": "offline"}, retain=True)
        send(pub, "edgekernel/esp3/telemetry", {"state": "not a status"}, retain=True)
        devices = ip.run_line_magic("mqtt", "devices")
        assert devices.index.tolist() == ["esp1", "esp2"]
        assert devices.loc["esp1", "state"] == "online" and devices.loc["esp1", "mem_free"] == 31000
        assert devices.loc["esp2", "state"] == "offline"
        for topic in ("edgekernel/esp1/status", "edgekernel/esp2/status", "edgekernel/esp3/telemetry"):
            send(pub, topic, b"", retain=True)
    finally:
        pub.loop_stop()
        pub.disconnect()


def test_the_emulated_board_publishes_and_goes_offline_when_stopped(ip, mosquitto):
    from edgekernel.telemetry.demo import start_sensor_board
    ip.run_line_magic("mqtt", f"connect {mosquitto.url}")
    ip.run_line_magic("mqtt", "sub edgekernel/+/telemetry/# --as board")
    sensor = start_sensor_board(mosquitto.url, device_id="emu7", rate=50)
    pids = {sensor.pid} | sensor.board_pids
    try:
        assert len(sensor.board_pids) >= 1
        wait_rows(ip, "board", 20)
        frame = cell(ip, "board")
        assert set(frame["topic"]) == {"edgekernel/emu7/telemetry/env"}
        counts = frame["count"].tolist()
        assert counts == list(range(counts[0], counts[0] + len(counts)))   # in order, none lost
        assert frame["temperature"].between(15, 30).all() and frame["humidity"].between(30, 60).all()
        devices = ip.run_line_magic("mqtt", "devices")
        assert devices.loc["emu7", "state"] == "online" and devices.loc["emu7", "impl"] == "micropython"
    finally:
        sensor.stop()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"
    # Killed mid-publish, the board's last will says it is offline.
    deadline = time.monotonic() + 10
    while ip.run_line_magic("mqtt", "devices").loc["emu7", "state"] != "offline":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    ip.run_line_magic("mqtt", "stop board")
    ip.run_line_magic("mqtt", "pub edgekernel/emu7/status '' --retain")


def test_broker_start_and_stop(ip, capsys):
    port = free_port()
    url = ip.run_line_magic("mqtt", f"broker start --port {port}")
    assert url == f"mqtt://127.0.0.1:{port}"
    assert "running at" in capsys.readouterr().out
    ip.run_line_magic("mqtt", "sub b --as b")
    ip.run_line_magic("mqtt", "pub b 1")
    wait_rows(ip, "b", 1)
    ip.run_line_magic("mqtt", "stop b")
    ip.run_line_magic("mqtt", "broker stop")
    with pytest.raises(UsageError, match="connection refused"):
        ip.run_line_magic("mqtt", f"pub b 2 --broker {url}")
    with pytest.raises(UsageError, match="no broker was started here"):
        ip.run_line_magic("mqtt", "broker stop")


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_errors_are_one_line_and_say_what_to_do(ip, mosquitto, monkeypatch):
    port = free_port()
    with pytest.raises(UsageError) as exc:
        ip.run_line_magic("mqtt", f"sub x --broker mqtt://127.0.0.1:{port}")
    assert "cannot reach the MQTT broker" in one_line(exc) and "%mqtt broker start" in one_line(exc)
    monkeypatch.setenv("EDGEKERNEL_MQTT", f"mqtt://127.0.0.1:{port}")
    with pytest.raises(UsageError, match=f"127.0.0.1:{port}"):
        ip.run_line_magic("mqtt", "pub x 1")     # the default comes from $EDGEKERNEL_MQTT
    ip.run_line_magic("mqtt", f"connect {mosquitto.url}")
    cases = {
        "plot nothing": "no recording named 'nothing'",
        "sub a/b# --as q": "bad topic filter",
        "sub x --as 9lives": "not a Python name",
        "frobnicate": "unknown command",
        "sub": "the following arguments are required",
        "pub only-topic": "needs a TOPIC and a PAYLOAD",
        "pub a/+ 1": "no wildcards",
        "sub x --broker http://h": "use mqtt:// or mqtts://",
        "sub x --password-env NO_SUCH_VAR_EK --broker mqtt://u@127.0.0.1": "NO_SUCH_VAR_EK is not set",
        "wait nothing": "no recording named",
    }
    for line, message in cases.items():
        with pytest.raises(UsageError) as exc:
            ip.run_line_magic("mqtt", line)
        assert message in one_line(exc), line
    ip.run_line_magic("mqtt", "sub x --as dup")
    with pytest.raises(UsageError, match="already recording"):
        ip.run_line_magic("mqtt", "sub y --as dup")
    with pytest.raises(UsageError, match="dup has 0 rows after 0.2 s"):
        ip.run_line_magic("mqtt", "wait dup --timeout 0.2")
    ip.run_line_magic("mqtt", "stop dup")


@pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed (apt-get install --no-install-recommends mosquitto)")
def test_credentials_work_and_are_never_shown(ip, capsys, monkeypatch):
    with start_mosquitto(users={"lab": SECRET}) as broker:
        monkeypatch.setenv("EK_TEST_PW", SECRET)
        monkeypatch.setenv("EK_WRONG_PW", SECRET + "x")
        url = f"mqtt://lab@127.0.0.1:{broker.port}"
        with pytest.raises(UsageError) as exc:
            ip.run_line_magic("mqtt", f"connect {url} --password-env EK_WRONG_PW")
        assert "refused the login (bad user name or password" in one_line(exc) and SECRET not in str(exc.value)
        with pytest.raises(UsageError) as exc:
            ip.run_line_magic("mqtt", f"sub x --broker mqtt://127.0.0.1:{broker.port}")   # anonymous
        assert "refused" in one_line(exc)
        ip.run_line_magic("mqtt", f"connect {url} --password-env EK_TEST_PW")
        ip.run_line_magic("mqtt", "sub s/# --as s")
        ip.run_line_magic("mqtt", "pub s/1 '{\"ok\": 1}'")
        wait_rows(ip, "s", 1)
        status = ip.run_line_magic("mqtt", "status")
        devices = ip.run_line_magic("mqtt", "devices")
        # The password prompt, when no --password-env is given, names the user, never the password.
        prompts: list[str] = []
        monkeypatch.setattr("getpass.getpass", lambda prompt: prompts.append(prompt) or SECRET)
        ip.run_line_magic("mqtt", f"pub s/2 2 --broker {url}")
        assert prompts == ["MQTT password for lab@127.0.0.1: "]
        wait_rows(ip, "s", 2)
        ip.run_line_magic("mqtt", "stop s")
        out = capsys.readouterr()
        shown = out.out + out.err + status.to_string() + repr(devices) + repr(cell(ip, "s"))
        assert "lab@127.0.0.1" in out.out and SECRET not in shown
