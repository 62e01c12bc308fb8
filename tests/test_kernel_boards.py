"""Several boards in one notebook: --as NAME, %board, %%on, %boards, boards["NAME"] in %%local.

Through the real kernel (jupyter_client) on two emulated unix boards, each a MicroPython process
of its own with its own flash folder.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from kernel_fixtures import (Kernel, Run, boards, descendants, fresh_kernels, kernel_env,  # noqa: F401
                             kernels, no_leftover_processes, wait_for_stream, wait_gone)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module", autouse=True)
def _checked_for_leftovers(no_leftover_processes: None) -> None:
    """Set up before (so torn down after) every other fixture of the module."""


def flash(kernel_env, name: str) -> Path:
    return kernel_env.root / "xdg-data" / "edgekernel" / f"flash-unix-{name}"


@pytest.fixture(scope="module")
def two(kernels, kernel_env) -> Kernel:
    """A kernel with no board of its own and two named emulated boards, 'left' then 'right'."""
    kernel = kernels.start("micropython", name="micropython/boards", EDGEKERNEL_PORT="")
    for name in ("left", "right"):
        run = kernel.ok(f"%serialconnect --emulator unix --as {name}")
        assert "connected to the emulated unix board" in run.stream() and f"as '{name}'" in run.stream(), run
    assert "cells now run on 'right'" in run.stream() and "'left' also connected" in run.stream(), run
    return kernel


def wait_bg(kernel: Kernel, board: str, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        shown = kernel.ok(f"%%on {board}\n%bg").stream()
        if text in shown:
            return shown
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in %bg on {board}: {shown!r}")


def error_line(run: Run) -> str:
    assert run.status == "error", run
    evalue = run.content["evalue"]
    assert "\n" not in evalue, f"one line: {evalue!r}"
    return evalue


def completions(kernel: Kernel, code: str) -> list[str]:
    reply = kernel.request("complete_request", {"code": code, "cursor_pos": len(code)})["content"]
    assert reply["status"] == "ok", reply
    return reply["matches"]


# -- the tests -----------------------------------------------------------------------------------

def test_boards_lists_both_and_the_active_one(two: Kernel) -> None:
    text = two.ok("%boards").stream()
    lines = text.splitlines()
    left = next(line for line in lines if " left " in line)
    right = next(line for line in lines if " right " in line)
    assert "emulator unix" in left and "connected" in left and not left.startswith("*"), text
    assert right.startswith("*") and "emulator unix" in right and "connected" in right, text
    names = [line.lstrip("* ").split()[0] for line in lines[1:] if not line.startswith("* the active")]
    assert names == ["left", "right"], f"the unused default board is not listed: {text!r}"
    assert "the active board is 'right'" in two.ok("%board").stream()


def test_each_emulated_board_has_its_own_flash_folder(two: Kernel, kernel_env) -> None:
    # A file magic on each board, one through %%on, one on the active board.
    two.ok("%%on left\n%sendtofile hello.txt\nfrom the left")
    two.ok("%sendtofile hello.txt\nfrom the right")
    assert (flash(kernel_env, "left") / "hello.txt").read_text() == "from the left"
    assert (flash(kernel_env, "right") / "hello.txt").read_text() == "from the right"
    assert two.ok("%%on left\n%cat hello.txt").stream() == "from the left\n"
    assert two.ok("%cat hello.txt").stream() == "from the right\n"
    two.ok("%%on left\n%sendtofile only-left.txt\n1")
    assert "only-left.txt" in two.ok("%board left\n%ls").stream()
    assert "only-left.txt" not in two.ok("%board right\n%ls").stream()
    # Two processes, each sandboxed in its own folder.
    assert two.ok("%%on left\nopen('/hello.txt').read()").result_text == "'from the left'"


def test_board_switches_and_on_runs_one_cell_elsewhere(two: Kernel) -> None:
    run = two.ok("%board left")
    assert "cells now run on 'left'" in run.stream()
    two.ok("where = 'L'")
    two.ok("%board right\nwhere = 'R'")       # the rest of the cell runs on the board switched to
    assert two.ok("where").result_text == "'R'"
    assert two.ok("%%on left\nwhere").result_text == "'L'"
    assert two.ok("where").result_text == "'R'", "%%on changes the board for one cell only"
    # Tracebacks of a %%on cell keep the notebook cell's line numbers.
    failed = two.execute("%%on left\nx = 1\n1 / 0")
    assert failed.status == "error" and failed.content["ename"] == "ZeroDivisionError"
    assert any("line 3" in line for line in failed.content["traceback"]), failed.content["traceback"]
    # Each board has its own session log; %output names the one of the board that printed.
    two.ok("%%on left\nprint('into the left log')")
    shown = two.ok("%output")
    assert shown.stream() == "into the left log\n"
    log = Path(shown.stream("stderr").split(" is in ", 1)[1].split("]", 1)[0])
    assert log.name.endswith(".left.log") and b"into the left log" in log.read_bytes(), log
    assert b"into the left log" not in log.with_name(log.name.replace(".left.log", ".right.log")).read_bytes()


def test_completion_and_inspection_follow_the_active_board(two: Kernel) -> None:
    two.ok("%%on left\ndef only_on_left_fn(a, b=2):\n    return a")
    two.ok("%board left")
    assert "only_on_left_fn" in completions(two, "only_on_l")
    reply = two.request("inspect_request", {"code": "only_on_left_fn", "cursor_pos": 5, "detail_level": 0})
    assert reply["content"]["found"] and "only_on_left_fn(a, b=2)" in reply["content"]["data"]["text/plain"]
    two.ok("%board right")
    assert "only_on_left_fn" not in completions(two, "only_on_l")
    reply = two.request("inspect_request", {"code": "only_on_left_fn", "cursor_pos": 5, "detail_level": 0})
    assert not reply["content"]["found"]


def test_bg_on_one_board_while_cells_run_on_the_other(two: Kernel, kernel_env) -> None:
    release = flash(kernel_env, "left") / "release"
    release.unlink(missing_ok=True)
    code = ("%%on left\n%%bg\nimport os, time\nprint('left job started')\n"
            "while 'release' not in os.listdir():\n    time.sleep(0.02)\n'left done'")
    assert "background" in two.ok(code).stream()
    wait_bg(two, "left", "left job started")
    # The right board is not held up by the left one's job (each board has its own worker).
    assert two.ok("print('right works')").stream() == "right works\n"
    assert "print" in completions(two, "pri"), "completion on the right board answers from the board"
    busy = two.execute("%%on left\nprint('no')")
    assert "board 'left' busy" in error_line(busy) and "%bg" in busy.content["evalue"]
    assert "busy" in error_line(two.execute("%%on left\n%ls"))
    shown = two.ok("%bg").stream()
    assert "no background job on 'right'" in shown and "'left' has one" in shown, shown
    assert "running a %%bg job" in next(line for line in two.ok("%boards").stream().splitlines() if " left " in line)
    release.write_text("")
    shown = wait_bg(two, "left", "finished")
    assert "'left done'" in shown
    assert two.ok("%%on left\nprint('left free')").stream() == "left free\n"


def test_interrupt_stops_the_board_of_the_running_cell(two: Kernel) -> None:
    two.ok("%%on left\n%%bg\nn = 0\nwhile True:\n    n += 1")
    wait_bg(two, "left", "running")
    msg_id = two.send_execute("print('spinning right')\nwhile True:\n    pass")
    wait_for_stream(two, msg_id, "spinning right")
    two.km.interrupt_kernel()
    reply = two.wait_reply(msg_id, timeout=15)
    two.wait_idle(msg_id)
    assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
    assert "running" in two.ok("%%on left\n%bg").stream(), "the other board's job goes on"
    assert "stopped" in two.ok("%%on left\n%bg stop").stream()
    assert int(two.ok("%%on left\nn").result_text) > 0
    # And the other way round: a %%on cell is the one Interrupt stops.
    msg_id = two.send_execute("%%on left\nprint('spinning left')\nwhile True:\n    pass")
    wait_for_stream(two, msg_id, "spinning left")
    two.km.interrupt_kernel()
    reply = two.wait_reply(msg_id, timeout=15)
    two.wait_idle(msg_id)
    assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
    assert two.ok("where").result_text == "'R'"


def test_local_cells_reach_each_board_by_name(two: Kernel) -> None:
    run = two.ok("%%local\n(sorted(boards), boards['left'].eval('where'), boards['right'].eval('where'), "
                 "board.eval('where'))")
    assert run.result_text == "(['left', 'right'], 'L', 'R', 'R')"
    assert two.ok("%%local\nboards['left'].exec('print(where * 2)')").result_text == "'LL\\n'"
    missing = two.execute("%%local\nboards['nope']")
    assert missing.status == "error" and "no board named 'nope'" in missing.content["evalue"]
    assert "left, right" in missing.content["evalue"]


def test_errors_are_one_line_and_name_the_boards(two: Kernel) -> None:
    for cell in ("%board nope", "%%on nope\nprint(1)", "%disconnect nope"):
        evalue = error_line(two.execute(cell))
        assert evalue.startswith("no board named 'nope'") and "left, right" in evalue, (cell, evalue)
    taken = error_line(two.execute("%serialconnect --port /dev/null --as left"))
    assert "'left' is taken by the emulated unix board" in taken and "%disconnect left" in taken, taken
    bad = error_line(two.execute("%serialconnect --emulator unix --as 'no good'"))
    assert "a board's name" in bad
    local = error_line(two.execute("%%on left\n%%local\n1"))
    assert "boards['left']" in local
    # The boards are untouched by the refused magics.
    assert two.ok("%%on left\nwhere").result_text == "'L'"


def test_connecting_a_named_board_again_and_disconnecting_one(two: Kernel, kernel_env) -> None:
    # Running the connect cell again connects that same board again (a fresh emulator, same files).
    run = two.ok("%serialconnect --emulator unix --as left")
    assert "as 'left'" in run.stream()
    assert two.ok("%board").stream().startswith("the active board is 'left'")
    assert two.ok("open('hello.txt').read()").result_text == "'from the left'"
    two.ok("%board right")


def test_mount_follows_the_board(two: Kernel, tmp_path: Path) -> None:
    (tmp_path / "hostmod.py").write_text("WHERE = 'host folder'\n")
    assert "mounted" in two.ok(f"%%on left\n%mount {tmp_path}").stream()
    assert two.ok("%%on left\nimport hostmod\nhostmod.WHERE").result_text == "'host folder'"
    missing = two.execute("import hostmod")
    assert missing.status == "error" and missing.content["ename"] == "ImportError", "the right board has no mount"
    assert "unmounted" in two.ok("%%on left\n%umount").stream()


def test_a_webrepl_board_joins_by_name(two: Kernel, boards, kernel_env) -> None:
    password = "pw4named"
    wifi = boards.start("unix", webrepl=0, webrepl_password=password)
    run = two.execute(f"%websocketconnect {wifi.webrepl} --as wifi", on_input=lambda request: password)
    assert run.status == "ok" and "as 'wifi'" in run.stream(), run
    assert two.ok("print('over the air')").stream().replace("\r\n", "\n") == "over the air\n"
    assert two.ok("%%on left\nopen('hello.txt').read()").result_text == "'from the left'"
    listed = two.ok("%boards").stream()
    assert any(line.startswith("*") and " wifi " in line and wifi.webrepl in line for line in listed.splitlines())
    runtime = Path(kernel_env.env["JUPYTER_RUNTIME_DIR"])
    written = "".join(p.read_bytes().decode(errors="replace") for p in runtime.glob("edgekernel-*"))
    assert password not in written, "the password is in no state file or log"
    assert "disconnected" in two.ok("%disconnect wifi").stream()
    assert " wifi " not in two.ok("%boards").stream()
    assert "'right'" in two.ok("%board right").stream()
    boards.stop(wifi)


def test_a_lost_board_leaves_the_other_working(two: Kernel, kernel_env) -> None:
    two.ok("%%on left\nprint('left is up')")
    folder = str(flash(kernel_env, "left"))
    emulators = [pid for pid in descendants(two.pid)
                 if Path(f"/proc/{pid}/cmdline").exists() and folder.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
                 and b"edgekernel.emulator" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(emulators) == 1, emulators
    two.note_processes()
    os.kill(emulators[0], signal.SIGKILL)   # pull the left board's cable
    lost = two.execute("%%on left\nprint('anyone?')")
    assert lost.status == "error" and "%serialconnect --emulator unix --as left" in lost.content["evalue"], lost
    assert two.ok("print('right goes on')").stream() == "right goes on\n"
    left = next(line for line in two.ok("%boards").stream().splitlines() if " left " in line)
    assert "not connected" in left and "--as left" in left, left
    again = error_line(two.execute("%%on left\nprint(1)"))
    assert again.startswith("board 'left' is not connected") and "--as left" in again, again
    two.ok("%serialconnect --emulator unix --as left")
    assert two.ok("%%on left\nopen('hello.txt').read()").result_text == "'from the left'"
    two.ok("%board right")


def test_restart_reconnects_every_board(two: Kernel, kernel_env) -> None:
    two.ok("%board left")
    two.restart()
    listed = two.ok("%boards").stream()
    assert "reconnects when used" in listed and " left " in listed and " right " in listed, listed
    assert next(line for line in listed.splitlines() if " left " in line).startswith("*"), "the active board is kept"
    assert two.ok("open('hello.txt').read()").result_text == "'from the left'"
    assert two.ok("%%on right\nopen('hello.txt').read()").result_text == "'from the right'"
    listed = two.ok("%boards").stream()
    assert "reconnects when used" not in listed and listed.count("connected") >= 2, listed
    # %disconnect NAME: the board leaves the notebook (and a restart does not bring it back).
    gone = two.execute("%%on right\n%disconnect\nprint('after')")
    assert "disconnected" in gone.stream()
    assert "board 'right' was disconnected" in error_line(gone), "the rest of the cell does not run"
    listed = two.ok("%boards").stream()
    assert " right " not in listed and " left " in listed, listed
    two.restart()
    listed = two.ok("%boards").stream()
    assert " right " not in listed and " left " in listed, listed


def test_the_default_board_and_a_named_one(fresh_kernels) -> None:
    kernel = fresh_kernels.start("micropython-emulator", name="emulator/boards")
    first = kernel.ok("print(1)").stream()
    assert "as '" not in first and "connected to the emulated unix board" in first   # unchanged single board
    assert kernel.ok("%boards").stream().splitlines()[1].startswith("*")
    kernel.ok("mine = 'default'")
    run = kernel.ok("%serialconnect --emulator unix --as extra")
    assert "cells now run on 'extra' ('board' also connected" in run.stream(), run
    assert "NameError" in kernel.execute("mine").content["ename"]
    assert kernel.ok("%%on board\nmine").result_text == "'default'"
    kernel.ok("%board board")
    assert kernel.ok("mine").result_text == "'default'"


def test_board_with_no_boards_says_how_to_connect_one(fresh_kernels) -> None:
    kernel = fresh_kernels.start("micropython", name="micropython/no-boards", EDGEKERNEL_PORT="")
    for cell in ("%board", "%board left"):
        evalue = error_line(kernel.execute(cell))
        assert "no board is connected yet" in evalue and "%serialconnect" in evalue and "--as" in evalue, evalue
    assert "no board is connected yet" in kernel.ok("%boards").stream()


def test_a_board_behind_mqtt_joins_by_name(fresh_kernels) -> None:
    from edgekernel.mqtt.agent import start_agent_board
    from edgekernel.mqtt.broker import mosquitto_path, start_mosquitto

    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install --no-install-recommends mosquitto)")
    secret = "named-Mqtt-55"
    with start_mosquitto(users={"nb": secret}) as broker:
        url = f"mqtt://nb@127.0.0.1:{broker.port}/named"
        agent = start_agent_board(url, password=secret)
        pids = {agent.pid} | descendants(agent.pid)
        try:
            kernel = fresh_kernels.start("micropython", name="micropython/mqtt-named", EDGEKERNEL_PORT="",
                                         EK_NAMED_PW=secret)
            kernel.ok("%serialconnect --emulator unix --as bench")
            run = kernel.ok(f"%mqttconnect {url} --as remote --password-env EK_NAMED_PW")
            assert "as 'remote'" in run.stream() and "cells now run on 'remote'" in run.stream(), run
            assert kernel.ok("side = 'remote'\nside").result_text == "'remote'"
            assert "NameError" == kernel.execute("%%on bench\nside").content["ename"]
            listed = kernel.ok("%boards").stream()
            assert any(line.startswith("*") and " remote " in line and url in line for line in listed.splitlines())
            assert "disconnected" in kernel.ok("%disconnect remote").stream()
            assert "cells now run on 'bench'" in kernel.ok("%boards\n%board bench").stream()
            fresh_kernels.shutdown(kernel)
        finally:
            agent.stop()
            assert not wait_gone(pids)
