"""The kernel on a board's WebREPL: %websocketconnect on the emulated WebREPL (real unix-port
MicroPython behind edgekernel.emulator.webrepl), password prompt, wrong password, restart."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kernel_fixtures import (boards, kernel_env, kernels, no_leftover_processes,  # noqa: F401
                             fresh_kernels)

pytestmark = pytest.mark.timeout(240)

PASSWORD = "s3cr3tpw"


@pytest.fixture(scope="module", autouse=True)
def _checked_for_leftovers(no_leftover_processes: None) -> None:
    """Set up before (so torn down after) every other fixture of the module."""


@pytest.fixture(scope="module")
def wr_board(boards):
    return boards.start("unix", webrepl=0, webrepl_password=PASSWORD)


def _answer_password(request: dict) -> str:
    assert request["content"]["password"] is True, "the password prompt must hide what is typed"
    return PASSWORD


def _everything_the_kernel_wrote(kernel_env) -> str:
    """The state files and per-session board logs of every kernel in this module."""
    runtime = Path(kernel_env.env["JUPYTER_RUNTIME_DIR"])
    return "".join(p.read_bytes().decode(errors="replace") for p in runtime.glob("edgekernel-*"))


def test_connect_with_a_password_prompt_then_work_and_restart(wr_board, kernels, kernel_env) -> None:
    kernel = kernels.start("micropython", name="webrepl-prompt")
    url = wr_board.webrepl
    run = kernel.execute(f"%websocketconnect {url}", on_input=_answer_password)
    assert run.status == "ok", run
    assert [r["content"]["prompt"] for r in run.stdin] == [f"WebREPL password for {url}: "]
    assert "over WebREPL" in run.stream()
    # Out[n], output, errors, completion over the websocket
    run = kernel.ok("x = 6\nprint('seven', x + 1)\nx * 7")
    assert run.stream().replace("\r\n", "\n") == "seven 7\n" and run.result_text == "42"
    bad = kernel.execute("1/0")
    assert bad.status == "error" and bad.content["ename"] == "ZeroDivisionError"
    reply = kernel.request("complete_request", {"code": "impo", "cursor_pos": 4})
    assert "import" in reply["content"]["matches"]
    # Files say which path they took
    run = kernel.ok("%sendtofile notes.txt\nhello over WebREPL\n")
    assert "via " in str(run.iopub)
    assert (Path(wr_board.flash_dir) / "notes.txt").read_text() == "hello over WebREPL\n"
    # Restart: the state file remembers the URL, not the password; the first cell asks again.
    kernel.ok("y = 1")
    kernel.restart()
    run = kernel.execute("print('y' in globals())", on_input=_answer_password)
    assert run.status == "ok", run
    assert run.stream().strip().endswith("False"), run      # soft-reset after the reconnect
    assert len(run.stdin) == 1 and run.stdin[0]["content"]["password"] is True
    assert "kernel restarted" in run.stream()
    written = _everything_the_kernel_wrote(kernel_env)
    assert url in written and PASSWORD not in written
    kernels.shutdown(kernel)


def test_password_from_an_environment_variable_and_errors(wr_board, fresh_kernels, kernel_env) -> None:
    kernel = fresh_kernels.start("micropython", name="webrepl-env", BOARD_PW=PASSWORD, WRONG_PW="nope1")
    url = wr_board.webrepl
    # A password in the cell is refused (it would be saved in the notebook)
    run = kernel.execute(f"%websocketconnect {url} --password {PASSWORD}")
    assert run.status == "error" and "--password-env" in run.content["evalue"]
    # Wrong password: a clear one-line error, the password nowhere in it
    run = kernel.execute(f"%websocketconnect {url} --password-env WRONG_PW")
    assert run.status == "error", run
    assert "wrong WebREPL password" in run.content["evalue"] and "\n" not in run.content["evalue"]
    assert "nope1" not in str(run.iopub) + str(run.reply)
    # %serialconnect on a ws:// URL points to the magic that asks for the password
    run = kernel.execute(f"%serialconnect --port {url}")
    assert run.status == "error" and f"%websocketconnect {url}" in run.content["evalue"], run
    # No stdin in this front end and no --password-env: say what to do
    run = kernel.execute(f"%websocketconnect {url}", allow_stdin=False)
    assert run.status == "error" and "--password-env" in run.content["evalue"], run
    # The variable that is set works; the board is still fine after the failed logins
    run = kernel.ok(f"%websocketconnect {url} --password-env BOARD_PW")
    assert kernel.ok("print(2 ** 10)").stream().strip() == "1024"
    # Kernel -> Interrupt reaches the board as Ctrl-C over the socket
    msg_id = kernel.send_execute("while True:\n    pass")
    time.sleep(0.5)
    kernel.km.interrupt_kernel()
    run = kernel.collect(msg_id)
    assert run.status == "error" and run.content["ename"] == "KeyboardInterrupt", run
    assert kernel.ok("print('after')").stream().strip() == "after"
    assert PASSWORD not in _everything_the_kernel_wrote(kernel_env)
    kernel.restart()   # --password-env: reconnects without asking
    run = kernel.ok("print('back')")
    assert "back" in run.stream() and not run.stdin


def test_port_in_the_environment(wr_board, fresh_kernels) -> None:
    kernel = fresh_kernels.start("micropython", name="webrepl-port-env", port=wr_board.webrepl,
                                 WEBREPL_PASSWORD=PASSWORD)
    run = kernel.ok("print('from env')")
    assert "from env" in run.stream() and "over WebREPL" in run.stream()
