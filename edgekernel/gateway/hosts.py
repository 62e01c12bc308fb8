"""Choosing where a kernel that may run on several Pis goes, asking the Pis themselves over SSH (so
several laptops, or every user's server on a JupyterHub, see each other's kernels):

- "any Pi": the least-loaded Pi (fewest gateway kernels), ties taken in turn;
- "any free board": the free boards (no kernel holds their lock), those of the Pis with the fewest
  held boards first, ties taken in turn; Pis that do not answer are left out and named.
"""
from __future__ import annotations

import itertools
import random
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .ssh import GatewayError, SSHHost

# Each process (every hub user's server) starts its turns somewhere else, so that users starting
# at the same moment do not all try the same Pi first.
_turn = itertools.count(random.randrange(1 << 16))


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


BOARDS_TIMEOUT = 8.0  # a Pi that is down must not hold up a start for long


def pi_boards(host: SSHHost, python: str, timeout: float = BOARDS_TIMEOUT) -> dict[str, Any]:
    """What `remote boards` reports on the Pi: its boards with their holders, and its kernels."""
    out = host.run([python, "-m", "edgekernel.gateway.remote", "boards"], timeout=timeout, python=python)
    return json.loads(out.splitlines()[-1])


def boards_of_pis(destinations: list[str], ssh_config: str | None,
                  python: str) -> dict[str, dict[str, Any] | GatewayError]:
    """`remote boards` of every Pi at once; a Pi that fails maps to its GatewayError."""
    def ask(destination: str) -> dict[str, Any] | GatewayError:
        try:
            return pi_boards(SSHHost(destination, ssh_config), python)
        except GatewayError as exc:
            return exc
        except (ValueError, IndexError, KeyError):
            return GatewayError(f"{destination} gave an unexpected answer: upgrade edgekernel there")
    if not destinations:
        return {}
    with ThreadPoolExecutor(len(destinations)) as pool:
        return dict(zip(destinations, pool.map(ask, destinations)))


def free_boards(boards: list[dict[str, Any]], ssh_config: str | None,
                python: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(the free boards among `boards`, best first; {Pi: why it did not answer})."""
    hosts = list(dict.fromkeys(b["host"] for b in boards))
    answers = boards_of_pis(hosts, ssh_config, python)
    down = {h: str(a) for h, a in answers.items() if isinstance(a, GatewayError)}
    held: dict[str, int] = {}
    free: list[dict[str, Any]] = []
    for host, answer in answers.items():
        if isinstance(answer, GatewayError):
            continue
        state = {}
        for b in answer.get("boards", []):
            for name in (b.get("device"), b.get("by_id")):
                if name:
                    state[name] = b.get("holder")
        held[host] = sum(1 for b in answer.get("boards", []) if b.get("holder"))
        free += [b for b in boards if b["host"] == host and b["board"] in state and state[b["board"]] is None]
    turn = next(_turn)
    order = {h: i for i, h in enumerate(hosts)}
    # Fewest held boards first spreads a class over the Pis; the turn rotates Pis that are level.
    free.sort(key=lambda b: (held[b["host"]], (order[b["host"]] - turn) % len(hosts)))
    return free, down
