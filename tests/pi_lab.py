"""Simulated Raspberry Pis for the gateway and classroom tests and benchmarks (needs root).

Each "Pi" is a network namespace on a bridge (veth pair), running its own sshd with key-only login
(host key, client key, known_hosts and configs all in a temp dir). The laptop is the root namespace.
Each Pi has its own EDGEKERNEL_RUNTIME_DIR / JUPYTER_RUNTIME_DIR (set by its sshd), because the
namespaces share one filesystem; and sees this checkout of edgekernel (PYTHONPATH set by its sshd).
Emulated boards (`edgekernel board --advertise`) run inside the Pis' namespaces: by default one on
pi1 (of two Pis); `PiLab(root, pis=10, boards=3)` gives ten Pis with three boards each.

Every run takes its own names (a random tag in every bridge, veth and namespace name) and its own
/24 subnet, chosen under a machine-wide lock among those no interface or route uses, so two runs on
one machine never collide. A run records what it made in /run/edgekernel-pilab/TAG.json; `up()`
first removes, by name, what runs whose process died left behind. `down()` stops everything by PID,
removes the namespaces and links by name, and asserts that nothing was left running.
"""
from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import random
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
STATE_DIR = Path("/run/edgekernel-pilab")   # one JSON file per live lab: what it made, and its owner's PID


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


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


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


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network an interface address or a route on this machine is in."""
    used = []
    for args in (["ip", "-4", "-o", "addr"], ["ip", "-4", "route"]):
        for word in subprocess.run(args, capture_output=True, text=True).stdout.split():
            if "/" not in word:
                continue
            try:
                used.append(ipaddress.IPv4Network(word, strict=False))
            except ValueError:
                continue
    return used


def _lab_lock():
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    f = open(STATE_DIR / ".lock", "w")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def remove_by_name(state: dict) -> list[str]:
    """Remove a lab's namespaces (killing what runs in them) and links, by the names it recorded."""
    killed = []
    for netns in state.get("netns", []):
        out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
        for pid in (int(p) for p in out.split()):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(f"{pid} {cmdline(pid)}")
            except OSError:
                pass
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
    for link in state.get("links", []):
        subprocess.run(["ip", "link", "del", link], capture_output=True)
    return killed


def sweep_dead_labs() -> list[str]:
    """Remove what labs of dead processes left behind; returns their tags."""
    swept = []
    with _lab_lock():
        for path in STATE_DIR.glob("*.json"):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not alive(int(state.get("owner", 0))):
                remove_by_name(state)
                path.unlink(missing_ok=True)
                swept.append(path.stem)
    return swept


