"""%mount benchmark: importing a 20 KB module from a mounted host folder vs from the board's flash,
at 115200 baud, with mpremote's `mount` beside it.

    python bench/mount.py [--rounds 7] [--baud 115200] [--skip-mpremote]

One emulated unix board behind the link simulator. The same 20 KB module is in the board's flash
(/lib/ekflash.py, written by the verified transfer) and in a host folder mounted with
edgekernel.device.mount (ekmount.py). Each round imports both, in turns (the order turns each
round), after removing them from sys.modules in an untimed run; time is from the host's exec to its
end. mpremote runs as its CLI (`connect PORT resume mount DIR exec "import m"`); its start-up and
mount without the import are measured in the same rounds and subtracted. Prints medians and ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from edgekernel.device import BoardSession
from edgekernel.device.files import BoardFiles
from edgekernel.device.mount import mount_folder, unmount_folder
from edgekernel.emulator import start_board

SIZE = 20_000


def module_source(size: int = SIZE) -> str:
    """A module of about `size` bytes that does some work when imported (functions, a table, a class)."""
    lines = ['"""A generated module for bench/mount.py."""', "TABLE = {}"]
    i = 0
    while sum(len(line) + 1 for line in lines) < size - 120:
        lines += [f"def f{i}(x, y=1):", f"    return (x * {i} + y) % 97 + len('{'ab' * (i % 5)}')",
                  f"TABLE[{i}] = f{i}"]
        i += 1
    lines += ["class Done:", "    count = len(TABLE)", "RESULT = sum(f(3) for f in TABLE.values())"]
    return "\n".join(lines) + "\n"


def timed_import(session: BoardSession, name: str) -> float:
    session.exec(f"import sys\nsys.modules.pop({name!r}, None)", timeout=30, scratch=True)
    t = time.perf_counter()
    r = session.exec(f"import {name}\nprint({name}.Done.count)", timeout=120, scratch=True)
    seconds = time.perf_counter() - t
    if r.error is not None or not r.output.strip().isdigit():
        raise SystemExit(f"bench/mount.py: import {name} failed: {r.error or r.output!r}")
    return seconds


def mpremote(port: str, folder: str, code: str) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mpremote", "connect", port, "resume", "mount", folder,
                        "exec", code], capture_output=True, timeout=300)
    seconds = time.perf_counter() - t
    if r.returncode or not r.stdout.strip().splitlines()[-1:] or not r.stdout.split()[-1].isdigit():
        raise SystemExit(f"bench/mount.py: mpremote failed: {r.stderr.decode(errors='replace')[-300:]}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--skip-mpremote", action="store_true")
    args = ap.parse_args()
    source = module_source()
    times: dict[str, list[float]] = {"flash": [], "mount": [], "mpremote mount": [], "mpremote start": []}
    with tempfile.TemporaryDirectory() as tmp:
        host = os.path.join(tmp, "host")
        flash = os.path.join(tmp, "flash")
        os.makedirs(host)
        os.makedirs(flash)
        with open(os.path.join(host, "ekmount.py"), "w") as f:
            f.write(source)
        board = start_board("unix", baud=args.baud, timeout=30, flash_dir=flash)
        try:
            with BoardSession.open(board.port) as session:
                files = BoardFiles(session)
                files.mkdir("/lib", exist_ok=True)
                files.put(source.encode(), "/lib/ekflash.py")
                mount_folder(session, host, say=lambda text: None)
                for round_ in range(args.rounds):
                    order = ["flash", "mount"] if round_ % 2 == 0 else ["mount", "flash"]
                    for kind in order:
                        times[kind].append(timed_import(session, "ekflash" if kind == "flash" else "ekmount"))
                unmount_folder(session)
            if not args.skip_mpremote:
                for round_ in range(args.rounds):
                    order = ["mpremote mount", "mpremote start"][:: 1 if round_ % 2 == 0 else -1]
                    for kind in order:
                        code = "import sys\nsys.modules.pop('ekmount', None)\n"
                        code += "import ekmount\nprint(ekmount.Done.count)" if kind == "mpremote mount" else "print(0)"
                        times[kind].append(mpremote(board.port, host, code))
        finally:
            board.stop()
    med = {k: statistics.median(v) for k, v in times.items() if v}
    print(f"import of a {len(source) / 1000:.1f} KB module at {args.baud} baud, median of {args.rounds} "
          "(interleaved)")
    print(f"  from flash  (edgekernel)      {med['flash'] * 1000:8.0f} ms")
    print(f"  from mount  (edgekernel)      {med['mount'] * 1000:8.0f} ms")
    if "mpremote mount" in med:
        only = med["mpremote mount"] - med["mpremote start"]
        print(f"  from mount  (mpremote 'mount', start-up and mount without import subtracted) "
              f"{only * 1000:8.0f} ms")
        print(f"mount/flash {med['mount'] / med['flash']:.2f}x; edgekernel mount / mpremote mount "
              f"{med['mount'] / only:.2f}x")
    else:
        print(f"mount/flash {med['mount'] / med['flash']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
