"""A real JupyterHub in front of the simulated Pis, for tests/test_classroom.py and bench/classroom.py.

The hub runs on 127.0.0.1 with DummyAuthenticator, SimpleLocalProcessSpawner (every user's
single-user server is a local process of this account, with its own home under the run's temp dir)
and configurable-http-proxy from npm. The Pis' kernelspecs are written with `edgekernel gateway add
--prefix` into one shared directory on every user's JUPYTER_PATH, as a lab admin would. Users,
servers and tokens are made through the hub's REST API by an admin service; kernels are started
through each user's server (REST) and cells run over the kernel WebSocket, both through the hub's
proxy. `stop()` ends the hub by PID and checks that the proxy and every single-user server went too.
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
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekernel.processes import alive, descendants, wait_gone
from pi_lab import REPO, PiLab

HTTP_TIMEOUT = 120.0


def hub_unavailable_reason() -> str | None:
    """Why a JupyterHub cannot run here, or None."""
    try:
        import jupyterhub  # noqa: F401
    except ImportError:
        return "jupyterhub is not installed (pip install 'jupyterhub>=5'; .ci/run installs it)"
    if not shutil.which("configurable-http-proxy"):
        return "configurable-http-proxy is not installed (npm install -g configurable-http-proxy; .ci/run does)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, token: str, body: dict | None = None,
         timeout: float = HTTP_TIMEOUT) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status = r.read().decode(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read().decode(), e.code
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        return status, raw


HUB_CONFIG = """
import os, sys
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.db_url = "sqlite:///{root}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{root}/cookie_secret"
c.JupyterHub.pid_file = "{root}/hub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
# A spawn request is answered at once (202), not after up to 10 s waiting for the server.
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
c.SimpleLocalProcessSpawner.home_dir_template = "{root}/home/{{username}}"
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.args = {server_args!r}
c.Spawner.default_url = "/tree"
c.Spawner.http_timeout = 600
c.Spawner.start_timeout = 600
c.Spawner.environment = {{"PYTHONPATH": "{repo}", "JUPYTER_PATH": "{jupyter_path}"}}
c.JupyterHub.services = [{{"name": "lab-admin", "api_token": os.environ["LAB_ADMIN_TOKEN"]}}]
c.JupyterHub.load_roles = [{{"name": "lab-admin", "scopes": ["admin:users", "admin:servers", "tokens"],
                             "services": ["lab-admin"]}}]
