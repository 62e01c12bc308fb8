"""The Pi side of a gateway kernel: ``python3 -m edgekernel.gateway.remote COMMAND``, run over SSH.

Commands (each prints JSON lines on stdout):

- ``probe``: Python, edgekernel version, boards (``edgekernel devices``) and running kernels.
- ``status``: how many gateway kernels run here (host selection picks the least-loaded Pi).
- ``boards``: every board here with who holds it (kernel id, hub user, since when, last activity),
  and every gateway kernel running here: what ``edgekernel gateway status`` and "any free board" read.
- ``launch``: reads ONE JSON line from stdin (kernel id, argv, env, connection key...), starts the
  kernel bound to 127.0.0.1, prints ``{"ready": ...}``, then stays as the kernel's keeper until the
  kernel ends. The key travels only inside the SSH channel and a 0600 connection file, never argv.
- ``reap KERNEL_ID``: end a kernel that a lost keeper left behind (the laptop's last resort).

The keeper is what makes the Pi safe from leaks: it ends the kernel (its whole process group) when
stdin reaches EOF (the SSH session closed), when no heartbeat line arrived for ``heartbeat_timeout``
seconds (the network died silently), or when told to. The kernel gets PDEATHSIG, so even a killed
keeper takes its kernel along. A board kernel holds a lock on its board for its lifetime.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..runtime import runtime_dir
from ..processes import alive

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
TERM_GRACE = 3.0  # seconds between SIGTERM and SIGKILL when ending a kernel


def _emit(obj: dict[str, Any]) -> None:
    try:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        pass  # the laptop is gone; the keeper still cleans up


def _kernels_dir() -> Path:
    return runtime_dir("gateway", "kernels")


def running_kernels() -> list[dict[str, Any]]:
    """Gateway kernels alive on this machine (stale records of dead kernels are removed)."""
    found = []
    for path in sorted(_kernels_dir().glob("*.json")):
        if path.name.startswith("kernel-"):
            continue  # a starting kernel's connection file (same folder), not a record
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if alive(int(record.get("pid", 0))):
            found.append(record)
        else:
            path.unlink(missing_ok=True)
    return found


def _hostname_and_addresses() -> dict[str, Any]:
    addresses = []
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True,
                             text=True, timeout=5).stdout
        addresses = [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]
    except (OSError, subprocess.SubprocessError):
        pass
    return {"hostname": socket.gethostname(), "addresses": addresses}


def cmd_probe() -> int:
    from .. import __version__
    from ..ports import list_serial_ports
    boards = []
    for p in list_serial_ports():
        entry = p.as_json()
        entry["by_id"] = _by_id(p.device)
        entry["in_use_by"] = (_lock_holder(p.device) or {}).get("kernel_id")
        boards.append(entry)
    _emit({"python": sys.executable, "python_version": sys.version.split()[0], "edgekernel": __version__,
           "boards": boards, "kernels": len(running_kernels()), **_hostname_and_addresses()})
    return 0


def _by_id(device: str) -> str | None:
    """The stable /dev/serial/by-id name of a USB serial port (survives re-plugging), if any."""
    by_id = Path("/dev/serial/by-id")
    try:
        for link in by_id.iterdir():
            if os.path.realpath(link) == os.path.realpath(device):
                return str(link)
    except OSError:
        pass
    return None


def cmd_status() -> int:
    _emit({"kernels": len(running_kernels()), "load": os.getloadavg()[0]})
    return 0


HOLDER_FIELDS = ("kernel_id", "user", "owner", "started", "last_activity", "kernel_name")


def cmd_boards() -> int:
    from ..ports import list_serial_ports
    kernels = {r["kernel_id"]: r for r in running_kernels()}
    boards = []
    for p in list_serial_ports():
        holder = _lock_holder(p.device)
        if holder is not None:   # the kernel's record has its last activity; the lock, who and since when
            holder = {**holder, **kernels.get(holder.get("kernel_id"), {})}
            holder = {k: holder.get(k) for k in HOLDER_FIELDS}
        boards.append({"device": p.device, "by_id": _by_id(p.device), "bridge": p.bridge, "holder": holder})
    _emit({"hostname": socket.gethostname(), "boards": boards,
           "kernels": [{k: r.get(k) for k in (*HOLDER_FIELDS, "board")} for r in kernels.values()]})
    return 0


# -- board locks ---------------------------------------------------------------------------------

def _lock_path(device: str) -> Path:
    name = os.path.realpath(device).strip("/").replace("/", "_")
    return runtime_dir("gateway", "boards") / f"{name}.lock"


def _lock_holder(device: str) -> dict[str, Any] | None:
    path = _lock_path(device)
    try:
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        pass
    return None


def _lock_board(device: str, kernel_id: str, owner: str, user: str | None = None) -> Any:
    """Hold the board's lock for this keeper's lifetime, or raise with who holds it."""
    fd = os.open(_lock_path(device), os.O_RDWR | os.O_CREAT, 0o600)
    lock = os.fdopen(fd, "r+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        holder = json.loads(lock.read() or "{}")
        lock.close()
        who = f"hub user {holder['user']}, " if holder.get("user") else ""
        raise BoardBusy(f"board {device} on {socket.gethostname()} is in use by kernel "
                        f"{holder.get('kernel_id', '?')} ({who}started from {holder.get('owner', '?')}): "
                        "shut that kernel down first, or take a free board ('edgekernel gateway status' "
                        "shows them)") from None
    lock.seek(0)
    lock.truncate()
    lock.write(json.dumps({"kernel_id": kernel_id, "owner": owner, "user": user, "pid": os.getpid(),
                           "started": time.time()}))
    lock.flush()
    return lock


class LaunchError(Exception):
    """A launch problem the user can fix; the message is one line that says how."""


class BoardBusy(LaunchError):
    """The board's lock is held by another kernel (an "any free board" start tries the next board)."""


