"""Device-layer benchmark: edgekernel's BoardSession against mpremote's
SerialTransport, side by side in one run, on the same emulated boards.

    python bench/device.py [--runs 200] [--boards unix,unix-115200,microbit] [--json out.json]

Boards (edgekernel.emulator): unix-port MicroPython unthrottled, the same
behind the link simulator at 115200 baud, and the QEMU micro:bit.

  1+1     exec round trip of `1+1` on an open connection (median, p99 of --runs).
          edgekernel: session.exec("1+1", show_value=True) (it shows the value);
          mpremote: transport.exec("1+1") (no value) and transport.eval("1+1").
          The runs are taken in 4 alternating blocks (ek, mp, ek, mp...), one
          connection per block, so both tools see the same machine load.
  upload  upload-and-run of a 50 KB script: bytes/s and share of 11,520 B/s.
  ctrl-c  from the host's Ctrl-C to the board's prompt, for a busy loop and a
          print flood (median of 9).
  leak    heap the board loses for good per 1+1 exec (each phase starts
          from a soft reset, so one tool's leftovers cannot fail the other).
  floor   the bytes edgekernel actually sends and receives for the 1+1 exchange
          x 86.8 us (115200 baud 8N1), and the measured median's ratio to it.
          "lean" is a reference client that writes exactly edgekernel's bytes
          and select()s for the answer with no other work: what the link and
          the board allow, so lean/floor is the simulator's cost per turn and
          edgekernel/lean is edgekernel's own.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgekernel.device import BoardSession, DeviceError, onboard  # noqa: E402
from edgekernel.processes import alive  # noqa: E402

LINK_RATE = 11520              # bytes/s at 115200 baud 8N1
BYTE_TIME = 1 / LINK_RATE      # 86.8 us
BOARDS = {
    "unix": dict(kind="unix"),
    "unix-115200": dict(kind="unix", baud=115200),
    "microbit": dict(kind="microbit"),
}
BLOCKS = 4
CTRL_C_RUNS = 9
BUSY = "while True:\n    pass"
FLOOD = "i = 0\nwhile True:\n    print('flood', i)\n    i += 1"


def big_script(size: int = 50_000) -> str:
    lines = ["total = 0"]
    i = 0
    while sum(len(x) + 1 for x in lines) < size:
        lines.append(f"total += {i}  # padding padding padding padding padding padding")
        i += 1
    lines.append("print('sum', total)")
    return "\n".join(lines) + "\n"


def stats(samples: list[float]) -> dict:
    s = sorted(samples)
    p99 = s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]
    return {"median": statistics.median(s), "p99": p99, "n": len(s)}


def timed(fn: Callable[[], object], runs: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


class Counter:
    def __init__(self) -> None:
        self.sent = self.received = 0


def count_edgekernel(session: BoardSession) -> tuple[Counter, Callable[[], None]]:
    """Count the bytes through the session's link; returns (counter, undo)."""
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

    def undo() -> None:
        del link.read, link.write
    return c, undo


def count_mpremote(transport) -> tuple[Counter, Callable[[], None]]:
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

    def undo() -> None:
        del ser.read, ser.write
    return c, undo


# -- edgekernel ------------------------------------------------------------------------------------


