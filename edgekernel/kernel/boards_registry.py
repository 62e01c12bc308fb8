"""The notebook's boards by name: each a Connection, its own worker thread and its own %%bg job.

A notebook starts with one board slot, named ``board`` (DEFAULT_NAME), which connects by
itself on the first board cell exactly as a single-board kernel always has. `--as NAME` on a
connect magic adds a named board; `%board NAME` makes one the *active* board (the one later
cells run on), `%%on NAME` runs one cell elsewhere.

Every exchange with one board runs on that board's one worker thread, so two boards never wait
for each other and each has a single place where its I/O happens (Kernel -> Interrupt is Ctrl-C
to the board of the running request). A worker thread knows its slot (`worker_slot()`), so
code running there (a magic, a transfer, a %%bg job) always reaches its own board.

The registry also owns the session's state file: what a restarted kernel reconnects to, for
every board (URLs, emulator kinds, the *names* of password variables; never a password), and
which board was active.

It knows no Jupyter messages: the kernel hands it `say` and `ask_secret`.
"""
from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..boards import BoardKind
from .connection import AskSecret, Connection, Say
from .introspect import SignatureIndex
from .magics import HostError

DEFAULT_NAME = "board"
# Names end up in file names (the session log, an emulated board's flash folder) and in magics.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,31}")
T = TypeVar("T")

_worker_local = threading.local()


def worker_slot() -> "BoardSlot | None":
    """The board whose worker thread this is (None on any other thread)."""
    return getattr(_worker_local, "slot", None)


def _mark_worker(slot: "BoardSlot") -> None:
    _worker_local.slot = slot


class BoardSlot:
    """One board of the notebook: its Connection, its worker thread, its %%bg job, its signatures."""

    def __init__(self, name: str, connection: Connection) -> None:
        self.name = name
        self.connection = connection
        self.bg_job: Any = None                       # edgekernel.kernel.background.BackgroundJob
        self.signatures = SignatureIndex()           # functions defined by cells run on this board
        self.jobs = 0                                # submitted and not finished
        self.closed = False                          # disconnected for good (%disconnect NAME) or shut down
        # Kernel -> Interrupt during this board's current request. The board's Ctrl-C only stops code that
        # is running; host-side loops between board operations (%mip's files) check this instead.
        self.interrupt_requested = threading.Event()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"board-{name}",
                                          initializer=_mark_worker, initargs=(self,))

    @property
    def busy(self) -> bool:
        """True while this board's worker has a job (a cell, a magic, a transfer, a %%bg job)."""
        return self.jobs > 0

    @property
    def listed(self) -> bool:
        """Shown by %boards: connected, or remembered (a lost link, a restarted kernel's board)."""
        return self.connection.connected or self.connection.remembered

    def submit(self, work: Callable[[], T]) -> "Future[T]":
        if self.closed:
            # e.g. the rest of a `%%on left` cell after its `%disconnect`
            raise HostError("NotConnected", f"{self.label} was disconnected: connect it again with --as {self.name}")
        self.jobs += 1

        def job() -> T:
            try:
                return work()
            finally:
                self.jobs -= 1
        return self._worker.submit(job)

    def check_free(self) -> None:
        job = self.bg_job
        if job is not None and job.running:
            raise HostError("BoardBusy", f"{self.label} busy: a %%bg job is running (%bg shows it, %bg stop ends it)")

    @property
    def label(self) -> str:
        """How messages name this board: "board" alone, "board 'a'" for a named one."""
        return "board" if self.name == DEFAULT_NAME else f"board '{self.name}'"

    def state_text(self) -> str:
        connection = self.connection
        if connection.connected:
            job = self.bg_job
            if job is not None and job.running:
                return "connected, running a %%bg job"
            return "connected, busy" if self.busy else "connected"
        if connection.restoring:
            return "reconnects when used (kernel restarted)"
        return f"not connected (reconnect: {connection.reconnect_hint()})"

    def stop_background_job(self) -> None:
        job, self.bg_job = self.bg_job, None
        if job is not None and job.running:
            job.stop()

    def close(self, *, restart: bool) -> None:
        """At shutdown (or when forgotten): every step runs whatever the one before did."""
        self.closed = True
        try:
            self.stop_background_job()
        finally:
            try:
                self.connection.close(restart=restart)
            finally:
                self._worker.shutdown(wait=False, cancel_futures=True)


