"""File transfer: edgekernel vs mpremote `fs cp` vs the leading MicroPython Jupyter kernel
(jupyter-micropython-kernel, "the anchor"), on the unix board unthrottled and at 115200.

    python bench/files.py [--quick] [--skip-anchor]

For each link: put and get of a 20 KB Python source and 200 KB of random bytes,
every transfer verified against the board's flash directory / the local copy.
edgekernel runs in-process on an open session; mpremote runs as its CLI
(`connect PORT resume fs cp`), whose start-up cost is measured alone and
printed so it can be subtracted. The anchor runs as a Jupyter kernel (jupyter_client, temp
kernelspec): `%serialconnect`, then one cell per transfer (`%sendtofile --binary --source LOCAL DEST`,
`%fetchfile --binary SRC LOCAL`), timed from execute to idle; a failure or a time-out is a table
row, not a crash. At 115200 an anchor transfer is cut after ANCHOR_LIMIT_S seconds (the rest of
its cases on that link are then skipped). Link: 115200 baud 8N1 = 11,520 B/s.
"""
from __future__ import annotations

import os
import hashlib
import json
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import time

from edgekernel.device import BoardSession
from edgekernel.device.files import BoardFiles
from edgekernel.emulator import start_board

LINK = 11520
ANCHOR_LIMIT_S = 60.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def payloads(quick: bool) -> list[tuple[str, bytes]]:
    src = b""
    for name in ("session.py", "onboard.py", "result.py", "files.py"):
        src += open(os.path.join(ROOT, "edgekernel", "device", name), "rb").read()
    rnd = random.Random(42).randbytes(20_000 if quick else 200_000)
    return [("source 20 KB", src[:20_000]), (f"random {len(rnd) // 1000} KB", rnd)]


def mpremote(port: str, *args: str) -> float:
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "mpremote", "connect", port, "resume", *args],
                       capture_output=True, timeout=600)
    if r.returncode:
        raise RuntimeError(f"mpremote {args}: {r.stderr.decode()[-200:]}")
    return time.monotonic() - t


RATES: dict[tuple[str, str, str, str], float] = {}   # (link, tool, data, op) -> B/s, verified only


def row(link: str, tool: str, what: str, op: str, n: int, seconds: float, ok: bool) -> None:
    rate = n / seconds
    if ok:
        RATES[(link, tool, what, op)] = rate
    print(f"| {link} | {tool} | {what} | {op} | {seconds:.3f} s | {rate:,.0f} B/s | {100 * rate / LINK:.0f}% | "
          f"{'verified' if ok else 'MISMATCH'} |", flush=True)


def failed(link: str, tool: str, what: str, op: str, why: str) -> None:
    why = " ".join(why.split()).replace("|", "/")[:120]
    print(f"| {link} | {tool} | {what} | {op} | | | | FAILED: {why} |", flush=True)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Anchor:
    """jupyter-micropython-kernel, driven over the Jupyter protocol like a front end would."""

    def __init__(self, port: str) -> None:
        from jupyter_client import KernelManager
        self.km = KernelManager(kernel_name="bench-anchor")
        self.km.start_kernel(stderr=subprocess.DEVNULL)   # its DEBUG logging would garble the table
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(60)
        dt, out, ok = self.cell(f"%serialconnect --port={port} --baud=115200", 60)
        if not ok:
            self.close()
            raise RuntimeError(f"connect failed: {out}")

    def cell(self, code: str, timeout: float) -> tuple[float, str, bool]:
        """Run a cell; (seconds from execute to idle, its text output, status ok)."""
        out: list[str] = []

        def hook(msg: dict) -> None:
            c = msg["content"]
            if msg["msg_type"] == "stream":
                out.append(c["text"])
            elif msg["msg_type"] == "error":
                out.append(f"{c['ename']}: {c['evalue']}")

        t = time.monotonic()
        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        return time.monotonic() - t, "".join(out), reply["content"]["status"] == "ok"

    def close(self) -> None:
        try:
            self.kc.stop_channels()
        finally:
            self.km.shutdown_kernel(now=True)


def make_anchor_spec(root: str) -> None:
    d = os.path.join(root, "kernels", "bench-anchor")
    os.makedirs(d)
    with open(os.path.join(d, "kernel.json"), "w") as f:
        json.dump({"argv": [sys.executable, "-m", "jupyter_micropython_kernel", "-f", "{connection_file}"],
                   "display_name": "bench-anchor", "language": "python"}, f)


