"""File transfer: edgekernel vs mpremote `fs cp`, on the unix board unthrottled and at 115200.

    python bench/files.py [--quick]

For each link: put and get of a 20 KB Python source and 200 KB of random bytes,
every transfer verified against the board's flash directory / the local copy.
edgekernel runs in-process on an open session; mpremote runs as its CLI
(`connect PORT resume fs cp`), whose start-up cost is measured alone and
printed so it can be subtracted. Link: 115200 baud 8N1 = 11,520 B/s.
"""
from __future__ import annotations

import os
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


def row(link: str, tool: str, what: str, op: str, n: int, seconds: float, ok: bool) -> None:
    rate = n / seconds
    print(f"| {link} | {tool} | {what} | {op} | {seconds:.3f} s | {rate:,.0f} B/s | {100 * rate / LINK:.0f}% | "
          f"{'verified' if ok else 'MISMATCH'} |", flush=True)


def run(link: str, baud: int | None, quick: bool, tmp: str) -> None:
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
    finally:
        board.stop()


def main() -> None:
    quick = "--quick" in sys.argv
    tmp = tempfile.mkdtemp()
    print("| link | tool | data | op | time | rate | % of 11,520 B/s | check |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        run("unthrottled", None, quick, tmp)
        run("115200", 115200, quick, tmp)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
