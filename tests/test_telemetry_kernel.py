"""%mqtt in a real Python 3 kernel (jupyter_client) and the example notebook run headlessly (nbclient):
live views update in place, nothing lands in other cells, passwords are asked for and never shown."""
from __future__ import annotations

import ast
import base64
import io
import json
import os
import queue
import threading
import time
from pathlib import Path

import nbformat
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from jupyter_client import KernelManager

from edgekernel.mqtt.broker import mosquitto_path, start_mosquitto
from kernel_fixtures import alive, describe, started_client, wait_gone

ROOT = Path(__file__).resolve().parents[1]
SECRET = "Kern-s3cret-41x"


def kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("EDGEKERNEL_MQTT", None)
    return env


@pytest.fixture
def kernel():
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=kernel_env(), cwd=str(ROOT))
    kc = started_client(km)
    kc.wait_for_ready(timeout=60)
    pid = km.provisioner.process.pid
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
        left = wait_gone({pid})
        assert not left, f"kernel left running: {describe(left)}"


def run(kc, code: str, *, stdin: dict[str, str] | None = None, timeout: float = 60) -> tuple[str, list[dict]]:
    """Execute `code`; return its status and the iopub messages whose parent is this request.
    `stdin` answers input requests whose prompt contains a key."""
    msg_id = kc.execute(code, allow_stdin=stdin is not None)
    deadline = time.monotonic() + timeout
    messages: list[dict] = []
    status = None
    while status is None or not any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                                    for m in messages):
        assert time.monotonic() < deadline, f"cell did not finish: {code!r}"
        if stdin is not None:
            try:
                request = kc.stdin_channel.get_msg(timeout=0.01)
                prompt = request["content"]["prompt"]
                answer = next(v for k, v in stdin.items() if k in prompt)
                messages.append(request)
                kc.input(answer)
            except queue.Empty:
                pass
        try:
            msg = kc.iopub_channel.get_msg(timeout=0.05)
        except queue.Empty:
            pass
        else:
            if msg["parent_header"].get("msg_id") == msg_id:
                messages.append(msg)
            else:
                # New output for a request other than the running one is exactly the leak we test for.
                # (An update of an existing display may carry the previous request's header: ipykernel
                # stamps background-thread messages with the latest request, and it only replaces data.)
                assert msg["msg_type"] in ("status", "update_display_data"), \
                    f"message for another request: {msg['msg_type']} {msg['content']}"
        if status is None:
            try:
                reply = kc.shell_channel.get_msg(timeout=0.01)
            except queue.Empty:
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                status = reply["content"]["status"]
    return status, messages


def outputs(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["msg_type"] not in ("status", "execute_input")]


def test_views_update_in_place_and_nothing_leaks_into_other_cells(kernel, mosquitto):
    status, msgs = run(kernel, f"%load_ext edgekernel.telemetry\n%mqtt connect {mosquitto.url}\n"
                               "%mqtt sub leak/# --as L")
    assert status == "ok"
    status, msgs = run(kernel, "%mqtt plot L --rate 20 --window 100")
    [shown] = outputs(msgs)
    assert shown["msg_type"] == "display_data" and "image/png" in shown["content"]["data"]
    plot_id = shown["content"]["transient"]["display_id"]
    status, msgs = run(kernel, "%mqtt table L --rate 20")
    [shown] = outputs(msgs)
    table_id = shown["content"]["transient"]["display_id"]

    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    publisher.connect(mosquitto.host, mosquitto.port)
    publisher.loop_start()

    def publish() -> None:
        time.sleep(0.5)
        for i in range(500):
            publisher.publish("leak/sensor", json.dumps({"n": i, "x": i % 7}))
            time.sleep(0.002)

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        status, msgs = run(kernel, "import time\nprint('busy cell starts')\ntime.sleep(3)\nprint('busy cell ends')")
    finally:
        thread.join()
        publisher.loop_stop()
        publisher.disconnect()
    assert status == "ok"
    texts = "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream")
    assert texts == "busy cell starts\nbusy cell ends\n"
    updates = [m for m in outputs(msgs) if m["msg_type"] == "update_display_data"]
    others = [m for m in outputs(msgs) if m["msg_type"] not in ("stream", "update_display_data")]
    assert others == [], f"telemetry output leaked into a cell: {others}"
    assert {m["content"]["transient"]["display_id"] for m in updates} == {plot_id, table_id}
    assert any("image/png" in m["content"]["data"] for m in updates)
    # Throttled: 20 redraws a second at most per view over ~3 s (a few more for scheduling slack).
    assert len(updates) <= 2 * 20 * 5

    status, msgs = run(kernel, "%mqtt wait L --rows 500\nlen(L), L.n.tolist() == list(range(500))")
    result = [m for m in msgs if m["msg_type"] == "execute_result"]
    assert result[0]["content"]["data"]["text/plain"] == "(500, True)"
    status, msgs = run(kernel, "%mqtt stop L")
    kinds = [m["msg_type"] for m in outputs(msgs)]
    assert set(kinds) <= {"stream", "update_display_data"} and kinds.count("stream") == 1
    # After stop: no more updates while another cell runs.
    status, msgs = run(kernel, "time.sleep(0.5)")
    assert outputs(msgs) == []


@pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto is not installed (apt-get install --no-install-recommends mosquitto)")
def test_the_password_prompt_goes_through_the_front_end_and_is_never_shown(kernel):
    with start_mosquitto(users={"lab": SECRET}) as broker:
        url = f"mqtt://lab@127.0.0.1:{broker.port}"
        status, msgs = run(kernel, f"%load_ext edgekernel.telemetry\n%mqtt connect {url}",
                           stdin={"password": SECRET})
        assert status == "ok"
        [request] = [m for m in msgs if m["msg_type"] == "input_request"]
        assert request["content"]["password"] is True and "lab@127.0.0.1" in request["content"]["prompt"]
        status, more = run(kernel, "%mqtt pub a/b 1\n%mqtt devices\n%mqtt status")
        assert status == "ok"
        status, bad = run(kernel, f"%mqtt connect {url}", stdin={"password": SECRET + "-wrong"})
        assert status == "error"
        # IPython shows a UsageError as one line on stderr, without a traceback.
        [error] = [m["content"]["text"] for m in bad if m["msg_type"] == "stream"]
        assert error.startswith("UsageError: the MQTT broker at mqtt://lab@127.0.0.1") and "refused the login" in error
        assert error.count("\n") == 1
        shown = json.dumps([m["content"] for m in msgs + more + bad if m["msg_type"] != "input_request"])
        assert SECRET not in shown


def line_columns(png: bytes, rgb: tuple[int, int, int]) -> int:
    """How many of the image's columns hold the colour `rgb`, antialiased pixels included (each channel
    within 0.3 of it). A line drawn across the demo's plot reaches 274-448 of its 560 columns; the
    legend's handle alone reaches 20-54. (Counting pixels of the exact colour instead depends on the
    line's slope: an antialiased 1-px line has few fully covered pixels, 98 in one of 40 recordings.)"""
    from matplotlib.image import imread
    image = imread(io.BytesIO(png), format="png")[:, :, :3]
    return int((np.abs(image - np.array(rgb) / 255).max(axis=2) < 0.3).any(axis=0).sum())


def test_the_example_notebook_runs_headlessly_and_plots_the_boards_readings(tmp_path):
    from nbclient import NotebookClient
    nb = nbformat.read(ROOT / "examples" / "telemetry.ipynb", as_version=4)
    km = KernelManager(kernel_name="python3")
    client = NotebookClient(nb, km=km, timeout=120, startup_timeout=60, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", kernel_env()["PYTHONPATH"])
        try:
            client.execute()
        finally:
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    cells = {c.metadata["tags"][0]: c for c in nb.cells if c.cell_type == "code"}
    for tag, c in cells.items():
        assert not [o for o in c.outputs if o.output_type == "error"], tag

    # The board's processes are gone after the clean-up cell.
    board = cells["board"].outputs[0]["data"]["text/plain"]
    pid, board_pids = ast.literal_eval(board)
    assert board_pids and not [p for p in [pid, *board_pids] if alive(p)]

    # The plot: one image, with a line across it in each colour (temperature C0, humidity C1).
    [plot] = cells["plot"].outputs
    png = base64.b64decode(plot["data"]["image/png"])
    assert line_columns(png, (0x1F, 0x77, 0xB4)) > 200 and line_columns(png, (0xFF, 0x7F, 0x0E)) > 200

    rows, topics, last_count = ast.literal_eval(cells["rows"].outputs[0]["data"]["text/plain"])
    assert rows >= 20 and topics == ["edgekernel/demo/telemetry/env"] and last_count >= rows - 1

    [table] = cells["table"].outputs
    assert "edgekernel/demo/telemetry/env" in table["data"]["text/html"]
    devices = cells["devices"].outputs[0]["data"]["text/plain"]
    assert "demo" in devices and "online" in devices and "micropython" in devices

    # Each cell shows only its own output: nothing from the MQTT thread or the redraws landed elsewhere.
    expected = {"broker": ["stream"], "board": ["execute_result"], "sub": ["stream"], "table": ["display_data"],
                "plot": ["display_data"], "devices": ["execute_result"], "describe": ["execute_result"],
                "record": ["stream"], "cleanup": ["stream"], "rows": ["execute_result"]}
    def kinds(c) -> list[str]:   # consecutive stream pieces count as one output
        out: list[str] = []
        for o in c.outputs:
            if not (out and o.output_type == "stream" == out[-1]):
                out.append(o.output_type)
        return out

    assert {tag: kinds(c) for tag, c in cells.items()} == expected
    cleanup = "".join(o.text for o in cells["cleanup"].outputs)
    assert cleanup.startswith(f"stopped readings: {rows} rows\nbroker at mqtt://127.0.0.1:") and cleanup.count("\n") == 2
