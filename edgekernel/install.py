"""Install the kernelspecs (shipped inside the package: see edgekernel.data_files)."""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

from .boards import BOARD_KINDS
from .data_files import kernelspecs_dir

KERNEL_NAMES = tuple(kind.kernelspec for kind in BOARD_KINDS)


def display_names() -> dict[str, str]:
    """Kernelspec name -> the name Jupyter shows for it."""
    source = kernelspecs_dir()
    return {name: json.loads((source / name / "kernel.json").read_text())["display_name"] for name in KERNEL_NAMES}


def install(user: bool = False, prefix: str | None = None) -> list[tuple[str, str]]:
    """Install every kernelspec; return (name, installed path) pairs.

    The kernel runs with the Python that ran this install, so a kernel never
    starts in an environment where edgekernel is missing.
    """
    source = kernelspecs_dir()
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
