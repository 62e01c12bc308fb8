"""The `edgekernel` command: boards from the shell. Thin: the work is in the device layer."""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import threading
import time
from collections.abc import Callable

from . import __version__
from .device import DeviceError, ExecResult, LinkError
from .device.board import Board
from .device.opener import open_board

PORT_ENV = "EDGEKERNEL_PORT"
WEBREPL_PASSWORD_ENV = "WEBREPL_PASSWORD"


def _add_port_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", "-p", default=os.environ.get(PORT_ENV),
                   help=f"device path, pyserial URL (socket://, rfc2217://, loop://), WebREPL (ws://HOST:8266) or "
                        f"MQTT agent (mqtt://[USER@]BROKER[:PORT]/DEVICE_ID); default ${PORT_ENV} "
                        "or the first USB serial board found")
    p.add_argument("--baud", "-b", type=int, default=115200, help="baud rate (default 115200)")
    p.add_argument("--password-env", metavar="VAR",
                   help=f"ws:// ports and mqtt:// users: the environment variable holding the password "
                        f"(default ${WEBREPL_PASSWORD_ENV}; without it you are asked)")
    p.add_argument("--timeout", type=float, default=None,
                   help="overall time limit in seconds (default: none; Ctrl-C interrupts the board)")


def _resolve_port(args: argparse.Namespace) -> str:
    if args.port:
        return args.port
    from .ports import auto_port
    port, _ = auto_port()
    if port is None:
        raise LinkError("no board found: plug one in, pass --port PATH, or try 'edgekernel board --emulator unix'")
    return port


def _secret_source(args: argparse.Namespace) -> Callable[[str], str]:
    """Passwords (WebREPL, an MQTT user's) from the environment, else a terminal prompt; never
    from the command line."""
    def secret(prompt: str) -> str:
        var = getattr(args, "password_env", None) or WEBREPL_PASSWORD_ENV
        password = os.environ.get(var)
        if password:
            return password
        if getattr(args, "password_env", None):
            raise LinkError(f"${var} is not set: export it with the board's password")
        if sys.stdin is not None and sys.stdin.isatty():
            return getpass.getpass(prompt)
        raise LinkError(f"no password at hand ({prompt.rstrip(': ')}): set ${WEBREPL_PASSWORD_ENV} "
                        "(or --password-env VAR)")
    return secret


def _open(args: argparse.Namespace) -> Board:
    return open_board(_resolve_port(args), baud=args.baud, secret=_secret_source(args))


def _write_output(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _read_line(prompt: str) -> str | None:
    sys.stdout.write(prompt)
    sys.stdout.flush()
    line = sys.stdin.readline() if sys.stdin is not None else ""
    return line.rstrip("\r\n") if line else None


def _run_interruptibly(board: Board, work: Callable[[], ExecResult]) -> ExecResult:
    """Run `work` in a thread so that the host's Ctrl-C interrupts the board
    instead of tearing the protocol apart mid-read."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    interrupts = 0
    while worker.is_alive():
        try:
            worker.join(0.2)
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts > 2:
                raise
            board.interrupt()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def _report(result: ExecResult, *, show_value: bool) -> int:
    if show_value and result.value is not None:
        _write_output(result.value.encode() + b"\n")
    if result.reset:
        print(f"edgekernel: the board rebooted ({result.reset} reset) while the code ran", file=sys.stderr)
        return 1
    if result.error:
        if result.interrupted:
            print(f"edgekernel: interrupted ({result.interrupted.step}, {result.interrupted.seconds:.2f} s)",
                  file=sys.stderr)
            return 130
        print(str(result.error), file=sys.stderr)
        return 1
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    code = args.code if args.code != "-" else sys.stdin.read()
    with _open(args) as board:
        result = _run_interruptibly(board, lambda: board.exec(
            code, on_output=_write_output, on_input=_read_line, show_value=True, timeout=args.timeout))
        return _report(result, show_value=True)


def cmd_run(args: argparse.Namespace) -> int:
    with open(args.script, encoding="utf-8") as f:
        code = f.read()
    with _open(args) as board:
        result = _run_interruptibly(board, lambda: board.exec(
            code, on_output=_write_output, on_input=_read_line, timeout=args.timeout,
            filename=os.path.basename(args.script)))
        return _report(result, show_value=False)


def cmd_reset(args: argparse.Namespace) -> int:
    with _open(args) as board:
        if args.hard:
            board.hard_reset()
        else:
            board.soft_reset()
    print(f"{'hard' if args.hard else 'soft'} reset done")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from .ports import list_serial_ports
    ports = list_serial_ports(include_plain=args.all)
    if args.json:
        print(json.dumps([p.as_json() for p in ports], indent=2))
        return 0
    if not ports:
        print("no USB serial ports found (plug a board in, or use --all to list every port)")
        return 0
    for p in ports:
        print(f"{p.device:<16} {p.usb_id:<10} {p.bridge or '-':<11} {p.board_guess or p.description}")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from .install import install
    prefix = sys.prefix if args.sys_prefix else args.prefix
    for name, path in install(user=args.user, prefix=prefix):
        print(f"installed kernelspec {name} in {path}")
    return 0


class _ProgressBar:
    """A one-line progress bar on stderr for transfers that take a while (terminals only)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.shown = False
        self.start = time.monotonic()
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0 or (not self.shown and time.monotonic() - self.start < 0.5):
            return
        self.shown = True
        width = 30
        filled = width * done // total
        rate = done / max(time.monotonic() - self.start, 1e-6)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done:,}/{total:,} B {rate / 1000:.1f} kB/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def _files(board: Board):
    from .device.files import BoardFiles
    return BoardFiles.for_board(board)


