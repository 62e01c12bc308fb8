"""Process liveness, read from /proc: the one place edgekernel asks whether a process lives.

A zombie counts as gone (its program has ended; only its parent's wait is missing), so a
board, kernel or broker that exited is never taken for a running one.
"""
from __future__ import annotations

import os
import time


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The command name may hold spaces and parentheses: split after the last ')'.
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """True while `pid` runs (not a zombie)."""
    fields = _stat_fields(pid) if pid > 0 else None
    return fields is not None and fields[0] not in (b"Z", b"X")


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is `pid`."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def descendants(pid: int) -> set[int]:
    """Every living process below `pid` (children, grandchildren, ...)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children_of(todo.pop()):
            if child not in found and alive(child):
                found.add(child)
                todo.append(child)
    return found


def wait_gone(pids: set[int] | list[int], timeout: float = 10.0) -> set[int]:
    """Wait up to `timeout` for the processes to end; those still alive then."""
    deadline = time.monotonic() + timeout
    left = {p for p in pids if alive(p)}
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {p for p in left if alive(p)}
    return left
