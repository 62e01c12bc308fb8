"""Where edgekernel keeps per-machine runtime state (advertised boards, gateway kernels, locks).

``$EDGEKERNEL_RUNTIME_DIR`` wins; else ``$XDG_RUNTIME_DIR/edgekernel``; else ``~/.cache/edgekernel/run``.
Knows nothing of Jupyter, so the device layer can use it.
"""
from __future__ import annotations

import os
from pathlib import Path

RUNTIME_ENV = "EDGEKERNEL_RUNTIME_DIR"


def runtime_dir(*parts: str, create: bool = True) -> Path:
    """The runtime directory (or a subdirectory of it), created private to this user."""
    base = os.environ.get(RUNTIME_ENV)
    if base:
        root = Path(base)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        root = Path(os.environ["XDG_RUNTIME_DIR"]) / "edgekernel"
    else:
        root = Path.home() / ".cache" / "edgekernel" / "run"
    path = root.joinpath(*parts)
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
