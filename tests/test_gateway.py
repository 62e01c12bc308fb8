"""Raspberry Pi gateways, end to end: two simulated Pis (network namespaces with their own sshd,
key-only login), kernels started through the edgekernel-ssh provisioner by jupyter_client, nbclient
and a Jupyter server, and jupyter-kernel-gateway running on a Pi behind an SSH tunnel.
Needs root (skips with the reason otherwise)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edgekernel.cli import main
from edgekernel.gateway.ssh import SSHHost
from edgekernel.gateway.websocket_nodelay import KERNEL_GATEWAY_OPTION
from edgekernel.processes import alive
from gateway_fixtures import execute, gateways, kernels, where  # noqa: F401  (fixtures)
from kernel_fixtures import started_client
from pi_lab import REPO, wait_gone

pytestmark = pytest.mark.timeout(300)


def pi_address(gateways, pi: str) -> str:
    return gateways.lab.pis[pi].address


def kernel_files(gateways) -> dict:
    return json.loads((gateways.data_dir / "kernels" / gateways.board_kernel / "kernel.json").read_text())


# -- gateway add / list / remove ----------------------------------------------------------------

def test_gateway_add_writes_pinned_board_and_any_pi_kernelspecs(gateways, capsys):
    spec = kernel_files(gateways)
    assert spec["display_name"] == f"MicroPython (emulated board) on pi1 ({gateways.lab.board_port[5:]})"
    prov = spec["metadata"]["kernel_provisioner"]
    assert prov["provisioner_name"] == "edgekernel-ssh"
    assert prov["config"]["hosts"] == ["pi1"] and prov["config"]["board"] == gateways.lab.board_port
    assert spec["env"]["EDGEKERNEL_PORT"] == gateways.lab.board_port
    any_pi = json.loads((gateways.data_dir / "kernels" / gateways.any_pi_kernel / "kernel.json").read_text())
    assert any_pi["metadata"]["kernel_provisioner"]["config"]["hosts"] == ["pi1", "pi2"]

    assert main(["gateway", "list", "--json"]) == 0
    listed = {g["name"]: g for g in json.loads(capsys.readouterr().out)}
    assert [b["device"] for b in listed["pi1"]["boards"]] == [gateways.lab.board_port]
    assert [b["device"] for b in listed["pi2"]["boards"]] == gateways.lab.board_ports["pi2"]
    assert listed["pi1"]["kernels"] == [gateways.board_kernel]
    any_board = json.loads((gateways.data_dir / "kernels" / gateways.any_board_kernel / "kernel.json").read_text())
    assert any_board["display_name"] == "MicroPython on any free board"
    assert [(b["host"], b["board"]) for b in any_board["metadata"]["kernel_provisioner"]["config"]["boards"]] == \
        [("pi1", gateways.lab.board_port), ("pi2", gateways.lab.board_ports["pi2"][0])]

    # A third name for pi2, then removed: the any-Pi kernel follows the registry.
    assert main(["gateway", "add", "spare", "--ssh", "pi2", "--ssh-config", str(gateways.lab.ssh_config)]) == 0
    any_pi = json.loads((gateways.data_dir / "kernels" / gateways.any_pi_kernel / "kernel.json").read_text())
    assert any_pi["metadata"]["kernel_provisioner"]["config"]["hosts"] == ["pi1", "pi2", "pi2"]
    assert main(["gateway", "remove", "spare"]) == 0
    any_pi = json.loads((gateways.data_dir / "kernels" / gateways.any_pi_kernel / "kernel.json").read_text())
    assert any_pi["metadata"]["kernel_provisioner"]["config"]["hosts"] == ["pi1", "pi2"]
    capsys.readouterr()
    assert main(["gateway", "remove", "nosuch"]) == 2
    assert "no gateway named 'nosuch' (registered: pi1, pi2)" in capsys.readouterr().err


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_errors_name_the_fix(gateways, capsys, tmp_path):
    cfg = str(gateways.lab.ssh_config)
    err = _one_line_error(capsys, ["gateway", "add", "x", "--ssh", "pi-unknown-key", "--ssh-config", cfg])
    assert "host key of pi-unknown-key is not known" in err and "run 'ssh pi-unknown-key' once" in err
    err = _one_line_error(capsys, ["gateway", "add", "x", "--ssh", "pi-off", "--ssh-config", cfg])
    assert "cannot reach pi-off over SSH" in err and "check the Pi is on" in err
    # A Python on the Pi without edgekernel (a bare venv, and no PYTHONPATH pointing at this checkout).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = tmp_path / "bare-python"
    bare.write_text(f"#!/bin/sh\nexec env -u PYTHONPATH {tmp_path / 'bare' / 'bin' / 'python'} \"$@\"\n")
    bare.chmod(0o755)
    err = _one_line_error(capsys, ["gateway", "add", "x", "--ssh", "pi2", "--ssh-config", cfg, "--python", str(bare)])
    assert f"edgekernel is not installed on pi2 for {bare}: run 'ssh pi2 {bare} -m pip install edgekernel'" in err
    assert main(["gateway", "list", "--json"]) == 0
    assert "x" not in {g["name"] for g in json.loads(capsys.readouterr().out)}


def test_unplugged_board_is_a_clear_error(gateways, kernels):
    from jupyter_client import KernelManager
    name = gateways.variant(gateways.board_kernel, "unplugged", board="/dev/pts/999999")
    km = KernelManager(kernel_name=name)
    with pytest.raises(Exception, match=r"board /dev/pts/999999 is not attached to .*\(unplugged\?\): plug it in"):
        km.start_kernel()
    assert not wait_gone(gateways.kernel_pids("pi1"), 15)


# -- kernels on the Pis ---------------------------------------------------------------------------

def test_board_kernel_runs_on_pi1_and_its_board(gateways, kernels):
    km, kc = kernels.start(gateways.board_kernel)
    assert f"{pi_address(gateways, 'pi1')}/24" in where(kc, board=True)     # host side of the kernel: on pi1
    cell = execute(kc, "import sys\nprint(sys.platform, sys.implementation.name)")
    assert cell.status == "ok" and "linux micropython" in cell.stdout   # board side: the emulated board
    assert execute(kc, "1+1").result == "2"
    # The board is held for the kernel's lifetime: a second kernel for it is refused, naming the holder.
    from jupyter_client import KernelManager
    second = KernelManager(kernel_name=gateways.board_kernel)
    with pytest.raises(Exception, match=f"board {gateways.lab.board_port} on .* is in use by kernel {km.kernel_id}"):
        second.start_kernel()


def test_python_kernel_goes_to_the_least_loaded_pi_in_turn(gateways, kernels):
    km1, kc1 = kernels.start(gateways.any_pi_kernel)
    km2, kc2 = kernels.start(gateways.any_pi_kernel)
    first, second = where(kc1), where(kc2)
    pi1, pi2 = f"{pi_address(gateways, 'pi1')}/24", f"{pi_address(gateways, 'pi2')}/24"
    assert {(pi1 in first), (pi1 in second)} == {True, False}
    assert {(pi2 in first), (pi2 in second)} == {True, False}
    kernels.stop(km1, kc1)
    kernels.stop(km2, kc2)
    # Equal loads: consecutive kernels take the Pis in turn.
    hosts = []
    for _ in range(2):
        km, kc = kernels.start(gateways.any_pi_kernel)
        hosts.append(km.provisioner.host.destination)
        kernels.stop(km, kc)
    assert sorted(hosts) == ["pi1", "pi2"]


def test_interrupt_python_and_board_kernels(gateways, kernels):
    for name, loop in ((gateways.any_pi_kernel, "import time\ntime.sleep(60)"),
                       (gateways.board_kernel, "while True:\n    pass")):
        km, kc = kernels.start(name)
        # stop_on_error=False: ipykernel 7 sends the error reply before it starts aborting queued requests,
        # so a request sent the moment the reply arrives can land in that window and be aborted (seen under
        # load). Aborting what was queued behind an error is ipykernel's business, not what is tested here.
        msg_id = kc.execute(loop, stop_on_error=False)
        time.sleep(1.0)
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=30)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = kc.get_shell_msg(timeout=30)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        assert execute(kc, "1+1").result == "2"
        kernels.stop(km, kc)


def test_restart_keeps_clients_and_leaves_nothing_on_the_pi(gateways, kernels):
    km, kc = kernels.start(gateways.board_kernel)
    assert execute(kc, "x = 41").status == "ok"
    old_pid = km.provisioner.remote_pid
    ports = km.get_connection_info()
    km.restart_kernel()
    kc.wait_for_ready(timeout=60)
    assert km.get_connection_info()["shell_port"] == ports["shell_port"]
    assert execute(kc, "1+1").result == "2"      # the client made before the restart still works
    new_pid = km.provisioner.remote_pid
    assert new_pid != old_pid
    # Checked over SSH, independently of the provisioner: the old kernel is gone, the new one runs.
    assert gateways.lab.ssh("pi1", f"kill -0 {old_pid}").returncode != 0
    assert gateways.lab.ssh("pi1", f"kill -0 {new_pid}").returncode == 0
    kernels.stop(km, kc)
    assert gateways.lab.ssh("pi1", f"kill -0 {new_pid}").returncode != 0
    status = gateways.lab.ssh("pi1", "python3 -m edgekernel.gateway.remote status")
    assert json.loads(status.stdout)["kernels"] == 0
    assert not wait_gone(gateways.kernel_pids("pi1"), 10)


def _status(capsys) -> dict:
    capsys.readouterr()
    assert main(["gateway", "status", "--json"]) == 0
    return {pi["name"]: pi for pi in json.loads(capsys.readouterr().out)}


def test_any_free_board_takes_the_free_boards_then_says_none_is_left(gateways, kernels, capsys, monkeypatch):
    from jupyter_client import KernelManager
    monkeypatch.setenv("JUPYTERHUB_USER", "alice")   # as in a hub user's single-user server
    # Two starts at once: both ask the Pis, may pick the same board, and the board's lock decides.
    started: list = []
    threads = [threading.Thread(target=lambda: started.append(kernels.start(gateways.any_board_kernel)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(started) == 2
    held = {(km.provisioner.host.destination, km.provisioner.held_board) for km, _ in started}
    assert held == {("pi1", gateways.lab.board_port), ("pi2", gateways.lab.board_ports["pi2"][0])}
    for km, kc in started:
        cell = execute(kc, "import sys\nprint(sys.implementation.name, 6 * 7)")
        assert cell.status == "ok" and "micropython 42" in cell.stdout, cell
        here = where(kc, board=True)
        assert f"{pi_address(gateways, km.provisioner.host.destination)}/24" in here
    with pytest.raises(Exception, match=r"no free board: all 2 boards on 2 Pis are in use; see who holds them "
                                        r"with 'edgekernel gateway status'"):
        KernelManager(kernel_name=gateways.any_board_kernel).start_kernel()
    # Who holds them, read from the Pis.
    status = _status(capsys)
    ids = {km.kernel_id for km, _ in started}
    holders = [b["holder"] for pi in ("pi1", "pi2") for b in status[pi]["boards"]]
    assert {h["kernel_id"] for h in holders} == ids and {h["user"] for h in holders} == {"alice"}
    assert all(time.time() - 300 < h["started"] <= time.time() for h in holders)
    assert main(["gateway", "status"]) == 0
    text = capsys.readouterr().out
    assert "0 of 2 boards free" in text and all(f"alice        kernel {i}" in text for i in ids), text
    # One shut down: its board is free again, and the next start takes it.
    km, kc = started[0]
    board = km.provisioner.held_board
    kernels.stop(km, kc)
    assert "1 of 2 boards free" in (main(["gateway", "status"]), capsys.readouterr().out)[1]
    km, _ = kernels.start(gateways.any_board_kernel)
    assert km.provisioner.held_board == board


def test_a_pi_that_is_down_is_skipped_and_used_again_when_back(gateways, kernels, capsys):
    from jupyter_client import KernelManager
    gateways.lab.set_link("pi2", up=False)   # pi2's cable pulled
    try:
        km, kc = kernels.start(gateways.any_board_kernel)
        assert km.provisioner.host.destination == "pi1"
        assert execute(kc, "1+1").result == "2"
        with pytest.raises(Exception, match=r"no free board: every board on the Pis that answered is in use, "
                                            r"and 1 of the 2 Pis did not answer \(.*pi2.*\); see who holds them"):
            KernelManager(kernel_name=gateways.any_board_kernel).start_kernel()
        with pytest.raises(Exception, match=r"(cannot reach pi2 over SSH|pi2 did not answer).*check the Pi"):
            KernelManager(kernel_name=gateways.board2_kernel).start_kernel()
        status = _status(capsys)
        assert not status["pi2"]["reachable"] and "pi2" in status["pi2"]["error"]
        assert status["pi1"]["boards"][0]["holder"]["kernel_id"] == km.kernel_id
        assert execute(kc, "2+2").result == "4"   # pi1's user is untouched
    finally:
        gateways.lab.set_link("pi2", up=True)
    km2, kc2 = kernels.start(gateways.any_board_kernel)   # pi2 is back: used again
    assert km2.provisioner.host.destination == "pi2"
    assert execute(kc2, "1+2").result == "3"


def test_key_is_in_no_command_line_and_no_log(gateways, kernels, capfd):
    km, kc = kernels.start(gateways.board_kernel)
    km2, kc2 = kernels.start(gateways.any_pi_kernel)
    execute(kc, "print('hello')")
    for manager in (km, km2):
        key = manager.session.key
        assert key
        for entry in os.listdir("/proc"):   # one PID namespace: the laptop and both Pis
            if entry.isdigit():
                try:
                    assert key not in Path(f"/proc/{entry}/cmdline").read_bytes(), f"key in argv of pid {entry}"
                except OSError:
                    pass
    keys = [km.session.key, km2.session.key]
    kernels.stop(km, kc)
    kernels.stop(km2, kc2)
    out, err = capfd.readouterr()
    texts = [out.encode(), err.encode()]
    for path in Path(gateways.lab.root).rglob("*"):   # Pis' runtime dirs, kernel logs, sshd logs
        if path.is_file():
            texts.append(path.read_bytes())
    for key in keys:
        assert not any(key in t for t in texts), "a connection key was found in a log or file"


def _connect(address: str, port: int, netns: str | None = None) -> bool:
    code = (f"import socket\ntry:\n socket.create_connection(('{address}', {port}), timeout=3).close(); print('open')\n"
            "except OSError: print('closed')")
    cmd = [sys.executable, "-c", code]
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip() == "open"


def test_kernel_ports_only_through_the_tunnel(gateways, kernels):
    km, kc = kernels.start(gateways.any_pi_kernel)
    pi = gateways.lab.pis[km.provisioner.host.destination]
    other = gateways.lab.pis["pi2" if pi.name == "pi1" else "pi1"]
    remote_ports = km.provisioner.remote_info["ports"].values()
    for port in remote_ports:
        assert _connect("127.0.0.1", port, pi.netns)             # bound on the Pi's loopback...
        assert not _connect(pi.address, port, other.netns)      # ...unreachable from another host
        assert not _connect(pi.address, port)                   # ...and from the laptop
    for name in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
        local = km.get_connection_info()[name]
        assert _connect("127.0.0.1", local)                     # the tunnel's local end
        assert not _connect(gateways.lab.pis["pi1"].address.rsplit(".", 1)[0] + ".1", local)  # loopback only
    assert execute(kc, "1+1").result == "2"
    # The Pi never connects to the laptop: every TCP connection on its network is loopback or
    # an incoming SSH connection (local port 22).
    established = pi.exec("ss", "-Htn", "state", "established").stdout.split("\n")
    locals_ = [line.split()[-2] for line in established if line.strip()]
    assert any(local.endswith(":22") for local in locals_), established   # the laptop's SSH connection
    for local in locals_:
        assert local.startswith("127.0.0.1:") or local.endswith(":22"), established


def test_dead_ssh_connection_ends_the_kernel_on_the_pi(gateways, kernels):
    # Heartbeat every 0.5 s: the Pi ends the kernel after 2 s without one.
    name = gateways.variant(gateways.any_pi_kernel, "fast-heartbeat", heartbeat_interval=0.5, hosts=["pi2"])
    km, kc = kernels.start(name)
    remote_pid = km.provisioner.remote_pid
    gateways.lab.set_link("pi2", up=False)   # the network dies silently
    try:
        assert not wait_gone({remote_pid}, 30), "the kernel outlived its dead SSH connection"
    finally:
        gateways.lab.set_link("pi2", up=True)
    kernels.stop(km, kc)
    # The laptop side crashing (its ssh session killed) ends the kernel on the Pi too.
    km, kc = kernels.start(gateways.any_pi_kernel)
    remote_pid = km.provisioner.remote_pid
    km.provisioner.process.kill()
    assert not wait_gone({remote_pid}, 30), "the kernel outlived its killed SSH session"
    kernels.stop(km, kc)


def test_nbclient_runs_a_notebook_on_a_pi(gateways, kernels):
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys\nprint(sys.implementation.name)"),
                nbformat.v4.new_code_cell("%%local\nimport subprocess\n"
                                          "print(subprocess.run(['ip','-4','-o','addr'],capture_output=True,text=True).stdout)"),
                nbformat.v4.new_code_cell("6*7")]
    NotebookClient(nb, kernel_name=gateways.board_kernel, timeout=60, startup_timeout=60).execute()
    assert nb.cells[0].outputs[-1]["text"].strip().endswith("micropython")
    assert f"{pi_address(gateways, 'pi1')}/24" in nb.cells[1].outputs[-1]["text"]
    assert nb.cells[2].outputs[0]["data"]["text/plain"] == "42"
    assert not wait_gone(gateways.kernel_pids("pi1"), 15)


# -- HTTP/WebSocket: Kernel Gateway on a Pi through an SSH tunnel; a Jupyter server on the laptop ---

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, token: str | None, method: str = "GET", body: dict | None = None) -> tuple[int, dict | None]:
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    if token:
        req.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            data = r.read()
            return r.status, json.loads(data) if data else None
    except urllib.error.HTTPError as e:
        data = e.read()
        try:
            return e.code, json.loads(data) if data else None
        except ValueError:
            return e.code, None


def _ws_execute(base: str, kernel_id: str, token: str, code: str) -> dict:
    """Run one cell over the kernel's WebSocket; returns {'status', 'stdout', 'result'}."""
    import uuid

    import websocket
    ws = websocket.create_connection(f"ws://{base}/api/kernels/{kernel_id}/channels",
                                     header=[f"Authorization: token {token}"], timeout=60)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "t",
                                       "session": uuid.uuid4().hex, "version": "5.3"},
                            "parent_header": {}, "metadata": {}, "channel": "shell",
                            "content": {"code": code, "silent": False, "store_history": True,
                                        "user_expressions": {}, "allow_stdin": False}}))
        out = {"stdout": "", "result": None, "status": None}
        idle = False   # iopub and shell are separate streams: output is complete at iopub idle, not at the reply
        deadline = time.monotonic() + 60
        while (out["status"] is None or not idle) and time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "status":
                idle = idle or msg["content"]["execution_state"] == "idle"
            elif kind == "stream":
                out["stdout"] += msg["content"]["text"]
            elif kind == "execute_result":
                out["result"] = msg["content"]["data"]["text/plain"]
            elif kind == "execute_reply":
                out["status"] = msg["content"]["status"]
        return out
    finally:
        ws.close()


