"""Fixtures and helpers for tests/test_gateway.py: the simulated Pis, kernelspecs written by
`edgekernel gateway add`, and small Jupyter-client helpers. Imported explicitly by the test module."""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import KernelManager

from kernel_fixtures import started_client
from pi_lab import PiLab, lab_unavailable_reason, wait_gone

CELL_TIMEOUT = 60.0


@dataclass
class Gateways:
    lab: PiLab
    data_dir: Path
    board_kernel: str       # kernelspec of pi1's emulated board
    any_pi_kernel: str      # Python 3 on any Pi
    board2_kernel: str = ""           # kernelspec of pi2's emulated board
    any_board_kernel: str = "edgekernel-any-free-board"

    def variant(self, base: str, name: str, **config: Any) -> str:
        """Install a copy of kernelspec `base` with provisioner config overrides; returns its name."""
        src = self.data_dir / "kernels" / base
        dst = self.data_dir / "kernels" / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        spec = json.loads((dst / "kernel.json").read_text())
        spec["metadata"]["kernel_provisioner"]["config"].update(config)
        spec["metadata"].pop("edgekernel_gateway", None)
        (dst / "kernel.json").write_text(json.dumps(spec))
        return name

    def kernel_pids(self, pi: str) -> set[int]:
        """Processes in the Pi's namespace other than sshd and the emulated board's."""
        board = self.lab.board_pids(pi)
        found = set()
        for pid in self.lab.pis[pi].netns_pids() - board:
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm != "sshd":
                found.add(pid)
        return found


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("pilab")
    settings = {"JUPYTER_DATA_DIR": str(root / "laptop-data"), "JUPYTER_RUNTIME_DIR": str(root / "laptop-runtime"),
                "JUPYTER_PATH": str(root / "laptop-data"), "JUPYTER_CONFIG_DIR": str(root / "laptop-config"),
                "IPYTHONDIR": str(root / "laptop-ipython")}
    lab = PiLab(root / "lab", boards={"pi1": 1, "pi2": 1})
    (root / "lab").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in settings.items():
            mp.setenv(key, value)
        lab.up()
        try:
            from edgekernel.cli import main
            for pi in ("pi1", "pi2"):
                assert main(["gateway", "add", pi, "--ssh", pi, "--ssh-config", str(lab.ssh_config)]) == 0
            board_kernel = "edgekernel-pi1-" + lab.board_port.removeprefix("/dev/").replace("/", "-")
            board2_kernel = "edgekernel-pi2-" + lab.board_ports["pi2"][0].removeprefix("/dev/").replace("/", "-")
            yield Gateways(lab, root / "laptop-data", board_kernel, "edgekernel-python-any-pi", board2_kernel)
        finally:
            lab.down()


# -- Jupyter client helpers --------------------------------------------------------------------

@dataclass
class CellResult:
    status: str
    stdout: str
    result: str | None
    ename: str | None


def execute(kc: Any, code: str, timeout: float = CELL_TIMEOUT) -> CellResult:
    stdout: list[str] = []
    result: list[str] = []

    def on_output(msg: dict[str, Any]) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            stdout.append(content["text"])
        elif kind == "execute_result":
            result.append(content["data"].get("text/plain", ""))

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=on_output)["content"]
    return CellResult(reply["status"], "".join(stdout), result[0] if result else None, reply.get("ename"))


class Kernels:
    """Starts kernels through the provisioner and shuts every one down, asserting nothing is left
    on any Pi."""

    def __init__(self, gateways: Gateways) -> None:
        self.gateways = gateways
        self.started: list[tuple[KernelManager, Any]] = []

    def start(self, name: str) -> tuple[KernelManager, Any]:
        km = KernelManager(kernel_name=name)
        km.start_kernel()
        kc = started_client(km)
        self.started.append((km, kc))
        kc.wait_for_ready(timeout=60)
        return km, kc

    def stop(self, km: KernelManager, kc: Any) -> None:
        kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel()
        self.started = [(k, c) for k, c in self.started if k is not km]

    def stop_all(self) -> None:
        for km, kc in list(self.started):
            self.stop(km, kc)
        left = {pi: wait_gone(self.gateways.kernel_pids(pi), 20) for pi in self.gateways.lab.pis}
        assert not any(left.values()), f"kernel processes left on the Pis: {left}"


@pytest.fixture
def kernels(gateways: Gateways) -> Iterator[Kernels]:
    k = Kernels(gateways)
    try:
        yield k
    finally:
        k.stop_all()


def where(kc: Any, board: bool = False) -> str:
    """The IPv4 addresses of the machine the kernel's host side runs on."""
    code = "import subprocess\nprint(subprocess.run(['ip', '-4', '-o', 'addr'], capture_output=True, text=True).stdout)"
    cell = execute(kc, ("%%local\n" + code) if board else code)
    assert cell.status == "ok", cell
    return cell.stdout


__all__ = ["Gateways", "Kernels", "execute", "where", "gateways", "kernels"]
