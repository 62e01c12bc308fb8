"""Telemetry notebooks: the %mqtt magics for host IPython kernels.

    %load_ext edgekernel.telemetry
    %mqtt sub edgekernel/+/telemetry/# --as readings
    %mqtt plot readings --y temperature

The MQTT plumbing (client.py) and the recordings (recording.py) know nothing of IPython;
magics.py is the IPython layer.
"""
from __future__ import annotations

from typing import Any

_magics = None


def load_ipython_extension(ipython: Any) -> None:
    global _magics
    from .magics import TelemetryMagics
    if _magics is not None:
        return
    _magics = TelemetryMagics(ipython)
    ipython.register_magics(_magics)
    ipython.events.register("pre_run_cell", _magics.refresh_namespace)


def unload_ipython_extension(ipython: Any) -> None:
    global _magics
    if _magics is None:
        return
    ipython.events.unregister("pre_run_cell", _magics.refresh_namespace)
    _magics.close()
    _magics = None
