"""OpenSSH as the transport to a Pi: one ControlMaster connection per Pi, everything else rides on it.

We never implement SSH: this module only builds ``ssh`` command lines (no secrets on them, ever),
runs them, and turns OpenSSH's failures into one-line errors that say what to do.
``BatchMode=yes`` everywhere: no password or host-key prompt can hang a kernel start, and an unknown
host key is an error, never silently accepted.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

CONTROL_PERSIST = 60  # seconds the shared connection outlives its last kernel or command
ALIVE_INTERVAL = 5    # ssh client keep-alive: a dead network ends the connection after 3 misses


class GatewayError(RuntimeError):
    """A failure the user can fix; the message is one line that says how."""


def control_dir() -> Path:
    """Private directory for ControlMaster sockets (short path: unix sockets are limited to ~100 bytes)."""
    path = Path(tempfile.gettempdir()) / f"edgekernel-ssh-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise GatewayError(f"{path} is not private to you: remove it and retry")
    return path


def explain_ssh_failure(host: str, stderr: str, python: str = "python3") -> str:
    """One line naming the fix for what OpenSSH (or the Pi's shell) printed."""
    text = stderr.strip()
    last = text.splitlines()[-1] if text else "no error output"
    if "Host key verification failed" in text or "host key is known" in text.lower() \
            or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return (f"the SSH host key of {host} is not known (or changed): run 'ssh {host}' once, check the "
                "fingerprint and accept it, then retry")
    if re.search(r"Could not resolve hostname|Connection refused|timed out|No route to host|"
                 r"Network is unreachable|Connection closed by|Connection reset|"
                 # the shared connection (ControlMaster) died under the request: the Pi went away
                 r"read from master failed|Broken pipe", text):
        return (f"cannot reach {host} over SSH ({last}): check the Pi is on and on the network, "
                f"and that 'ssh {host}' works")
    if "Permission denied" in text:
        return (f"SSH login to {host} was refused ({last}): install your key there with "
                f"'ssh-copy-id {host}' (key-only login, no passwords)")
    if "No module named edgekernel" in text or "No module named 'edgekernel" in text:
        return (f"edgekernel is not installed on {host} for {python}: run "
                f"'ssh {host} {python} -m pip install edgekernel' (or pass --python)")
    if re.search(r"not found|No such file or directory", text) and python in text:
        return f"{python} was not found on {host}: install Python 3 there, or pass --python PATH"
    return f"SSH to {host} failed ({last}): check that 'ssh {host}' works"


class SSHHost:
    """One Pi reached with OpenSSH through a shared ControlMaster connection."""

    _locks: dict[str, threading.Lock] = {}
    _locks_guard = threading.Lock()

    def __init__(self, destination: str, ssh_config: str | None = None) -> None:
        self.destination = destination
        self.ssh_config = ssh_config or None
        self.ssh = shutil.which("ssh") or "ssh"
        # Our own name for the control socket (not %C), so a stale one left by a crash can be removed.
        digest = hashlib.sha1(f"{self.ssh_config}|{destination}".encode()).hexdigest()[:20]
        self.control_path = control_dir() / digest

    def base_args(self) -> list[str]:
        args = [self.ssh]
        if self.ssh_config:
            args += ["-F", self.ssh_config]
        return args + ["-o", "BatchMode=yes", "-o", f"ControlPath={self.control_path}",
                       "-o", f"ServerAliveInterval={ALIVE_INTERVAL}", "-o", "ServerAliveCountMax=3",
                       "-o", "ConnectTimeout=10"]

    def _lock(self) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(f"{self.ssh_config}|{self.destination}", threading.Lock())

    def master_pid(self) -> int | None:
        """PID of the running ControlMaster for this host, or None."""
        r = subprocess.run(self.base_args() + ["-O", "check", self.destination], capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=15)
        m = re.search(r"pid=(\d+)", r.stderr)
        return int(m.group(1)) if r.returncode == 0 and m else None

    def ensure_master(self) -> None:
        """Open the shared connection unless it runs (one TCP connection and login per Pi). The file
        lock makes this one step for every process of this account (each JupyterHub user's server
        starts kernels on its own): two masters racing for one socket would leave an orphan ssh."""
        down = Path(f"{self.control_path}.down")
        asked = time.time()
        with self._lock(), open(f"{self.control_path}.lock", "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            if self.master_pid() is not None:
                return
            # A Pi that is off costs an attempt the connect timeout, and attempts wait for each other
            # here: a class starting kernels while one Pi is down would queue behind it, 10 s each.
            # An attempt that failed while this one waited is its answer too.
            try:
                if down.stat().st_mtime >= asked:
                    raise GatewayError(down.read_text())
            except FileNotFoundError:
                pass
            self.control_path.unlink(missing_ok=True)  # a dead master's socket would block a new one
            # -f backgrounds the master after login; its stderr goes to a file because a pipe would
            # stay open in the background process and hang this call.
            with tempfile.TemporaryFile("w+") as err:
                r = subprocess.run(self.base_args() + ["-o", "ControlMaster=yes",
                                                       "-o", f"ControlPersist={CONTROL_PERSIST}",
                                                       "-f", "-N", self.destination],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                   timeout=60)
                if r.returncode != 0:
                    err.seek(0)
                    message = explain_ssh_failure(self.destination, err.read())
                    down.write_text(message)
                    raise GatewayError(message)
            down.unlink(missing_ok=True)

    def command_args(self, remote: list[str]) -> list[str]:
        """ssh argv running `remote` on the Pi over the shared connection (quoted for the Pi's shell)."""
        return self.base_args() + ["-o", "ControlMaster=no", "-T", self.destination, "--", shlex.join(remote)]

    def run(self, remote: list[str], timeout: float = 30.0, python: str = "python3") -> str:
        """Run a command on the Pi; return its stdout or raise GatewayError naming the fix."""
        self.ensure_master()
        try:
            r = subprocess.run(self.command_args(remote), capture_output=True, text=True,
                               stdin=subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GatewayError(f"{self.destination} did not answer within {timeout:g} s: check the Pi") from None
        if r.returncode != 0:
            raise GatewayError(explain_ssh_failure(self.destination, r.stderr, python))
        return r.stdout

    def forward(self, pairs: list[tuple[int, int]], cancel: bool = False) -> None:
        """Forward 127.0.0.1:local on this machine to 127.0.0.1:remote on the Pi (or stop doing so).
        Returns once the master listens, so a kernel start never races its tunnels."""
        args = self.base_args() + ["-O", "cancel" if cancel else "forward"]
        for local, remote in pairs:
            args += ["-L", f"127.0.0.1:{local}:127.0.0.1:{remote}"]
        r = subprocess.run(args + [self.destination], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=30)
        if r.returncode != 0 and not cancel:
            raise GatewayError(f"cannot forward kernel ports from {self.destination} "
                               f"({r.stderr.strip() or 'ssh failed'}): is a local port in use? retry")

    def close_master(self) -> None:
        """End the shared connection (kernels running over it end on the Pi too)."""
        subprocess.run(self.base_args() + ["-O", "exit", self.destination], capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=15)
