"""Kernel -> Interrupt when the kernel is remote: interrupt_mode "message".

A front end that cannot signal the kernel's process (a kernel on a gateway)
sends interrupt_request on the control channel instead. This must stop board
code the way a local SIGINT does: with the first Ctrl-C, keeping the board's state.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from edgekernel.emulator import start_board
from kernel_fixtures import started_client


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec_dir = tmp_path / "kernels" / "mp-message"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "edgekernel.kernel", "-f", "{connection_file}"],
        "display_name": "MicroPython (interrupt by message)", "language": "python",
        "interrupt_mode": "message", "env": {"EDGEKERNEL_PROFILE": "serial"},
    }))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    with start_board("unix") as board:
        km = KernelManager(kernel_name="mp-message",
                           kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]))
        km.start_kernel(env={"EDGEKERNEL_PORT": board.port, "PATH": "/usr/bin:/bin"})
        kc = started_client(km)
        try:
            kc.wait_for_ready(60)
            yield km, kc
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
            assert not km.is_alive()


def _reply_to(kc, msg_id: str) -> dict:
    while True:
        reply = kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


@pytest.mark.parametrize("code", ["while True:\n    pass", "while True:\n    print('x' * 60)"],
                         ids=["busy-loop", "print-flood"])
def test_interrupt_request_message_stops_board_code(kernel, code: str) -> None:
    km, kc = kernel
    assert km.kernel_spec.interrupt_mode == "message"
    kc.execute_interactive("x = 41", timeout=30)
    # stop_on_error=False: ipykernel 7 sends the error reply before it starts aborting queued requests, so
    # the next cell sent the instant the reply arrives can fall in that window (seen in a loaded run).
    msg_id = kc.execute(code, stop_on_error=False)
    time.sleep(0.7)
    km.interrupt_kernel()  # sends interrupt_request on the control channel
    reply = _reply_to(kc, msg_id)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    # Stopped like a local SIGINT stops it: by the first Ctrl-C of the ladder, not a later step.
    assert reply["content"]["evalue"].startswith("interrupted (ctrl-c, "), reply["content"]
    # The board kept its state and the next cell works.
    results = []
    after = kc.execute_interactive("x + 1", timeout=30, output_hook=lambda m: results.append(m))
    assert after["content"]["status"] == "ok"
    assert [m["content"]["data"]["text/plain"] for m in results if m["msg_type"] == "execute_result"] == ["42"]
