"""The MQTT board agent (firmware/ekagent.py) on an emulated unix board, through real brokers,
driven by edgekernel.mqtt.session.MqttSession."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgekernel.mqtt.agent import start_agent_board, wait_presence
from edgekernel.mqtt.session import BoardOffline, MqttError, MqttSession, parse_mqtt_url, split_cell, topics

from kernel_fixtures import alive, descendants, wait_gone

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def agent_board_factory():
    """start(url, **options) -> AgentBoard; every board is stopped and its processes checked gone."""
    started = []
    pids: set[int] = set()

    def start(url, **options):
        board = start_agent_board(url, **options)
        started.append(board)
        pids.update({board.pid} | descendants(board.pid))
        return board

    yield start
    for board in started:
        pids.update({board.pid} | descendants(board.pid) if alive(board.pid) else set())
        board.stop()
    assert not wait_gone(pids), "board processes left behind"


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker(request):
    return request.getfixturevalue("mosquitto" if request.param == "mosquitto" else "amqtt_broker")


def _url(broker, device="dev1", user=None):
    return f"mqtt://{user + '@' if user else ''}127.0.0.1:{broker.port}/{device}"


# -- core exec, on both brokers ---------------------------------------------------------------------

def test_exec_output_value_traceback(broker, agent_board_factory):
    url = _url(broker)
    agent_board_factory(url)
    with MqttSession.open(url) as board:
        assert board.online is True
        chunks = []
        r = board.exec("x = 41\nprint('hi', x)\nx + 1", show_value=True, on_output=chunks.append)
        assert r.ok and r.text == "hi 41\n" and r.value == "42" and b"".join(chunks) == b"hi 41\n"
        assert board.exec("x + 1", show_value=True).value == "42"  # the namespace persists
        assert board.exec("_", show_value=True).value == "42"      # `_` as in IPython
        r = board.exec("print('before')\ndef f():\n    return 1/0\nf()")
        assert r.text == "before\n"
        assert r.error.type == "ZeroDivisionError"
        assert [(f.file, f.line) for f in r.error.frames] == [("<cell>", 4), ("<cell>", 3)]
        assert board.eval("[1, 'a', {'k': (2, 3)}]") == [1, "a", {"k": (2, 3)}]
        r = board.exec("input('? ')")
        assert r.error.type == "OSError" and "not available over MQTT" in r.error.message
        board.soft_reset()
        assert board.exec("x").error.type == "NameError"


def test_interrupt_stops_a_busy_loop(broker, agent_board_factory):
    url = _url(broker)
    agent_board_factory(url)
    with MqttSession.open(url) as board:
        board.exec("y = 7")
        started = threading.Event()
        threading.Thread(target=lambda: started.wait(30) and board.interrupt(), daemon=True).start()
        r = board.exec("print('looping')\nwhile True:\n    pass", on_output=lambda b: started.set())
        assert r.error.type == "KeyboardInterrupt" and r.interrupted is not None
        assert r.text == "looping\n"
        # The agent keeps running, with the namespace intact; a later cell is not hit by a late signal.
        for _ in range(5):
            assert board.exec("y", show_value=True).value == "7"


# -- mosquitto only -------------------------------------------------------------------------------------

def test_output_streams_while_the_cell_runs(mosquitto, agent_board_factory):
    url = _url(mosquitto)
    ab = agent_board_factory(url)
    go = Path(ab.board.flash_dir) / "go"
    # The cell waits for a file that the host only creates once it has seen the cell's first output.
    code = ("import os\nprint('waiting')\nwhile True:\n    try:\n        os.stat('go')\n        break\n"
            "    except OSError:\n        pass\nprint('released')")
    seen = []

    def on_output(data):
        seen.append(data)
        go.touch()

    with MqttSession.open(url) as board:
        r = board.exec(code, on_output=on_output, timeout=30)
    assert not r.timed_out and r.text == "waiting\nreleased\n"
    assert seen[0].startswith(b"waiting")


def test_large_output_in_order_and_large_cell_in_parts(mosquitto, agent_board_factory):
    url = _url(mosquitto)
    agent_board_factory(url)
    with MqttSession.open(url) as board:
        r = board.exec("for i in range(2000):\n    print(i)")
        assert r.text == "".join(f"{i}\n" for i in range(2000))
        # ~12 KB of source: 7 exec messages reassembled into one buffer on the board.
        lines = [f"v{i} = {i}" for i in range(1200)]
        code = "\n".join(lines) + "\nprint(sum(v for k, v in globals().items() if k.startswith('v')))"
        assert len(code) > 5 * board.presence["max_part"]
        r = board.exec(code)
        assert r.ok and r.text == f"{sum(range(1200))}\n"


def test_a_cell_larger_than_the_board_takes_is_refused(mosquitto, agent_board_factory):
    url = _url(mosquitto)
    agent_board_factory(url)
    with MqttSession.open(url) as board:
        with pytest.raises(Exception, match="more than this board takes at once"):
            board.exec("a = 1\n" * 20000)
        assert board.exec("1", show_value=True).value == "1"


def test_duplicate_delivery_runs_once(mosquitto, agent_board_factory):
    url = _url(mosquitto)
    agent_board_factory(url)
    t = topics("dev1")
    with MqttSession.open(url) as board:
        board.exec("n = 0")
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        done = threading.Event()
        client.on_message = lambda c, u, m: m.payload.startswith(b"dup-1 ") and b" d\n" in m.payload and done.set()
        client.connect("127.0.0.1", mosquitto.port)
        client.subscribe(t["out"], 0)
        client.loop_start()
        try:
            time.sleep(0.2)  # the subscription is in place
            code = b"n += 1\n" + b"#" * 3000  # two parts
            messages = split_cell("dup-1", code, 2000)
            assert len(messages) == 2
            # QoS 1 redelivery: each part twice, then the whole request again.
            for m in [messages[0], messages[0], messages[1], messages[1], messages[0], messages[1]]:
                client.publish(t["exec"], m, qos=1).wait_for_publish(5)
            assert done.wait(20)
            time.sleep(0.3)
        finally:
            client.disconnect()
            client.loop_stop()
        assert board.exec("n", show_value=True).value == "1"


def test_presence_online_then_offline_when_the_board_dies(mosquitto, agent_board_factory):
    url = _url(mosquitto, "dev-p")
    ab = agent_board_factory(url)
    status = wait_presence(parse_mqtt_url(url), "online", timeout=10)  # a late subscriber: retained
    assert status["impl"] == "micropython" and status["mem_free"] > 0 and status["interrupt"] == "sigint"
    ab.kill()
    assert wait_presence(parse_mqtt_url(url), "offline", timeout=30)["state"] == "offline"
    with MqttSession.open(url) as board:
        assert board.online is False
        with pytest.raises(BoardOffline, match="offline"):
            board.exec("1")


def test_board_killed_mid_cell_gives_a_clear_error(mosquitto, agent_board_factory):
    url = _url(mosquitto, "dev-k")
    ab = agent_board_factory(url)
    with MqttSession.open(url) as board:
        killer = threading.Timer(0.5, ab.kill)
        killer.start()
        try:
            with pytest.raises(BoardOffline) as info:
                board.exec("while True:\n    pass")
        finally:
            killer.join()
        message = str(info.value)
        assert "went offline while the cell ran" in message and "\n" not in message


def test_broker_down(mosquitto, agent_board_factory):
    from edgekernel.mqtt.broker import free_port

    with pytest.raises(MqttError, match="no MQTT broker answers at 127.0.0.1"):
        MqttSession.open(f"mqtt://127.0.0.1:{free_port()}/x", timeout=3)
    url = _url(mosquitto, "dev-b")
    agent_board_factory(url)
    board = MqttSession.open(url)
    try:
        mosquitto.stop()
        with pytest.raises(MqttError) as info:
            board.exec("import time\ntime.sleep(1)", timeout=20)
        assert "broker" in str(info.value) and "\n" not in str(info.value)
    finally:
        board.close()


def test_wrong_credentials_and_no_secret_in_argv_or_logs(tmp_path):
    from edgekernel.mqtt.broker import mosquitto_path, start_mosquitto

    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install --no-install-recommends mosquitto)")
    secret = "s3cret-Pw-91"
    with start_mosquitto(users={"alice": secret}) as broker:
        url = f"mqtt://alice@127.0.0.1:{broker.port}/dev-s"
        with pytest.raises(MqttError) as info:
            MqttSession.open(url, password="wrong-password", timeout=5)
        assert "refused the login" in str(info.value) and "wrong-password" not in str(info.value)
        with pytest.raises(ValueError, match="no password in the URL"):
            parse_mqtt_url(f"mqtt://alice:{secret}@127.0.0.1/x")
        # The board, from the command line, with the password in an environment variable.
        env = dict(os.environ, EK_TEST_MQTT_PW=secret, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-m", "edgekernel", "board", "--emulator", "unix", "--json",
                                 "--mqtt", url, "--mqtt-password-env", "EK_TEST_MQTT_PW"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
        pids = {proc.pid}
        try:
            info_line = json.loads(proc.stdout.readline())
            assert info_line["mqtt"] == url
            wait_presence(parse_mqtt_url(url), "online", password=secret, timeout=30)
            pids |= descendants(proc.pid)
            for pid in pids:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    assert secret.encode() not in f.read()
            logged = []
            with MqttSession.open(url, password=secret, log=logged.append) as board:
                assert board.exec("print('ok')").text == "ok\n"
            assert secret.encode() not in b"".join(logged)
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=15)
        assert secret.encode() not in err
        assert not wait_gone(pids)


def test_agent_install_over_serial(mosquitto, tmp_path):
    """`edgekernel agent install` writes the agent through the serial REPL; a reset starts it."""
    from edgekernel.emulator import start_board

    url = _url(mosquitto, "dev-i")
    with start_board("unix") as board:
        pids = {board.pid} | descendants(board.pid)
        secret, wifi_secret = "inst4ll-Pw", "w1fi-Pw"
        env = dict(os.environ, PYTHONPATH=str(ROOT), EK_T_PW=secret, EK_T_WIFI=wifi_secret)
        out = subprocess.run([sys.executable, "-m", "edgekernel", "agent", "install", "--port", board.port,
                              "--broker", f"mqtt://inst@127.0.0.1:{mosquitto.port}", "--device-id", "dev-i",
                              "--password-env", "EK_T_PW", "--wifi-ssid", "lab", "--wifi-password-env", "EK_T_WIFI"],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        assert secret not in out.stdout + out.stderr and wifi_secret not in out.stdout + out.stderr
        settings = json.loads((Path(board.flash_dir) / "ek_settings.json").read_text())
        assert settings["password"] == secret and settings["wifi_password"] == wifi_secret
        url = f"mqtt://inst@127.0.0.1:{mosquitto.port}/dev-i"
        assert "wrote main.py" in out.stdout and "wrote ek_settings.json" in out.stdout
        assert "wrote ekagent.mpy" in out.stdout or "kept the agent as .py" in out.stdout
        assert json.loads((Path(board.flash_dir) / "ek_settings.json").read_text())["device_id"] == "dev-i"
        board.hard_reset()
        wait_presence(parse_mqtt_url(url), "online", password=secret, timeout=30)
        with MqttSession.open(url, password=secret) as session:
            assert session.exec("6 * 7", show_value=True).value == "42"
        pids |= descendants(board.pid)
    assert not wait_gone(pids)


def test_agent_install_refuses_missing_password_env():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NOPE_NOT_SET", None)
    out = subprocess.run([sys.executable, "-m", "edgekernel", "agent", "install", "--port", "/dev/null",
                          "--broker", "mqtt://bob@127.0.0.1", "--device-id", "d", "--password-env", "NOPE_NOT_SET"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "NOPE_NOT_SET is not set" in out.stderr and len(out.stderr.splitlines()) == 1


def test_interrupt_during_sleep_and_of_a_queued_request(mosquitto, agent_board_factory):
    url = _url(mosquitto, "dev-q")
    agent_board_factory(url)
    with MqttSession.open(url) as board:
        started = threading.Event()
        threading.Thread(target=lambda: started.wait(30) and board.interrupt(), daemon=True).start()
        r = board.exec("import time\nprint('sleeping')\ntime.sleep(60)", on_output=lambda b: started.set(), timeout=40)
        assert r.error.type == "KeyboardInterrupt" and not r.timed_out
        # A cell's own time limit interrupts it too, and says so.
        r = board.exec("while True:\n    pass", timeout=1)
        assert r.timed_out and r.error.type == "KeyboardInterrupt"
        assert board.exec("2 ** 10", show_value=True).value == "1024"


def test_cells_publish_telemetry(mosquitto, agent_board_factory):
    url = _url(mosquitto, "dev-t")
    agent_board_factory(url)
    got = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.on_message = lambda c, u, m: got.append((m.topic, m.payload))
    client.connect("127.0.0.1", mosquitto.port)
    client.subscribe("edgekernel/dev-t/telemetry/#", 0)
    client.subscribe("lab/raw", 0)
    client.loop_start()
    try:
        time.sleep(0.2)
        with MqttSession.open(url) as board:
            r = board.exec("for i in range(3):\n    _ek.publish('telemetry/env', {'t': i, 'temp': 20.5 + i})\n"
                           "_ek.publish_to('lab/raw', b'42')")
            assert r.ok, r
        deadline = time.monotonic() + 10
        while len(got) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    assert [json.loads(p)["temp"] for t, p in got if t == "edgekernel/dev-t/telemetry/env"] == [20.5, 21.5, 22.5]
    assert ("lab/raw", b"42") in got


def test_a_board_that_stops_answering(mosquitto, agent_board_factory):
    """Frozen (SIGSTOP: the TCP connection stays up, so no last will yet): a clear timeout, no hang."""
    import signal

    from edgekernel.device import BoardNotResponding

    url = _url(mosquitto, "dev-f")
    ab = agent_board_factory(url)
    frozen = sorted(descendants(ab.pid))
    with MqttSession.open(url) as board:
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(BoardNotResponding, match="did not answer within 10 s"):
                board.exec("1")
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        # Thawed, it runs what it was sent, and then answers again.
        deadline = time.monotonic() + 20
        while True:
            try:
                assert board.exec("3 * 3", show_value=True).value == "9"
                break
            except BoardNotResponding:
                assert time.monotonic() < deadline


def test_agent_refuses_a_cell_larger_than_its_ram_allows(mosquitto, agent_board_factory):
    """The agent checks the announced size itself (a host that ignores max_cell gets a 'b' answer)."""
    url = _url(mosquitto, "dev-r")
    ab = agent_board_factory(url)
    t = topics("dev-r")
    answers = []
    done = threading.Event()

    def on_message(c, u, m):
        if m.payload.startswith(b"huge-1 "):
            answers.append(m.payload)
            done.set() if b" d\n" in m.payload else None

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.on_message = on_message
    client.connect("127.0.0.1", mosquitto.port)
    client.subscribe(t["out"], 0)
    client.loop_start()
    try:
        time.sleep(0.2)
        size = ab.status["max_cell"] + 1
        client.publish(t["exec"], f"huge-1 0/9 {size}\n".encode() + b"#" * 100, qos=1)
        assert done.wait(20)
    finally:
        client.disconnect()
        client.loop_stop()
    assert answers[0].startswith(b"huge-1 0 b\ncell too large for this board")
    assert answers[-1] == b"huge-1 1 d\nerr 0"
    with MqttSession.open(url) as board:
        assert board.exec("'still fine'", show_value=True).value == "'still fine'"


@pytest.mark.parametrize("url", ["mqtt://lab:s3cret-pw@broker/dev1", "http://lab:s3cret-pw@broker/dev1",
                                 "mqtts://lab:s3cret-pw@broker"])
def test_a_password_in_the_url_is_refused_without_echoing_it(url):
    with pytest.raises(ValueError) as refused:
        parse_mqtt_url(url)
    assert "s3cret-pw" not in str(refused.value) and "--password-env" in str(refused.value)


@pytest.mark.parametrize("fault", ["reset", "broker restart"])
def test_put_cut_by_a_reset_or_a_broker_restart_leaves_no_temporary_file(mosquitto, agent_board_factory, fault):
    # The agent comes back by itself (it boots, or reconnects to the broker): the put waits for it to
    # remove its temporary file, then says the old file is unchanged (was: the bare "went offline"
    # error and a .ek-tmp file left on the flash).
    from edgekernel.device.files import BoardFiles, FileTransferError
    from edgekernel.mqtt.broker import start_mosquitto

    url = _url(mosquitto, "dev-t")
    ab = agent_board_factory(url)
    flash = Path(ab.board.flash_dir)
    (flash / "data.bin").write_bytes(b"old")
    restarted = []

    def cut_when_the_temporary_file_appears():
        deadline = time.monotonic() + 30
        while not (flash / ".data.bin.ek-tmp").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        if fault == "reset":
            ab.board.hard_reset()
        else:
            mosquitto.stop()
            restarted.append(start_mosquitto(mosquitto.port))

    with MqttSession.open(url) as board:
        cutter = threading.Thread(target=cut_when_the_temporary_file_appears)
        cutter.start()
        try:
            with pytest.raises(FileTransferError) as info:
                BoardFiles.for_board(board).put(os.urandom(60_000), "data.bin")
        finally:
            cutter.join()
            for broker in restarted:
                broker.stop()
    message = str(info.value)
    assert "data.bin on the board is unchanged" in message and "may be left" not in message, message
    assert "\n" not in message
    assert (flash / "data.bin").read_bytes() == b"old"
    assert not list(flash.glob("*.ek-tmp"))
