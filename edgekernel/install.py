"""Install the kernelspecs (kernelspecs/ in a checkout, share/edgekernel/kernelspecs once pip-installed)."""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

KERNEL_NAMES = ("micropython-esp8266", "micropython", "micropython-emulator", "micropython-mqtt")


def kernelspec_sources() -> Path:
    candidates = [
        Path(__file__).resolve().parent.parent / "kernelspecs",          # a checkout / editable install
        Path(sys.prefix) / "share" / "edgekernel" / "kernelspecs",       # pip install
    ]
    for path in candidates:
        if (path / KERNEL_NAMES[0] / "kernel.json").exists():
            return path
    raise FileNotFoundError("edgekernel's kernelspecs are missing from this installation: reinstall with pip")


def install(user: bool = False, prefix: str | None = None) -> list[tuple[str, str]]:
    """Install every kernelspec; return (name, installed path) pairs.

    The kernel runs with the Python that ran this install, so a kernel never
    starts in an environment where edgekernel is missing.
    """
    source = kernelspec_sources()
    manager = KernelSpecManager()
    installed = []
    for name in KERNEL_NAMES:
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / name
            shutil.copytree(source / name, staged)
            spec_file = staged / "kernel.json"
            spec = json.loads(spec_file.read_text())
            spec["argv"][0] = sys.executable
            spec_file.write_text(json.dumps(spec, indent=1))
            path = manager.install_kernel_spec(str(staged), name, user=user, prefix=prefix)
            installed.append((name, path))
    return installed
