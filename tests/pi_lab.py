"""Two simulated Raspberry Pis for the gateway tests and bench/gateway.py (needs root).

Each "Pi" is a network namespace on a bridge (veth pair), running its own sshd with key-only login
(host key, client key, known_hosts and configs all in a temp dir). The laptop is the root namespace.
Each Pi has its own EDGEKERNEL_RUNTIME_DIR / JUPYTER_RUNTIME_DIR (set by its sshd), because the
namespaces share one filesystem; and sees this checkout of edgekernel (PYTHONPATH set by its sshd).
pi1 has an emulated board (`edgekernel board --advertise`) started inside its namespace.

Everything is stopped by PID and removed in `PiLab.down()`, which asserts that nothing is left.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import edgekernel
from edgekernel.processes import alive, wait_gone

REPO = str(Path(edgekernel.__file__).resolve().parent.parent)
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def lab_unavailable_reason() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "gateway tests need root (network namespaces, veth, a bridge and sshd); CI runs them as root"
    for tool, path in (("ip", shutil.which("ip")), ("sshd", SSHD if os.path.exists(SSHD) else None),
                       ("ssh", shutil.which("ssh")), ("ssh-keygen", shutil.which("ssh-keygen"))):
        if not path:
            return f"{tool} is not installed (apt-get install openssh-server openssh-client iproute2)"
    probe = f"ekprobe{secrets.token_hex(3)}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"'ip netns add' does not work here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*args: str) -> str:
    r = subprocess.run(list(args), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


@dataclass
class Pi:
    name: str
    netns: str
    address: str
    runtime: Path
    sshd: subprocess.Popen | None = None

    def exec(self, *args: str, **kw) -> subprocess.CompletedProcess:
        """Run a command inside this Pi's network namespace (for tests only: the product uses SSH)."""
        return subprocess.run(["ip", "netns", "exec", self.netns, *args], capture_output=True, text=True, **kw)

    def netns_pids(self) -> set[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
        return {int(p) for p in out.split() if alive(int(p))}


@dataclass
class PiLab:
    root: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    subnet: str = "10.231"
    pis: dict[str, Pi] = field(default_factory=dict)
    board: subprocess.Popen | None = None
    board_port: str = ""
    ssh_config: Path | None = None

    @property
    def bridge(self) -> str:
        return f"ekbr{self.tag}"

    def _veth(self, i: int) -> str:
        return f"ekv{self.tag}{i}"

    # -- up -------------------------------------------------------------------------------------

    def up(self) -> "PiLab":
        try:
            self._network()
            self._keys_and_sshd()
            self._start_board()
        except BaseException:
            self.down()
            raise
        return self

    def _network(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.subnet}.0.1/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i, name in enumerate(("pi1", "pi2"), start=1):
            netns = f"ek{self.tag}{name}"
            pi = Pi(name, netns, f"{self.subnet}.0.{10 + i}", self.root / name / "run")
            self.pis[name] = pi
            _run("ip", "netns", "add", netns)
            outer, inner = self._veth(i), f"ekv{self.tag}{i}p"
            _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            _run("ip", "link", "set", inner, "netns", netns)
            _run("ip", "link", "set", outer, "master", self.bridge)
            _run("ip", "link", "set", outer, "up")
            _run("ip", "netns", "exec", netns, "ip", "link", "set", inner, "name", "eth0")
            _run("ip", "netns", "exec", netns, "ip", "addr", "add", f"{pi.address}/24", "dev", "eth0")
            _run("ip", "netns", "exec", netns, "ip", "link", "set", "eth0", "up")
            _run("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")

    def _keys_and_sshd(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        client = self.root / "client"
        client.mkdir(parents=True)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client / "id_ed25519"))
        (client / "authorized_keys").write_text((client / "id_ed25519.pub").read_text())
        known = []
        config = []
        for pi in self.pis.values():
            d = self.root / pi.name
            pi.runtime.mkdir(parents=True)
            (d / "jupyter-runtime").mkdir()
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_ed25519"))
            key = (d / "host_ed25519.pub").read_text().split()
            known.append(f"{pi.address} {key[0]} {key[1]}")
            env = (f"PYTHONPATH={REPO} EDGEKERNEL_RUNTIME_DIR={pi.runtime} "
                   f"JUPYTER_RUNTIME_DIR={d / 'jupyter-runtime'} XDG_DATA_HOME={d / 'data'} "
                   f"IPYTHONDIR={d / 'ipython'}")
            (d / "sshd_config").write_text(
                f"ListenAddress {pi.address}\nPort 22\nHostKey {d / 'host_ed25519'}\nPidFile {d / 'sshd.pid'}\n"
                f"AuthorizedKeysFile {client / 'authorized_keys'}\nPubkeyAuthentication yes\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
                "StrictModes no\nUsePAM no\nMaxSessions 50\nMaxStartups 100\nLogLevel ERROR\n"
                f"SetEnv {env}\n")
            pi.sshd = subprocess.Popen(["ip", "netns", "exec", pi.netns, SSHD, "-D", "-e", "-f",
                                        str(d / "sshd_config")], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "wb"))
            config.append(f"Host {pi.name}\n  HostName {pi.address}\n")
        (client / "known_hosts").write_text("\n".join(known) + "\n")
        (client / "empty_known_hosts").write_text("")
        # Aliases for the error tests: an unknown host key, and an address where nothing answers.
        pi2 = self.pis["pi2"]
        config.append(f"Host pi-unknown-key\n  HostName {pi2.address}\n  UserKnownHostsFile {client / 'empty_known_hosts'}\n")
        config.append(f"Host pi-off\n  HostName {self.subnet}.0.99\n  ConnectTimeout 3\n")
        config.append(f"Host *\n  User root\n  IdentityFile {client / 'id_ed25519'}\n  IdentitiesOnly yes\n"
                      f"  UserKnownHostsFile {client / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
                      "  LogLevel ERROR\n")
        self.ssh_config = client / "ssh_config"
        self.ssh_config.write_text("".join(config))
        for pi in self.pis.values():
            self._wait_port(pi.address, 22)

    @staticmethod
    def _wait_port(address: str, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((address, port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd on {address} did not start")
                time.sleep(0.05)

    def _start_board(self) -> None:
        pi1 = self.pis["pi1"]
        env = dict(os.environ, PYTHONPATH=REPO, EDGEKERNEL_RUNTIME_DIR=str(pi1.runtime))
        self.board = subprocess.Popen(
            ["ip", "netns", "exec", pi1.netns, sys.executable, "-m", "edgekernel", "board", "--emulator", "unix",
             "--advertise", "--json", "--watch-stdin"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        line = self.board.stdout.readline()
        if not line:
            raise RuntimeError("the emulated board on pi1 did not start")
        self.board_port = json.loads(line)["port"]

    # -- helpers ----------------------------------------------------------------------------------

    def ssh(self, host: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Plain ssh to a Pi (no ControlMaster): an independent check of what runs there."""
        return subprocess.run(["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", host, command],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def stop_board(self) -> None:
        if self.board is not None:
            try:
                self.board.stdin.close()
            except OSError:
                pass
            try:
                self.board.wait(15)
            except subprocess.TimeoutExpired:
                self.board.kill()
                self.board.wait()
            self.board = None

    # -- down -------------------------------------------------------------------------------------

    def down(self) -> None:
        """Stop everything by PID, delete namespaces and links; raise if anything was left running."""
        leftovers: list[str] = []
        if self.ssh_config is not None:
            from edgekernel.gateway.ssh import SSHHost
            for name in self.pis:
                host = SSHHost(name, str(self.ssh_config))
                pid = host.master_pid()
                if pid is not None:
                    host.close_master()
                    if wait_gone({pid}, 15):
                        leftovers.append(f"ssh master {pid}")
                        os.kill(pid, signal.SIGKILL)
        self.stop_board()
        for pi in self.pis.values():
            if pi.sshd is not None:
                pi.sshd.terminate()
                try:
                    pi.sshd.wait(10)
                except subprocess.TimeoutExpired:
                    pi.sshd.kill()
                    pi.sshd.wait()
            left = wait_gone(pi.netns_pids(), 10)
            for pid in left:
                leftovers.append(f"{pi.name}: {pid} {cmdline(pid)}")
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            subprocess.run(["ip", "netns", "del", pi.netns], capture_output=True)
        for i in range(1, len(self.pis) + 1):
            subprocess.run(["ip", "link", "del", self._veth(i)], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        if leftovers:
            raise AssertionError(f"processes left in the simulated Pis: {'; '.join(leftovers)}")
