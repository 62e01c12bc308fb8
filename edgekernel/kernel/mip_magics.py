"""%mip install: MicroPython packages onto the board, downloaded by this computer (see edgekernel/device/mip.py).

Thin: it parses and calls the device layer, whose one-line-per-file report goes to the cell's output.
"""
from __future__ import annotations

from typing import Any

from ..device.mip import DEFAULT_INDEX, MipError, MipInstaller
from .magics import REGISTRY as magics
from .magics import HostError


def _mip_args(p: Any) -> None:
    p.add_argument("command", choices=["install"], help="what to do (install)")
    p.add_argument("packages", nargs="+", metavar="PKG",
                   help="NAME[@VERSION] from the index, github:ORG/REPO[/PATH][@BRANCH], gitlab:..., "
                        "an http(s) URL of a package.json or .py/.mpy file, or a local package.json, "
                        "folder (./pkg) or .py/.mpy file")
    p.add_argument("--index", "-i", help=f"package index URL (default {DEFAULT_INDEX})")
    p.add_argument("--target", "-t", help="folder on the board (default: the lib folder in its sys.path, /lib)")
    p.add_argument("--no-mpy", dest="mpy", action="store_false",
                   help="install .py source instead of .mpy files compiled for the board")


@magics.add("mip", "install MicroPython packages on the board (this computer downloads them): "
                   "%mip install PKG[@VERSION] [--index URL] [--target DIR] [--no-mpy]", arguments=_mip_args)
def _mip(kernel: Any, args: Any, body: str) -> None:
    kernel.require_board()   # connects if needed; refused while a %%bg job holds the board
    files = kernel.connection.files()
    installer = MipInstaller(files, index=args.index, target=args.target, mpy=args.mpy, say=kernel.say,
                             cancelled=kernel.interrupt_requested)
    try:
        installer.install(args.packages)
    except MipError as exc:
        raise HostError("MipError", str(exc)) from None