@dataclass
class PiLab:
    root: Path
    pis_count: int = 2
    boards: int | dict[str, int] = field(default_factory=lambda: {"pi1": 1})  # per Pi, or N on every Pi
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    subnet: str = ""               # "10.X.Y", chosen in up()
    pis: dict[str, Pi] = field(default_factory=dict)
    board_procs: dict[str, list[subprocess.Popen]] = field(default_factory=dict)
    board_ports: dict[str, list[str]] = field(default_factory=dict)
    ssh_config: Path | None = None

    @property
    def bridge(self) -> str:
        return f"ekb{self.tag}"

    def _veth(self, i: int) -> str:
        return f"ekv{self.tag}{i}"

    @property
    def gateway_address(self) -> str:
        """The laptop's address on the lab's network (the bridge)."""
        return f"{self.subnet}.1"

    @property
    def board(self) -> subprocess.Popen | None:
        """pi1's first emulated board (what the two-Pi gateway tests use)."""
        procs = self.board_procs.get("pi1") or []
        return procs[0] if procs else None

    @property
    def board_port(self) -> str:
        ports = self.board_ports.get("pi1") or []
        return ports[0] if ports else ""

    def boards_on(self, pi: str) -> int:
        return self.boards if isinstance(self.boards, int) else self.boards.get(pi, 0)

    def board_pids(self, pi: str) -> set[int]:
        """The emulated boards' processes on a Pi (and their children)."""
        from edgekernel.processes import descendants
        found: set[int] = set()
        for proc in self.board_procs.get(pi, []):
            found |= {proc.pid} | descendants(proc.pid)
        return found

    def _state(self) -> dict:
        return {"owner": os.getpid(), "subnet": self.subnet, "root": str(self.root),
                "netns": [pi.netns for pi in self.pis.values()],
                "links": [self.bridge] + [self._veth(i) for i in range(1, len(self.pis) + 1)]}

    # -- up -------------------------------------------------------------------------------------

    def up(self) -> "PiLab":
        sweep_dead_labs()
        try:
            with _lab_lock():   # the subnet check and the bridge taking it are one step for other runs
                self._choose_subnet()
                self._network()
            self._keys_and_sshd()
            self._start_boards()
        except BaseException:
            self.down()
            raise
        return self

    def _choose_subnet(self) -> None:
        used = _used_networks()
        for path in STATE_DIR.glob("*.json"):   # labs being built right now have no address yet
            try:
                used.append(ipaddress.IPv4Network(json.loads(path.read_text())["subnet"] + ".0/24"))
            except (OSError, ValueError, KeyError):
                pass
        for _ in range(1000):
            candidate = f"10.{random.randint(64, 254)}.{random.randint(0, 255)}"
            network = ipaddress.IPv4Network(candidate + ".0/24")
            if not any(network.overlaps(u) for u in used):
                self.subnet = candidate
                return
        raise RuntimeError("no free 10.x.y.0/24 subnet for the simulated Pis")

    def _network(self) -> None:
        for i in range(1, self.pis_count + 1):
            name = f"pi{i}"
            self.pis[name] = Pi(name, f"ek{self.tag}{name}", f"{self.subnet}.{10 + i}", self.root / name / "run")
        (STATE_DIR / f"{self.tag}.json").write_text(json.dumps(self._state()))   # before anything exists
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.gateway_address}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i, pi in enumerate(self.pis.values(), start=1):
            netns = pi.netns
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
                "StrictModes no\nUsePAM no\nMaxSessions 200\nMaxStartups 100\nLogLevel ERROR\n"
                # A client whose network died (a test pulls a Pi's cable) is dropped after 15 s.
                "ClientAliveInterval 5\nClientAliveCountMax 3\n"
                f"SetEnv {env}\n")
            pi.sshd = subprocess.Popen(["ip", "netns", "exec", pi.netns, SSHD, "-D", "-e", "-f",
                                        str(d / "sshd_config")], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "wb"))
            config.append(f"Host {pi.name}\n  HostName {pi.address}\n")
        (client / "known_hosts").write_text("\n".join(known) + "\n")
        (client / "empty_known_hosts").write_text("")
        # Aliases for the error tests: an unknown host key, and an address where nothing answers.
        last = list(self.pis.values())[-1]
        config.append(f"Host pi-unknown-key\n  HostName {last.address}\n  UserKnownHostsFile {client / 'empty_known_hosts'}\n")
        config.append(f"Host pi-off\n  HostName {self.subnet}.99\n  ConnectTimeout 3\n")
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

    def _start_boards(self) -> None:
        started = []
        for pi in self.pis.values():   # all at once: each is a Python process that takes a moment
            env = dict(os.environ, PYTHONPATH=REPO, EDGEKERNEL_RUNTIME_DIR=str(pi.runtime))
            for _ in range(self.boards_on(pi.name)):
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", pi.netns, sys.executable, "-m", "edgekernel", "board", "--emulator",
                     "unix", "--advertise", "--json", "--watch-stdin"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
                self.board_procs.setdefault(pi.name, []).append(proc)
                started.append((pi.name, proc))
        for name, proc in started:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"an emulated board on {name} did not start")
            self.board_ports.setdefault(name, []).append(json.loads(line)["port"])

    # -- helpers ----------------------------------------------------------------------------------

    def ssh(self, host: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Plain ssh to a Pi (no ControlMaster): an independent check of what runs there."""
        return subprocess.run(["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", host, command],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def stop_boards(self) -> None:
        procs = [p for ps in self.board_procs.values() for p in ps]
        for proc in procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.board_procs = {}

    stop_board = stop_boards

    def set_link(self, pi: str, up: bool) -> None:
        """Plug a Pi's network cable in or out (its veth on the bridge)."""
        index = list(self.pis).index(pi) + 1
        _run("ip", "link", "set", self._veth(index), "up" if up else "down")
        if up:
            # Plugged in again, a Pi is back once it answers: until the link has come up (and the
            # address the pulled cable left unresolved has been looked up again) a connection gets
            # "No route to host", which is the cable, not the product.
            address = self.pis[pi].address
            _run("ip", "neigh", "flush", "to", address)
            self._wait_port(address, 22)

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
        self.stop_boards()
        for pi in self.pis.values():
            if pi.sshd is not None:
                pi.sshd.terminate()
                try:
                    pi.sshd.wait(10)
                except subprocess.TimeoutExpired:
                    pi.sshd.kill()
                    pi.sshd.wait()
            # sshd's per-connection processes do not end with the listener: end them (they are the
            # lab's, not the product's; a connection whose network was pulled would wait for its timeout).
            for pid in pi.netns_pids():
                if _comm(pid) == "sshd":
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except OSError:
                        pass
            left = wait_gone(pi.netns_pids(), 10)
            for pid in left:
                leftovers.append(f"{pi.name}: {pid} {cmdline(pid)}")
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        # By name: the namespaces (anything still in them is killed), the veths and the bridge.
        leftovers += [f"by name: {p}" for p in remove_by_name(self._state())]
        (STATE_DIR / f"{self.tag}.json").unlink(missing_ok=True)
        if leftovers:
            raise AssertionError(f"processes left in the simulated Pis: {'; '.join(leftovers)}")
