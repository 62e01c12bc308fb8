"""The kernel's own work on the board leaves the user's names alone.

Through the real kernel on the emulated unix board: a cell defines names (some of them the very
names edgekernel's programs use inside: os, gc, s, r, _ekf...), then every magic, completion and
inspection runs between two snapshots of the board's globals (each name, the identity of its value
and its repr), which must be equal. The same for edgekernel's programs over MQTT (the agent's
namespace), where they run through the same BoardFiles and introspection code.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edgekernel.device.files import BoardFiles
from edgekernel.kernel.introspect import SignatureIndex, complete, inspect

from kernel_fixtures import (boards, kernel_env, kernels, no_leftover_processes,  # noqa: F401
                             unix_board_and_kernel)

pytestmark = pytest.mark.timeout(240)

RESERVED = ("_ek", "_ekr")   # the helper's own names
USER_CELL = ("import sys; a=1; b=[1]\n"
             "os = gc = s = r = e = f = H = binascii = builtins = 'user'\n"
             "_ekf = _eka = _ekh = _ekp = _ekc = _ekg = _ekv = _ekrm = _ek0 = _ekb = _ekn = 'user'\n")
# An expression statement (binds nothing: the generator has its own scope) whose output lists the globals.
SNAPSHOT = "print(sorted((k, id(v), repr(v)) for k, v in globals().items()))"


@pytest.fixture(scope="module", autouse=True)
def _checked_for_leftovers(no_leftover_processes: None) -> None:
    """Set up before (so torn down after) every other fixture of the module."""


def kernel_snapshot(kernel) -> dict[str, tuple[int, str]]:
    run = kernel.ok(SNAPSHOT)
    assert not run.results, "the snapshot itself must not make an Out[n] (it would set _)"
    return {k: (ident, text) for k, ident, text in ast.literal_eval(run.stream().strip()) if k not in RESERVED}


def changes(before: dict, after: dict) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    rebound = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return "" if not (added or removed or rebound) else f"added {added}, removed {removed}, rebound {rebound}"


def test_magics_completion_and_inspection_keep_the_users_globals(unix_board_and_kernel, tmp_path: Path) -> None:
    board, kernel = unix_board_and_kernel
    kernel.ok(USER_CELL)
    local = tmp_path / "local.txt"
    local.write_text("from the host\n")
    py = tmp_path / "mod.py"
    py.write_text("def f():\n    return 1\n")
    back = tmp_path / "back.txt"
    magics = [
        "%sendtofile ns.txt\nline one\nline two\n",
        f"%sendtofile --source {local} ns2.txt",
        "%sendtofile --append ns.txt\nline three\n",
        f"%fetchfile ns.txt {back}",
        "%fetchfile --print ns2.txt",
        "%ls",
        "%ls -l",
        "%cat ns.txt",
        "%mkdir nsdir",
        "%rm ns2.txt",
        "%rm -r nsdir",
        "%df",
        "%meminfo",
        f"%mpy-cross {py} --out {tmp_path / 'mod.mpy'}",
    ]
    requests = [
        ("complete_request", {"code": "sy", "cursor_pos": 2}),
        ("complete_request", {"code": "sys.pa", "cursor_pos": 6}),
        ("inspect_request", {"code": "b", "cursor_pos": 1, "detail_level": 0}),
        ("inspect_request", {"code": "sys", "cursor_pos": 3, "detail_level": 0}),
    ]
    problems = []
    for cell in magics:
        before = kernel_snapshot(kernel)
        run = kernel.execute(cell)
        assert run.status == "ok", (cell, run)
        what = changes(before, kernel_snapshot(kernel))
        if what:
            problems.append(f"{cell.splitlines()[0]}: {what}")
    for msg_type, content in requests:
        before = kernel_snapshot(kernel)
        reply = kernel.request(msg_type, content)
        assert reply["content"]["status"] == "ok", reply
        what = changes(before, kernel_snapshot(kernel))
        if what:
            problems.append(f"{msg_type} {content['code']!r}: {what}")
    assert not problems, "\n".join(problems)
    assert back.read_text() == "line one\nline two\nline three\n"
    # The answers came from the user's namespace.
    matches = kernel.request("complete_request", {"code": "sy", "cursor_pos": 2})["content"]["matches"]
    assert "sys" in matches
    found = kernel.request("inspect_request", {"code": "b", "cursor_pos": 1, "detail_level": 0})["content"]
    assert found["found"] and "[1]" in found["data"]["text/plain"]
    assert kernel.ok("a, b, sys.platform").result_text == "(1, [1], 'linux')"


def test_edgekernels_programs_over_mqtt_keep_the_agents_namespace(mosquitto) -> None:
    from edgekernel.mqtt.agent import start_agent_board
    from edgekernel.mqtt.session import MqttSession
    from kernel_fixtures import alive, descendants, wait_gone

    url = f"mqtt://127.0.0.1:{mosquitto.port}/ns1"
    agent = start_agent_board(url)
    pids = {agent.pid} | descendants(agent.pid)
    try:
        with MqttSession.open(url) as board:
            assert board.exec(USER_CELL, timeout=20).ok

            def snapshot() -> dict[str, tuple[int, str]]:
                r = board.exec(SNAPSHOT, timeout=20)
                assert r.ok, r
                return {k: (i, t) for k, i, t in ast.literal_eval(r.text.strip()) if k not in RESERVED}

            files = BoardFiles(board, mode="literal")
            signatures = SignatureIndex()
            operations = [
                ("caps", lambda: files.caps),
                ("put", lambda: files.put(b"x" * 500, "ns.bin")),
                ("get", lambda: files.get("ns.bin")),
                ("ls -l", lambda: files.ls(long=True)),
                ("hash", lambda: files.hash("ns.bin")),
                ("rm", lambda: files.rm("ns.bin")),
                ("meminfo", lambda: files.meminfo()),
                ("complete", lambda: complete(board, "sy", 2)),
                ("inspect", lambda: inspect(board, "b", 1, signatures)),
                ("run_internal", lambda: board.run_internal("x = 5\nimport gc\nprint(x)")),
            ]
            problems = []
            for what, operation in operations:
                before = snapshot()
                operation()
                change = changes(before, snapshot())
                if change:
                    problems.append(f"{what}: {change}")
            assert not problems, "\n".join(problems)
            assert "sys" in complete(board, "sy", 2)["matches"]
            assert board.run_internal("print(1)").strip() == "1"
    finally:
        pids |= descendants(agent.pid) if alive(agent.pid) else set()
        agent.stop()
    assert not wait_gone(pids), "agent board processes left behind"
