"""One contract for a board (edgekernel.device.board.Board), one opener for every address,
one table of board kinds: checked by a type checker, on real boards, and against kernelspecs/."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgekernel.boards import BOARD_KINDS, board_kind
from edgekernel.device.board import Board
from edgekernel.device.opener import board_schemes, open_board, split_options
from edgekernel.links import LINK_SCHEMES, LinkError, link_class, url_scheme

from kernel_fixtures import descendants, wait_gone

ROOT = Path(__file__).resolve().parent.parent


def test_both_sessions_satisfy_the_contract_for_a_type_checker():
    """mypy checks that BoardSession and MqttSession are Boards (tests/board_contract_check.py)."""
    if shutil.which("mypy") is None and subprocess.run([sys.executable, "-m", "mypy", "--version"],
                                                       capture_output=True).returncode != 0:
        pytest.skip("mypy is not installed (pip install mypy)")
    out = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
                          "--no-incremental", str(ROOT / "tests" / "board_contract_check.py"),
                          str(ROOT / "edgekernel" / "device" / "board.py")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_urls_choose_their_transport():
    assert url_scheme("/dev/ttyUSB0") == "" and url_scheme("COM3") == ""
    assert url_scheme("ws://192.168.4.1:8266") == "ws" and url_scheme("MQTT://b/x") == "mqtt"
    assert link_class("/dev/ttyUSB0").kind == "serial" and link_class("socket://h:1").kind == "serial"
    assert link_class("ws://h").kind == "WebREPL" and link_class("wss://h").kind == "WebREPL"
    assert link_class("ble://aa:bb") is None
    assert {"", "ws", "mqtt", "mqtts", "socket", "rfc2217", "loop"} <= set(board_schemes())
    assert split_options("mqtts://b/kitchen?ca=/etc/ca.pem&insecure=1") == \
        ("mqtts://b/kitchen", {"ca": "/etc/ca.pem", "insecure": "1"})
    assert split_options("/dev/ttyUSB0") == ("/dev/ttyUSB0", {})


def test_an_unknown_scheme_is_one_line_that_lists_the_known_ones():
    with pytest.raises(LinkError) as info:
        open_board("ble://aa:bb:cc")
    message = str(info.value)
    assert "ble://aa:bb:cc" in message and "ws://" in message and "mqtt://" in message and "\n" not in message


def test_a_webrepl_needs_a_secret_source_and_never_reads_one_from_the_url():
    with pytest.raises(LinkError, match="password is needed"):
        open_board("ws://127.0.0.1:1")


def test_a_serial_board_through_the_opener_is_a_board(unix_session_port):
    with open_board(unix_session_port) as board:
        assert isinstance(board, Board)
        caps = board.capabilities
        assert caps.byte_stream and caps.interrupt == "ctrl-c" and not caps.file_protocol
        assert board.description == unix_session_port and "baud" in board.summary
        assert board.exec("print(6 * 7)").text.strip() == "42"
        assert board.eval("[1, 'a']") == [1, "a"]


@pytest.fixture
def unix_session_port():
    from edgekernel.emulator import start_board

    board = start_board("unix")
    pids = {board.pid} | descendants(board.pid)
    try:
        yield board.port
    finally:
        board.stop()
        assert not wait_gone(pids)


def test_the_cli_runs_code_on_a_board_behind_mqtt(mosquitto):
    """`edgekernel exec --port mqtt://broker/ID` works like any other port."""
    from edgekernel.mqtt.agent import start_agent_board

    url = f"mqtt://127.0.0.1:{mosquitto.port}/contract"
    agent = start_agent_board(url)
    pids = {agent.pid} | descendants(agent.pid)
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-m", "edgekernel", "exec", "--port", url, "print('via', 'mqtt')\n6*7"],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["via mqtt", "42"]
        with open_board(url) as board:
            assert isinstance(board, Board)
            assert not board.capabilities.byte_stream and board.description == url
    finally:
        agent.stop()
    assert not wait_gone(pids)


def test_every_board_kind_has_a_kernelspec_that_agrees():
    specs = ROOT / "kernelspecs"
    assert {k.kernelspec for k in BOARD_KINDS} == {p.name for p in specs.iterdir() if (p / "kernel.json").exists()}
    for kind in BOARD_KINDS:
        spec = json.loads((specs / kind.kernelspec / "kernel.json").read_text())
        assert spec["display_name"] == kind.display, kind
        assert spec["env"]["EDGEKERNEL_PROFILE"] == kind.profile, kind
        assert ("EDGEKERNEL_MQTT_URL" in spec["env"]) == kind.mqtt, kind
        assert spec["argv"][:3] == ["python", "-m", "edgekernel.kernel"], kind
        for logo in ("logo-32x32.png", "logo-64x64.png"):
            assert (specs / kind.kernelspec / logo).stat().st_size > 0, (kind, logo)
    assert board_kind("no-such-profile").profile == "serial"


def test_every_link_scheme_names_a_real_transport():
    for scheme in LINK_SCHEMES:
        cls = link_class(f"{scheme}://x" if scheme else "/dev/ttyX")
        assert cls is not None and hasattr(cls, "from_url") and cls.kind, scheme


def test_ports_install_and_the_gateway_read_the_same_table():
    from edgekernel.boards import kind_for_bridge
    from edgekernel.gateway.manage import board_spec
    from edgekernel.install import KERNEL_NAMES
    from edgekernel.ports import PortInfo

    assert set(KERNEL_NAMES) == {k.kernelspec for k in BOARD_KINDS}
    assert kind_for_bridge("CP210x").profile == "esp8266" and kind_for_bridge(None).profile == "serial"
    assert PortInfo("/dev/ttyUSB0", 0x10C4, 0xEA60, None, "", "CP210x", None).is_esp
    entry = {"python": "python3", "ssh": "pi@pi1"}
    _, esp = board_spec("pi1", entry, {"device": "/dev/ttyUSB0", "bridge": "CP210x"})
    assert esp["display_name"] == "MicroPython ESP8266 on pi1 (ttyUSB0)" and esp["env"]["EDGEKERNEL_PROFILE"] == "esp8266"
    _, emulated = board_spec("pi1", entry, {"device": "/dev/pts/3", "bridge": "emulated"})
    assert emulated["env"]["EDGEKERNEL_PROFILE"] == "serial", "the Pi's emulated board runs already"
