"""The ipykernel internals this kernel relies on, in one place, each with why.

Everything else in edgekernel.kernel uses ipykernel's public API (the wrapper-kernel
methods do_execute, do_complete, ...; session.send; get_parent/set_parent). These
few are not public but have no public equivalent; ipykernel upgrades are checked here.
"""
from __future__ import annotations

from typing import Any


def current_request(kernel: Any) -> tuple[Any, dict[str, Any]]:
    """(ident, parent) of the shell request being handled.

    Why: the board's input() and password prompts are answered on the stdin channel,
    addressed to the requesting front end by this ident; ipykernel keeps it in a
    context variable that a worker thread cannot read, so it is read here, on the
    event loop, and carried along.
    """
    return kernel._get_shell_context_var(kernel._shell_parent_ident), kernel.get_parent("shell")


def iopub_topic(kernel: Any, msg_type: str) -> bytes:
    """The IOPub topic ipykernel's own messages use (front ends may filter by it)."""
    return kernel._topic(msg_type)


def shell_is_busy(kernel: Any) -> bool:
    """True while a shell request (a cell) is being handled.

    Why: ipykernel 7 runs one shell request at a time under this lock; the kernel answers
    completion, inspection and kernel_info at once instead of queueing them behind a cell.
    """
    lock = getattr(kernel, "_main_asyncio_lock", None)
    return lock is not None and lock.locked()


def let_ipython_read_stdin(kernel: Any, allowed: bool) -> None:
    """Why: IPython's getpass()/input() in %%local cells ask ipykernel, which checks this flag
    (IPythonKernel.do_execute sets it for its own cells; our board cells bypass it)."""
    kernel._allow_stdin = allowed


def pause_before_reply(kernel: Any, host_python: bool) -> None:
    """Why: after every cell ipykernel sleeps 0.5 ms before the reply (`_execute_sleep`, a
    configurable trait) so that host Python's sys.stdout has flushed. A board cell's output
    is sent as messages before do_execute returns, so it has nothing to wait for; %%local
    cells (host Python) keep the pause."""
    default = type(kernel).class_traits()["_execute_sleep"].default_value
    kernel._execute_sleep = default if host_python else 0.0
