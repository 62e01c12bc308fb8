"""Kernel start time and `1+1` round trip: a local kernel vs the same kernel on a simulated Pi through
the edgekernel-ssh provisioner vs through jupyter-kernel-gateway on the Pi (HTTP/WebSocket over an SSH
tunnel), measured side by side in one run. Needs root (it builds the two-Pi lab of tests/pi_lab.py).

    sudo python bench/gateway.py [--rounds 200] [--starts 3]

Targets (issue 7): Pi kernel start <= 2 s; round-trip overhead over the local kernel <= 5 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from pi_lab import REPO, PiLab, lab_unavailable_reason  # noqa: E402


def _rtt_client(kc, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        reply = kc.execute_interactive("1+1", timeout=30, output_hook=lambda m: None)
        times.append(time.perf_counter() - t)
        assert reply["content"]["status"] == "ok"
    return times


def bench_manager(kernel_name: str, rounds: int, starts: int) -> tuple[list[float], list[float]]:
    from jupyter_client import KernelManager
    start_times, rtts = [], []
    for i in range(starts):
        km = KernelManager(kernel_name=kernel_name)
        t = time.perf_counter()
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        start_times.append(time.perf_counter() - t)
        kc.execute_interactive("1+1", timeout=30, output_hook=lambda m: None)   # warm-up
        if i == starts - 1:
            rtts = _rtt_client(kc, rounds)
        kc.stop_channels()
        km.shutdown_kernel()
    return start_times, rtts


class WSKernel:
    """A kernel of a Kernel Gateway, spoken to over its WebSocket as a Jupyter server does."""

    def __init__(self, base: str, token: str, name: str) -> None:
        import websocket
        self.base, self.token = base, token
        req = urllib.request.Request(f"http://{base}/api/kernels", method="POST",
                                     data=json.dumps({"name": name}).encode(),
                                     headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            self.id = json.loads(r.read())["id"]
        self.ws = websocket.create_connection(f"ws://{base}/api/kernels/{self.id}/channels",
                                              header=[f"Authorization: token {token}"], timeout=60)
        self.session = uuid.uuid4().hex

    def request(self, msg_type: str, content: dict, channel: str = "shell") -> None:
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": msg_type, "username": "b",
                                            "session": self.session, "version": "5.3"},
                                 "parent_header": {}, "metadata": {}, "channel": channel, "content": content}))
        reply = idle = False
        while not (reply and idle):
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            reply = reply or kind.endswith("_reply")
            idle = idle or (kind == "status" and msg["content"]["execution_state"] == "idle")

    def execute(self, code: str) -> None:
        self.request("execute_request", {"code": code, "silent": False, "store_history": True,
                                         "user_expressions": {}, "allow_stdin": False})

    def close(self) -> None:
        self.ws.close()
        req = urllib.request.Request(f"http://{self.base}/api/kernels/{self.id}", method="DELETE",
                                     headers={"Authorization": f"token {self.token}"})
        urllib.request.urlopen(req, timeout=60).close()


def bench_kg(base: str, token: str, name: str, rounds: int, starts: int) -> tuple[list[float], list[float]]:
    start_times, rtts = [], []
    for i in range(starts):
        t = time.perf_counter()
        k = WSKernel(base, token, name)
        k.request("kernel_info_request", {})
        start_times.append(time.perf_counter() - t)
        k.execute("1+1")
        if i == starts - 1:
            for _ in range(rounds):
                t = time.perf_counter()
                k.execute("1+1")
                rtts.append(time.perf_counter() - t)
        k.close()
    return start_times, rtts


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()
    reason = lab_unavailable_reason()
    if reason:
        print(f"bench/gateway.py: {reason}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="edgekernel-bench-gw-"))
    os.environ.update(JUPYTER_DATA_DIR=str(root / "data"), JUPYTER_RUNTIME_DIR=str(root / "runtime"),
                      PYTHONPATH=REPO)
    (root / "lab").mkdir()
    lab = PiLab(root / "lab").up()
    kg = None
    rows = []
    try:
        from edgekernel.gateway import manage
        from edgekernel.gateway.ssh import SSHHost
        from edgekernel.install import install
        manage.add("pi1", "pi1", ssh_config=str(lab.ssh_config))
        board_spec = "edgekernel-pi1-" + lab.board_port.removeprefix("/dev/").replace("/", "-")
        install(prefix=str(root / "prefix"))
        jpath = str(root / "prefix" / "share" / "jupyter")
        os.environ["JUPYTER_PATH"] = jpath

        # Kernel Gateway on pi1, on its loopback, reached through the SSH tunnel.
        token = os.urandom(16).hex()
        kg_port, local = _free_port(), _free_port()
        env = dict(os.environ, KG_AUTH_TOKEN=token, EDGEKERNEL_RUNTIME_DIR=str(lab.pis["pi1"].runtime),
                   JUPYTER_RUNTIME_DIR=str(root / "pi1-kg-runtime"), EDGEKERNEL_PORT=lab.board_port)
        kg = subprocess.Popen(["ip", "netns", "exec", lab.pis["pi1"].netns, sys.executable, "-m", "kernel_gateway",
                               "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={kg_port}"],
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        host = SSHHost("pi1", str(lab.ssh_config))
        host.ensure_master()
        host.forward([(local, kg_port)])
        base = f"127.0.0.1:{local}"
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://{base}/api", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)

        # The local Python kernel: the Pi's python3 spec, launched here.
        python_local = root / "data" / "kernels" / "local-python3"
        python_local.mkdir(parents=True)
        (python_local / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "local", "language": "python"}))
        any_pi = root / "data" / "kernels" / "edgekernel-python-any-pi" / "kernel.json"
        pinned = json.loads(any_pi.read_text())
        pinned["metadata"]["kernel_provisioner"]["config"]["hosts"] = ["pi1"]
        (root / "data" / "kernels" / "pi1-python3").mkdir()
        (root / "data" / "kernels" / "pi1-python3" / "kernel.json").write_text(json.dumps(pinned))
        board_local = root / "data" / "kernels" / "local-board"
        board_local.mkdir()
        (board_local / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "edgekernel.kernel", "-f", "{connection_file}"],
            "display_name": "local board", "language": "python", "interrupt_mode": "signal",
            "env": {"EDGEKERNEL_PROFILE": "serial", "EDGEKERNEL_PORT": lab.board_port}}))

        runs = [
            ("Python 3", "local", lambda: bench_manager("local-python3", args.rounds, args.starts)),
            ("Python 3", "Pi, provisioner", lambda: bench_manager("pi1-python3", args.rounds, args.starts)),
            ("Python 3", "Pi, Kernel Gateway + ssh -L", lambda: bench_kg(base, token, "python3", args.rounds, args.starts)),
            ("MicroPython board", "local", lambda: bench_manager("local-board", args.rounds, args.starts)),
            ("MicroPython board", "Pi, provisioner", lambda: bench_manager(board_spec, args.rounds, args.starts)),
            ("MicroPython board", "Pi, Kernel Gateway + ssh -L",
             lambda: bench_kg(base, token, "micropython", args.rounds, args.starts)),
        ]
        for kernel, path, run in runs:
            starts, rtts = run()
            rows.append((kernel, path, statistics.median(starts), statistics.median(rtts) * 1000,
                         statistics.quantiles(rtts, n=20)[-1] * 1000))
        host.forward([(local, kg_port)], cancel=True)
    finally:
        if kg is not None:
            kg.send_signal(signal.SIGINT)
            try:
                kg.wait(20)
            except subprocess.TimeoutExpired:
                kg.kill()
                kg.wait()
        lab.down()

    print(f"\n{args.rounds} x `1+1` per kernel (after one warm-up), start = median of {args.starts} starts "
          "until kernel_info replies\n")
    print("| kernel | where / path | start (s) | `1+1` median (ms) | p95 (ms) | overhead vs local (ms) |")
    print("|---|---|---|---|---|---|")
    local_rtt = {}
    for kernel, path, start, rtt, p95 in rows:
        if path == "local":
            local_rtt[kernel] = rtt
        over = "—" if path == "local" else f"{rtt - local_rtt[kernel]:+.2f}"
        print(f"| {kernel} | {path} | {start:.2f} | {rtt:.2f} | {p95:.2f} | {over} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
