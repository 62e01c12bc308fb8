"""A jupyter_client kernel provisioner that runs the kernel on a Raspberry Pi over OpenSSH.

Selected by a kernelspec's ``metadata.kernel_provisioner`` (``edgekernel gateway add`` writes them),
so JupyterLab, Notebook 7, ``jupyter console``, ``jupyter run`` and nbclient use it unchanged::

    "kernel_provisioner": {"provisioner_name": "edgekernel-ssh",
                           "config": {"hosts": ["pi-3"], "board": "/dev/ttyUSB0", "python": "/usr/bin/python3"}}

"Any free board" kernelspecs list every board instead (``"boards": [{"host": "pi-3", "board":
"/dev/ttyUSB0", "env": {...}}, ...]``): the start asks the Pis which boards are free (``remote boards``),
and launches on the first; the board's lock on the Pi decides, so when another start took that board
in the meantime, the next free one is tried. A Pi that does not answer is skipped.

How a kernel runs (nothing listens on the Pi's network, and the Pi never connects to the laptop):

1. one ControlMaster SSH connection per Pi (``ssh.SSHHost``);
2. ``python3 -m edgekernel.gateway.remote launch`` over it; the launch request, connection key
   included, goes down the session's stdin (never argv); the Pi's keeper binds the kernel to
   127.0.0.1 and answers with its ports;
3. ``ssh -O forward`` maps the kernel's five ports to fixed 127.0.0.1 ports here; they are chosen
   once and kept across restarts, so clients made before a restart keep working;
4. the session's stdin carries signals (interrupt) and heartbeats; its stdout reports the kernel's
   exit, so ``poll()`` knows the truth instead of guessing through a tunnel. When the session or the
   heartbeats stop, the keeper ends the kernel on the Pi.
"""
from __future__ import annotations

import asyncio
import getpass
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import KernelProvisionerBase
from tornado.web import HTTPError
from traitlets import Dict, Float, List, Unicode

from .hosts import choose_host, free_boards
from .remote import free_ports
from .ssh import GatewayError, SSHHost, control_dir, explain_ssh_failure

PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
LAUNCH_TIMEOUT = 60.0
SSH_SAYS = re.compile(r"(ssh: |Timeout, server|Connection (to|closed|reset)|Shared connection|client_loop|mux_client)")


class KernelStartError(GatewayError, HTTPError):
    """Why a kernel did not start, shown as is by a Jupyter server's REST API (JupyterLab, JupyterHub's
    single-user servers): jupyter_server answers "Unhandled error" for any exception that is not a
    tornado HTTPError, which would hide "board ... is in use by kernel X" from the user."""

    def __init__(self, message: str) -> None:
        HTTPError.__init__(self, 500, message)  # jupyter_server replies with log_message
        self.message = message

    def __str__(self) -> str:
        return self.message


class LaunchRefused(GatewayError):
    """The Pi answered but did not start the kernel (board unplugged, kernel failed...): the message says why."""


class BoardBusyError(LaunchRefused):
    """The Pi refused the board: another kernel holds its lock."""


def hub_user() -> str:
    """Who starts the kernel: the JupyterHub user whose single-user server runs this provisioner
    (JupyterHub puts JUPYTERHUB_USER in that server's environment), else the local account."""
    return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()