def run_anchor(link: str, port: str, flash: str, quick: bool, tmp: str) -> None:
    limit = ANCHOR_LIMIT_S if link == "115200" else 300.0
    try:
        anchor = Anchor(port)
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        failed(link, "anchor", "(all)", "connect", f"{type(exc).__name__}: {exc}")
        return
    try:
        for what, data in payloads(quick):
            local = os.path.join(tmp, "an.bin")
            with open(local, "wb") as f:
                f.write(data)
            target = os.path.join(flash, "an.bin")
            if os.path.exists(target):
                os.remove(target)
            try:
                dt, out, ok = anchor.cell(f"%sendtofile --binary --source {local} an.bin", limit)
            except (TimeoutError, queue.Empty):
                failed(link, "anchor", what, "put", f"cut: not done after {limit:.0f} s; its other cases skipped")
                return
            on_board = open(target, "rb").read() if os.path.exists(target) else b""
            if ok and sha(on_board) == sha(data):
                row(link, "anchor", what, "put", len(data), dt, True)
            else:
                failed(link, "anchor", what, "put", f"{len(on_board)}/{len(data)} bytes on the board; {out[-100:]}")
                continue
            back = os.path.join(tmp, "an-back.bin")
            if os.path.exists(back):
                os.remove(back)
            try:
                dt, out, ok = anchor.cell(f"%fetchfile --binary an.bin {back}", limit)
            except (TimeoutError, queue.Empty):
                failed(link, "anchor", what, "get", f"cut: not done after {limit:.0f} s; its other cases skipped")
                return
            got = open(back, "rb").read() if os.path.exists(back) else b""
            if ok and sha(got) == sha(data):
                row(link, "anchor", what, "get", len(data), dt, True)
            else:
                failed(link, "anchor", what, "get", f"{len(got)}/{len(data)} bytes fetched; {out[-100:]}")
    finally:
        anchor.close()


def run(link: str, baud: int | None, quick: bool, tmp: str, anchor: bool) -> None:
    board = start_board("unix", baud=baud, timeout=20)
    try:
        flash = board.flash_dir
        session = BoardSession.open(board.port)
        files = BoardFiles(session)
        files.caps  # probed once per session, not timed
        for what, data in payloads(quick):
            t = time.monotonic()
            files.put(data, "ek.bin")
            dt = time.monotonic() - t
            row(link, "edgekernel", what, "put", len(data), dt, open(os.path.join(flash, "ek.bin"), "rb").read() == data)
            t = time.monotonic()
            got = files.get("ek.bin")
            row(link, "edgekernel", what, "get", len(data), time.monotonic() - t, got == data)
        session.close()
        startup = min(mpremote(board.port, "exec", "pass") for _ in range(3))
        print(f"| {link} | mpremote | (start-up + connect alone) | | {startup:.3f} s | | | |", flush=True)
        for what, data in payloads(quick):
            local = os.path.join(tmp, "mp.bin")
            with open(local, "wb") as f:
                f.write(data)
            dt = mpremote(board.port, "fs", "cp", "-f", local, ":mp.bin")
            row(link, "mpremote", what, "put", len(data), dt, open(os.path.join(flash, "mp.bin"), "rb").read() == data)
            back = os.path.join(tmp, "back.bin")
            dt = mpremote(board.port, "fs", "cp", ":mp.bin", back)
            row(link, "mpremote", what, "get", len(data), dt, open(back, "rb").read() == data)
        if anchor:
            run_anchor(link, board.port, flash, quick, tmp)
    finally:
        board.stop()


def main() -> None:
    quick = "--quick" in sys.argv
    anchor = "--skip-anchor" not in sys.argv
    tmp = tempfile.mkdtemp()
    make_anchor_spec(tmp)
    os.environ["JUPYTER_PATH"] = tmp
    os.environ["JUPYTER_RUNTIME_DIR"] = os.path.join(tmp, "runtime")
    t0 = time.monotonic()
    print("| link | tool | data | op | time | rate | % of 11,520 B/s | check |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        run("unthrottled", None, quick, tmp, anchor)
        run("115200", 115200, quick, tmp, anchor)
        print()
        for link in ("unthrottled", "115200"):
            for what, _ in payloads(quick):
                for op in ("put", "get"):
                    ek = RATES.get((link, "edgekernel", what, op))
                    parts = []
                    for other in ("mpremote", "anchor"):
                        o = RATES.get((link, other, what, op))
                        parts.append(f"edgekernel/{other} {ek / o:.2f}x" if ek and o else f"edgekernel/{other} n/a")
                    print(f"[{link}] {what} {op}: " + ", ".join(parts))
        print(f"\nwhole bench: {time.monotonic() - t0:.0f} s")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
