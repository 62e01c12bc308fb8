"""Device-layer benchmark: edgekernel's BoardSession against mpremote's
SerialTransport, side by side in one run, on the same emulated boards.

    python bench/device.py [--runs 200] [--boards unix,unix-115200,microbit] [--json out.json]

Boards (edgekernel.emulator): unix-port MicroPython unthrottled, the same
behind the link simulator at 115200 baud, and the QEMU micro:bit.
Measures:
  rt      exec round trip of `1+1` on one open connection (median, p99).
          edgekernel: session.exec("1+1", show_value=True) (shows the value);
          mpremote: transport.exec("1+1") (no value) and transport.eval("1+1").
  upload  upload-and-run of a 50 KB script, bytes/s and share of 11,520 B/s.
  ctrl-c  host Ctrl-C to the board's prompt, busy loop and print flood.
  floor   bytes actually sent + received for the 1+1 exchange, x 86.8 us at
          115200 baud, and the measured median's ratio to it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgekernel.device import BoardSession  # noqa: E402

LINK_RATE = 11520              # bytes/s at 115200 baud 8N1
BYTE_TIME = 1 / LINK_RATE      # 86.8 us
BOARDS = {
    "unix": dict(kind="unix"),
    "unix-115200": dict(kind="unix", baud=115200),
    "microbit": dict(kind="microbit"),
}


def big_script(size: int = 50_000) -> str:
    lines = ["total = 0"]
    i = 0
    while sum(len(x) + 1 for x in lines) < size:
        lines.append(f"total += {i}  # padding padding padding padding padding padding")
        i += 1
    lines.append("print('sum', total)")
    return "\n".join(lines) + "\n"


def stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    p99 = s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]
    return {"median": statistics.median(s), "p99": p99, "n": len(s)}


def timed(fn: Callable[[], object], runs: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


# -- byte counting ---------------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.sent = self.received = 0


def count_edgekernel(session: BoardSession) -> Counter:
    c = Counter()
    link = session.link
    read, write = link.read, link.write

    def counting_read(n, timeout):
        data = read(n, timeout)
        c.received += len(data)
        return data

    def counting_write(data):
        c.sent += len(data)
        write(data)
    link.read, link.write = counting_read, counting_write   # type: ignore[method-assign]
    return c


def count_mpremote(transport) -> Counter:
    c = Counter()
    ser = transport.serial
    read, write = ser.read, ser.write

    def counting_read(n=1):
        data = read(n)
        c.received += len(data)
        return data

    def counting_write(data):
        c.sent += len(data)
        return write(data)
    ser.read, ser.write = counting_read, counting_write
    return c


# -- edgekernel ------------------------------------------------------------------------------------


def bench_edgekernel(port: str, runs: int, upload: bool, result: dict) -> None:
    with BoardSession.open(port, 115200, timeout=20) as s:
        r = s.exec("1+1", show_value=True)
        assert r.value == "2", r
        result["rt"] = stats(timed(lambda: s.exec("1+1", show_value=True), runs))
        c = count_edgekernel(s)
        s.exec("1+1", show_value=True)
        result["bytes"] = {"sent": c.sent, "received": c.received}
        if upload:
            script = big_script()
            t = time.perf_counter()
            r = s.exec(script, timeout=120)
            seconds = time.perf_counter() - t
            assert r.ok and r.text.startswith("sum"), r
            result["upload"] = {"bytes": len(script), "seconds": seconds, "rate": len(script) / seconds,
                                "raw_paste": s.raw_paste}
        for name, code in (("busy", "while True:\n    pass"),
                           ("flood", "i = 0\nwhile True:\n    print('flood', i)\n    i += 1")):
            samples, steps = [], []
            for _ in range(5):
                box: dict = {}

                def work() -> None:
                    box["r"] = s.exec(code, on_output=lambda d: None, timeout=30)
                    box["end"] = time.perf_counter()
                th = threading.Thread(target=work)
                th.start()
                while not s.running:
                    time.sleep(0.001)
                time.sleep(0.3)
                t0 = time.perf_counter()
                s.interrupt()
                th.join(30)
                samples.append(box["end"] - t0)
                steps.append(box["r"].interrupted.step if box["r"].interrupted else "none")
                assert s.exec("print(1)").text.strip() == "1"
            result[f"ctrlc_{name}"] = stats(samples) | {"steps": sorted(set(steps))}


# -- mpremote ---------------------------------------------------------------------------------------


def bench_mpremote(port: str, runs: int, upload: bool, result: dict) -> None:
    from mpremote.transport_serial import SerialTransport
    t = SerialTransport(port, baudrate=115200)
    try:
        t.enter_raw_repl(soft_reset=False)
        assert t.eval("1+1") == 2
        result["rt"] = stats(timed(lambda: t.exec("1+1"), runs))
        result["rt_eval"] = stats(timed(lambda: t.eval("1+1"), runs))
        c = count_mpremote(t)
        t.exec("1+1")
        result["bytes"] = {"sent": c.sent, "received": c.received}
        ser = t.serial
        del ser.read, ser.write          # back to the class's own methods
        if upload:
            script = big_script()
            start = time.perf_counter()
            out = t.exec(script)
            seconds = time.perf_counter() - start
            assert out.startswith(b"sum"), out
            result["upload"] = {"bytes": len(script), "seconds": seconds, "rate": len(script) / seconds,
                                "raw_paste": t.use_raw_paste}
        for name, code in (("busy", "while True:\n    pass"),
                           ("flood", "i = 0\nwhile True:\n    print('flood', i)\n    i += 1")):
            samples = []
            for _ in range(5):
                t.exec_raw_no_follow(code)
                time.sleep(0.3)
                t0 = time.perf_counter()
                t.serial.write(b"\x03")
                # Board: "<output> \x04 <KeyboardInterrupt traceback> \x04 >"; follow() returns
                # at the second \x04, one byte before the prompt (which the next exec consumes).
                _, err = t.follow(None, data_consumer=lambda b: None)
                samples.append(time.perf_counter() - t0)
                assert b"KeyboardInterrupt" in err, err
                assert t.eval("1") == 1
            result[f"ctrlc_{name}"] = stats(samples)
    finally:
        try:
            t.exit_raw_repl()
        except Exception:
            pass
        t.close()


# -- driver -------------------------------------------------------------------------------------------


def run(boards: list[str], runs: int) -> dict:
    from edgekernel.emulator import start_board
    results: dict = {}
    for name in boards:
        upload = name != "microbit"
        res = results[name] = {"edgekernel": {}, "mpremote": {}}
        t = time.perf_counter()
        with start_board(**BOARDS[name], timeout=60) as proc:
            res["boot_seconds"] = time.perf_counter() - t
            for tool, fn in (("edgekernel", bench_edgekernel), ("mpremote", bench_mpremote)):
                try:
                    fn(proc.port, runs, upload, res[tool])
                except Exception as exc:  # noqa: BLE001 - report, keep going with the other tool/board
                    res[tool]["error"] = f"{type(exc).__name__}: {exc}"
            pid = proc.pid
        res["pid_gone"] = not _alive(pid)
    return results


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.2f} ms"


def table(results: dict) -> str:
    rows = [("board", "measure", "edgekernel", "mpremote", "ek / mp", "note")]

    def g(d: dict, *keys):
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return None
            d = d[k]
        return d

    for board, res in results.items():
        ek, mp = res["edgekernel"], res["mpremote"]
        for tool, d in (("edgekernel", ek), ("mpremote", mp)):
            if "error" in d:
                rows.append((board, f"ERROR ({tool})", d["error"][:70], "", "", ""))
        for key, label in (("median", "1+1 median"), ("p99", "1+1 p99")):
            a, b = g(ek, "rt", key), g(mp, "rt", key)
            rows.append((board, label, ms(a), ms(b), f"{a / b:.2f}x" if a and b else "-",
                         "ek shows the value; mp exec does not"))
            c = g(mp, "rt_eval", key)
            rows.append((board, f"1+1 {key} (mp eval)", "", ms(c), f"{a / c:.2f}x" if a and c else "-",
                         "mp eval = print(repr()) + literal_eval"))
        if g(ek, "upload"):
            a, b = g(ek, "upload", "rate"), g(mp, "upload", "rate")
            frac = lambda r: f"{r:,.0f} B/s = {r / LINK_RATE:.1%}" if r else "-"  # noqa: E731
            note = "target >= 95% of link" if board.endswith("115200") else "target: no slower than mpremote"
            rows.append((board, "50 KB upload+run", frac(a), frac(b), f"{a / b:.2f}x" if a and b else "-", note))
        for name in ("busy", "flood"):
            a, b = g(ek, f"ctrlc_{name}", "median"), g(mp, f"ctrlc_{name}", "median")
            steps = ",".join(g(ek, f"ctrlc_{name}", "steps") or [])
            rows.append((board, f"Ctrl-C -> prompt, {name}", ms(a), ms(b), f"{a / b:.2f}x" if a and b else "-",
                         f"median of 5; ek ladder step: {steps}"))
        if board.endswith("115200"):
            for tool, d in (("edgekernel", ek), ("mpremote", mp)):
                by = g(d, "bytes")
                med = g(d, "rt", "median")
                if by and med:
                    floor = (by["sent"] + by["received"]) * BYTE_TIME
                    rows.append((board, f"1+1 wire floor ({tool})",
                                 f"{by['sent']}+{by['received']} B = {ms(floor)}", "",
                                 f"{med / floor:.2f}x floor", "target <= 1.2x" if tool == "edgekernel" else ""))
        if not res.get("pid_gone", True):
            rows.append((board, "CLEANUP", "board process still alive", "", "", ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--boards", default=",".join(BOARDS))
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    start = time.perf_counter()
    results = run(args.boards.split(","), args.runs)
    print(table(results))
    print(f"\ntotal {time.perf_counter() - start:.1f} s; 115200 baud = {LINK_RATE} B/s, {BYTE_TIME * 1e6:.1f} us/byte")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
