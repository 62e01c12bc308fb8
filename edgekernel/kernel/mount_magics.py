"""%mount DIR and %umount: a host folder served live to the board (see edgekernel/device/mount.py).

Thin: they parse and call the device layer; the board's requests are answered by the session while any
board code runs (cells, %%bg jobs, magics).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..device.mount import DEFAULT_MOUNT_POINT, MountError, mount_folder, unmount_folder
from .magics import REGISTRY as magics
from .magics import HostError


def _mount_args(p: Any) -> None:
    p.add_argument("dir", help="the folder on this computer to serve to the board")
    p.add_argument("--mount-point", default=DEFAULT_MOUNT_POINT, help="where it appears on the board (default /remote)")
    p.add_argument("--allow-symlinks-outside", action="store_true",
                   help="follow symlinks that point out of DIR (refused by default)")


@magics.add("mount", "serve a host folder to the board live at /remote, its current directory: `import` and "
                     "open() use the host's files (no copy); %umount ends it", arguments=_mount_args)
def _mount(kernel: Any, args: Any, body: str) -> None:
    board = kernel.require_board()
    folder = Path(args.dir).expanduser()
    try:
        mounted = mount_folder(board, folder, mount_point=args.mount_point,
                               allow_symlinks_outside=args.allow_symlinks_outside, say=kernel.say)
    except MountError as exc:
        raise HostError("MountError", str(exc)) from None
    note = "" if mounted.cwd_on_path else (
        f" (this board's sys.path has no '' entry: `import` will not look there; "
        f"sys.path.insert(0, {mounted.mount_point!r}) makes it)")
    kernel.say(f"mounted {mounted.folder.root} at {mounted.mount_point}, the board's current directory: "
               f"imports and open() read and write this computer's files{note}; %umount ends it\n")


@magics.add("umount", "remove the host folder mounted with %mount (the board's current directory goes back)")
def _umount(kernel: Any, args: Any, body: str) -> None:
    board = kernel.require_board()
    try:
        mounted = unmount_folder(board)
    except MountError as exc:
        raise HostError("MountError", str(exc)) from None
    if mounted is None:
        kernel.say("nothing was mounted by this kernel (a mount left at /remote, if any, is removed)\n")
    else:
        kernel.say(f"unmounted {mounted.folder.root} from {mounted.mount_point}; the board's current directory "
                   f"is {mounted.previous_cwd} again\n")