class SSHProvisioner(KernelProvisionerBase):  # type: ignore[misc]
    hosts = List(Unicode(), help="SSH destinations (ssh config aliases or user@host) the kernel may run on; "
                                 "one = pinned, several = least-loaded").tag(config=True)
    ssh_config = Unicode("", help="ssh client config file (-F); empty: ~/.ssh/config").tag(config=True)
    python = Unicode("python3", help="Python on the Pi that has edgekernel installed").tag(config=True)
    board = Unicode("", help="serial device on the Pi this kernel holds (empty: no board)").tag(config=True)
    boards = List(Dict(), help="'any free board': the boards the kernel may take, each "
                               "{'host': SSH destination, 'board': device, 'env': kernel env}").tag(config=True)
    heartbeat_interval = Float(5.0, help="seconds between heartbeats to the Pi; the Pi ends the kernel "
                                         "after 4 missed ones").tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.host: SSHHost | None = None
        self.process: subprocess.Popen | None = None
        self.remote_pid: int | None = None
        self.remote_info: dict[str, Any] = {}
        self.forwards: list[tuple[int, int]] = []
        self.held_board = ""   # the board an "any free board" kernel took (kept across restarts)
        self.held_env: dict[str, str] = {}
        self.exit_code: int | None = None
        self._events: queue.Queue = queue.Queue()
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._write_lock = threading.Lock()
        self._stop_heartbeat = threading.Event()
        self.lost = ""      # why the last session to the Pi broke by itself ("" if it did not)
        self.failure = ""   # why the last restart failed (what the user is told)

    # -- where --------------------------------------------------------------------------------

    def _ssh_hosts(self) -> list[SSHHost]:
        if not self.hosts:
            raise GatewayError("this kernelspec names no Pi: run 'edgekernel gateway add NAME --ssh USER@HOST' again")
        return [SSHHost(h, self.ssh_config or None) for h in self.hosts]

    # -- launch -------------------------------------------------------------------------------

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km = self.parent
        if km is not None:
            km.transport = "tcp"
            km.ip = "127.0.0.1"  # the local tunnel ends; kept (with their ports) across restarts
            if not any(getattr(km, name) for name in PORT_NAMES):   # a first start, not a restart
                # Ports no other start of this account took a moment ago (every hub user's server
                # starts kernels at once in a class; jupyter_client's own choice is per process).
                for name, port in zip(PORT_NAMES, await asyncio.to_thread(free_ports, 5, control_dir() / "ports.json")):
                    setattr(km, name, port)
            km.write_connection_file()
        kwargs.pop("extra_arguments", None)
        return await super().pre_launch(cmd=list(self.kernel_spec.argv), **kwargs)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        restarting, lost = self.host is not None, self.lost
        self.failure = ""
        try:
            return await self._launch(cmd)
        except GatewayError as exc:
            if not restarting:
                raise exc if isinstance(exc, KernelStartError) else KernelStartError(str(exc)) from None
            destination = self.host.destination if self.host else "the Pi"
            self.failure = (f"this kernel ended: lost the connection to {destination}, and {exc}; or start a "
                            "kernel on a free board ('MicroPython on any free board')" if lost
                            else f"this kernel could not restart: {exc}")
            self._declare_dead()
            raise KernelStartError(self.failure) from None

    def _declare_dead(self) -> None:
        """After a failed restart, jupyter_client's restarter logs the error and stops, and the kernel
        stays listed as idle for good; fire its "dead" callbacks (what it does after too many failed
        restarts), so the server drops the kernel and the user's WebSocket hears why (websocket_nodelay)."""
        fire = getattr(getattr(self.parent, "_restarter", None), "_fire_callbacks", None)
        if fire is not None:
            asyncio.get_running_loop().call_soon(fire, "dead")

    def why_ended(self) -> str:
        """What to tell the user about a kernel that ended on its own: the failed restart, or the
        connection to the Pi that broke (ssh exits 255 when the connection failed, not the command)."""
        if self.failure:
            return self.failure
        process = self.process
        if process is not None and self.exit_code is None and process.poll() == 255:
            return self._lost_reason()
        return self.lost

    def _lost_reason(self) -> str:
        destination = self.host.destination if self.host else "the Pi"
        said = [line for line in self._stderr_tail if SSH_SAYS.match(line)]   # not the kernel's own output
        detail = f" ({said[-1]})" if said else ""
        return f"lost the connection to {destination}{detail}: the kernel on it ended"

    async def _launch(self, cmd: list[str]) -> KernelConnectionInfo:
        if self.host is None and self.boards:
            return await self._launch_on_a_free_board(cmd)
        if self.host is None:  # a restart stays on the same Pi (and board)
            self.host = await asyncio.to_thread(choose_host, self._ssh_hosts(), self.python)
        return await self._launch_on(self.host, cmd)

    async def _launch_on_a_free_board(self, cmd: list[str]) -> KernelConnectionInfo:
        candidates, down = await asyncio.to_thread(free_boards, self.boards, self.ssh_config or None, self.python)
        for candidate in candidates:
            if candidate["host"] in down:
                continue
            self.host = SSHHost(candidate["host"], self.ssh_config or None)
            self.held_board, self.held_env = candidate["board"], dict(candidate.get("env") or {})
            try:
                return await self._launch_on(self.host, cmd)
            except LaunchRefused as exc:   # taken since we asked (the lock decided), or gone: try the next
                self.log.info("kernel %s: %s; trying the next free board", self.kernel_id, exc)
                continue
            except GatewayError as exc:   # the Pi itself did not answer: skip its other boards
                down[candidate["host"]] = str(exc)
        self.host, self.held_board, self.held_env = None, "", {}
        pis = {b["host"] for b in self.boards}
        if len(down) == len(pis):
            raise GatewayError(f"no Pi with boards answered: {next(iter(down.values()))}")
        see = "see who holds them with 'edgekernel gateway status', or try again when one is shut down"
        if down:
            raise GatewayError(f"no free board: every board on the Pis that answered is in use, and {len(down)} "
                               f"of the {len(pis)} Pis did not answer ({next(iter(down.values()))}); {see}")
        raise GatewayError(f"no free board: all {len(self.boards)} boards on {len(pis)} Pis are in use; {see}")

    async def _launch_on(self, host: SSHHost, cmd: list[str]) -> KernelConnectionInfo:
        km = self.parent
        self.lost = ""
        self._stderr_tail = deque(maxlen=20)
        await asyncio.to_thread(host.ensure_master)
        request = {
            "kernel_id": self.kernel_id, "argv": cmd, "env": {**(self.kernel_spec.env or {}), **self.held_env},
            "key": km.session.key.decode() if km is not None else "",
            "signature_scheme": km.session.signature_scheme if km is not None else "hmac-sha256",
            "kernel_name": getattr(km, "kernel_name", ""), "board": self.board or self.held_board or None,
            "owner": f"{getpass.getuser()}@{socket.gethostname()}", "user": hub_user(),
            "heartbeat_timeout": 4 * self.heartbeat_interval,
        }
        self.exit_code = None
        self._events = queue.Queue()
        self.process = subprocess.Popen(
            host.command_args([self.python, "-m", "edgekernel.gateway.remote", "launch"]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        threading.Thread(target=self._read_events, args=(self.process,), daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(self.process,), daemon=True).start()
        self._send(request)
        ready = await asyncio.to_thread(self._wait_ready)
        self.remote_pid = int(ready["pid"])
        self.remote_info = ready
        remote_ports = ready["ports"]
        if km is not None:
            self.forwards = await asyncio.to_thread(self._forward, host, km, remote_ports)
        self._stop_heartbeat = threading.Event()
        threading.Thread(target=self._heartbeat, args=(self.process, self._stop_heartbeat), daemon=True).start()
        self.log.info("kernel %s runs on %s (pid %s)", self.kernel_id, host.destination, self.remote_pid)
        self.connection_info = km.get_connection_info() if km is not None else {}
        return self.connection_info

    def _forward(self, host: SSHHost, km: Any, remote_ports: dict[str, Any]) -> list[tuple[int, int]]:
        """Forward the kernel's ports. When a local port was taken since it was chosen (by another
        account's server, or anything else on this machine), new local ports are chosen: the
        returned connection info carries them, and jupyter_client rewrites its connection file."""
        for attempt in range(3):
            pairs = [(getattr(km, name), int(remote_ports[name])) for name in PORT_NAMES]
            try:
                host.forward(pairs)
                return pairs
            except GatewayError as exc:
                if attempt == 2:
                    raise
                self.log.info("kernel %s: %s; forwarding from other local ports", self.kernel_id, exc)
                for pair in pairs:   # those that were set up before the one that failed
                    host.forward([pair], cancel=True)
                for name, port in zip(PORT_NAMES, free_ports(5, control_dir() / "ports.json")):
                    setattr(km, name, port)
        raise AssertionError("unreachable")

    def _wait_ready(self) -> dict[str, Any]:
        try:
            event = self._events.get(timeout=LAUNCH_TIMEOUT)
        except queue.Empty:
            event = None
        if event is not None and "ready" in event:
            return event["ready"]
        assert self.host is not None and self.process is not None
        if event is not None and "error" in event:
            message = event["error"]
            self._end_local_session()
            raise (BoardBusyError if event.get("busy") else LaunchRefused)(message)
        elif event is None:
            message = f"{self.host.destination} did not start the kernel within {LAUNCH_TIMEOUT:g} s: check the Pi"
        else:
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                pass
            message = explain_ssh_failure(self.host.destination, "\n".join(self._stderr_tail), self.python)
        self._end_local_session()
        raise GatewayError(message)

    # -- the session's two pipes ----------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> bool:
        process = self.process
        if process is None or process.stdin is None:
            return False
        try:
            with self._write_lock:
                process.stdin.write(json.dumps(message).encode() + b"\n")
                process.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def _read_events(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if "exited" in event and process is self.process:
                self.exit_code = int(event["exited"])
            self._events.put(event)
        self._events.put({"eof": True})

    def _read_stderr(self, process: subprocess.Popen) -> None:
        """Relay the Pi's kernel output (as a local kernel's stderr would appear)."""
        assert process.stderr is not None
        name = self.host.destination if self.host else "?"
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._stderr_tail.append(line)
            print(f"[{name}] {line}", file=sys.stderr, flush=True)

    def _heartbeat(self, process: subprocess.Popen, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_interval):
            if process is not self.process or not self._send({"ping": 1, **self._activity()}):
                return

    def _activity(self) -> dict[str, float]:
        """The kernel's last activity as the Jupyter server saw it (jupyter_server's kernel managers
        have last_activity; it is what idle culling goes by), for `edgekernel gateway status`."""
        when = getattr(self.parent, "last_activity", None)
        try:
            return {"activity": when.timestamp()} if when is not None else {}
        except (AttributeError, TypeError, ValueError):
            return {}

    # -- state and signals ----------------------------------------------------------------------

    @property
    def has_process(self) -> bool:
        return self.process is not None

    async def poll(self) -> int | None:
        if self.process is None:
            return 0
        if self.exit_code is not None:
            return self.exit_code
        return self.process.poll()

    async def wait(self) -> int | None:
        while True:
            code = await self.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.05)

    async def send_signal(self, signum: int) -> None:
        self._send({"signal": int(signum)})

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        """Close the session (the keeper ends the kernel), confirm on the Pi, drop the tunnels."""
        self._stop_heartbeat.set()
        process, host = self.process, self.host
        if process is not None and self.exit_code is None and process.poll() == 255:
            self.lost = self._lost_reason()
        if process is not None and host is not None:
            await asyncio.to_thread(self._close_session, process, host)
        if host is not None and self.forwards:
            await asyncio.to_thread(host.forward, self.forwards, True)
        self.forwards = []
        self.process = None
        if not restart:
            self.host = None
            self.held_board, self.held_env = "", {}

    def _close_session(self, process: subprocess.Popen, host: SSHHost) -> None:
        try:
            if process.stdin is not None:
                process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(15)
            if self.exit_code is not None:
                return  # the keeper reported that the kernel ended
        except subprocess.TimeoutExpired:
            self._end_local_session()
        if self.lost:   # the Pi is unreachable: its keeper ends the kernel (its session or heartbeats stopped)
            self.log.warning("kernel %s: %s", self.kernel_id, self.lost)
            return
        # The session ended without a word from the keeper: make sure nothing is left on the Pi.
        try:
            host.run([self.python, "-m", "edgekernel.gateway.remote", "reap", self.kernel_id], timeout=20,
                     python=self.python)
        except GatewayError as exc:
            self.log.warning("could not confirm that kernel %s ended on %s: %s", self.kernel_id,
                             host.destination, exc)

    def _end_local_session(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    # -- persistence (jupyter_server) ------------------------------------------------------------

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update({"host": self.host.destination if self.host else None, "remote_pid": self.remote_pid,
                     "held_board": self.held_board, "held_env": self.held_env})
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        await super().load_provisioner_info(provisioner_info)
        if provisioner_info.get("host"):
            self.host = SSHHost(provisioner_info["host"], self.ssh_config or None)
        self.remote_pid = provisioner_info.get("remote_pid")
        self.held_board = provisioner_info.get("held_board") or ""
        self.held_env = dict(provisioner_info.get("held_env") or {})
