"""Kernel benchmark: edgekernel vs the leading MicroPython kernel vs a do-nothing kernel.

    python bench/kernel.py [--runs 200] [--skip-anchor]

The kernels run side by side in one run and are measured in turns, cell by
cell (the order turns each round): the do-nothing kernel (the Jupyter
protocol's floor), edgekernel and the anchor, each board kernel on its own
emulated board of the same kind (unix port unthrottled, and behind the
115200-baud link simulator). Ratios are medians of pairs measured side by
side, so the machine's drift falls on every kernel alike. Needs the bench extra:
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
from contextlib import ExitStack, closing
from pathlib import Path

from jupyter_client import KernelManager

from edgekernel.emulator import start_board

HERE = Path(__file__).resolve().parent


FLOORS = {"floor": "bench-nothing", "floor+Out": "bench-nothing-out", "IPython floor+Out": "bench-nothing-ipython-out"}


def make_specs(root: Path) -> None:
    specs = {
        "bench-nothing": [sys.executable, str(HERE / "nothing_kernel.py"), "-f", "{connection_file}"],
        "bench-nothing-out": [sys.executable, str(HERE / "nothing_kernel.py"), "--out", "-f", "{connection_file}"],
        "bench-nothing-ipython-out": [sys.executable, str(HERE / "nothing_kernel.py"), "--out", "--ipython",
                                      "-f", "{connection_file}"],
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


def interleaved(kernels: dict[str, Kernel], code: str, runs: int) -> dict[str, list[float]]:
    """Run `code` `runs` times on each kernel, alternating kernel by kernel (the order turns each
    round), so the machine's drift falls on all of them alike. Seconds per run, per kernel."""
    for kernel in kernels.values():
        kernel.run(code)   # warm-up
    times: dict[str, list[float]] = {name: [] for name in kernels}
    names = list(kernels)
    for i in range(runs):
        for name in names[i % len(names):] + names[:i % len(names)]:
            dt, _, reply = kernels[name].run(code)
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"{name}: {code!r} failed: {reply['content']}")
            times[name].append(dt)
    return times


def paired_ratio(a: list[float], b: list[float]) -> float:
    """The median of a[i] / b[i]: each pair was measured side by side."""
    return statistics.median(x / y for x, y in zip(a, b))


def shows_out(kernel: Kernel) -> bool:
    _, msgs, _ = kernel.run("1+1")
    return any(m["msg_type"] == "execute_result" for m in msgs)


def print_2000(kernel: Kernel) -> tuple[float, int, bool]:
    dt, msgs, _ = kernel.run("for i in range(2000):\n    print('line', i)")
    text = "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")
    return dt, len(msgs) + 2, text.count("line ") == 2000   # + busy/idle seen by execute_interactive's caller