def _via(files) -> str:
    """Which transfer path was used, on links that have a choice (WebREPL)."""
    path = files.last_path
    return f" via {path}" if path is not None and files.session.capabilities.file_protocol else ""


def cmd_put(args: argparse.Namespace) -> int:
    with _open(args) as board:
        files = _files(board)
        if os.path.isdir(args.local):
            dest = args.dest or os.path.basename(os.path.abspath(args.local))
            for path, what in files.put_tree(args.local, dest):
                print(f"{what:<7} {path}")
            return 0
        dest = args.dest or os.path.basename(args.local)
        if dest.endswith("/"):
            dest += os.path.basename(args.local)
        bar = _ProgressBar(dest)
        try:
            n = files.put(args.local, dest, progress=bar)
        finally:
            bar.close()
        print(f"{n:,} bytes written to {dest} (verified){_via(files)}")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    local = args.local or os.path.basename(args.src.rstrip("/"))
    if os.path.isdir(local):
        local = os.path.join(local, os.path.basename(args.src))
    with _open(args) as board:
        bar = _ProgressBar(args.src)
        files = _files(board)
        try:
            data = files.get(args.src, progress=bar)
        finally:
            bar.close()
    with open(local, "wb") as f:
        f.write(data)
    print(f"{len(data):,} bytes read into {local} (verified){_via(files)}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with _open(args) as board:
        for e in _files(board).ls(args.dir, long=args.long):
            if args.long:
                print(f"{'dir' if e.is_dir else e.size if e.size is not None else '?':>10}  {e}")
            else:
                print(e)
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    with _open(args) as board:
        _write_output(_files(board).cat(args.file))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with _open(args) as board:
        _files(board).rm(args.path, recursive=args.recursive)
    return 0


def cmd_mkdir(args: argparse.Namespace) -> int:
    with _open(args) as board:
        _files(board).mkdir(args.path)
    return 0


def cmd_df(args: argparse.Namespace) -> int:
    with _open(args) as board:
        files = _files(board)
        free, total = files.df(args.dir)
        print(f"{'total':>12} {'used':>12} {'free':>12}  heap free")
        print(f"{total:>12,} {total - free:>12,} {free:>12,}  {files.meminfo():,}")
    return 0


def _add_file_commands(sub) -> None:
    p = sub.add_parser("put", help="copy a local file (or directory, skipping unchanged files) to the board, verified")
    _add_port_arguments(p)
    p.add_argument("local", help="local file or directory")
    p.add_argument("dest", nargs="?", help="path on the board (default: the local name, in the current directory)")
    p.set_defaults(func=cmd_put)

    p = sub.add_parser("get", help="copy a file from the board, verified")
    _add_port_arguments(p)
    p.add_argument("src", help="path on the board")
    p.add_argument("local", nargs="?", help="local path (default: the board file's name)")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("ls", help="list a directory on the board")
    _add_port_arguments(p)
    p.add_argument("-l", "--long", action="store_true", help="show sizes")
    p.add_argument("dir", nargs="?", default=".", help="directory on the board (default: current)")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("cat", help="print a file from the board")
    _add_port_arguments(p)
    p.add_argument("file")
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser("rm", help="remove a file (or with -r a directory tree) on the board")
    _add_port_arguments(p)
    p.add_argument("-r", "--recursive", action="store_true")
    p.add_argument("path")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("mkdir", help="make a directory on the board")
    _add_port_arguments(p)
    p.add_argument("path")
    p.set_defaults(func=cmd_mkdir)

    p = sub.add_parser("df", help="free and total space of the board's filesystem, and free heap")
    _add_port_arguments(p)
    p.add_argument("dir", nargs="?", default=".")
    p.set_defaults(func=cmd_df)


def cmd_mip(args: argparse.Namespace) -> int:
    from .device.mip import MipInstaller
    with _open(args) as board:
        installer = MipInstaller(_files(board), index=args.index, target=args.target, mpy=args.mpy,
                                 say=lambda line: print(line, end="", flush=True))
        installer.install(args.packages)
    return 0


def _add_mip_command(sub) -> None:
    from .device.mip import DEFAULT_INDEX
    p = sub.add_parser("mip", help="install MicroPython packages on the board (downloaded by this computer)")
    _add_port_arguments(p)
    p.add_argument("action", choices=["install"], help="what to do (install)")
    p.add_argument("packages", nargs="+", metavar="PKG",
                   help="NAME[@VERSION] from the index, github:ORG/REPO[/PATH][@BRANCH], gitlab:..., an http(s) "
                        "URL of a package.json or .py/.mpy file, or a local package.json, folder (./pkg) or .py file")
    p.add_argument("--index", "-i", help=f"package index URL (default {DEFAULT_INDEX})")
    p.add_argument("--target", "-t", help="folder on the board (default: the lib folder in its sys.path, /lib)")
    p.add_argument("--no-mpy", dest="mpy", action="store_false",
                   help="install .py source instead of .mpy files compiled for the board")
    p.set_defaults(func=cmd_mip)


def _install_description() -> str:
    from jupyter_core.paths import SYSTEM_JUPYTER_PATH

    from .install import KERNEL_NAMES, display_names
    try:
        names = display_names()
    except (OSError, ValueError, KeyError):  # a broken installation: `install` itself says what to do
        names = {}
    width = max(map(len, KERNEL_NAMES))
    listed = "\n".join(f"  {name:<{width}}  {names.get(name, '')}".rstrip() for name in KERNEL_NAMES)
    return (f"Install these Jupyter kernelspecs (name, then what Jupyter shows):\n{listed}\n\n"
            "Their kernels run with this Python. Without an option they go system-wide, "
            f"into {SYSTEM_JUPYTER_PATH[0]}/kernels.")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser. `argv` (when known) spares every other command the install
    help's kernelspec list, which imports jupyter_client (a noticeable share of start-up)."""
    parser = argparse.ArgumentParser(prog="edgekernel", description="MicroPython boards from the shell and Jupyter")
    parser.add_argument("--version", action="version", version=f"edgekernel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("devices", help="list serial ports with USB IDs and a guess of the board")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="include ports without USB IDs")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("exec", help="run code on the board; shows a trailing expression's value")
    _add_port_arguments(p)
    p.add_argument("code", help="MicroPython code ('-' reads it from stdin)")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("run", help="run a local script on the board; output streams as it is printed")
    _add_port_arguments(p)
    p.add_argument("script", help="path of a .py file on this machine")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("reset", help="soft-reset the board (or --hard: through DTR/RTS on ESP boards)")
    _add_port_arguments(p)
    p.add_argument("--hard", action="store_true", help="reset the chip through the serial adapter's DTR/RTS")
    p.set_defaults(func=cmd_reset)

    _add_file_commands(sub)
    _add_mip_command(sub)

    p = sub.add_parser("install", help="install the Jupyter kernelspecs (MicroPython ESP8266, serial, emulated, MQTT)",
                       description=_install_description() if argv is None or "install" in argv else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for this user only")
    where.add_argument("--sys-prefix", action="store_true", help="in this Python environment (venv/conda)")
    where.add_argument("--prefix", help="under this prefix")
    p.set_defaults(func=cmd_install)

    from .mqtt.agent import add_agent_command
    add_agent_command(sub)
    from .gateway.commands import add_gateway_parser
    add_gateway_parser(sub)

    p = sub.add_parser("board", help="start an emulated board and print its serial device path")
    try:
        from .emulator.board_command import add_board_arguments, run_board
    except ImportError:  # the emulator is optional at import time; say so when used
        p.set_defaults(func=lambda a: print("edgekernel: emulator support is not installed", file=sys.stderr) or 2)
    else:
        add_board_arguments(p)
        p.set_defaults(func=run_board)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
    try:
        return args.func(args)
    except (LinkError, DeviceError) as exc:
        print(f"edgekernel: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"edgekernel: {exc.strerror}: {exc.filename}" if exc.filename else f"edgekernel: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