class Edgekernel:
    name = "edgekernel"

    def __init__(self, port: str, result: dict) -> None:
        self.port, self.result = port, result
        self.session: BoardSession | None = None

    def open(self) -> None:
        # Count failed connects instead of hiding them (the micro:bit's paced fallback can lose bytes).
        for attempt in range(5):
            try:
                self.session = BoardSession.open(self.port, 115200, timeout=20)
                break
            except DeviceError as exc:
                self.result.setdefault("connect_failures", []).append(str(exc)[:160])
        else:
            raise DeviceError(f"could not connect in 5 attempts: {self.result['connect_failures'][-1]}")
        # Every phase starts from a clean heap (see leak(): what one tool leaves behind must
        # not make the other fail).
        self.session.soft_reset(timeout=20)

    def leak(self, runs: int = 100) -> None:
        """Heap the board loses for good per 1+1 exec (gc.collect() before each reading)."""
        probe = "import gc\ngc.collect()\nprint(gc.mem_free())"
        before = int(self.session.run_internal(probe))
        for _ in range(runs):
            self.one_plus_one()
        after = int(self.session.run_internal(probe))
        self.result["leak_per_exec"] = (before - after) / runs

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def one_plus_one(self) -> None:
        r = self.session.exec("1+1", show_value=True)
        if r.value != "2":
            raise DeviceError(f"1+1 gave {r}")

    def count_bytes(self) -> None:
        c, undo = count_edgekernel(self.session)
        self.one_plus_one()
        undo()
        self.result["bytes"] = {"sent": c.sent, "received": c.received}

    def lean(self, runs: int) -> None:
        """A reference client on the same link: exactly edgekernel's bytes, no other work."""
        link = self.session.link
        fd = getattr(link, "_fd", None)
        if fd is None:
            return
        m = onboard.new_marker()
        program = onboard.framed_call(m, onboard.show_trailing_expression("1+1", onboard.SHOW_CALL)) + b"\x04"
        end = m + b"D\x04\x04>"

        def exchange(data: bytes, ending: bytes) -> None:
            os.write(fd, data)
            buf = b""
            while not buf.endswith(ending):
                select.select([fd], [], [], 5)
                buf += os.read(fd, 4096)
        self.result["lean"] = stats(timed(lambda: exchange(program, end), runs))
        self.result["lean_bytes"] = len(program) + len(b"OK" + m + b"R2" + end)
        self.result["tiny"] = stats(timed(lambda: exchange(b"1\x04", b"\x04\x04>"), runs))

    def upload(self) -> None:
        script = big_script()
        t = time.perf_counter()
        r = self.session.exec(script, timeout=120)
        seconds = time.perf_counter() - t
        assert r.ok and r.text.startswith("sum"), r
        self.result["upload"] = {"bytes": len(script), "seconds": seconds, "rate": len(script) / seconds,
                                 "raw_paste": self.session.raw_paste}

    def ctrl_c(self, name: str, code: str) -> None:
        s = self.session
        samples, steps = [], set()
        for _ in range(CTRL_C_RUNS):
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
            steps.add(box["r"].interrupted.step if box["r"].interrupted else "none")
            assert s.exec("print(1)").text.strip() == "1"
        self.result[f"ctrlc_{name}"] = stats(samples) | {"steps": sorted(steps)}


# -- mpremote ---------------------------------------------------------------------------------------


class Mpremote:
    name = "mpremote"

    def __init__(self, port: str, result: dict) -> None:
        self.port, self.result = port, result
        self.t = None

    def open(self) -> None:
        from mpremote.transport_serial import SerialTransport
        self.t = SerialTransport(self.port, baudrate=115200)
        self.t.enter_raw_repl(soft_reset=True)    # a clean heap, as for edgekernel

    def leak(self, runs: int = 100) -> None:
        probe = "import gc\ngc.collect()\nprint(gc.mem_free())"
        before = int(self.t.exec(probe))
        for _ in range(runs):
            self.one_plus_one()
        after = int(self.t.exec(probe))
        self.result["leak_per_exec"] = (before - after) / runs

    def close(self) -> None:
        if self.t is not None:
            try:
                self.t.exit_raw_repl()
            finally:
                self.t.close()
                self.t = None

    def one_plus_one(self) -> None:
        self.t.exec("1+1")

    def eval_one_plus_one(self) -> None:
        if self.t.eval("1+1") != 2:
            raise RuntimeError("eval(1+1) != 2")

    def count_bytes(self) -> None:
        c, undo = count_mpremote(self.t)
        self.one_plus_one()
        undo()
        self.result["bytes"] = {"sent": c.sent, "received": c.received}

    def upload(self) -> None:
        script = big_script()
        start = time.perf_counter()
        out = self.t.exec(script)
        seconds = time.perf_counter() - start
        assert out.startswith(b"sum"), out
        self.result["upload"] = {"bytes": len(script), "seconds": seconds, "rate": len(script) / seconds,
                                 "raw_paste": self.t.use_raw_paste}

    def ctrl_c(self, name: str, code: str) -> None:
        t = self.t
        samples = []
        for _ in range(CTRL_C_RUNS):
            t.exec_raw_no_follow(code)
            time.sleep(0.3)
            t0 = time.perf_counter()
            t.serial.write(b"\x03")
            # The board answers "<output> \x04 <traceback> \x04 >": follow() returns at the
            # second \x04, one byte before the prompt (which the next exec reads).
            _, err = t.follow(None, data_consumer=lambda b: None)
            samples.append(time.perf_counter() - t0)
            assert b"KeyboardInterrupt" in err, err
            assert t.eval("1") == 1
        self.result[f"ctrlc_{name}"] = stats(samples)


