"""A classroom under load: P simulated Raspberry Pis with their boards, a real JupyterHub, and U
students who each start a kernel on their own board and run C cells at the same moment. Needs root
(the Pis are network namespaces with their own sshd; tests/pi_lab.py), JupyterHub and
configurable-http-proxy (tests/hub_lab.py).

    sudo python bench/classroom.py --pis 10 --users 30 --cells 50

Measured: the time from each kernel start request until the kernel answers kernel_info through the
hub's proxy (all students starting at once); per-cell round trip (execute_request to idle, over the
kernel WebSocket through the hub's proxy) with one student working alone ("idle") and with every
student working at once ("under load"). A student reads a cell's output before running the next:
each waits --think seconds on average (uniformly 0.5x-1.5x, default 2 s) between cells, alone and
under load alike; all start at the same moment. Then, to show the limit, every student runs cells
back to back with no pause (--think 0 there), which saturates the machine. Where the CPU went
during the paced phase is shown per part (proxy, users' servers, ssh, the Pis' sshd, keepers,
kernels, emulated boards, this client, and what else runs on the machine).
After the hub stops, every Pi is checked for kernels, kernel records, board locks and processes,
and the namespaces for being gone.
The last line is the summary (the paced numbers); targets (issue 15): p99 under load <= 2x idle
p99, 0 leaked.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import re
import resource
import statistics
import subprocess
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


def run_cells(ws: KernelSocket, cells: int, think: float = 0.0,
              barrier: threading.Barrier | None = None) -> list[float]:
    if barrier is not None:
        barrier.wait()
    rng = random.Random()
    times = []
    for _ in range(cells):
        cell = ws.execute(CELL)
        if cell.status != "ok" or cell.result != "2":
            raise RuntimeError(f"cell failed: {cell}")
        times.append(cell.seconds)
        if think:
            time.sleep(think * rng.uniform(0.5, 1.5))
    return times


def all_at_once(sockets: dict[str, KernelSocket], cells: int, think: float) -> list[list[float]]:
    """Every student runs `cells` cells, starting at the same moment; each student's cells' times."""
    barrier = threading.Barrier(len(sockets))
    loaded: dict[str, list[float]] = {}
    errors: list[str] = []

    def work(user: str) -> None:
        try:
            loaded[user] = run_cells(sockets[user], cells, think, barrier)
        except Exception as exc:
            errors.append(f"{user}: {exc}")
            barrier.abort()
    threads = [threading.Thread(target=work, args=(u,)) for u in sockets]
    for th in threads:
        th.start()
    for th in threads:
        th.join(1800)
    if errors:
        raise RuntimeError(f"cells failed under load: {errors[0]}")
    return list(loaded.values())


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> dict[int, tuple[int, str, str]]:
    """{pid: (user+system ticks, comm, cmdline)} of every process on the machine."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found[int(entry)] = (int(fields[11]) + int(fields[12]), comm, cmd)
        except (OSError, ValueError):
            continue
    return found


def part_of(pid: int, comm: str, cmd: str, pi_pids: set[int]) -> str:
    """Which part of the classroom a process is (by namespace and command line)."""
    if pid == os.getpid():
        return "this client (WebSockets, JSON)"
    if pid in pi_pids:
        if comm == "sshd":
            return "Pis: sshd"
        if "gateway.remote launch" in cmd:
            return "Pis: keepers"
        if "edgekernel.kernel" in cmd:
            return "Pis: kernels (edgekernel.kernel)"
        if "edgekernel board" in cmd or comm.startswith("micropython"):
            return "Pis: emulated boards"
        return "Pis: other"
    if "configurable-http-proxy" in cmd:
        return "hub: proxy (node)"
    if "jupyterhub.singleuser" in cmd:
        return "hub: users' servers (jupyter_server)"
    if re.search(r"-m jupyterhub\b", cmd):
        return "hub: JupyterHub"
    if comm == "ssh":
        return "laptop: ssh (ControlMaster and sessions)"
    return "not the classroom (other work on the machine)"


def cpu_breakdown(before: dict, after: dict, pi_pids: set[int], cells: int, seconds: float) -> list[str]:
    parts: dict[str, int] = {}
    for pid, (ticks, comm, cmd) in after.items():
        spent = ticks - before.get(pid, (0, "", ""))[0]
        if spent > 0:
            key = part_of(pid, comm, cmd, pi_pids)
            parts[key] = parts.get(key, 0) + spent
    lines = []
    for key, ticks in sorted(parts.items(), key=lambda kv: -kv[1]):
        cpu = ticks / CLK_TCK
        lines.append(f"  {key:<45} {cpu / seconds * 100:5.0f}% of a core, {cpu / cells * 1000:5.1f} ms CPU per cell")
    return lines


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
    parser.add_argument("--think", type=float, default=2.0,
                        help="seconds a student waits between cells, on average (0: back to back)")
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
            # What the teacher sees: `edgekernel gateway status` over every Pi.
            t = time.perf_counter()
            status = subprocess.run([sys.executable, "-m", "edgekernel", "gateway", "status", "--prefix",
                                     str(hub.prefix)], capture_output=True, text=True, timeout=120,
                                    env=dict(os.environ, PYTHONPATH=str(HERE.parent)))
            print(f"edgekernel gateway status ({time.perf_counter() - t:.1f} s):\n{status.stdout}{status.stderr}",
                  flush=True)
            for ws in sockets.values():
                run_cells(ws, args.warmup)
            idle = run_cells(sockets[users[0]], args.cells, args.think)
            print(f"one student alone: p50 {statistics.median(idle) * 1000:.1f} ms, "
                  f"p99 {percentile(idle, 99) * 1000:.1f} ms, {len(idle)} cells, {args.think:g} s between cells",
                  flush=True)
            pi_pids = set().union(*(pi.netns_pids() for pi in lab.pis.values()))
            before, t = cpu_ticks(), time.perf_counter()
            per_student = all_at_once(sockets, args.cells, args.think)
            under_load = [x for times in per_student for x in times]
            after_first = [x for times in per_student for x in times[1:]]
            seconds = time.perf_counter() - t
            breakdown = cpu_breakdown(before, cpu_ticks(), pi_pids, len(under_load), seconds)
            _, available_loaded = memory_mb()
            print(f"all {args.users} at once: p50 {statistics.median(under_load) * 1000:.1f} ms, "
                  f"p99 {percentile(under_load, 99) * 1000:.1f} ms, {len(under_load)} cells in {seconds:.0f} s, "
                  f"{args.think:g} s between cells; memory used by the class {available_before - available_loaded} MB, "
                  f"load average {os.getloadavg()[0]:.1f}, fd limit {fd_limit}; CPU:", flush=True)
            print("\n".join(breakdown), flush=True)
            print(f"  of which the first cells (all {args.users} sent at the same instant): p50 "
                  f"{statistics.median([t[0] for t in per_student]) * 1000:.1f} ms, max "
                  f"{max(t[0] for t in per_student) * 1000:.1f} ms; the other cells: p50 "
                  f"{statistics.median(after_first) * 1000:.1f} ms, p99 {percentile(after_first, 99) * 1000:.1f} ms",
                  flush=True)
            if args.think:
                saturated = [x for times in all_at_once(sockets, args.cells, 0.0) for x in times]
                print(f"all {args.users} back to back (no pause, the machine saturated): "
                      f"p50 {statistics.median(saturated) * 1000:.1f} ms, p99 {percentile(saturated, 99) * 1000:.1f} ms, "
                      f"{len(saturated)} cells", flush=True)
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