def compare_on_link(link: str, board_options: dict, runs: int, with_anchor: bool) -> dict[str, dict[str, object]]:
    """The do-nothing kernel, edgekernel and (optionally) the anchor, alive together, each board
    kernel on its own emulated board of the same kind, measured in turns."""
    rows: dict[str, dict[str, object]] = {}
    with ExitStack() as stack:
        kernels: dict[str, Kernel] = {}
        # The floor, then the floor that also shows Out[n], then that on IPythonKernel (edgekernel's base):
        # where edgekernel's time goes that is not its own.
        for name, spec in FLOORS.items():
            kernels[name] = stack.enter_context(closing(Kernel(spec)))
            rows[name] = {"start_s": kernels[name].start_seconds}
        board_kernels = {"edgekernel": ("bench-edgekernel", "%serialconnect --port {port}")}
        if with_anchor:
            board_kernels["anchor"] = ("bench-anchor", "%serialconnect --port={port} --baud=115200")
        for name, (spec, connect) in board_kernels.items():
            board = stack.enter_context(start_board("unix", **board_options))
            kernel = kernels[name] = stack.enter_context(closing(Kernel(spec)))
            dt, msgs, reply = kernel.run(connect.format(port=board.port))
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"{name}: connect failed: {msgs}")
            rows[name] = {"start_s": kernel.start_seconds, "connect_s": dt, "shows_out": shows_out(kernel)}
        times = interleaved(kernels, "1+1", runs)
        for name, row in rows.items():
            row["rt_median_ms"] = statistics.median(times[name]) * 1000
            row["rt_p99_ms"] = percentile(times[name], 0.99) * 1000
        for floor in FLOORS:
            rows["edgekernel"]["vs_" + floor] = paired_ratio(times["edgekernel"], times[floor])
        if with_anchor:
            rows["edgekernel"]["vs_anchor"] = paired_ratio(times["edgekernel"], times["anchor"])
        board_names = [n for n in kernels if n not in FLOORS]
        prints: dict[str, list[tuple[float, int, bool]]] = {n: [] for n in board_names}
        busy: dict[str, list[float]] = {n: [] for n in board_names}
        flood: dict[str, list[float]] = {n: [] for n in board_names}
        for _ in range(3):   # the slower measurements, in turns too
            for name in board_names:
                prints[name].append(print_2000(kernels[name]))
            for name in board_names:
                busy[name].append(kernels[name].interrupt_latency("while True:\n    pass"))
                kernels[name].run("1+1")
            for name in board_names:
                flood[name].append(kernels[name].interrupt_latency("while True:\n    print('x' * 50)"))
                kernels[name].run("1+1")
        for name in board_names:
            row = rows[name]
            row["print2000_s"] = statistics.median(p[0] for p in prints[name])
            row["print2000_msgs"] = max(p[1] for p in prints[name])
            row["print2000_exact"] = all(p[2] for p in prints[name])
            row["int_busy_s"] = statistics.median(busy[name])
            row["int_flood_s"] = statistics.median(flood[name])
            _, _, reply = kernels[name].run("print('ok')")
            row["after_interrupt_ok"] = reply["content"]["status"] == "ok"
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--skip-anchor", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ek-bench-"))
    make_specs(root)
    os.environ["JUPYTER_PATH"] = str(root)
    os.environ["JUPYTER_RUNTIME_DIR"] = str(root / "runtime")

    results = {link: compare_on_link(link, options, args.runs, not args.skip_anchor)
               for link, options in (("unthrottled", {}), ("115200 baud", {"baud": 115200}))}

    cols = ["start_s", "connect_s", "rt_median_ms", "rt_p99_ms", "shows_out", "print2000_s", "print2000_msgs",
            "print2000_exact", "int_busy_s", "int_flood_s", "after_interrupt_ok"]
    print("\n| kernel | link | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for link, rows in results.items():
        for kernel, row in rows.items():
            cells = [f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "-")) for c in cols]
            print(f"| {kernel} | {link} | " + " | ".join(cells) + " |")
    print()
    for link, rows in results.items():
        ek = rows["edgekernel"]
        print(f"[{link}] edgekernel 1+1 / do-nothing kernel, paired in turns: {ek['vs_floor']:.2f}x "
              f"(target <= 1.15x unthrottled, with Out[n]); / do-nothing kernel showing Out[n]: "
              f"{ek['vs_floor+Out']:.2f}x; / do-nothing IPythonKernel showing Out[n]: {ek['vs_IPython floor+Out']:.2f}x")
        if "anchor" in rows:
            an = rows["anchor"]
            print(f"[{link}] edgekernel 1+1 / anchor, paired in turns: {ek['vs_anchor']:.2f}x (target <= 1.0x)")
            print(f"[{link}] 2000-line print edgekernel/anchor time: {ek['print2000_s'] / an['print2000_s']:.2f}x "
                  f"(target < 0.5x), messages {ek['print2000_msgs']} vs {an['print2000_msgs']} (target <= 50)")
            print(f"[{link}] interrupt during flood: edgekernel {ek['int_flood_s']:.3f} s vs anchor "
                  f"{an['int_flood_s']:.3f} s (target < 0.2 s)")
            print(f"[{link}] start {ek['start_s'] / an['start_s']:.2f}x, connect {ek['connect_s'] / an['connect_s']:.2f}x, "
                  f"busy-loop interrupt {ek['int_busy_s'] / an['int_busy_s']:.2f}x of the anchor's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
