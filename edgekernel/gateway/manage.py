"""``edgekernel gateway add|list|remove``: register Pis and write their kernelspecs on this machine.

``add`` asks the Pi itself (``edgekernel.gateway.remote probe`` over SSH) which Python it has and
which boards are attached, then writes one kernelspec per board (pinned to that Pi and board) and
rewrites the "Python 3 on any Pi" and "MicroPython on any free board" kernelspecs over every
registered Pi. The registry of Pis is a small
JSON file next to the kernelspecs, so ``list`` and ``remove`` need no network.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.paths import jupyter_data_dir

from ..data_files import kernelspecs_dir
from ..boards import kind_for_bridge
from .ssh import GatewayError, SSHHost

PROVISIONER = "edgekernel-ssh"
ANY_PI_KERNEL = "edgekernel-python-any-pi"
ANY_BOARD_KERNEL = "edgekernel-any-free-board"
GATEWAY_KEY = "edgekernel_gateway"  # kernelspec metadata naming the Pi a spec belongs to


def _data_dir(prefix: str | None) -> Path:
    return Path(prefix) / "share" / "jupyter" if prefix else Path(jupyter_data_dir())


def _registry_path(prefix: str | None) -> Path:
    return _data_dir(prefix) / "edgekernel" / "gateways.json"


def load_registry(prefix: str | None = None) -> dict[str, dict[str, Any]]:
    try:
        return json.loads(_registry_path(prefix).read_text())
    except (OSError, ValueError):
        return {}


def _save_registry(registry: dict[str, dict[str, Any]], prefix: str | None) -> None:
    path = _registry_path(prefix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(registry, indent=1, sort_keys=True))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.") or "x"


def _provisioner(entry: dict[str, Any], hosts: list[str], board: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"hosts": hosts, "python": entry["python"]}
    if entry.get("ssh_config"):
        config["ssh_config"] = entry["ssh_config"]
    if board:
        config["board"] = board
    return {"provisioner_name": PROVISIONER, "config": config}


def _board_env(board: dict[str, Any]) -> tuple[dict[str, str], str]:
    """(the kernel's environment for a board the Pi found, what kind of board it is)."""
    found = kind_for_bridge(board.get("bridge"))
    # The kernel connects to the board the Pi found (EDGEKERNEL_PORT): an emulated one runs already.
    profile = "serial" if found.emulator else found.profile
    return {"EDGEKERNEL_PROFILE": profile, "EDGEKERNEL_PORT": board.get("by_id") or board["device"]}, \
        found.gateway_display


def board_spec(name: str, entry: dict[str, Any], board: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(kernelspec name, kernel.json) of the MicroPython kernel pinned to one board on one Pi."""
    env, kind = _board_env(board)
    device = env["EDGEKERNEL_PORT"]
    short = board["device"].removeprefix("/dev/")
    spec = {
        "argv": [entry["python"], "-m", "edgekernel.kernel", "-f", "{connection_file}"],
        "display_name": f"{kind} on {name} ({short})",
        "language": "python",
        "interrupt_mode": "signal",
        "env": env,
        "metadata": {"debugger": False, GATEWAY_KEY: name,
                     "kernel_provisioner": _provisioner(entry, [entry["ssh"]], device)},
    }
    return f"edgekernel-{_slug(name)}-{_slug(short)}", spec


def any_pi_spec(registry: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The Python 3 kernel that runs on the least-loaded registered Pi."""
    entries = [registry[n] for n in sorted(registry)]
    pythons = {e["python"] for e in entries}
    python = pythons.pop() if len(pythons) == 1 else "python3"
    configs = {e.get("ssh_config") or "" for e in entries}
    common = {"python": python, "ssh_config": configs.pop() if len(configs) == 1 else ""}
    return {
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 on any Pi",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": False, GATEWAY_KEY: "*",
                     "kernel_provisioner": _provisioner(common, [e["ssh"] for e in entries])},
    }


def any_board_spec(registry: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The MicroPython kernel that takes a free board on any registered Pi (None: no boards)."""
    entries = [registry[n] for n in sorted(registry)]
    boards = [{"host": e["ssh"], "board": _board_env(b)[0]["EDGEKERNEL_PORT"], "env": _board_env(b)[0]}
              for e in entries for b in e.get("boards", [])]
    if not boards:
        return None
    pythons = {e["python"] for e in entries}
    python = pythons.pop() if len(pythons) == 1 else "python3"
    configs = {e.get("ssh_config") or "" for e in entries}
    common = {"python": python, "ssh_config": configs.pop() if len(configs) == 1 else ""}
    provisioner = _provisioner(common, list(dict.fromkeys(b["host"] for b in boards)))
    provisioner["config"]["boards"] = boards
    return {
        "argv": [python, "-m", "edgekernel.kernel", "-f", "{connection_file}"],
        "display_name": "MicroPython on any free board",
        "language": "python",
        "interrupt_mode": "signal",
        "env": {},
        "metadata": {"debugger": False, GATEWAY_KEY: "*", "kernel_provisioner": provisioner},
    }


def logo_files() -> list[Path]:
    """The logos a gateway kernelspec shows in Jupyter: those of the MicroPython kernelspec."""
    source = kernelspecs_dir() / "micropython"
    return [source / name for name in ("logo-32x32.png", "logo-64x64.png")]


def _install(name: str, spec: dict[str, Any], prefix: str | None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / name
        staged.mkdir()
        (staged / "kernel.json").write_text(json.dumps(spec, indent=1))
        for logo in logo_files():
            shutil.copy(logo, staged / logo.name)
        return KernelSpecManager().install_kernel_spec(str(staged), name, user=prefix is None, prefix=prefix)


def _specs_of(gateway: str, prefix: str | None) -> list[tuple[str, str]]:
    """(name, directory) of installed kernelspecs that belong to `gateway` ('*' = the any-Pi spec)."""
    kernels = _data_dir(prefix) / "kernels"
    found = []
    for spec_file in sorted(kernels.glob("*/kernel.json")):
        try:
            spec = json.loads(spec_file.read_text())
        except (OSError, ValueError):
            continue
        if spec.get("metadata", {}).get(GATEWAY_KEY) == gateway:
            found.append((spec_file.parent.name, str(spec_file.parent)))
    return found


def _write_any_pi(registry: dict[str, dict[str, Any]], prefix: str | None) -> list[tuple[str, str]]:
    """Rewrite the kernelspecs over every Pi ("Python 3 on any Pi", "MicroPython on any free board")."""
    for _, path in _specs_of("*", prefix):
        shutil.rmtree(path, ignore_errors=True)
    if not registry:
        return []
    written = [(ANY_PI_KERNEL, _install(ANY_PI_KERNEL, any_pi_spec(registry), prefix))]
    any_board = any_board_spec(registry)
    if any_board is not None:
        written.append((ANY_BOARD_KERNEL, _install(ANY_BOARD_KERNEL, any_board, prefix)))
    return written


def add(name: str, ssh: str, *, ssh_config: str | None = None, python: str = "python3",
        prefix: str | None = None) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Check the Pi over SSH and write its kernelspecs. Returns (what the Pi reported, [(spec, path)])."""
    if name == "*" or not name.strip():
        raise GatewayError(f"{name!r} is not a usable gateway name: pick a short name such as pi-3")
    if ssh_config:
        ssh_config = os.path.abspath(ssh_config)
    host = SSHHost(ssh, ssh_config)
    out = host.run([python, "-m", "edgekernel.gateway.remote", "probe"], timeout=60, python=python)
    try:
        probe = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise GatewayError(f"{ssh} gave an unexpected answer to the probe: upgrade edgekernel there "
                           f"('ssh {ssh} {python} -m pip install -U edgekernel')") from None
    entry = {"ssh": ssh, "ssh_config": ssh_config or "", "python": probe["python"],
             "hostname": probe.get("hostname"), "edgekernel": probe.get("edgekernel"),
             "boards": [{k: b.get(k) for k in ("device", "by_id", "bridge", "board_guess", "usb_id")}
                        for b in probe.get("boards", [])]}
    registry = load_registry(prefix)
    for _, path in _specs_of(name, prefix):  # boards that left the Pi lose their kernel
        shutil.rmtree(path, ignore_errors=True)
    registry[name] = entry
    _save_registry(registry, prefix)
    written = [(spec_name, _install(spec_name, spec, prefix))
               for spec_name, spec in (board_spec(name, entry, b) for b in entry["boards"])]
    written += _write_any_pi(registry, prefix)
    return probe, written


def remove(name: str, prefix: str | None = None) -> list[str]:
    """Forget a Pi and delete its kernelspecs; returns the names of the deleted kernelspecs."""
    registry = load_registry(prefix)
    if name not in registry:
        known = ", ".join(sorted(registry)) or "none"
        raise GatewayError(f"no gateway named {name!r} (registered: {known}): see 'edgekernel gateway list'")
    removed = []
    over_all = {n for n, _ in _specs_of("*", prefix)}
    for spec_name, path in _specs_of(name, prefix):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(spec_name)
    del registry[name]
    _save_registry(registry, prefix)
    written = {n for n, _ in _write_any_pi(registry, prefix)}
    removed += [n for n in (ANY_PI_KERNEL, ANY_BOARD_KERNEL) if n in over_all and n not in written]
    return removed


def find_registry(prefix: str | None = None) -> tuple[dict[str, dict[str, Any]], str | None]:
    """(the registry, its prefix): under `prefix` if given; else this user's, else the first one on
    JUPYTER_PATH (a hub user's server finds the Pis its kernelspecs came from)."""
    if prefix is not None:
        return load_registry(prefix), prefix
    registry = load_registry(None)
    if registry:
        return registry, None
    from jupyter_core.paths import jupyter_path
    for data in jupyter_path():
        path = Path(data) / "edgekernel" / "gateways.json"
        if path.is_file():
            try:
                return json.loads(path.read_text()), None
            except (OSError, ValueError):
                continue
    return {}, None


def status(prefix: str | None = None) -> list[dict[str, Any]]:
    """Per registered Pi: its boards with who holds each (hub user, kernel id, since when, last
    activity) and its gateway kernels, read from the Pi over SSH; or the error that Pi gave."""
    from .hosts import pi_boards
    from concurrent.futures import ThreadPoolExecutor
    registry, _ = find_registry(prefix)
    if not registry:
        raise GatewayError("no gateways: add one with 'edgekernel gateway add NAME --ssh USER@HOST' "
                           "(or pass --prefix where the hub's kernelspecs are)")

    def ask(name: str) -> dict[str, Any]:
        entry = registry[name]
        try:
            answer = pi_boards(SSHHost(entry["ssh"], entry.get("ssh_config") or None), entry["python"], timeout=15)
            return {"name": name, "ssh": entry["ssh"], "reachable": True, "boards": answer.get("boards", []),
                    "kernels": answer.get("kernels", [])}
        except GatewayError as exc:
            return {"name": name, "ssh": entry["ssh"], "reachable": False, "error": str(exc), "boards": [],
                    "kernels": []}
        except (ValueError, IndexError):
            return {"name": name, "ssh": entry["ssh"], "reachable": False, "boards": [], "kernels": [],
                    "error": f"{entry['ssh']} gave an unexpected answer: upgrade edgekernel there"}
    names = sorted(registry)
    with ThreadPoolExecutor(len(names)) as pool:
        return list(pool.map(ask, names))


def listing(prefix: str | None = None) -> list[dict[str, Any]]:
    registry = load_registry(prefix)
    return [{"name": n, **registry[n], "kernels": [s for s, _ in _specs_of(n, prefix)]} for n in sorted(registry)]
