"""File magics: %sendtofile, %fetchfile, %ls, %cat, %rm, %mkdir, %df, %meminfo.

Thin: they parse and call edgekernel.device.files.BoardFiles, and show long
transfers as one progress line that updates in place.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from ..device import board_text
from ..device.files import BoardFiles
from .magics import REGISTRY as magics
from .magics import HostError


class NotebookProgress:
    """progress(done, total) as a display that updates in place (not thousands of lines)."""

    MIN_INTERVAL = 0.25

    def __init__(self, kernel: Any, label: str) -> None:
        self.kernel = kernel
        self.label = label
        self.display_id = uuid.uuid4().hex
        self.started = time.monotonic()
        self.shown_at: float | None = None

    def _send(self, msg_type: str, text: str) -> None:
        self.kernel.show(text, self.display_id, update=msg_type == "update_display_data")

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.shown_at is not None and now - self.shown_at < self.MIN_INTERVAL and done < total:
            return
        percent = 100 * done // total if total else 100
        text = f"{self.label}: {percent}% ({done:,} of {total:,} bytes)"
        self._send("display_data" if self.shown_at is None else "update_display_data", text)
        self.shown_at = now

    def finish(self, size: int, via: str = "") -> None:
        seconds = time.monotonic() - self.started
        rate = f", {size / seconds / 1000:.1f} KB/s" if seconds > 0 and size else ""
        text = f"{self.label}: {size:,} bytes, verified, {seconds:.2f} s{rate}{via}"
        if self.shown_at is None:
            self.kernel.say(text + "\n")
        else:
            self._send("update_display_data", text)


def transfer_path(files: BoardFiles) -> str:
    """Which way the last transfer went, where there is a choice (WebREPL links)."""
    if files.last_path is None or not files.session.capabilities.file_protocol:
        return ""
    return f", via {files.last_path}"


def _sendtofile_args(p: Any) -> None:
    p.add_argument("dest", nargs="?", help="path on the board (default: the --source file's name)")
    p.add_argument("--source", "-s", help="a file or folder on this computer to send instead of the cell")
    p.add_argument("--append", "-a", action="store_true", help="append to the board file")
    p.add_argument("--binary", "-b", action="store_true", help="accepted for compatibility: files always go byte-exact")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or summary")


@magics.add("sendtofile", "write the rest of the cell (or --source FILE/FOLDER) to a file on the board, verified",
            takes_body=True, arguments=_sendtofile_args)
def _sendtofile(kernel: Any, args: Any, body: str) -> None:
    # Kernel -> Interrupt during the put becomes the board's Ctrl-C (the kernel's one handler),
    # which the put honours: old file kept, board at its prompt.
    _send(kernel, args, body)


def _send(kernel: Any, args: Any, body: str) -> None:
    files = kernel.connection.files()
    if args.source:
        source = Path(args.source).expanduser()
        if source.is_dir():
            dest = args.dest or "."
            for path, what in files.put_tree(source, dest, cancelled=kernel.interrupt_requested):
                if not args.quiet:
                    kernel.say(f"{what:<8} {path}\n")
            return
        if not source.is_file():
            raise HostError("FileNotFoundError", f"no such file or folder on this computer: {source}")
        data, dest = source.read_bytes(), args.dest or source.name
    else:
        if not args.dest:
            raise HostError("UsageError", "%sendtofile needs the board path: %sendtofile main.py, then the file's text")
        data, dest = body.encode(), args.dest
    progress = None if args.quiet else NotebookProgress(kernel, f"{'append to' if args.append else 'send'} {dest}")
    size = files.put(data, dest, append=args.append, progress=progress)
    if progress is not None:
        progress.finish(size, transfer_path(files))


def _fetchfile_args(p: Any) -> None:
    p.add_argument("src", help="path on the board")
    p.add_argument("local", nargs="?", help="where to save it here (default: the same name in the current folder)")
    p.add_argument("--load", "-l", action="store_true", help="put the (text) file into the next cell instead of saving it")
    p.add_argument("--print", "-p", action="store_true", help="show the (text) file instead of saving it")
    p.add_argument("--binary", "-b", action="store_true", help="accepted for compatibility: files always come byte-exact")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or summary")


@magics.add("fetchfile", "copy a file from the board (byte-exact, verified); --load puts it into the next cell",
            arguments=_fetchfile_args)
def _fetchfile(kernel: Any, args: Any, body: str) -> None:
    files = kernel.connection.files()
    progress = None if args.quiet or args.load or args.print else NotebookProgress(kernel, f"fetch {args.src}")
    data = files.get(args.src, progress=progress)
    if args.load or args.print:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise HostError("UnicodeDecodeError", f"{args.src} is not UTF-8 text: fetch it to a file instead") from None
        if args.load:
            kernel.pending_payload.append({"source": "set_next_input", "text": f"%sendtofile {args.src}\n{text}",
                                           "replace": False})
            kernel.say(f"{args.src} ({len(data):,} bytes) is in the next cell\n")
        else:
            kernel.say(text if text.endswith("\n") else text + "\n")
        return
    local = Path(args.local or Path(args.src).name).expanduser()
    if local.is_dir():
        local = local / Path(args.src).name
    local.write_bytes(data)
    if progress is not None:
        progress.finish(len(data), transfer_path(files))
    kernel.say(f"saved as {local}\n")


def _ls_args(p: Any) -> None:
    p.add_argument("dir", nargs="?", default=".", help="folder on the board (default: the current one)")
    p.add_argument("-l", dest="long", action="store_true", help="with sizes")


@magics.add("ls", "list a folder on the board", arguments=_ls_args)
def _ls(kernel: Any, args: Any, body: str) -> None:
    entries = kernel.connection.files().ls(args.dir, long=args.long)
    lines = []
    for e in entries:
        if args.long:
            size = "dir" if e.is_dir else (f"{e.size:,}" if e.size is not None else "?")
            lines.append(f"{size:>10}  {e}")
        else:
            lines.append(str(e))
    kernel.say("\n".join(lines) + "\n" if lines else f"({args.dir} is empty)\n")


def _path_arg(p: Any) -> None:
    p.add_argument("path", help="path on the board")


@magics.add("cat", "show a text file from the board", arguments=_path_arg)
def _cat(kernel: Any, args: Any, body: str) -> None:
    text = board_text(kernel.connection.files().cat(args.path))
    kernel.say(text if text.endswith("\n") or not text else text + "\n")


def _rm_args(p: Any) -> None:
    p.add_argument("path", help="path on the board")
    p.add_argument("-r", dest="recursive", action="store_true", help="remove a folder and everything in it")


@magics.add("rm", "remove a file (or with -r a folder) on the board", arguments=_rm_args)
def _rm(kernel: Any, args: Any, body: str) -> None:
    kernel.connection.files().rm(args.path, recursive=args.recursive)
    kernel.say(f"removed {args.path}\n")


@magics.add("mkdir", "make a folder on the board", arguments=_path_arg)
def _mkdir(kernel: Any, args: Any, body: str) -> None:
    kernel.connection.files().mkdir(args.path)
    kernel.say(f"made {args.path}/\n")


@magics.add("df", "free and total flash on the board")
def _df(kernel: Any, args: Any, body: str) -> None:
    free, total = kernel.connection.files().df()
    kernel.say(f"flash: {free:,} bytes free of {total:,} ({100 * free // max(total, 1)}% free)\n")


@magics.add("meminfo", "free heap (RAM) on the board, after a garbage collection")
def _meminfo(kernel: Any, args: Any, body: str) -> None:
    kernel.say(f"heap: {kernel.connection.files().meminfo():,} bytes free\n")