# -- driver -------------------------------------------------------------------------------------------


UPLOADS = 3


def _phase(tool, what: str, fn: Callable[[], None]) -> bool:
    """Run one measurement; a failure is recorded in the tool's results, not hidden."""
    try:
        tool.open()
    except Exception as exc:  # noqa: BLE001
        tool.result.setdefault("errors", []).append(f"{what}: connect: {type(exc).__name__}: {exc}"[:300])
        return False
    try:
        fn()
        return True
    except Exception as exc:  # noqa: BLE001
        tool.result.setdefault("errors", []).append(f"{what}: {type(exc).__name__}: {exc}"[:300])
        return False
    finally:
        try:
            tool.close()
        except Exception:  # noqa: BLE001
            pass


def bench_board(port: str, runs: int, upload: bool, res: dict) -> None:
    ek, mp = Edgekernel(port, res["edgekernel"]), Mpremote(port, res["mpremote"])
    per_block = max(1, runs // BLOCKS)
    samples: dict[str, list[float]] = {"ek": [], "mp": [], "mp_eval": []}
    failed: set[str] = set()

    def ek_block(block: int) -> None:
        if block == 0:
            ek.count_bytes()
        samples["ek"].extend(timed(ek.one_plus_one, per_block))
        if block == BLOCKS - 1:
            ek.lean(per_block)

    def mp_block(block: int) -> None:
        if block == 0:
            mp.count_bytes()
        samples["mp"].extend(timed(mp.one_plus_one, per_block))
        samples["mp_eval"].extend(timed(mp.eval_one_plus_one, per_block))

    for tool in (ek, mp):
        _phase(tool, "leak", tool.leak)
    # 1+1: alternating blocks, one connection per block, so both see the same load.
    for block in range(BLOCKS):
        for tool, fn in ((ek, ek_block), (mp, mp_block)):
            if tool.name not in failed and not _phase(tool, f"1+1 block {block + 1}", lambda: fn(block)):
                failed.add(tool.name)
    res["edgekernel"]["rt"] = stats(samples["ek"]) if samples["ek"] else None
    res["mpremote"]["rt"] = stats(samples["mp"]) if samples["mp"] else None
    res["mpremote"]["rt_eval"] = stats(samples["mp_eval"]) if samples["mp_eval"] else None
    res["edgekernel"]["rt_done"] = len(samples["ek"])
    res["mpremote"]["rt_done"] = len(samples["mp"])
    if upload:
        rates: dict[str, list[float]] = {"edgekernel": [], "mpremote": []}
        for _ in range(UPLOADS):   # alternating, median of UPLOADS each
            for tool in (ek, mp):
                if _phase(tool, "upload", tool.upload):
                    rates[tool.name].append(tool.result["upload"]["rate"])
        for tool in (ek, mp):
            if rates[tool.name]:
                tool.result["upload"]["rate"] = statistics.median(rates[tool.name])
                tool.result["upload"]["rates"] = rates[tool.name]
    for tool in (ek, mp):
        _phase(tool, "ctrl-c busy", lambda: tool.ctrl_c("busy", BUSY))
        _phase(tool, "ctrl-c flood", lambda: tool.ctrl_c("flood", FLOOD))


def run(boards: list[str], runs: int) -> dict:
    from edgekernel.emulator import start_board
    results: dict = {}
    for name in boards:
        res = results[name] = {"edgekernel": {}, "mpremote": {}}
        t = time.perf_counter()
        with start_board(**BOARDS[name], timeout=60) as proc:
            res["boot_seconds"] = time.perf_counter() - t
            pids = [proc.pid] + proc.board_pids()
            try:
                bench_board(proc.port, runs, upload=name != "microbit", res=res)
            except Exception as exc:  # noqa: BLE001
                res["error"] = f"{type(exc).__name__}: {exc}"[:300]
        res["leftover_pids"] = [pid for pid in pids if alive(pid)]
    return results


# -- the table ----------------------------------------------------------------------------------------


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.2f} ms"


