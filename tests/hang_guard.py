"""Run a call that must end on its own, with a generous guard against a hang.

The guard is not a latency check (tests assert behaviour, not wall-clock time):
it only turns "never returns" into a clear failure instead of a stuck suite.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

HANG_GUARD = 30.0


def returns(call: Callable[[], Any], guard: float = HANG_GUARD, what: str = "the call") -> Any:
    """Return call()'s result or re-raise its exception; fail if it is still running after `guard` s."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed back to the test's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(guard)
    assert not worker.is_alive(), f"{what} hung: still running after the {guard:.0f} s hang guard"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
