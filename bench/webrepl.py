"""WebREPL benchmark: edgekernel vs the leading MicroPython kernel, over the same emulated WebREPL.

    python bench/webrepl.py [--runs 100] [--skip-anchor]

One emulated unix board serves a WebREPL in its board-faithful mode (frame header and payload
written apart with Nagle on, 20 ms per file-protocol chunk: an ESP8266's timing without WiFi).
Both kernels run through jupyter_client (temp kernelspecs), one after the other on that board
(WebREPL takes one client at a time), timed from execute to idle:

* connect: ``%websocketconnect`` (edgekernel: password from an environment variable;
  jupyter-micropython-kernel 0.1.3.2, "the anchor": ``--password`` in the cell, its only way);
* ``1+1`` round trip, median and p99;
* 20 KB put and get, Python source and random bytes (edgekernel ``%sendtofile --source`` /
  ``%fetchfile``, which choose their path by measurement; the anchor ``%sendtofile --binary
  --source`` / ``%fetchfile --binary``), checked byte for byte on the board's flash.

Then, without Jupyter, the device layer's two file paths side by side (REPL transfer vs WebREPL's
file protocol), to show what the measurement chooses between. Ratios are computed in this run.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import queue
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client import KernelManager

from edgekernel.device import BoardSession
from edgekernel.device.files import BoardFiles
from edgekernel.emulator import start_board
from kernel import make_specs, percentile  # bench/kernel.py: the same two kernelspecs (+ a do-nothing one)

PASSWORD = "bench-pw"
CELL_LIMIT_S = 300.0


def payloads() -> list[tuple[str, bytes]]:
    source = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}  # line {i}\n" for i in range(600)).encode()[:20_000]
    binary = random.Random(5).randbytes(20_000)
    # The session's first transfer each way is also timed against a probe of the other path.
    # The anchor's %fetchfile only gets sizes that are a multiple of its 30-byte chunk right
    # (measured: 20,000 bytes come back as 20): the last case is one it can do.
    return [("20 KB Python source, 1st", source), ("20 KB random bytes", binary),
            ("19,980 B Python source, again", source[:19_980])]


class Kernel:
    def __init__(self, name: str) -> None:
        self.km = KernelManager(kernel_name=name)
        self.km.start_kernel(env=dict(os.environ, BENCH_WEBREPL_PW=PASSWORD))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(60)

    def cell(self, code: str, timeout: float = CELL_LIMIT_S) -> tuple[float, str, bool, bool]:
        """(seconds execute -> idle, text output, status ok, showed an execute_result)."""
        out: list[str] = []
        result = [False]

        def hook(msg: dict) -> None:
            c = msg["content"]
            if msg["msg_type"] == "stream":
                out.append(c["text"])
            elif msg["msg_type"] == "error":
                out.append(f"{c['ename']}: {c['evalue']}")
            elif msg["msg_type"] == "execute_result":
                result[0] = True
            elif msg["msg_type"] in ("display_data", "update_display_data"):
                out.append(c["data"].get("text/plain", "") + "\n")

        t = time.perf_counter()
        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        return time.perf_counter() - t, "".join(out), reply["content"]["status"] == "ok", result[0]

    def close(self) -> None:
        try:
            self.kc.stop_channels()
        finally:
            self.km.shutdown_kernel(now=False)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def measure_kernel(name: str, url: str, flash: str, runs: int, tmp: str, put_cell: str, get_cell: str,
                   connect_cell: str) -> dict[str, object]:
    row: dict[str, object] = {}
    kernel = Kernel(name)
    try:
        dt, out, ok, _ = kernel.cell(connect_cell, 60)
        if not ok:
            raise RuntimeError(f"{name}: connect failed: {out[-300:]}")
        row["connect_s"] = dt
        kernel.cell("1+1")
        times, shows = [], False
        for _ in range(runs):
            dt, _, ok, shown = kernel.cell("1+1")
            times.append(dt)
            shows = shows or shown
        row["rt_median_ms"] = statistics.median(times) * 1000
        row["rt_p99_ms"] = percentile(times, 0.99) * 1000
        row["shows_out"] = shows
        for what, data in payloads():
            local = os.path.join(tmp, "bench.bin")
            Path(local).write_bytes(data)
            on_board = os.path.join(flash, "bench.bin")
            if os.path.exists(on_board):
                os.remove(on_board)
            try:
                dt, out, ok, _ = kernel.cell(put_cell.format(local=local, dest="bench.bin"))
            except (TimeoutError, queue.Empty):
                row[f"put {what}"] = (None, f"not done after {CELL_LIMIT_S:.0f} s")
                continue
            got = Path(on_board).read_bytes() if os.path.exists(on_board) else b""
            row[f"put {what}"] = (dt, "ok" if ok and sha(got) == sha(data) else
                                  f"failed: {len(got)}/{len(data)} bytes on the board; {out.strip()[-120:]!r}")
            if "via" in out:
                row[f"put {what} path"] = out[out.rfind("via "):].splitlines()[0]
            back = os.path.join(tmp, "back.bin")
            if os.path.exists(back):
                os.remove(back)
            try:
                dt, out, ok, _ = kernel.cell(get_cell.format(src="bench.bin", local=back))
            except (TimeoutError, queue.Empty):
                row[f"get {what}"] = (None, f"not done after {CELL_LIMIT_S:.0f} s")
                continue
            got = Path(back).read_bytes() if os.path.exists(back) else b""
            row[f"get {what}"] = (dt, "ok" if ok and sha(got) == sha(data) else
                                  f"failed: {len(got)}/{len(data)} bytes fetched; {out.strip()[-120:]!r}")
            if "via" in out:
                row[f"get {what} path"] = out[out.rfind("via "):].splitlines()[0]
    finally:
        kernel.close()
    return row


def device_paths(url: str) -> list[tuple[str, str, float, float]]:
    """(payload, path, put s, get s) for each of BoardFiles' paths, no Jupyter."""
    rows = []
    with BoardSession.open(url, link_options={"password": PASSWORD}) as session:
        times = []
        for _ in range(50):
            t = time.perf_counter()
            session.exec("1+1", show_value=True)
            times.append(time.perf_counter() - t)
        rows.append(("1+1 (device layer)", "exec", statistics.median(times), 0.0))
        for what, data in payloads()[:2]:
            for mode, label in (("stream", "REPL transfer"), ("webrepl", "WebREPL file protocol")):
                files = BoardFiles(session, mode=mode)
                t = time.perf_counter()
                files.put(data, "dev.bin")
                put = time.perf_counter() - t
                t = time.perf_counter()
                assert files.get("dev.bin") == data
                rows.append((what, label, put, time.perf_counter() - t))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--skip-anchor", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ek-bench-webrepl-"))
    make_specs(root)
    os.environ["JUPYTER_PATH"] = str(root)
    os.environ["JUPYTER_RUNTIME_DIR"] = str(root / "runtime")
    tmp = str(root)
    results: dict[str, dict[str, object]] = {}
    with start_board("unix", webrepl=0, webrepl_password=PASSWORD, webrepl_faithful=True) as board:
        url = board.webrepl
        print(f"emulated WebREPL (board-faithful): {url}", file=sys.stderr)
        results["edgekernel"] = measure_kernel(
            "bench-edgekernel", url, board.flash_dir, args.runs, tmp,
            "%sendtofile --source {local} {dest}", "%fetchfile {src} {local}",
            f"%websocketconnect {url} --password-env BENCH_WEBREPL_PW")
        if not args.skip_anchor:
            results["anchor"] = measure_kernel(
                "bench-anchor", url, board.flash_dir, args.runs, tmp,
                "%sendtofile --binary --source {local} {dest}", "%fetchfile --binary {src} {local}",
                f"%websocketconnect {url} --password {PASSWORD}")
        time.sleep(0.5)   # the anchor's session ends with its kernel
        dev = device_paths(url)

    print("\n**Kernel over WebREPL** (emulator, board-faithful mode; execute -> idle)\n")
    print("| measure | edgekernel | anchor | edgekernel vs anchor |")
    print("|---|---|---|---|")
    ek, an = results["edgekernel"], results.get("anchor", {})
    print(f"| `%websocketconnect` | {ek['connect_s']:.2f} s | "
          f"{an.get('connect_s', float('nan')):.2f} s | |")
    ratio = an["rt_median_ms"] / ek["rt_median_ms"] if an else float("nan")
    print(f"| `1+1` median / p99 | {ek['rt_median_ms']:.1f} / {ek['rt_p99_ms']:.1f} ms | "
          f"{an.get('rt_median_ms', float('nan')):.1f} / {an.get('rt_p99_ms', float('nan')):.1f} ms | "
          f"{ratio:.1f}x faster (target: no worse) |")
    print(f"| shows Out[n] | {ek['shows_out']} | {an.get('shows_out', '-')} | |")
    print("| *20 KB transfers (the 1st each way includes edgekernel's probe of the WebREPL file protocol)* | | | |")
    for what, data in payloads():
        for op in ("put", "get"):
            key = f"{op} {what}"
            e_dt, e_status = ek[key]
            a_dt, a_status = an.get(key, (None, "skipped"))
            e_cell = f"{e_dt:.3f} s ({len(data) / e_dt / 1000:.1f} KB/s)" if e_status == "ok" else e_status
            a_cell = f"{a_dt:.3f} s ({len(data) / a_dt / 1000:.1f} KB/s)" if a_status == "ok" and a_dt else a_status
            if e_status == "ok" and a_status == "ok" and a_dt:
                r = f"{a_dt / e_dt:.1f}x faster (target >= 2x)"
            else:
                r = "anchor failed" if e_status == "ok" else "edgekernel failed"
            print(f"| {op} {what} | {e_cell} | {a_cell} | {r} |")
    print()
    for key, value in ek.items():
        if key.endswith(" path"):
            print(f"edgekernel {key[:-5]}: {value}")
    print("\n**Device layer, both file paths** (no Jupyter; 20 KB each way, verified)\n")
    print("| payload | path | put | get |")
    print("|---|---|---|---|")
    for what, label, put, get in dev:
        if label == "exec":
            print(f"| {what} | | {put * 1000:.2f} ms median | |")
        else:
            print(f"| {what} | {label} | {put:.3f} s | {get:.3f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
