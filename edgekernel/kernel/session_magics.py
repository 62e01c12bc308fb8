"""The session's own magics: %lsmagic, %output, %%bg / %bg, %%local.

Thin: they read or change the kernel's state (the last output, the background job);
only %%bg talks to the board, through the kernel's board worker.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..device import board_text
from .background import BackgroundJob
from .magics import REGISTRY as magics
from .magics import HostError
from .output import human_size


@magics.add("lsmagic", "list the magics", host_only=True)
def _lsmagic(kernel: Any, args: Any, body: str) -> None:
    kernel.say("\n".join(magics.summary_lines()) + "\n")


def _output_args(p: Any) -> None:
    p.add_argument("--save", metavar="FILE", help="write all of the last board cell's output to a host file")
    p.add_argument("--limit", type=int, metavar="CHARS",
                   help="how much of a cell's output the page shows from now on (0: no limit; "
                        "default $EDGEKERNEL_OUTPUT_LIMIT or 262144)")


@magics.add("output", "show the last board cell's output again (its end, past the page's limit), "
                      "--save FILE writes all of it, --limit sets the page's limit", arguments=_output_args,
            host_only=True)
def _output(kernel: Any, args: Any, body: str) -> None:
    if args.limit is not None:
        kernel.output_limit = args.limit if args.limit > 0 else None
        kernel.say(f"a cell's output in the page is now limited to {human_size(args.limit)}\n" if args.limit > 0
                   else "a cell's output in the page is no longer limited\n")
        return
    text = board_text(kernel.last_output)
    if args.save:
        path = Path(args.save).expanduser()
        path.write_text(text, encoding="utf-8")
        kernel.say(f"wrote {len(text):,} characters ({text.count(chr(10)):,} lines) to {path.resolve()}\n")
        return
    limit = kernel.output_limit
    if limit is not None and len(text) > limit:
        start = text.find("\n", len(text) - limit) + 1 or len(text) - limit
        kernel.say(f"[its first {text.count(chr(10), 0, start):,} lines ({human_size(start)}) are not shown: "
                   f"%output --save FILE writes all of it]\n", name="stderr")
        text = text[start:]
    kernel.say(text or "(the last board cell printed nothing)\n")
    kernel.say(f"[every byte the board sent is in {kernel.last_output_log or kernel.log_path}]\n", name="stderr")


@magics.add("bg", "run the cell on the board in the background; %bg shows it, %bg stop ends it", cell=True)
def _bg_cell(kernel: Any, args: Any, body: str) -> None:
    board = kernel.require_board()
    if not body.strip():
        raise HostError("UsageError", "%%bg needs code after its line")
    first = body.lstrip().split("\n", 1)[0].strip()
    if first.startswith("%%"):
        # The board would get the magic as code (a SyntaxError there): say what does this.
        hint = "%%plot --bg plots in the background" if first.startswith("%%plot") else \
            "put the cell magic first, or drop it"
        raise HostError("UsageError", f"%%bg runs board code, not another cell magic ({first.split()[0]}): {hint}")
    kernel.bg_job = BackgroundJob(board, body, kernel.submit_to_board)
    kernel.say("started in the background: the board is busy until it ends "
               "(%bg shows its output, %bg stop ends it)\n")


def _bg_args(p: Any) -> None:
    p.add_argument("action", nargs="?", choices=["status", "stop"], default="status")
    p.add_argument("--lines", type=int, default=20, help="how many of the latest output lines to show")


@magics.add("bg", "show the background job (status and latest output), or stop it", arguments=_bg_args,
            host_only=True)
def _bg_line(kernel: Any, args: Any, body: str) -> None:
    # Each board has its own job; %bg is about the current board's (%%on NAME + %bg: another's).
    slot = kernel.current_slot
    job = slot.bg_job
    on = "" if len(kernel.boards.names()) < 2 else f" on {slot.name!r}"
    if job is None:
        elsewhere = [name for name in kernel.boards.names() if kernel.boards.slots[name].bg_job is not None]
        hint = f" ({', '.join(repr(n) for n in elsewhere)} has one: %%on NAME then %bg)" if elsewhere else ""
        kernel.say(f"no background job{on}: start one with %%bg{hint}\n")
        return
    if args.action == "stop" and job.running:
        job.stop()
    kernel.say(f"background job{on} {job.status()}\n")
    text = job.output_text(args.lines)
    if text:
        kernel.say(text if text.endswith("\n") else text + "\n")


@magics.add("local", "run the cell in host IPython (pandas, matplotlib, widgets); `board.eval(expr)` brings board values", cell=True)
def _local(kernel: Any, args: Any, body: str) -> None:
    raise AssertionError("handled in do_execute")  # %%local is routed before magics run

