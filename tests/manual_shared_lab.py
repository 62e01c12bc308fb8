"""Manual check of the "shared lab" path for the Raspberry Pi gateways (not collected by pytest:
it needs root, JupyterHub and configurable-http-proxy from npm, or an Enterprise Gateway venv).

    sudo PYTHONPATH=$PWD python tests/manual_shared_lab.py jupyterhub
    sudo PYTHONPATH=$PWD python tests/manual_shared_lab.py enterprise-gateway --eg /path/to/venv/bin/jupyter-enterprisegateway

Both bring up the two simulated Pis of tests/pi_lab.py and write their kernelspecs with
`edgekernel gateway add` into one shared data dir (what a lab admin does with --prefix), then:

- jupyterhub: a hub on 127.0.0.1 (DummyAuthenticator, SimpleLocalProcessSpawner), users alice and
  bob. Each starts their single-user server and, through it (hub proxy, REST + WebSocket), a kernel:
  alice takes pi1's board and runs a cell on the board; bob is refused the same board with "in use
  by kernel <alice's>"; bob's "Python 3 on any Pi" kernel runs a cell on a Pi. Then everything is
  deleted and the Pis are checked empty.
- enterprise-gateway: Enterprise Gateway serving the same kernelspecs; starts the any-Pi kernel
  through POST /api/kernels and asks it where it runs, to show whether the kernel provisioner was
  used (kernel on a Pi) or ignored (kernel on the gateway host).

Prints one line per step and exits non-zero when an expectation fails.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pi_lab import REPO, PiLab, lab_unavailable_reason, wait_gone  # noqa: E402

WHERE = "import subprocess\nprint(subprocess.run(['ip', '-4', '-o', 'addr'], capture_output=True, text=True).stdout)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, token: str, body: dict | None = None, timeout: float = 90) -> tuple[int, dict | str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read().decode(), e.code
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        return status, raw


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):  # up, and asking for the token
                return
            time.sleep(0.2)  # the hub's proxy answers before the hub's routes are in
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


async def run_cell(ws_url: str, token: str, code: str, timeout: float = 60) -> tuple[str, str]:
    """Execute `code` over a kernel's /channels WebSocket; returns (reply status, stdout)."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect
    conn = await websocket_connect(HTTPRequest(ws_url, headers={"Authorization": f"token {token}"}))
    msg_id = uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "", "session": uuid.uuid4().hex,
                   "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}}))
    stdout, status, idle = [], None, False
    deadline = time.monotonic() + timeout
    while status is None or not idle:
        raw = await asyncio.wait_for(conn.read_message(), deadline - time.monotonic())
        if raw is None:
            raise RuntimeError("kernel WebSocket closed")
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "stream":
            stdout.append(msg["content"]["text"])
        elif kind == "execute_reply":
            status = msg["content"]["status"]
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
    conn.close()
    return status, "".join(stdout)


class Checks:
    def __init__(self) -> None:
        self.failed = 0

    def __call__(self, ok: bool, what: str, detail: str = "") -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail and not ok else ""), flush=True)
        self.failed += not ok


def stop(proc: subprocess.Popen) -> None:
    """End a process group we started, by its PID."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def pi_kernel_pids(lab: PiLab) -> dict[str, set[int]]:
    board = set()
    if lab.board is not None:
        from kernel_fixtures import descendants
        board = {lab.board.pid} | descendants(lab.board.pid)
    left = {}
    for name, pi in lab.pis.items():
        pids = {p for p in pi.netns_pids() - board
                if Path(f"/proc/{p}/comm").exists() and Path(f"/proc/{p}/comm").read_text().strip() != "sshd"}
        left[name] = wait_gone(pids, 20)
    return left


def add_gateways(lab: PiLab, data: Path) -> str:
    env = dict(os.environ, JUPYTER_DATA_DIR=str(data), JUPYTER_PATH=str(data), PYTHONPATH=REPO)
    for pi in ("pi1", "pi2"):
        subprocess.run([sys.executable, "-m", "edgekernel", "gateway", "add", pi, "--ssh", pi,
                        "--ssh-config", str(lab.ssh_config)], env=env, check=True)
    return "edgekernel-pi1-" + lab.board_port.removeprefix("/dev/").replace("/", "-")


# -- JupyterHub ---------------------------------------------------------------------------------

HUB_CONFIG = """
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.db_url = "sqlite:///{root}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{root}/cookie_secret"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.Spawner.args = ["--allow-root"]
c.Spawner.default_url = "/tree"
c.Spawner.http_timeout = 90
c.Spawner.environment = {{"PYTHONPATH": "{repo}", "JUPYTER_PATH": "{data}"}}
import os
c.JupyterHub.services = [{{"name": "lab-admin", "api_token": os.environ["LAB_ADMIN_TOKEN"]}}]
c.JupyterHub.load_roles = [{{"name": "lab-admin", "scopes": ["admin:users", "admin:servers", "tokens"],
                             "services": ["lab-admin"]}}]