def g(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def table(results: dict) -> str:
    rows = [("board", "measure", "edgekernel", "mpremote", "ek / mp", "note")]
    for board, res in results.items():
        ek, mp = res["edgekernel"], res["mpremote"]
        if "error" in res:
            rows.append((board, "ERROR", res["error"][:80], "", "", ""))
        for tool, d in (("edgekernel", ek), ("mpremote", mp)):
            for err in d.get("errors", []):
                rows.append((board, f"ERROR ({tool})", err[:110], "", "", ""))
        if ek.get("connect_failures"):
            rows.append((board, "ek connect failures", str(len(ek["connect_failures"])), "", "",
                         " ".join(ek["connect_failures"][0].split())[:110]))
        for key in ("median", "p99"):
            a, b, c = g(ek, "rt", key), g(mp, "rt", key), g(mp, "rt_eval", key)
            done = f" (ek {ek.get('rt_done', 0)}, mp {mp.get('rt_done', 0)} runs)" if key == "median" else ""
            rows.append((board, f"1+1 {key}", ms(a), ms(b), ratio(a, b), "ek shows the value; mp exec does not" + done))
            rows.append((board, f"1+1 {key}, mp eval", "", ms(c), ratio(a, c), "mp eval shows it too"))
        if g(ek, "upload") or g(mp, "upload"):
            a, b = g(ek, "upload", "rate"), g(mp, "upload", "rate")
            frac = lambda r: f"{r:,.0f} B/s = {r / LINK_RATE:.1%} of 115200" if r else "-"  # noqa: E731
            note = "target >= 95% of link" if board.endswith("115200") else "target: no slower than mpremote"
            rows.append((board, "50 KB upload+run", frac(a), frac(b), ratio(a, b) + " speed", note + f"; median of {UPLOADS}"))
        a, b = g(ek, "leak_per_exec"), g(mp, "leak_per_exec")
        if a is not None or b is not None:
            fmt = lambda x: "-" if x is None else f"{x:.1f} B"  # noqa: E731
            rows.append((board, "heap lost per 1+1 exec", fmt(a), fmt(b), "",
                         "gc.mem_free() after gc.collect(), over 100 execs; should be 0"))
        for name in ("busy", "flood"):
            a, b = g(ek, f"ctrlc_{name}", "median"), g(mp, f"ctrlc_{name}", "median")
            steps = ",".join(g(ek, f"ctrlc_{name}", "steps") or [])
            rows.append((board, f"Ctrl-C -> prompt, {name}", ms(a), ms(b), ratio(a, b),
                         f"median of {CTRL_C_RUNS}; ek ladder step: {steps}"))
        if board.endswith("115200"):
            by, med = g(ek, "bytes"), g(ek, "rt", "median")
            if by and med:
                floor = (by["sent"] + by["received"]) * BYTE_TIME
                rows.append((board, "1+1 wire floor", f"{by['sent']}+{by['received']} B = {ms(floor)}", "", "",
                             "bytes edgekernel sent+received x 86.8 us"))
                rows.append((board, "1+1 ek / floor", f"{med / floor:.2f}x", "", "", "target <= 1.2x"))
                lean, tiny = g(ek, "lean", "median"), g(ek, "tiny", "median")
                if lean:
                    rows.append((board, "1+1 lean client", ms(lean), "", "",
                                 f"same bytes, no work: {lean / floor:.2f}x floor; ek/lean = {med / lean:.2f}x"))
                if tiny:
                    rows.append((board, "tiny exchange 1\\x04", ms(tiny), "", "",
                                 f"8 B = {ms(8 * BYTE_TIME)} on the wire: +{ms(tiny - 8 * BYTE_TIME)} per turn in the link/board"))
            mby = g(mp, "bytes")
            if mby:
                rows.append((board, "mp bytes for 1+1", "", f"{mby['sent']}+{mby['received']} B", "",
                             "2 round trips (raw-paste handshake first)"))
        if res.get("leftover_pids"):
            rows.append((board, "CLEANUP", f"processes left: {res['leftover_pids']}", "", "", ""))
    rows = [tuple(" ".join(str(c).split()) for c in r) for r in rows]   # one line per cell
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
    print(f"\ntotal {time.perf_counter() - start:.1f} s; 115200 baud 8N1 = {LINK_RATE} B/s = {BYTE_TIME * 1e6:.1f} us/byte")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
