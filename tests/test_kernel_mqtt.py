"""The kernel over MQTT, end to end: jupyter_client -> edgekernel kernel -> MqttSession -> mosquitto
-> the agent on an emulated unix board."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from edgekernel.mqtt.agent import start_agent_board

from kernel_fixtures import descendants, fresh_kernels, kernel_env, wait_gone  # noqa: F401  (fixtures)

SECRET = "kern3l-Secret-77"


@pytest.fixture
def secured_board():
    """mosquitto with a password, and an emulated board running the agent against it."""
    from edgekernel.mqtt.broker import mosquitto_path, start_mosquitto

    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install --no-install-recommends mosquitto)")
    with start_mosquitto(users={"nb": SECRET}) as broker:
        url = f"mqtt://nb@127.0.0.1:{broker.port}/kboard"
        board = start_agent_board(url, password=SECRET)
        pids = {board.pid} | descendants(board.pid)
        try:
            yield url, board
        finally:
            board.stop()
            assert not wait_gone(pids)


def _spec_for(kernel_env, url: str) -> str:
    """A copy of the installed "MicroPython (MQTT)" kernelspec whose kernel.json env names this board,
    as a user edits it."""
    kernels = kernel_env.jupyter_path / "kernels"
    spec = json.loads((kernels / "micropython-mqtt" / "kernel.json").read_text())
    assert spec["display_name"] == "MicroPython (MQTT)" and spec["env"]["EDGEKERNEL_PROFILE"] == "mqtt"
    spec["env"].update({"EDGEKERNEL_MQTT_URL": url, "EDGEKERNEL_MQTT_PASSWORD_ENV": "EK_NB_PASSWORD"})
    name = "micropython-mqtt-kboard"
    shutil.copytree(kernels / "micropython-mqtt", kernels / name, dirs_exist_ok=True)
    (kernels / name / "kernel.json").write_text(json.dumps(spec))
    return name


def test_mqtt_kernelspec_runs_cells_through_the_broker(secured_board, kernel_env, fresh_kernels):
    url, board = secured_board
    kernel = fresh_kernels.start(_spec_for(kernel_env, url), EK_NB_PASSWORD=SECRET)
    run = kernel.ok("x = 20\nprint('from the board')\nx * 2 + 2")
    assert "from the board\n" in run.stream() and run.result_text == "42"
    assert "connected to mqtt://nb@127.0.0.1" in run.stream()
    run = kernel.execute("def f():\n    return [][1]\nf()")
    assert run.status == "error" and run.content["ename"] == "IndexError"
    assert any('File "<cell>", line 3' in line for line in run.content["traceback"])
    # Kernel -> Interrupt stops a busy loop on the board; the board keeps its variables.
    msg_id = kernel.send_execute("while True:\n    pass")
    time.sleep(1.0)
    kernel.km.interrupt_kernel()
    run = kernel.collect(msg_id)
    assert run.status == "error" and run.content["ename"] == "KeyboardInterrupt"
    assert kernel.ok("x", ).result_text == "20"
    # Completion from the board's namespace.
    kernel.ok("import sys")
    reply = kernel.request("complete_request", {"code": "sys.imp", "cursor_pos": 7})
    assert "implementation" in reply["content"]["matches"]
    # A background cell publishing telemetry; %bg stop interrupts it over MQTT.
    kernel.ok("%%bg\nimport time\nn = 0\nwhile True:\n    _ek.publish('telemetry/count', {'n': n})\n    n += 1\n"
              "    print('sent', n)\n    time.sleep(0.05)")
    deadline = time.monotonic() + 30
    while "sent" not in kernel.ok("%bg").stream():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert "board busy" in kernel.execute("1").content["evalue"]
    assert "background job stopped after" in kernel.ok("%bg stop").stream()
    assert int(kernel.ok("n").result_text) > 0
    # The board goes away mid-cell: one clear error line, no hang.
    msg_id = kernel.send_execute("while True:\n    pass")
    time.sleep(1.0)
    board.kill()
    run = kernel.collect(msg_id)
    assert run.status == "error" and run.content["ename"] == "BoardOffline"
    assert "went offline while the cell ran" in run.content["evalue"]
    run = kernel.execute("1")
    assert run.status == "error" and "is offline" in run.content["evalue"]
    # The password never reaches the kernel's session log.
    logs = list((kernel_env.root / "runtime").glob("edgekernel-*.log"))
    assert logs and all(SECRET.encode() not in p.read_bytes() for p in logs)


def test_mqttconnect_magic_with_password_prompt_and_errors(secured_board, fresh_kernels):
    url, board = secured_board
    kernel = fresh_kernels.start("micropython", name="mqttconnect")
    prompts = []

    def answer(request):
        prompts.append(request["content"])
        return SECRET

    run = kernel.execute(f"%mqttconnect {url}", on_input=answer)
    assert run.status == "ok", run
    assert prompts and prompts[0]["password"] is True and "nb@127.0.0.1" in prompts[0]["prompt"]
    assert kernel.ok("import sys\nsys.implementation.name").result_text == "'micropython'"
    # Without stdin there is no prompt: a one-line error that says what to do.
    run = kernel.execute(f"%mqttconnect {url}")
    assert run.status == "error" and "--password-env" in run.content["evalue"]
    run = kernel.execute(f"%mqttconnect {url} --password-env EK_NOT_SET_ANYWHERE")
    assert run.status == "error" and "EK_NOT_SET_ANYWHERE is not set" in run.content["evalue"]
    run = kernel.execute(f"%mqttconnect {url}", on_input=lambda r: "wrong")
    assert run.status == "error" and "refused the login" in run.content["evalue"]
    assert "wrong" not in run.content["evalue"] and SECRET not in run.content["evalue"]
    run = kernel.execute("%mqttconnect mqtt://127.0.0.1:1/x")
    assert run.status == "error" and "no MQTT broker answers" in run.content["evalue"]