"""


NODELAY_ARG = ("--ServerApp.kernel_websocket_connection_class="
               "edgekernel.gateway.websocket_nodelay.NoDelayKernelWebsocketConnection")


def culling_args(idle_timeout: int, interval: int) -> list[str]:
    """The single-user servers' idle culling: jupyter_server's own settings (see the README)."""
    return [f"--MappingKernelManager.cull_idle_timeout={idle_timeout}",
            f"--MappingKernelManager.cull_interval={interval}",
            "--MappingKernelManager.cull_connected=False", "--MappingKernelManager.cull_busy=False"]


@dataclass
class CellResult:
    status: str | None
    stdout: str
    result: str | None
    seconds: float


V1 = "v1.kernel.websocket.jupyter.org"


class KernelSocket:
    """One kernel's WebSocket through the hub's proxy (as a browser tab holds it open). `v1=True`
    speaks the binary v1 kernel WebSocket protocol, as JupyterLab does; else the JSON one."""

    def __init__(self, url: str, token: str, v1: bool = False) -> None:
        import websocket
        self.ws = websocket.create_connection(url, header=[f"Authorization: token {token}"], timeout=HTTP_TIMEOUT,
                                              subprotocols=[V1] if v1 else None)
        self.v1 = v1
        if v1 and self.ws.getsubprotocol() != V1:
            raise ConnectionError(f"the server did not take the v1 protocol: {self.ws.getsubprotocol()!r}")
        self.session = uuid.uuid4().hex

    def send(self, msg_type: str, content: dict) -> str:
        msg_id = uuid.uuid4().hex
        msg = {"header": {"msg_id": msg_id, "msg_type": msg_type, "username": "student",
                          "session": self.session, "version": "5.3", "date": ""},
               "parent_header": {}, "metadata": {}, "content": content}
        if self.v1:
            from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1
            self.ws.send_binary(serialize_msg_to_ws_v1(
                [json.dumps(msg[k]).encode() for k in ("header", "parent_header", "metadata", "content")], "shell"))
        else:
            self.ws.send(json.dumps({**msg, "channel": "shell"}))
        return msg_id

    def recv(self) -> dict:
        raw = self.ws.recv()
        if not raw:
            raise ConnectionError("the kernel WebSocket closed")
        if isinstance(raw, bytes):
            from jupyter_server.services.kernels.connection.base import deserialize_msg_from_ws_v1
            channel, parts = deserialize_msg_from_ws_v1(raw)
            msg = dict(zip(("header", "parent_header", "metadata", "content"), (json.loads(p) for p in parts[:4])))
            return {**msg, "channel": channel}
        return json.loads(raw)

    def send_execute(self, code: str) -> str:
        """Start a cell without waiting for it (its messages: `messages_until`)."""
        return self.send("execute_request", {"code": code, "silent": False, "store_history": True,
                                             "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})

    def messages_until(self, done, timeout: float) -> list[dict]:
        """Every message (any parent) until done(message) is true; TimeoutError after `timeout`."""
        seen: list[dict] = []
        deadline = time.monotonic() + timeout
        while True:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                msg = self.recv()
            except Exception as exc:   # websocket's timeout exception
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"waited {timeout:g} s; got {[m['header']['msg_type'] for m in seen]}") from exc
                raise
            finally:
                self.ws.settimeout(HTTP_TIMEOUT)
            seen.append(msg)
            if done(seen[-1]):
                return seen

    def request(self, msg_type: str, content: dict, timeout: float = 120.0) -> tuple[dict, CellResult]:
        started = time.perf_counter()
        msg_id = self.send(msg_type, content)
        out = CellResult(None, "", None, 0.0)
        reply: dict = {}
        idle = False   # iopub and shell are separate: the output is complete at iopub idle, not at the reply
        deadline = time.monotonic() + timeout
        while not (reply and idle):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply to {msg_type} within {timeout:g} s")
            msg = self.recv()
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "status":
                idle = idle or msg["content"]["execution_state"] == "idle"
            elif kind == "stream":
                out.stdout += msg["content"]["text"]
            elif kind == "execute_result":
                out.result = msg["content"]["data"].get("text/plain")
            elif kind.endswith("_reply"):
                reply = msg["content"]
                out.status = reply.get("status")
        out.seconds = time.perf_counter() - started
        return reply, out

    def execute(self, code: str, timeout: float = 120.0) -> CellResult:
        return self.request("execute_request", {"code": code, "silent": False, "store_history": True,
                                                "user_expressions": {}, "allow_stdin": False,
                                                "stop_on_error": True}, timeout)[1]

    def kernel_info(self, timeout: float = 120.0) -> dict:
        return self.request("kernel_info_request", {}, timeout)[0]

    def close(self) -> None:
        self.ws.close()


@dataclass
class Hub:
    root: Path
    lab: PiLab
    server_args: list[str] = field(default_factory=list)
    port: int = 0
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    tokens: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    pids: set[int] = field(default_factory=set)   # the hub and everything it started (proxy, servers)

    @property
    def prefix(self) -> Path:
        """Where the Pis' kernelspecs and registry live (`edgekernel gateway add --prefix`)."""
        return self.root / "shared"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def register_pis(self) -> None:
        env = dict(os.environ, PYTHONPATH=REPO)
        for name in self.lab.pis:
            r = subprocess.run([sys.executable, "-m", "edgekernel", "gateway", "add", name, "--ssh", name,
                                "--ssh-config", str(self.lab.ssh_config), "--prefix", str(self.prefix)],
                               env=env, capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"gateway add {name} failed: {r.stderr.strip()}")

    def board_kernel(self, pi: str, index: int = 0) -> str:
        return f"edgekernel-{pi}-" + self.lab.board_ports[pi][index].removeprefix("/dev/").replace("/", "-")

    def start(self) -> "Hub":
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "home").mkdir(exist_ok=True)
        self.port = free_port()
        (self.root / "jupyterhub_config.py").write_text(HUB_CONFIG.format(
            port=self.port, hub_port=free_port(), proxy_api_port=free_port(), root=self.root, repo=REPO,
            jupyter_path=self.prefix / "share" / "jupyter", server_args=["--allow-root", NODELAY_ARG, *self.server_args]))
        # Tokens go through the environment, never a command line.
        env = dict(os.environ, PYTHONPATH=REPO, LAB_ADMIN_TOKEN=self.admin_token,
                   CONFIGPROXY_AUTH_TOKEN=secrets.token_hex(16))
        self.process = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(self.root / "jupyterhub_config.py")],
                                        cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                        stdout=open(self.root / "hub.log", "wb"), stderr=subprocess.STDOUT)
        self.pids.add(self.process.pid)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the hub exited: {self.log_tail()}")
            try:
                if http("GET", f"{self.base}/hub/api/", self.admin_token, timeout=5)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the hub did not answer: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.root / "hub.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def track(self) -> None:
        """Remember the processes the hub started so far (proxy, single-user servers)."""
        if self.process is not None:
            self.pids |= descendants(self.process.pid)

    # -- users ----------------------------------------------------------------------------------

    def add_users(self, users: list[str]) -> None:
        """Create the users, start their servers (all at once, as a class logging in) and wait for them."""
        for user in users:
            status, body = http("POST", f"{self.base}/hub/api/users/{user}", self.admin_token)
            assert status in (201, 409), (status, body)
            status, body = http("POST", f"{self.base}/hub/api/users/{user}/tokens", self.admin_token,
                                {"note": "classroom", "expires_in": 7200})
            assert status in (200, 201), (status, body)
            self.tokens[user] = body["token"]
        # The hub answers at once (slow_spawn_timeout 0, in HUB_CONFIG), so the servers start together.
        for user in users:
            status, body = http("POST", f"{self.base}/hub/api/users/{user}/server", self.admin_token)
            assert status in (201, 202), (status, body)
        for user in users:
            deadline = time.monotonic() + 600
            while True:
                status, body = http("GET", f"{self.base}/hub/api/users/{user}", self.admin_token)
                if body.get("servers", {}).get("", {}).get("ready"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{user}'s server did not start: {self.log_tail()}")
                time.sleep(0.5)
        self.track()

    def api(self, user: str, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        return http(method, f"{self.base}/user/{user}/api/{path}", self.tokens[user], body)

    def start_kernel(self, user: str, kernel_name: str) -> tuple[int, Any]:
        return self.api(user, "POST", "kernels", {"name": kernel_name})

    def kernels(self, user: str) -> list[dict]:
        status, body = self.api(user, "GET", "kernels")
        assert status == 200, (status, body)
        return body

    def connect(self, user: str, kernel_id: str, v1: bool = False) -> KernelSocket:
        url = f"ws://127.0.0.1:{self.port}/user/{user}/api/kernels/{kernel_id}/channels"
        return KernelSocket(url, self.tokens[user], v1)

    # -- stop -----------------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Stop every server through the hub, then the hub (SIGTERM by PID); returns what was left
        running of the hub's processes (killed)."""
        if self.process is None:
            return []
        self.track()
        if self.process.poll() is None:
            for user in self.tokens:
                try:
                    http("DELETE", f"{self.base}/hub/api/users/{user}/server", self.admin_token, timeout=60)
                except OSError:
                    pass
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        left = wait_gone(self.pids, 30)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.process = None
        return [f"{pid}" for pid in left]


def pi_state(lab: PiLab) -> dict[str, dict]:
    """What each Pi itself reports (`remote boards` over plain ssh, independent of the provisioner)."""
    states = {}
    for name in lab.pis:
        r = lab.ssh(name, "python3 -m edgekernel.gateway.remote boards")
        assert r.returncode == 0, r.stderr
        states[name] = json.loads(r.stdout.splitlines()[-1])
    return states


def kernel_processes(lab: PiLab) -> dict[str, set[int]]:
    """Processes in each Pi's namespace other than sshd and the emulated boards."""
    found: dict[str, set[int]] = {}
    for name, pi in lab.pis.items():
        pids = set()
        for pid in pi.netns_pids() - lab.board_pids(name):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() != "sshd":
                    pids.add(pid)
            except OSError:
                continue
        found[name] = pids
    return found


def leftovers_on_pis(lab: PiLab, timeout: float = 30) -> dict[str, Any]:
    """Kernel processes, kernel records and board locks still on the Pis (after waiting `timeout`)."""
    procs = kernel_processes(lab)
    left_pids = {name: wait_gone(pids, timeout) for name, pids in procs.items()}
    states = pi_state(lab)
    return {"processes": {n: sorted(p) for n, p in left_pids.items() if p},
            "kernels": {n: s["kernels"] for n, s in states.items() if s["kernels"]},
            "locks": {n: [b for b in s["boards"] if b["holder"]] for n, s in states.items()
                      if any(b["holder"] for b in s["boards"])}}


__all__ = ["Hub", "KernelSocket", "CellResult", "culling_args", "hub_unavailable_reason", "leftovers_on_pis",
           "pi_state", "kernel_processes", "http", "alive"]
