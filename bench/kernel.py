"""Kernel benchmark: edgekernel vs the leading MicroPython kernel vs a do-nothing kernel.

    python bench/kernel.py [--runs 200] [--skip-anchor]

Everything is measured side by side in one run on the same emulated boards
(unix port unthrottled, and behind the 115200-baud link simulator), so the
machine's noise affects all kernels alike. Needs the bench extra:
pip install -e '.[bench]'  (jupyter-micropython-kernel, mpremote).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client import KernelManager

from edgekernel.emulator import start_board

HERE = Path(__file__).resolve().parent


def make_specs(root: Path) -> None:
    specs = {
        "bench-nothing": [sys.executable, str(HERE / "nothing_kernel.py"), "-f", "{connection_file}"],
        "bench-edgekernel": [sys.executable, "-m", "edgekernel.kernel", "-f", "{connection_file}"],
        "bench-anchor": [sys.executable, "-m", "jupyter_micropython_kernel", "-f", "{connection_file}"],
    }
    for name, argv in specs.items():
        d = root / "kernels" / name
        d.mkdir(parents=True)
        (d / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python",
                                                   "env": {"EDGEKERNEL_PROFILE": "serial"}}))


class Kernel:
    def __init__(self, name: str) -> None:
        t = time.perf_counter()
        self.km = KernelManager(kernel_name=name)
        self.km.start_kernel()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(60)
        self.start_seconds = time.perf_counter() - t

    def run(self, code: str, timeout: float = 120) -> tuple[float, list[dict], dict]:
        msgs: list[dict] = []
        t = time.perf_counter()
        reply = self.kc.execute_interactive(code, output_hook=msgs.append, timeout=timeout)
        return time.perf_counter() - t, msgs, reply

    def interrupt_latency(self, code: str, wait: float = 1.0) -> float:
        msg_id = self.kc.execute(code)
        time.sleep(wait)
        t = time.perf_counter()
        self.km.interrupt_kernel()
        while True:
            reply = self.kc.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        elapsed = time.perf_counter() - t
        # Drain iopub until idle so the next measurement starts clean.
        while True:
            m = self.kc.get_iopub_msg(timeout=30)
            if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle" \
                    and m["parent_header"].get("msg_id") == msg_id:
                break
        return elapsed

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def round_trips(kernel: Kernel, runs: int) -> tuple[float, float, bool]:
    kernel.run("1+1")
    times = []
    shows = False
    for _ in range(runs):
        dt, msgs, _ = kernel.run("1+1")
        times.append(dt)
        shows = any(m["msg_type"] == "execute_result" for m in msgs)
    return statistics.median(times) * 1000, percentile(times, 0.99) * 1000, shows


def measure_board_kernel(name: str, port: str, runs: int, connect: str) -> dict[str, object]:
    kernel = Kernel(name)
    row: dict[str, object] = {"start_s": kernel.start_seconds}
    dt, msgs, reply = kernel.run(connect)
    row["connect_s"] = dt
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"{name}: connect failed: {msgs}")
    row["rt_median_ms"], row["rt_p99_ms"], row["shows_out"] = round_trips(kernel, runs)
    dt, msgs, _ = kernel.run("for i in range(2000):\n    print('line', i)")
    text = "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")
    row["print2000_s"] = dt
    row["print2000_msgs"] = len(msgs) + 2  # + busy/idle seen by execute_interactive's caller
    row["print2000_exact"] = text.count("line ") == 2000
    row["int_busy_s"] = kernel.interrupt_latency("while True:\n    pass")
    kernel.run("1+1")
    row["int_flood_s"] = kernel.interrupt_latency("while True:\n    print('x' * 50)")
    dt, _, reply = kernel.run("print('ok')")
    row["after_interrupt_ok"] = reply["content"]["status"] == "ok"
    kernel.close()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--skip-anchor", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ek-bench-"))
    make_specs(root)
    os.environ["JUPYTER_PATH"] = str(root)
    os.environ["JUPYTER_RUNTIME_DIR"] = str(root / "runtime")

    floor = Kernel("bench-nothing")
    floor_med, floor_p99, _ = round_trips(floor, args.runs)
    floor_start = floor.start_seconds
    floor.close()

    results: dict[tuple[str, str], dict[str, object]] = {}
    for link, options in (("unthrottled", {}), ("115200 baud", {"baud": 115200})):
        with start_board("unix", **options) as board:
            results[("edgekernel", link)] = measure_board_kernel(
                "bench-edgekernel", board.port, args.runs, f"%serialconnect --port {board.port}")
            if not args.skip_anchor:
                results[("anchor", link)] = measure_board_kernel(
                    "bench-anchor", board.port, args.runs, f"%serialconnect --port={board.port} --baud=115200")

    print(f"\ndo-nothing kernel (protocol floor): start {floor_start:.2f} s, "
          f"1+1 median {floor_med:.2f} ms, p99 {floor_p99:.2f} ms\n")
    cols = ["start_s", "connect_s", "rt_median_ms", "rt_p99_ms", "shows_out", "print2000_s", "print2000_msgs",
            "print2000_exact", "int_busy_s", "int_flood_s", "after_interrupt_ok"]
    print("| kernel | link | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for (kernel, link), row in results.items():
        cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        print(f"| {kernel} | {link} | " + " | ".join(cells) + " |")
    print()
    for link in ("unthrottled", "115200 baud"):
        ek = results[("edgekernel", link)]
        print(f"[{link}] edgekernel 1+1 / floor: {ek['rt_median_ms'] / floor_med:.2f}x (target <= 1.1x, with Out[n])")
        if ("anchor", link) in results:
            an = results[("anchor", link)]
            print(f"[{link}] 2000-line print edgekernel/anchor time: {ek['print2000_s'] / an['print2000_s']:.2f}x "
                  f"(target < 0.5x), messages {ek['print2000_msgs']} vs {an['print2000_msgs']} (target <= 50)")
            print(f"[{link}] interrupt during flood: edgekernel {ek['int_flood_s']:.3f} s vs anchor "
                  f"{an['int_flood_s']:.3f} s (target < 0.2 s)")
            print(f"[{link}] start {ek['start_s'] / an['start_s']:.2f}x, connect {ek['connect_s'] / an['connect_s']:.2f}x, "
                  f"busy-loop interrupt {ek['int_busy_s'] / an['int_busy_s']:.2f}x of the anchor's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
