"""A classroom under load: P simulated Raspberry Pis with their boards, a real JupyterHub, and U
students who each start a kernel on their own board and run C cells at the same moment. Needs root
(the Pis are network namespaces with their own sshd; tests/pi_lab.py), JupyterHub and
configurable-http-proxy (tests/hub_lab.py).

    sudo python bench/classroom.py --pis 10 --users 30 --cells 50

Measured: the time from each kernel start request until the kernel answers kernel_info through the
hub's proxy (all students starting at once); per-cell round trip (execute_request to idle, over the
kernel WebSocket through the hub's proxy) with one student working alone ("idle") and with every
student working at once ("under load"). After the hub stops, every Pi is checked for kernels, kernel
records, board locks and processes, and the namespaces for being gone.
The last line is the summary; targets (issue 15): p99 under load <= 2x idle p99, 0 leaked.
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from hub_lab import Hub, KernelSocket, hub_unavailable_reason, leftovers_on_pis  # noqa: E402
from pi_lab import PiLab, lab_unavailable_reason  # noqa: E402

CELL = "1+1"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def run_cells(ws: KernelSocket, cells: int, barrier: threading.Barrier | None = None) -> list[float]:
    if barrier is not None:
        barrier.wait()
    times = []
    for _ in range(cells):
        cell = ws.execute(CELL)
        if cell.status != "ok" or cell.result != "2":
            raise RuntimeError(f"cell failed: {cell}")
        times.append(cell.seconds)
    return times


def memory_mb() -> tuple[int, int]:
    """(MemTotal, MemAvailable) in MB."""
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        info[key] = int(value.split()[0]) // 1024
    return info["MemTotal"], info["MemAvailable"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pis", type=int, default=2)
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--cells", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3, help="cells each student runs before measuring")
    args = parser.parse_args()
    reason = lab_unavailable_reason() or hub_unavailable_reason()
    if reason:
        print(f"classroom: cannot run: {reason}", file=sys.stderr)
        return 2
    boards_per_pi = math.ceil(args.users / args.pis)
    users = [f"student{i + 1:02d}" for i in range(args.users)]
    _, available_before = memory_mb()
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    with tempfile.TemporaryDirectory(prefix="classroom-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        (root / "lab").mkdir()
        t = time.perf_counter()
        lab = PiLab(root / "lab", pis_count=args.pis, boards=boards_per_pi)
        lab.up()
        print(f"lab: {args.pis} Pis, {boards_per_pi * args.pis} emulated boards, subnet {lab.subnet}.0/24 "
              f"({time.perf_counter() - t:.1f} s)", flush=True)
        hub = Hub(root / "hub", lab)
        leaked = -1
        sockets: dict[str, KernelSocket] = {}
        try:
            hub.register_pis()
            t = time.perf_counter()
            hub.start()
            hub.add_users(users)
            print(f"hub: {args.users} users' servers ready ({time.perf_counter() - t:.1f} s)", flush=True)
            # Student i takes board i (Pi i mod P): each has a board of their own.
            spec = {u: hub.board_kernel(f"pi{i % args.pis + 1}", i // args.pis) for i, u in enumerate(users)}
            kernel_ids: dict[str, str] = {}
            start_times: dict[str, float] = {}
            errors: list[str] = []

            def start(user: str) -> None:
                t0 = time.perf_counter()
                try:
                    status, body = hub.start_kernel(user, spec[user])
                    if status != 201:
                        raise RuntimeError(f"{status} {body}")
                    ws = hub.connect(user, body["id"])
                    ws.kernel_info()
                    start_times[user] = time.perf_counter() - t0
                    kernel_ids[user], sockets[user] = body["id"], ws
                except Exception as exc:   # reported below, with the user
                    errors.append(f"{user}: {exc}")
            threads = [threading.Thread(target=start, args=(u,)) for u in users]
            for th in threads:
                th.start()
            for th in threads:
                th.join(600)
            if errors:
                print(hub.log_tail(), file=sys.stderr)
                raise RuntimeError(f"{len(errors)} kernel(s) did not start: {errors[0]}")
            starts = list(start_times.values())
            print(f"starts: p50 {statistics.median(starts):.2f} s, max {max(starts):.2f} s", flush=True)
            for ws in sockets.values():
                run_cells(ws, args.warmup)
            idle = run_cells(sockets[users[0]], args.cells)
            print(f"one student alone: p50 {statistics.median(idle) * 1000:.1f} ms, "
                  f"p99 {percentile(idle, 99) * 1000:.1f} ms", flush=True)
            barrier = threading.Barrier(len(users))
            loaded: dict[str, list[float]] = {}

            def work(user: str) -> None:
                try:
                    loaded[user] = run_cells(sockets[user], args.cells, barrier)
                except Exception as exc:
                    errors.append(f"{user}: {exc}")
                    barrier.abort()
            threads = [threading.Thread(target=work, args=(u,)) for u in users]
            for th in threads:
                th.start()
            for th in threads:
                th.join(900)
            if errors:
                raise RuntimeError(f"cells failed under load: {errors[0]}")
            under_load = [x for times in loaded.values() for x in times]
            _, available_loaded = memory_mb()
            print(f"all {args.users} at once: p50 {statistics.median(under_load) * 1000:.1f} ms, "
                  f"p99 {percentile(under_load, 99) * 1000:.1f} ms, {len(under_load)} cells; "
                  f"memory used by the class {available_before - available_loaded} MB, "
                  f"load average {os.getloadavg()[0]:.1f}, fd limit {fd_limit}", flush=True)
        finally:
            for ws in sockets.values():
                try:
                    ws.close()
                except Exception:
                    pass
            left_hub = hub.stop()
            try:
                left = leftovers_on_pis(lab)
                leaked = sum(len(v) for v in left["kernels"].values()) + \
                    sum(len(v) for v in left["processes"].values())
                if any(left.values()) or left_hub:
                    print(f"left behind: {left}, hub processes {left_hub}", flush=True)
            finally:
                lab.down()   # raises if a process was left in a Pi
        if leaked < 0:
            return 1
    ratio = percentile(under_load, 99) / percentile(idle, 99)
    print(f"p99 under load / idle p99 = {ratio:.2f} (target <= 2)")
    print(f"classroom: {args.users} users, {args.pis} Pis, {boards_per_pi * args.pis} boards, "
          f"p50 {statistics.median(under_load) * 1000:.0f} ms, p99 {percentile(under_load, 99) * 1000:.0f} ms "
          f"(idle p99 {percentile(idle, 99) * 1000:.0f} ms), start p50 {statistics.median(starts):.1f} s, "
          f"leaked {leaked} kernels")
    return 0 if leaked == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