# -- launch ---------------------------------------------------------------------------------------

PORT_HOLD = 60.0   # seconds a port handed to a starting kernel is not handed out again


def free_ports(n: int, registry: Path) -> list[int]:
    """n free loopback ports that no other launch using `registry` was given in the last minute. A
    port is chosen here and bound by the kernel a moment later; launches at the same moment (a
    class starting its kernels at once) could otherwise be given the same one, and one kernel
    would fail to bind it."""
    now = time.time()
    with open(registry.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            recent = {int(p): t for p, t in json.loads(registry.read_text()).items() if now - t < PORT_HOLD}
        except (OSError, ValueError, AttributeError):
            recent = {}
        socks: list[socket.socket] = []
        ports: list[int] = []
        try:
            while len(ports) < n:   # sockets stay bound until the end, so no port comes twice
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
                if port not in recent:
                    ports.append(port)
        finally:
            for s in socks:
                s.close()
        recent.update({p: now for p in ports})
        tmp = registry.with_suffix(".tmp")
        tmp.write_text(json.dumps(recent))
        os.replace(tmp, registry)
    return ports


def _read_request(timeout: float = 15.0) -> dict[str, Any]:
    ready, _, _ = select.select([0], [], [], timeout)
    if not ready:
        raise LaunchError("no launch request arrived on stdin")
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            break
        line += chunk
    return json.loads(line)


def _kernel_preexec() -> None:
    # The kernel dies with its keeper (keeper is single-threaded, so PDEATHSIG is reliable here).
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def cmd_launch() -> int:
    lock = None
    record_path = connection_file = None
    try:
        request = _read_request()
        kernel_id = str(request["kernel_id"])
        board = request.get("board")
        if board:
            if not os.path.exists(board):
                raise LaunchError(f"board {board} is not attached to {socket.gethostname()} (unplugged?): "
                                  "plug it in, or run 'edgekernel gateway add' again to refresh the kernels")
            lock = _lock_board(board, kernel_id, request.get("owner", "?"), request.get("user"))
        private = runtime_dir("gateway", "kernels")
        connection_file = private / f"kernel-{kernel_id}.json"
        ports = dict(zip(("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"), free_ports(5, runtime_dir("gateway") / "ports.json")))
        fd = os.open(connection_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({**ports, "ip": "127.0.0.1", "transport": "tcp", "key": request["key"],
                       "signature_scheme": request.get("signature_scheme", "hmac-sha256"),
                       "kernel_name": request.get("kernel_name", "")}, f)
        argv = [str(connection_file) if a == "{connection_file}" else a for a in request["argv"]]
        env = dict(os.environ)
        env.update({k: str(v) for k, v in (request.get("env") or {}).items()})
        env["JPY_PARENT_PID"] = str(os.getpid())  # ipykernel exits if its keeper goes (and skips its banner)
        try:
            kernel = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                                      start_new_session=True, preexec_fn=_kernel_preexec, cwd=str(Path.home()))
        except OSError as exc:
            raise LaunchError(f"cannot start the kernel on {socket.gethostname()} ({exc.strerror}: "
                              f"{argv[0]}): check the kernel's Python there") from None
        _wait_bound(kernel, ports)
        record_path = _kernels_dir() / f"{kernel_id}.json"
        record = {"kernel_id": kernel_id, "pid": kernel.pid, "keeper": os.getpid(), "board": board,
                  "owner": request.get("owner"), "user": request.get("user"),
                  "kernel_name": request.get("kernel_name"), "started": time.time(), "last_activity": None}
        _write_record(record_path, record)
        _emit({"ready": {"pid": kernel.pid, "ports": ports, **_hostname_and_addresses()}})

        def on_activity(when: float) -> None:
            if when != record["last_activity"]:
                record["last_activity"] = when
                _write_record(record_path, record)

        code = _keep(kernel, float(request.get("heartbeat_timeout") or 0), on_activity)
        _emit({"exited": code})
        return 0
    except LaunchError as exc:
        _emit({"error": str(exc), "busy": isinstance(exc, BoardBusy)})
        return 3
    finally:
        if connection_file is not None:
            connection_file.unlink(missing_ok=True)
        if record_path is not None:
            record_path.unlink(missing_ok=True)
        if lock is not None:
            lock.close()


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """Replace the kernel's record in one step (a reader never sees half of it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def _wait_bound(kernel: subprocess.Popen, ports: dict[str, int], timeout: float = 60.0) -> None:
    """Report ready only once the kernel listens on all its ports: a message sent into a tunnel
    whose far end is refused is lost (ZeroMQ reconnects, the request does not), which costs a
    client a full kernel_info retry."""
    deadline = time.monotonic() + timeout
    waiting = set(ports.values())
    while waiting:
        if kernel.poll() is not None:
            raise LaunchError(f"the kernel exited with status {kernel.returncode} while starting on "
                              f"{socket.gethostname()}: its output above says why")
        if time.monotonic() > deadline:
            _end(kernel)
            raise LaunchError(f"the kernel did not open its ports within {timeout:g} s on {socket.gethostname()}")
        for port in list(waiting):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    waiting.discard(port)
        if waiting:
            time.sleep(0.02)


def _end(kernel: subprocess.Popen) -> int:
    """End the kernel's whole process group: SIGTERM, then SIGKILL after a grace period."""
    for sig, grace in ((signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(kernel.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return kernel.wait(grace)
        except subprocess.TimeoutExpired:
            continue
    return kernel.wait()


def _keep(kernel: subprocess.Popen, heartbeat_timeout: float,
          on_activity: Callable[[float], None] = lambda when: None) -> int:
    """Relay signals to the kernel until it exits, stdin closes, or heartbeats stop. Heartbeats carry
    the kernel's last activity as its Jupyter server saw it (what idle culling goes by)."""
    last_heard = time.monotonic()
    pending = b""
    # A classroom Pi runs a keeper per kernel: wake for the kernel's exit (a pidfd is readable when
    # the process ends) or for a line on stdin, not on a short poll (10 wake-ups a second per kernel
    # for nothing). Without pidfds (Linux < 5.3), poll.
    try:
        exit_fd: int | None = os.pidfd_open(kernel.pid)
        wake = 1.0
    except (AttributeError, OSError):
        exit_fd, wake = None, 0.1
    try:
        while True:
            code = kernel.poll()
            if code is not None:
                try:  # also end anything the kernel left in its group
                    os.killpg(kernel.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return code
            if heartbeat_timeout and time.monotonic() - last_heard > heartbeat_timeout:
                print(f"edgekernel gateway: no heartbeat for {heartbeat_timeout:g} s, ending the kernel",
                      file=sys.stderr, flush=True)
                return _end(kernel)
            ready, _, _ = select.select([0] if exit_fd is None else [0, exit_fd], [], [],
                                        min(wake, heartbeat_timeout or wake))
            if 0 not in ready:
                continue
            data = os.read(0, 4096)
            if not data:  # the SSH session is gone
                return _end(kernel)
            last_heard = time.monotonic()
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message.get("activity"), (int, float)):
                    on_activity(float(message["activity"]))
                if "signal" in message:
                    try:
                        os.killpg(kernel.pid, int(message["signal"]))
                    except (ProcessLookupError, ValueError):
                        pass
    finally:
        if exit_fd is not None:
            os.close(exit_fd)


def cmd_reap(kernel_id: str) -> int:
    path = _kernels_dir() / f"{kernel_id}.json"
    killed = False
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = None
    if record is not None:
        for pid in (int(record["pid"]), int(record.get("keeper", 0))):
            if pid and alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL) if pid == record["pid"] else os.kill(pid, signal.SIGKILL)
                    killed = True
                except ProcessLookupError:
                    pass
        path.unlink(missing_ok=True)
    _emit({"reaped": killed})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else ""
    if command == "probe":
        return cmd_probe()
    if command == "status":
        return cmd_status()
    if command == "boards":
        return cmd_boards()
    if command == "launch":
        return cmd_launch()
    if command == "reap" and len(args) == 2:
        return cmd_reap(args[1])
    print("usage: python -m edgekernel.gateway.remote probe|status|boards|launch|reap KERNEL_ID", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