class BoardRegistry:
    """The notebook's boards by name, which one is active, and the session's state file."""

    def __init__(self, session_files: tuple[Path, Path], profile: BoardKind, *, say: Say,
                 ask_secret: AskSecret) -> None:
        self.state_file, self.log_path = session_files
        self.profile = profile
        self.say = say
        self.ask_secret = ask_secret
        self.slots: dict[str, BoardSlot] = {}
        saved = self._read_state()
        raw = saved.get("boards")
        boards: dict[str, Any] = raw if isinstance(raw, dict) else {}
        self.active = DEFAULT_NAME
        self._add(DEFAULT_NAME, boards.get(DEFAULT_NAME))
        for name, state in boards.items():
            if name != DEFAULT_NAME and isinstance(name, str) and _NAME.fullmatch(name) and isinstance(state, dict):
                self._add(name, state)
        if saved.get("active") in self.slots:
            self.active = saved["active"]

    # -- the state file ----------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def save(self) -> None:
        """Write what a restarted kernel reconnects to (called whenever a board's state changes)."""
        # (A snapshot: a board's worker may call this while the event loop adds a board.)
        boards = {name: slot.connection.saved_state for name, slot in list(self.slots.items())
                  if slot.connection.saved_state is not None}
        if not boards:
            self.state_file.unlink(missing_ok=True)
            return
        self.state_file.write_text(json.dumps({"boards": boards, "active": self.active}))

    # -- slots -----------------------------------------------------------------------------------

    def _log_path(self, name: str) -> Path:
        # The default board keeps the session's log name; a named board's log sits beside it.
        return self.log_path if name == DEFAULT_NAME else self.log_path.with_suffix(f".{name}.log")

    def _add(self, name: str, restore: dict[str, Any] | None) -> BoardSlot:
        connection = Connection(self._log_path(name), self.profile, name=name, default=name == DEFAULT_NAME,
                                restore=restore, on_state=self.save, say=self.say, ask_secret=self.ask_secret)
        slot = self.slots[name] = BoardSlot(name, connection)
        return slot

    def names(self) -> list[str]:
        """The boards %boards lists, in the order they were added."""
        return [name for name, slot in self.slots.items() if slot.listed]

    def _names_hint(self) -> str:
        names = self.names()
        if not names:
            return "no board is connected yet (connect one: %serialconnect --port PATH --as NAME, " \
                   "or %serialconnect --emulator unix --as NAME)"
        return "the boards: " + ", ".join(names) + " (%boards lists them)"

    def get(self, name: str) -> BoardSlot:
        """The board named `name`; unknown: a one-line error naming the boards there are."""
        slot = self.slots.get(name)
        if slot is None or not (slot.listed or name == self.active):
            raise HostError("UnknownBoard", f"no board named {name!r}: {self._names_hint()}")
        return slot

    @property
    def active_slot(self) -> BoardSlot:
        return self.slots[self.active]

    def activate(self, name: str) -> BoardSlot:
        """Make `name` the board later cells run on."""
        slot = self.get(name)
        if self.active != name:
            self.active = name
            self.save()
        return slot

    def claim(self, name: str, target: str | None) -> tuple[BoardSlot, bool]:
        """The slot a connect magic's `--as NAME` connects: (slot, made now).

        A name held by a connected board is refused unless the magic connects that same board
        again (`target`: its URL, or "emulator KIND"), as re-running a notebook's connect cell does.
        """
        if not _NAME.fullmatch(name):
            raise HostError("UsageError", f"--as {name!r}: a board's name is a letter or _ then letters, digits, "
                                          "_ or - (up to 32), e.g. --as left")
        slot = self.slots.get(name)
        if slot is None:
            return self._add(name, None), True
        connection = slot.connection
        if connection.connected and (target is None or target != connection.target):
            raise HostError("NameTaken", f"the name {name!r} is taken by {connection.where}: choose another "
                                         f"(%boards lists the boards), or %disconnect {name} first")
        return slot, False

    def forget(self, slot: BoardSlot) -> None:
        """Drop a named board (after %disconnect NAME, or a failed first connect); the default stays."""
        if slot.name == DEFAULT_NAME or self.slots.get(slot.name) is not slot:
            return
        del self.slots[slot.name]
        if self.active == slot.name:
            listed = self.names()
            self.active = listed[0] if listed else DEFAULT_NAME
        slot.close(restart=False)
        self.save()

    def rows(self) -> list[tuple[str, str, str, bool]]:
        """(name, where, state, active) for each listed board."""
        return [(name, slot.connection.where_short, slot.state_text(), name == self.active)
                for name, slot in self.slots.items() if slot.listed]

    def close(self, *, restart: bool) -> list[BaseException]:
        """Close every board at shutdown (a restart keeps the state file); the failures, for the log."""
        failures: list[BaseException] = []
        for slot in list(self.slots.values()):
            try:
                slot.close(restart=restart)
            except Exception as exc:
                failures.append(exc)
        return failures
