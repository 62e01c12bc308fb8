"""The sensor demo on an emulated board: real MicroPython (unix port) publishing JSON readings.

    from edgekernel.telemetry.demo import start_sensor_board
    sensor = start_sensor_board("mqtt://127.0.0.1:1883", device_id="demo1", rate=10)
    ...
    sensor.stop()      # by PID; the emulated board goes with it

`start_sensor_board` runs ``python -m edgekernel.telemetry.demo`` in its own process: that starts
an emulated unix board, puts firmware/sensor_demo.py and firmware/ekmqtt.py on it with BoardFiles
(as `edgekernel put` would), and runs ``sensor_demo.run(...)`` there through the raw REPL.
The MQTT client on the board is MicroPython's, not the host's.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgekernel.processes import alive, children_of
from edgekernel.mqtt.agent import firmware_dir

DEMO_FILES = ("ekmqtt.py", "sensor_demo.py")
READY = b"sensor board running\n"


class SensorBoard:
    """A running sensor demo. `stop()` ends it and its emulated board, by PID."""

    def __init__(self, proc: subprocess.Popen, device_id: str) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.device_id = device_id
        self.board_pids: set[int] = set()   # the emulated board's processes, for stop()

    def __enter__(self) -> "SensorBoard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _tree(self) -> set[int]:
        found, todo = set(), [self.pid]
        while todo:
            for child in children_of(todo.pop()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive:
            self.board_pids |= self._tree()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + timeout
        for pid in self.board_pids:
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.proc.stdout:
            self.proc.stdout.close()

    def log(self) -> str:
        return self.proc.stderr.read().decode(errors="replace") if self.proc.stderr and not self.alive else ""


def start_sensor_board(broker: str, *, device_id: str = "demo", rate: float = 5.0, count: int = 0,
                       timeout: float = 60.0) -> SensorBoard:
    """Start the sensor demo on an emulated board, publishing to `broker` (mqtt://host:port);
    returns once the board runs it. RuntimeError (one line) if it cannot start."""
    from .client import parse_broker_url
    address = parse_broker_url(broker)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen([sys.executable, "-m", "edgekernel.telemetry.demo", "--host", address.host,
                             "--port", str(address.port), "--device-id", device_id, "--rate", str(rate),
                             "--count", str(count)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    sensor = SensorBoard(proc, device_id)
    line = b""
    deadline = time.monotonic() + timeout
    import select
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.1)[0]:
            chunk = os.read(proc.stdout.fileno(), 256)
            if not chunk:
                break
            line += chunk
    if line != READY:
        sensor.stop()
        why = (proc.stderr.read().decode(errors="replace").strip().splitlines() or ["timed out"])[-1]
        raise RuntimeError(f"the sensor board did not start: {why}")
    sensor.board_pids |= sensor._tree()
    return sensor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgekernel.telemetry.demo",
                                     description="run firmware/sensor_demo.py on an emulated unix board")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--device-id", default="demo")
    parser.add_argument("--rate", type=float, default=5.0, help="readings per second (0: as fast as it can)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many readings (0: never)")
    args = parser.parse_args(argv)

    from edgekernel.device import BoardSession
    from edgekernel.device.files import BoardFiles
    from edgekernel.emulator import start_board

    stopping = []

    def on_term(signum: int, frame: object) -> None:
        stopping.append(signum)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    board = start_board("unix")
    try:
        session = BoardSession.open(board.port)
        files = BoardFiles(session)
        for name in DEMO_FILES:
            files.put(firmware_dir() / name, name)
        sys.stdout.buffer.write(READY)
        sys.stdout.flush()
        result = session.exec(f"import sensor_demo\nsensor_demo.run({args.host!r}, {args.port}, "
                              f"{args.device_id!r}, {args.rate}, {args.count})\n",
                              on_output=lambda b: sys.stderr.buffer.write(b))
        if result.error is not None:
            print(f"sensor_demo failed on the board: {result.error}", file=sys.stderr)
            return 1
        return 0
    finally:
        board.stop()


if __name__ == "__main__":
    sys.exit(main())