def _peer_socket_nodelay(pid: int, peer: tuple[str, int]) -> bool:
    """TCP_NODELAY of process pid's socket connected to peer (its fd borrowed with pidfd_getfd)."""
    import ctypes
    getfd = ctypes.CDLL(None, use_errno=True).syscall
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = getfd(438, pidfd, int(name), 0)   # SYS_pidfd_getfd on x86_64/arm64
            if fd < 0:
                continue
            with socket.socket(fileno=fd) as s:
                try:
                    if s.family == socket.AF_INET and s.getpeername() == peer:
                        return bool(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                except OSError:
                    pass
    finally:
        os.close(pidfd)
    raise AssertionError(f"process {pid} has no socket connected to {peer}")


def _becomes_nodelay(pid: int, peer: tuple[str, int], timeout: float = 5) -> bool:
    # The server sets it in its open() callback, just after writing the 101 the client has seen.
    deadline = time.monotonic() + timeout
    while not _peer_socket_nodelay(pid, peer):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _start_server(cmd: list[str], env: dict, netns: str | None = None) -> subprocess.Popen:
    import tempfile
    full = (["ip", "netns", "exec", netns] if netns else []) + cmd
    log = tempfile.TemporaryFile()   # a file, not a pipe: a chatty server never blocks on a full pipe
    proc = subprocess.Popen(full, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            proc.log.seek(0)  # type: ignore[attr-defined]
            raise AssertionError(f"server exited: {proc.log.read().decode()[-2000:]}")  # type: ignore[attr-defined]
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer")


def _stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert not alive(proc.pid)


def test_kernel_gateway_on_a_pi_through_an_ssh_tunnel(gateways, tmp_path):
    from edgekernel.install import install
    pi1, pi2 = gateways.lab.pis["pi1"], gateways.lab.pis["pi2"]
    install(prefix=str(tmp_path / "pi1-prefix"))   # the edgekernel kernelspecs as installed on the Pi
    token = os.urandom(16).hex()
    kg_port = _free_port()
    env = dict(os.environ, PYTHONPATH=REPO, KG_AUTH_TOKEN=token, EDGEKERNEL_RUNTIME_DIR=str(pi1.runtime),
               JUPYTER_PATH=str(tmp_path / "pi1-prefix" / "share" / "jupyter"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "pi1-runtime"), EDGEKERNEL_PORT=gateways.lab.board_port)
    kg = _start_server([sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
                        f"--KernelGatewayApp.port={kg_port}", "--KernelGatewayApp.default_kernel_name=micropython",
                        KERNEL_GATEWAY_OPTION],
                       env, pi1.netns)
    host = SSHHost("pi1", str(gateways.lab.ssh_config))
    local = _free_port()
    try:
        host.ensure_master()
        host.forward([(local, kg_port)])
        base = f"127.0.0.1:{local}"
        _wait_http(f"http://{base}/api", kg)
        assert _http(f"http://{base}/api/kernelspecs", None)[0] in (401, 403)      # token required
        assert not _connect(pi1.address, kg_port, pi2.netns)                      # loopback on the Pi only
        status, kernel = _http(f"http://{base}/api/kernels", token, "POST", {"name": "micropython"})
        assert status == 201, status
        cell = _ws_execute(base, kernel["id"], token, "import sys\nprint(sys.implementation.name)")
        assert cell["status"] == "ok" and "micropython" in cell["stdout"], cell
        here = _ws_execute(base, kernel["id"], token, "%%local\nimport subprocess\n"
                           "print(subprocess.run(['ip','-4','-o','addr'],capture_output=True,text=True).stdout)")
        assert f"{pi1.address}/24" in here["stdout"], here
        assert _http(f"http://{base}/api/kernels/{kernel['id']}/interrupt", token, "POST", {})[0] == 204
        assert _http(f"http://{base}/api/kernels/{kernel['id']}", token, "DELETE")[0] == 204
        assert _http(f"http://{base}/api/kernels/{kernel['id']}", token)[0] == 404
    finally:
        host.forward([(local, kg_port)], cancel=True)
        _stop_server(kg)
    assert not wait_gone(gateways.kernel_pids("pi1"), 15)


def test_a_jupyter_server_on_the_laptop_serves_pi_kernels(gateways, tmp_path):
    """The shared-lab path: a Jupyter server (Kernel Gateway here; JupyterHub's single-user servers use
    the same MappingKernelManager) starts kernels on the Pis through the same kernelspecs."""
    token = os.urandom(16).hex()
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=REPO, KG_AUTH_TOKEN=token, JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    server = _start_server([sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
                            f"--KernelGatewayApp.port={port}",
                            f"--KernelGatewayApp.default_kernel_name={gateways.any_pi_kernel}",
                            KERNEL_GATEWAY_OPTION], env)
    base = f"127.0.0.1:{port}"
    try:
        _wait_http(f"http://{base}/api", server)
        status, kernel = _http(f"http://{base}/api/kernels", token, "POST", {"name": gateways.any_pi_kernel})
        assert status == 201, status
        cell = _ws_execute(base, kernel["id"], token, "import subprocess\n"
                           "print(subprocess.run(['ip','-4','-o','addr'],capture_output=True,text=True).stdout)")
        on_a_pi = [pi.address for pi in gateways.lab.pis.values() if f"{pi.address}/24" in cell["stdout"]]
        assert len(on_a_pi) == 1 and f"{gateways.lab.gateway_address}/24" not in cell["stdout"], cell
        assert _http(f"http://{base}/api/kernels/{kernel['id']}/restart", token, "POST", {})[0] == 200
        assert _ws_execute(base, kernel["id"], token, "1+1")["result"] == "2"
        # Nagle off on the server's end of a kernel WebSocket (tornado turns it on again after the
        # upgrade; with it on, each reply waits ~40 ms for the client's delayed ACK: issue 7).
        import websocket
        ws = websocket.create_connection(f"ws://{base}/api/kernels/{kernel['id']}/channels",
                                         header=[f"Authorization: token {token}"], timeout=60)
        try:
            assert _becomes_nodelay(server.pid, ws.sock.getsockname())
        finally:
            ws.close()
        assert _http(f"http://{base}/api/kernels/{kernel['id']}", token, "DELETE")[0] == 204
    finally:
        _stop_server(server)
    for pi in gateways.lab.pis:
        assert not wait_gone(gateways.kernel_pids(pi), 15), f"kernel left on {pi}"


def test_a_jupyter_server_tells_the_user_why_a_board_is_refused(gateways, kernels, tmp_path):
    """JupyterLab, Notebook 7 and JupyterHub's single-user servers are jupyter_server, which answers
    "Unhandled error" for a failed kernel start unless the error is a tornado HTTPError: the reason
    ("board ... is in use by kernel X") must reach the user who is refused a board."""
    km, _ = kernels.start(gateways.board_kernel)   # another user's kernel holds pi1's board
    token = os.urandom(16).hex()
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=REPO, JUPYTER_TOKEN=token, JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    server = _start_server([sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1",
                            f"--ServerApp.port={port}", "--ServerApp.open_browser=False", "--allow-root",
                            f"--ServerApp.root_dir={tmp_path}"], env)
    base = f"127.0.0.1:{port}"
    try:
        _wait_http(f"http://{base}/api", server)
        status, reply = _http(f"http://{base}/api/kernels", token, "POST", {"name": gateways.board_kernel})
        assert status == 500, (status, reply)
        message = (reply or {}).get("message", "")
        assert f"is in use by kernel {km.kernel_id}" in message and "shut that kernel down first" in message, reply
        assert "\n" not in message.strip()
        assert _http(f"http://{base}/api/kernels", token)[1] == []   # the refused kernel is not listed
    finally:
        _stop_server(server)


def test_a_laptop_server_relaying_to_kernel_gateway_sends_at_once(tmp_path):
    """`jupyter lab --gateway-url=...` as the README launches it: the laptop server's end of the
    browser's kernel WebSocket has Nagle off too, and cells run through both hops."""
    import websocket

    from edgekernel.gateway.websocket_nodelay import NoDelayGatewayWebsocketConnection
    kg_token, server_token = os.urandom(16).hex(), os.urandom(16).hex()
    kg_port, port = _free_port(), _free_port()
    env = dict(os.environ, PYTHONPATH=REPO, JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    kg = _start_server([sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
                        f"--KernelGatewayApp.port={kg_port}", KERNEL_GATEWAY_OPTION],
                       dict(env, KG_AUTH_TOKEN=kg_token))
    connection_class = f"{NoDelayGatewayWebsocketConnection.__module__}.{NoDelayGatewayWebsocketConnection.__name__}"
    server = _start_server([sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1",
                            f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--no-browser",
                            "--allow-root", f"--ServerApp.root_dir={tmp_path}",
                            f"--gateway-url=http://127.0.0.1:{kg_port}",
                            f"--ServerApp.kernel_websocket_connection_class={connection_class}"],
                           dict(env, JUPYTER_TOKEN=server_token, JUPYTER_GATEWAY_AUTH_TOKEN=kg_token))
    base = f"127.0.0.1:{port}"
    try:
        _wait_http(f"http://127.0.0.1:{kg_port}/api", kg)
        _wait_http(f"http://{base}/api", server)
        status, kernel = _http(f"http://{base}/api/kernels", server_token, "POST", {"name": "python3"})
        assert status == 201, status
        assert _ws_execute(base, kernel["id"], server_token, "1+1")["result"] == "2"
        ws = websocket.create_connection(f"ws://{base}/api/kernels/{kernel['id']}/channels",
                                         header=[f"Authorization: token {server_token}"], timeout=60)
        try:
            assert _becomes_nodelay(server.pid, ws.sock.getsockname())
        finally:
            ws.close()
        assert _http(f"http://{base}/api/kernels/{kernel['id']}", server_token, "DELETE")[0] == 204
    finally:
        server.terminate()   # SIGINT would make jupyter_server ask for a confirmation first
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        assert not alive(server.pid)
        _stop_server(kg)


def test_jupyter_run_from_another_process(gateways, kernels, tmp_path):
    """`jupyter run` (another process, as a second laptop would be) runs a script on a Pi, and is
    refused the board that a kernel of this process holds."""
    script = tmp_path / "where.py"
    script.write_text("import subprocess\nprint(subprocess.run(['ip', '-4', '-o', 'addr'], capture_output=True, "
                      "text=True).stdout)\n")
    run = subprocess.run([sys.executable, "-m", "jupyter_client.runapp", f"--kernel={gateways.any_pi_kernel}",
                          str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert any(f"{pi.address}/24" in run.stdout for pi in gateways.lab.pis.values()), run.stdout
    km, kc = kernels.start(gateways.board_kernel)
    holding = gateways.kernel_pids("pi1")   # the board kernel and its keeper
    board_script = tmp_path / "board.py"
    board_script.write_text("print(1)\n")
    run = subprocess.run([sys.executable, "-m", "jupyter_client.runapp", f"--kernel={gateways.board_kernel}",
                          str(board_script)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert f"is in use by kernel {km.kernel_id}" in run.stderr, run.stderr[-2000:]
    for pi in gateways.lab.pis:
        left = wait_gone(gateways.kernel_pids(pi) - holding, 15)
        assert not left, f"jupyter run left kernels on {pi}: {left}"


def test_ports_handed_out_at_once_never_collide(tmp_path):
    """A class starts its kernels at once: ports chosen at the same moment by several processes
    (each hub user's server, each keeper on a Pi) must all differ, though none is bound yet."""
    code = ("import json, sys; from pathlib import Path; from edgekernel.gateway.remote import free_ports\n"
            "sys.stdin.readline()\n"
            f"print(json.dumps(free_ports(5, Path({str(tmp_path / 'ports.json')!r}))))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=REPO)) for _ in range(8)]
    try:
        for proc in procs:   # all imported and waiting: go
            proc.stdin.write("\n")
            proc.stdin.flush()
        ports = [p for proc in procs for p in json.loads(proc.communicate(timeout=60)[0])]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert len(ports) == 40 and len(set(ports)) == 40, sorted(ports)


def test_a_taken_local_port_gets_other_ports(gateways, kernels):
    """A local port taken by another process between its choice and the forward: the provisioner
    forwards from other ports, and the kernel works through them."""
    from jupyter_client import KernelManager
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        km = KernelManager(kernel_name=gateways.board_kernel)
        km.shell_port = taken.getsockname()[1]   # as if another process had bound it since
        km.start_kernel()
        kc = started_client(km)
        kernels.started.append((km, kc))
        kc.wait_for_ready(timeout=60)
        assert km.shell_port != taken.getsockname()[1]
        assert json.loads(Path(km.connection_file).read_text())["shell_port"] == km.shell_port
        assert execute(kc, "1+1").result == "2"
    finally:
        taken.close()
