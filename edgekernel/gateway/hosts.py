"""Choosing a Pi for a kernel that may run on any of them: the least-loaded, ties taken in turn.

Load is the number of gateway kernels running on each Pi, asked of the Pi itself over SSH, so
several laptops (or a shared Jupyter server) sharing a pool see each other's kernels.
"""
from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor

from .ssh import GatewayError, SSHHost

_turn = itertools.count()


def pi_load(host: SSHHost, python: str) -> int:
    out = host.run([python, "-m", "edgekernel.gateway.remote", "status"], timeout=20, python=python)
    return int(json.loads(out.splitlines()[-1])["kernels"])


def choose_host(hosts: list[SSHHost], python: str) -> SSHHost:
    """The reachable Pi running the fewest kernels; equal loads rotate (round-robin)."""
    if len(hosts) == 1:
        return hosts[0]
    with ThreadPoolExecutor(len(hosts)) as pool:
        results = list(pool.map(lambda h: _try_load(h, python), hosts))
    loads = [(load, i) for i, (load, _) in enumerate(results) if load is not None]
    if not loads:
        raise GatewayError(f"no Pi reachable for this kernel: {results[0][1]}")
    least = min(load for load, _ in loads)
    candidates = [i for load, i in loads if load == least]
    return hosts[candidates[next(_turn) % len(candidates)]]


def _try_load(host: SSHHost, python: str) -> tuple[int | None, str]:
    try:
        return pi_load(host, python), ""
    except GatewayError as exc:
        return None, str(exc)
