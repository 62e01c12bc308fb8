"""Kernel -> Interrupt when the kernel is remote: interrupt_mode "message".

A front end that cannot signal the kernel's process (a kernel on a gateway)
sends interrupt_request on the control channel instead. This must stop board
code as fast as a local SIGINT does.
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
        kc = km.client()
        kc.start_channels()
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
    msg_id = kc.execute(code)
    time.sleep(0.7)
    started = time.monotonic()
    km.interrupt_kernel()  # sends interrupt_request on the control channel
    reply = _reply_to(kc, msg_id)
    elapsed = time.monotonic() - started
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert elapsed < 0.5, f"interrupt took {elapsed:.2f} s"
    # The board kept its state and the next cell works.
    after = kc.execute_interactive("x + 1", timeout=30, output_hook=lambda m: None)
    assert after["content"]["status"] == "ok"
