"""Every request gets a reply, whatever fails on the host (issue 11, item 1), and the
surface a Jupyter user meets: bounded floods, exit/quit, stable connection lines.

The fault tests start the real kernel with one step made to raise
(tests/faulty_kernel.py) and check that the request, and the next one, are
answered. Without the guard, ipykernel logs the exception and sends no reply:
the cell stays busy forever and the wait below runs into its hang guard.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kernel_fixtures import (Kernel, Kernels, boards, fresh_boards, fresh_kernels, kernel_env, kernels,  # noqa: F401
                             no_leftover_processes)

pytestmark = pytest.mark.usefixtures("no_leftover_processes")

HANG_GUARD = 30.0   # a reply that takes longer is a request left unanswered


@pytest.fixture(scope="module")
def faulty_spec(kernel_env) -> str:
    """A kernelspec that runs tests/faulty_kernel.py (the emulated-board profile)."""
    spec_dir = kernel_env.jupyter_path / "kernels" / "micropython-faulty"
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, str(Path(__file__).with_name("faulty_kernel.py")), "-f", "{connection_file}"],
        "display_name": "MicroPython (fault injected)", "language": "python", "interrupt_mode": "signal",
        "env": {"EDGEKERNEL_PROFILE": "emulator"},
    }))
    return "micropython-faulty"


def start_faulty(kernels: Kernels, spec: str, fault: str, **env: str) -> Kernel:
    return kernels.start(spec, name=f"faulty[{fault}]", EDGEKERNEL_TEST_FAULT=fault, **env)


def error_of(run) -> str:
    assert run.status == "error", run
    return f"{run.content['ename']}: {run.content['evalue']}"


# (fault, the cell that meets it): each is a step of a cell's path on the host.
CELL_FAULTS = [
    ("edgekernel.emulator:start_board", "print(1)"),                                   # emulator start
    ("edgekernel.emulator:start_board!edgekernel.emulator:BoardError", "print(1)"),    # ... a missing tool
    ("edgekernel.kernel.connection:Connection._auto_connect", "print(1)"),          # connect / reconnect
    ("edgekernel.device.session:BoardSession.open", "print(1)"),                       # opening the link
    ("edgekernel.device.session:BoardSession.exec", "print(1)"),                       # running the cell
    ("edgekernel.kernel.connection:Connection.start_emulator", "%serialconnect --emulator microbit"),
    ("edgekernel.kernel.magics:MagicParser.parse_line", "%ls"),                        # a magic
    ("ipykernel.ipkernel:IPythonKernel.do_execute", "%%local\nprint(1)"),              # %%local
    ("edgekernel.kernel.kernel:MicroPythonKernel._run_magic_lines", "%lsmagic\n%%local\nprint(1)"),
]


@pytest.mark.parametrize("fault,cell", CELL_FAULTS, ids=[f for f, _ in CELL_FAULTS])
def test_a_host_fault_in_a_cell_gives_an_error_reply(fresh_kernels, faulty_spec, fault, cell):
    kernel = start_faulty(fresh_kernels, faulty_spec, fault)
    for _ in range(2):   # the next cell is answered too
        run = kernel.execute(cell, timeout=HANG_GUARD)
        message = error_of(run)
        assert "injected fault" in message, message
        assert "\n" not in run.content["evalue"], "one line"
        assert run.errors, "the error is shown in the cell"
    info = kernel.request("kernel_info_request", {}, timeout=HANG_GUARD)
    assert info["content"]["status"] == "ok"


def test_a_missing_emulator_says_what_to_install(fresh_kernels, faulty_spec):
    kernel = start_faulty(fresh_kernels, faulty_spec, "edgekernel.emulator:start_board!edgekernel.emulator:BoardError")
    run = kernel.execute("print(1)", timeout=HANG_GUARD)
    assert run.content["ename"] == "EmulatorUnavailable", run
    assert run.content["evalue"].startswith("cannot start the emulated unix board: injected fault"), run


REQUEST_FAULTS = [
    ("edgekernel.kernel.introspect:complete", "complete_request", {"code": "pri", "cursor_pos": 3}, "error"),
    ("edgekernel.kernel.introspect:inspect", "inspect_request",
     {"code": "print", "cursor_pos": 5, "detail_level": 0}, "error"),
    ("ipykernel.ipkernel:IPythonKernel.do_is_complete", "is_complete_request", {"code": "for i in x:"}, "unknown"),
]


@pytest.mark.parametrize("fault,msg_type,content,status", REQUEST_FAULTS, ids=[f for f, *_ in REQUEST_FAULTS])
def test_a_host_fault_in_a_request_gives_a_reply(fresh_kernels, faulty_spec, fault, msg_type, content, status):
    kernel = start_faulty(fresh_kernels, faulty_spec, fault)
    kernel.ok("print(1)", timeout=60)
    for _ in range(2):
        reply = kernel.request(msg_type, content, timeout=HANG_GUARD)
        assert reply["content"]["status"] == status, reply["content"]
    assert "1" in kernel.ok("print(1)").stream()   # the board still works


def test_shutdown_is_answered_and_stops_the_board_when_closing_it_fails(fresh_kernels, faulty_spec):
    kernel = start_faulty(fresh_kernels, faulty_spec, "edgekernel.device.session:BoardSession.close")
    kernel.ok("print(1)", timeout=60)
    kernel.note_processes()
    assert len(kernel.pids) > 1, "the emulated board runs below the kernel"
    reply = kernel.request("shutdown_request", {"restart": False}, timeout=HANG_GUARD)
    assert reply["content"]["status"] == "ok"
    # fresh_kernels' shutdown then checks that every process, the emulated board too, is gone.


# -- the surface ---------------------------------------------------------------------------------

def test_exit_and_quit_leave_the_console(kernels):
    kernel = kernels.start("micropython-emulator")
    for cell, keep in (("exit", False), ("quit()", False), ("exit(keep_kernel=True)", True), ("quit;", False)):
        run = kernel.ok(cell)
        assert run.content["payload"] == [{"source": "ask_exit", "keepkernel": keep}], (cell, run)
    run = kernel.ok("exit_code = 3\nexit_code")   # a name that starts with exit is still board code
    assert run.result_text == "3"


def test_emulated_board_connection_lines_do_not_change_between_runs(fresh_kernels):
    first = fresh_kernels.start("micropython-emulator").ok("print(1)").stream()
    second = fresh_kernels.start("micropython-emulator").ok("print(1)").stream()
    assert "connected to the emulated unix board" in first
    assert "/dev/pts" not in first and first == second


def test_the_no_board_error_says_how_to_try_without_hardware(fresh_kernels):
    kernel = fresh_kernels.start("micropython", EDGEKERNEL_PORT="")
    run = kernel.execute("print(1)")
    message = error_of(run)
    assert "no board connected" in message and "--emulator unix" in message and "emulated board" in message


# -- floods ----------------------------------------------------------------------------------------

FLOOD_LINES = 20000   # 20000 lines of ~64 characters: about 1.2 MB, over the default 256 KB


def test_a_long_print_is_bounded_in_the_page_and_keeps_its_end(kernels, tmp_path):
    kernel = kernels.start("micropython-emulator")
    kernel.ok("print('connected')")
    run = kernel.ok(f"for i in range({FLOOD_LINES}):\n    print('%05d' % i, 'x' * 58)")
    shown = run.stream()
    assert len(shown) <= 256 * 1024, len(shown)
    assert shown.startswith("00000 ") or "\n00000 " in shown   # the beginning as usual
    tails = run.of_type("display_data") + run.of_type("update_display_data")
    assert tails, "the latest lines are shown in a display"
    ids = {m["content"]["transient"]["display_id"] for m in tails}
    assert len(ids) == 1, "one display, updated in place"
    final = tails[-1]["content"]["data"]["text/plain"]
    assert final.rstrip().endswith(f"{FLOOD_LINES - 1:05d} " + "x" * 58), final[-200:]   # always the end
    assert "not shown here" in final and "%output --save" in final and ".log" in final, final[:400]
    first_hidden = shown.count("\n") + 1
    assert f"(lines {first_hidden:,} to " in final, final[:400]
    saved = tmp_path / "all.txt"
    kernel.ok(f"%output --save {saved}")
    lines = saved.read_text().splitlines()
    assert len(lines) == FLOOD_LINES and lines[-1].startswith(f"{FLOOD_LINES - 1:05d} ")


def test_the_limit_is_configurable(kernels):
    kernel = kernels.start("micropython-emulator", EDGEKERNEL_OUTPUT_LIMIT="2000")
    kernel.ok("print('connected')")
    run = kernel.ok("for i in range(2000):\n    print(i)")
    assert len(run.stream()) <= 2000 and run.of_type("display_data")
    kernel.ok("%output --limit 0")
    run = kernel.ok("for i in range(2000):\n    print(i)")
    assert run.stream().splitlines()[-1] == "1999" and not run.of_type("display_data")


def test_stop_during_a_flood_ends_the_cell_and_the_page_stays_bounded(kernels):
    kernel = kernels.start("micropython-emulator")
    kernel.ok("print('ready')")
    msg_id = kernel.send_execute("while True:\n    print('x' * 60)")
    # Let the flood go on until the page's share is used up and text is being held back.
    for _ in range(600):
        kernel._pump(0.05)
        if any(m["msg_type"] == "display_data" for m in kernel._iopub.get(msg_id, [])):
            break
    else:
        raise AssertionError("the flood never went over the page's limit")
    kernel.km.interrupt_kernel()
    run = kernel.collect(msg_id, timeout=HANG_GUARD)
    assert run.status == "error" and run.content["ename"] == "KeyboardInterrupt", run.content
    assert len(run.stream()) <= 256 * 1024
    assert "1" in kernel.ok("print(1)").stream()