"""


def jupyterhub(lab: PiLab, root: Path, check: Checks) -> None:
    data = root / "shared-kernels"
    board_kernel = add_gateways(lab, data)
    port, admin_token = free_port(), secrets.token_hex(16)
    (root / "jupyterhub_config.py").write_text(HUB_CONFIG.format(
        port=port, hub_port=free_port(), proxy_api_port=free_port(), root=root, repo=REPO, data=data))
    # Tokens go through the environment, not a command line.
    env = dict(os.environ, PYTHONPATH=REPO, LAB_ADMIN_TOKEN=admin_token, CONFIGPROXY_AUTH_TOKEN=secrets.token_hex(16))
    hub = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(root / "jupyterhub_config.py")],
                           cwd=root, env=env, stdout=open(root / "hub.log", "wb"), stderr=subprocess.STDOUT,
                           start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    kernels: list[tuple[str, str, str]] = []
    try:
        wait_http(f"{base}/hub/api/")
        tokens = {}
        for user in ("alice", "bob"):
            status, _ = http("POST", f"{base}/hub/api/users/{user}", admin_token)
            check(status in (201, 409), f"hub: user {user} created", str(status))
            status, body = http("POST", f"{base}/hub/api/users/{user}/server", admin_token)
            check(status in (201, 202), f"hub: {user}'s single-user server requested", f"{status} {body}")
            status, body = http("POST", f"{base}/hub/api/users/{user}/tokens", admin_token,
                                {"note": "shared-lab check", "expires_in": 3600})
            tokens[user] = body["token"]
        for user in ("alice", "bob"):
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                status, body = http("GET", f"{base}/hub/api/users/{user}", admin_token)
                if body.get("servers", {}).get("", {}).get("ready"):
                    break
                time.sleep(0.5)
            check(body.get("servers", {}).get("", {}).get("ready", False), f"hub: {user}'s server ready")
            status, body = http("GET", f"{base}/user/{user}/api/kernelspecs", tokens[user])
            names = sorted(body.get("kernelspecs", {})) if isinstance(body, dict) else body
            check(board_kernel in names, f"{user}'s server lists the Pi kernelspecs", str(names))

        def server(user: str) -> str:
            return f"{base}/user/{user}/api/kernels"

        status, alice_kernel = http("POST", server("alice"), tokens["alice"], {"name": board_kernel})
        check(status == 201, f"alice starts {board_kernel} through her server", f"{status} {alice_kernel}")
        kernels.append(("alice", alice_kernel["id"], tokens["alice"]))
        ws = server("alice").replace("http", "ws", 1) + f"/{alice_kernel['id']}/channels"
        status_, out = asyncio.run(run_cell(ws, tokens["alice"], "import sys\nprint(sys.platform, 6 * 7)"))
        check(status_ == "ok" and "42" in out, "alice runs a cell on the board (over the hub's WebSocket)", f"{status_} {out!r}")
        status_, out = asyncio.run(run_cell(ws, tokens["alice"], "%%local\n" + WHERE))
        check(lab.pis["pi1"].address in out, "alice's board kernel runs on pi1", out)

        status, body = http("POST", server("bob"), tokens["bob"], {"name": board_kernel})
        message = body.get("message", "") if isinstance(body, dict) else str(body)
        check(status >= 400 and f"is in use by kernel {alice_kernel['id']}" in message,
              "bob is refused the same board, told it is in use by alice's kernel", f"{status} {body}")
        print(f"     bob's HTTP answer: {status} {message}")
        if isinstance(body, dict) and body.get("id"):
            kernels.append(("bob", body["id"], tokens["bob"]))

        status, bob_kernel = http("POST", server("bob"), tokens["bob"], {"name": "edgekernel-python-any-pi"})
        check(status == 201, "bob starts 'Python 3 on any Pi' through his server", f"{status} {bob_kernel}")
        kernels.append(("bob", bob_kernel["id"], tokens["bob"]))
        ws = server("bob").replace("http", "ws", 1) + f"/{bob_kernel['id']}/channels"
        status_, out = asyncio.run(run_cell(ws, tokens["bob"], WHERE))
        on = [name for name, pi in lab.pis.items() if pi.address in out]
        check(status_ == "ok" and len(on) == 1, f"bob's Python kernel runs on a Pi ({on})", out)
    finally:
        for user, kernel_id, token in kernels:
            status, _ = http("DELETE", f"{base}/user/{user}/api/kernels/{kernel_id}", token)
            check(status == 204, f"{user}'s kernel {kernel_id[:8]} deleted", str(status))
        for user in ("alice", "bob"):
            http("DELETE", f"{base}/hub/api/users/{user}/server", admin_token)
        time.sleep(2)
        stop(hub)
    left = pi_kernel_pids(lab)
    check(not any(left.values()), "nothing left on the Pis", str(left))


# -- Enterprise Gateway ---------------------------------------------------------------------------

def enterprise_gateway(lab: PiLab, root: Path, check: Checks, eg: str) -> None:
    data = root / "shared-kernels"
    add_gateways(lab, data)
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, PYTHONPATH=REPO, JUPYTER_PATH=str(data), JUPYTER_DATA_DIR=str(data), EG_AUTH_TOKEN=token)
    proc = subprocess.Popen([eg, "--EnterpriseGatewayApp.ip=127.0.0.1", f"--EnterpriseGatewayApp.port={port}"],
                            cwd=root, env=env, stdout=open(root / "eg.log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/api")
        status, body = http("POST", f"{base}/api/kernels", token,
                            {"name": "edgekernel-python-any-pi", "env": {"KERNEL_USERNAME": "alice"}})
        check(status == 201, "EG starts edgekernel-python-any-pi", f"{status} {body}")
        if status == 201:
            ws = f"ws://127.0.0.1:{port}/api/kernels/{body['id']}/channels"
            status_, out = asyncio.run(run_cell(ws, token, WHERE))
            on = [name for name, pi in lab.pis.items() if pi.address in out]
            print(f"     the kernel's addresses: {' | '.join(l.split()[3] for l in out.splitlines() if l.strip())}")
            # The documented outcome for EG 3.x (it pins jupyter_client 6, which has no provisioners):
            # if this fails, a newer EG honours kernel_provisioner and the README should say so.
            check(not on and "10.231.0.1/24" in out,
                  "EG 3.x ignores metadata.kernel_provisioner: the kernel runs on the gateway host, not a Pi",
                  f"it runs on {on}")
            status, _ = http("DELETE", f"{base}/api/kernels/{body['id']}", token)
            check(status == 204, "EG deletes the kernel", str(status))
    finally:
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("server", choices=["jupyterhub", "enterprise-gateway"])
    parser.add_argument("--eg", default="jupyter-enterprisegateway", help="the jupyter-enterprisegateway executable")
    args = parser.parse_args()
    reason = lab_unavailable_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    check = Checks()
    with tempfile.TemporaryDirectory(prefix="shared-lab-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        lab = PiLab(root / "lab")
        (root / "lab").mkdir()
        os.environ.update(JUPYTER_RUNTIME_DIR=str(root / "runtime"), JUPYTER_CONFIG_DIR=str(root / "config"))
        lab.up()
        try:
            if args.server == "jupyterhub":
                jupyterhub(lab, root, check)
            else:
                enterprise_gateway(lab, root, check, args.eg)
        except Exception as e:
            check(False, "unexpected error", repr(e))
            for log in ("hub.log", "eg.log"):
                if (root / log).exists():
                    print((root / log).read_text()[-3000:], file=sys.stderr)
        finally:
            lab.down()
    print(f"{'all checks passed' if not check.failed else f'{check.failed} check(s) failed'}")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
