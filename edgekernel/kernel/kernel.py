"""The MicroPython Jupyter kernel.

Each cell is routed: `%magic` lines and `%%local` cells run here on the host
(in IPython, so pandas, matplotlib and widgets work); everything else runs on
the board through the device layer. This module speaks Jupyter messages and
never touches wire bytes.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import zmq
from ipykernel.ipkernel import IPythonKernel
from jupyter_core.paths import jupyter_runtime_dir

from .. import __version__
from ..boards import board_kind
from ..device import DeviceError, ExecResult, LinkClosed, LinkError
from ..device.board import Board
# The magics register themselves in the REGISTRY when imported; builtin_magics lists their modules.
from . import builtin_magics  # noqa: F401
from . import introspect
from .background import BackgroundJob
from .boards_registry import BoardRegistry, BoardSlot, worker_slot
from .connection import Connection
from .ipykernel_adapter import current_request, iopub_topic, let_ipython_read_stdin, pause_before_reply, shell_is_busy
from .magics import REGISTRY as magics
from .magics import HostError, MagicError, MagicHelp, split_leading_magics
from .output import FLUSH_INTERVAL, MAX_FLUSH_INTERVAL, StreamCoalescer, output_limit_from_env

PROFILE_ENV = "EDGEKERNEL_PROFILE"
KEEP_OUTPUT_BYTES = 64 << 20  # the latest board output kept in memory for %output
T = TypeVar("T")


@dataclass
class CellContext:
    """The cell being run: what a cell magic needs to run its body as this cell."""
    count: int
    silent: bool
    allow_stdin: bool


def answers_always(fault_reply: Any) -> Any:
    """Wrap a request handler (do_execute, do_complete, ...) so that it always
    returns a reply: ipykernel logs an exception escaping a handler and sends
    no reply at all, which leaves the front end's cell busy forever. Any
    exception becomes `fault_reply(kernel, exc, *args)` after the traceback
    is written to the kernel log."""
    def wrap(handler: Any) -> Any:
        @functools.wraps(handler)
        async def guarded(self: "MicroPythonKernel", *args: Any, **kwargs: Any) -> dict[str, Any]:
            try:
                reply = handler(self, *args, **kwargs)
                return await reply if inspect.isawaitable(reply) else reply
            except Exception as exc:
                self.log.error("%s failed", handler.__name__, exc_info=True)
                return fault_reply(self, exc, *args, **kwargs)
        return guarded
    return wrap


def host_fault(exc: BaseException) -> tuple[str, str]:
    """(ename, one-line evalue) for an unexpected host-side exception."""
    message = str(exc).strip().splitlines()
    text = message[0] if message else "no message"
    return type(exc).__name__, f"{text} (a fault on the host, not on the board: the kernel log has the details)"


def _execute_fault(kernel: "MicroPythonKernel", exc: Exception, *args: Any, **kwargs: Any) -> dict[str, Any]:
    ename, evalue = host_fault(exc)
    silent = bool(args[1] if len(args) > 1 else kwargs.get("silent", False))
    return kernel._error_reply(ename, evalue, kernel.shell.execution_count, silent)


def _request_fault(kernel: "MicroPythonKernel", exc: Exception, *args: Any, **kwargs: Any) -> dict[str, Any]:
    ename, evalue = host_fault(exc)
    return {"status": "error", "ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}


def _is_complete_fault(kernel: "MicroPythonKernel", exc: Exception, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"status": "unknown"}


def _shutdown_fault(kernel: "MicroPythonKernel", exc: Exception, restart: bool, *args: Any) -> dict[str, Any]:
    return {"status": "ok", "restart": restart}   # the kernel goes down whatever failed on the way


# `exit`/`quit` as a whole cell leave a console as they do with the python3 kernel.
_EXIT_CELL = re.compile(r"\s*(exit|quit)\s*(\(\s*(keep_kernel\s*=\s*(?P<keep>True|False))?\s*\))?\s*;?\s*")


class BoardHandle:
    """What `%%local` cells see as `board` (the active board) and `boards["NAME"]` (a named one):
    values move as data, never eval'd text.

    >>> board.eval("[p.value() for p in pins]")      # -> a Python list
    >>> boards["left"].exec("led.on()")                # -> output text
    """

    def __init__(self, kernel: "MicroPythonKernel", name: str | None = None) -> None:
        self._kernel = kernel
        self._name = name   # None: whichever board is active

    def eval(self, expression: str) -> Any:
        return self._kernel.call_on_board(lambda board: board.eval(expression), name=self._name)

    def exec(self, code: str) -> str:
        result = self._kernel.call_on_board(lambda board: board.exec(code), name=self._name)
        if result.error:
            raise DeviceError(f"{result.error.type}: {result.error.message}")
        return result.text

    def put(self, name: str, value: Any) -> None:
        """Set a board variable from plain host data (numbers, strings, lists, dicts...)."""
        if not name.isidentifier():
            raise ValueError(f"not a variable name: {name!r}")
        self.exec(f"{name} = {value!r}")

    def __repr__(self) -> str:
        slot = self._kernel.boards.slots.get(self._name or self._kernel.boards.active)
        connection = slot.connection if slot is not None else None
        board = connection.board if connection is not None and connection.connected else None
        named = f" {self._name!r}" if self._name else ""
        return f"<board{named} {board.description if board else '(not connected)'}>"


class BoardMap(Mapping[str, BoardHandle]):
    """`boards` in `%%local` cells: the notebook's boards by name (`boards["left"].eval("x")`)."""

    def __init__(self, kernel: "MicroPythonKernel") -> None:
        self._kernel = kernel

    def __getitem__(self, name: str) -> BoardHandle:
        if name not in self._kernel.boards.names():
            self._kernel.boards.get(name)   # the one-line error naming the boards there are
        return BoardHandle(self._kernel, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._kernel.boards.names())

    def __len__(self) -> int:
        return len(self._kernel.boards.names())

    def __repr__(self) -> str:
        return f"<boards {', '.join(self) or '(none connected)'}>"


class MicroPythonKernel(IPythonKernel):
    implementation = "edgekernel"
    implementation_version = __version__
    language_info = {
        "name": "python",
        "version": "3.4",
        "mimetype": "text/x-python",
        "file_extension": ".py",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "pygments_lexer": "python3",
        "nbconvert_exporter": "python",
    }
    help_links = [{"text": "MicroPython docs", "url": "https://docs.micropython.org/"}]

    @property
    def banner(self) -> str:
        return f"edgekernel {__version__}: {self.profile.display}. %lsmagic lists the magics."

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.profile = board_kind(os.environ.get(PROFILE_ENV))
        # The notebook's boards by name. Every exchange with one board (cells, magics, completion,
        # transfers, %%bg) runs on that board's one worker thread, so only one thing talks to a
        # board at a time, two boards never wait for each other, and Kernel -> Interrupt has one
        # meaning: Ctrl-C for whatever the running request's board is doing.
        self.boards = BoardRegistry(self._session_files(), self.profile, say=self.say, ask_secret=self.ask_secret)
        self._cell_slot: BoardSlot | None = None   # the board of a %%on cell while it runs
        self._interruptible: list[BoardSlot] = []  # boards of the requests awaited now (Interrupt -> Ctrl-C)
        self._sigint_previous: Any = None
        self.last_output = b""
        self.last_output_log: Path | None = None   # the session log of the board that printed last_output
        self.output_limit = output_limit_from_env()   # characters of a cell's output sent to the page
        self.pending_payload: list[dict[str, Any]] = []  # e.g. set_next_input from %fetchfile --load
        self._input_cancelled = threading.Event()
        self._request: tuple[Any, dict[str, Any] | None, bool] = (None, None, False)  # ident, parent, allow_stdin
        self.current_cell = CellContext(0, True, False)
        if self.shell is not None:
            self.shell.user_ns["board"] = BoardHandle(self)
            self.shell.user_ns["boards"] = BoardMap(self)

    def _session_files(self) -> tuple[Path, Path]:
        connection_file = getattr(self.parent, "abs_connection_file", None) or f"kernel-{os.getpid()}.json"
        stem = Path(connection_file).stem
        runtime = Path(jupyter_runtime_dir())
        runtime.mkdir(parents=True, exist_ok=True)
        # The connection file (and so these names) survives a kernel restart.
        return runtime / f"edgekernel-{stem}.state.json", runtime / f"edgekernel-{stem}.log"

    # -- the board, for magics and %%local ------------------------------------------------

    @property
    def current_slot(self) -> BoardSlot:
        """The board this code is for: on a board's worker that board; else the %%on cell's board
        while one runs; else the active board."""
        return worker_slot() or self._cell_slot or self.boards.active_slot

    @property
    def connection(self) -> Connection:
        """The current board's Connection (see current_slot)."""
        return self.current_slot.connection

    def interrupt_requested(self) -> bool:
        """True once Kernel -> Interrupt came during the current board's request (for magics that run
        several board operations: an interrupt between two of them reaches no running code)."""
        return self.current_slot.interrupt_requested.is_set()

    @property
    def board(self) -> Board | None:
        connection = self.connection
        return connection.board if connection.connected else None

    @property
    def log_path(self) -> Path:
        return self.connection.log_path

    @property
    def bg_job(self) -> BackgroundJob | None:
        """The current board's %%bg job (each board has its own)."""
        job: BackgroundJob | None = self.current_slot.bg_job
        return job

    @bg_job.setter
    def bg_job(self, job: BackgroundJob | None) -> None:
        self.current_slot.bg_job = job

    @property
    def signatures(self) -> introspect.SignatureIndex:
        """Signatures of functions defined by cells run on the current board."""
        return self.current_slot.signatures

    def check_board_free(self) -> None:
        self.current_slot.check_free()

    def require_board(self) -> Board:
        """The current board, connecting first if needed; refused while a %%bg job holds it."""
        slot = self.current_slot
        slot.check_free()
        return slot.connection.require()

    def say(self, text: str, name: str = "stdout") -> None:
        """A host-side message in the current cell's output (from any thread)."""
        parent = self._request[1]
        if parent is not None:
            self.session.send(self.iopub_socket, "stream", {"name": name, "text": text},
                              parent=parent, ident=iopub_topic(self, "stream"))

    def show(self, data: "str | dict[str, Any]", display_id: str, *, update: bool = False,
             parent: dict[str, Any] | None = None) -> None:
        """A display that later updates in place (progress, latest lines, %%plot's chart): `data` is text or
        a MIME bundle; `parent` is the request whose cell shows it (default: the current one; a %%bg job's
        chart keeps its own cell's after that cell ended)."""
        parent = parent or self._request[1]
        if parent is not None:
            msg_type = "update_display_data" if update else "display_data"
            bundle = {"text/plain": data} if isinstance(data, str) else data
            self.session.send(self.iopub_socket, msg_type,
                              {"data": bundle, "metadata": {}, "transient": {"display_id": display_id}},
                              parent=parent, ident=iopub_topic(self, msg_type))

    def ask_secret(self, prompt: str) -> str:
        """A hidden prompt in the front end (a password); HostError where it cannot ask."""
        ident, parent, allow_stdin = self._request
        if not allow_stdin or parent is None:
            raise HostError("NoPassword", f"this front end cannot ask for a password ({prompt.rstrip(': ')}): "
                                          "connect with --password-env VAR (VAR set in the kernel's environment)")
        answer = self._ask_front_end(prompt, ident, parent, password=True)
        if not answer:
            raise HostError("NoPassword", "no password entered: the board was not connected")
        return answer

    # -- the board worker ---------------------------------------------------------------

    @property
    def board_busy(self) -> bool:
        """True while the current board's worker has a job (a cell, a magic, a transfer, a %%bg job)."""
        return self.current_slot.busy

    def submit_to_board(self, work: Callable[[], T]) -> "Future[T]":
        """Queue `work` (it talks to the board) on the current board's worker."""
        return self.current_slot.submit(work)

    def call_on_board(self, work: Callable[[Board], T], *, name: str | None = None) -> T:
        """Run `work(board)` on the board's worker and wait for it (for %%local's `board` and
        `boards[name]`, which run in host IPython on this thread while the workers are idle)."""
        slot = self.boards.get(name) if name is not None else self.current_slot
        slot.check_free()
        return slot.submit(lambda: work(slot.connection.require())).result()

    async def on_board(self, work: Callable[[], T], *, slot: BoardSlot | None = None) -> T:
        """Run `work` on the board's worker (the current board's unless `slot`) and await it;
        Kernel -> Interrupt meanwhile is that board's Ctrl-C. A lost link disconnects that board."""
        slot = slot or self.current_slot
        if slot not in self._interruptible:
            slot.interrupt_requested.clear()
        future = asyncio.wrap_future(slot.submit(work))
        self._catch_sigint(slot)
        try:
            return await future
        except LinkClosed:
            slot.connection.disconnect()
            raise
        finally:
            self._release_sigint(slot)

    # -- connecting boards (for the connect magics) ---------------------------------------

    async def connect_board(self, name: str | None, connect: Callable[[Connection], Any], *,
                            target: str | None) -> None:
        """Run `connect(connection)` on that board's worker: `name` None connects the current board
        (replacing what it was connected to); a new name adds a board (`target`, its URL or "emulator
        KIND", tells a connect cell run again from a clash with another board). Connected with a
        name, it becomes the board later cells run on."""
        if name is None:
            slot, made = self.current_slot, False
        else:
            slot, made = self.boards.claim(name, target)
        slot.check_free()
        try:
            await self.on_board(lambda: connect(slot.connection), slot=slot)
        except BaseException:
            if made and not slot.listed:
                self.boards.forget(slot)   # a first connect that failed leaves no board behind
            raise
        if name is not None and self.boards.active != slot.name:
            others = [n for n in self.boards.names() if n != slot.name]
            self.boards.activate(slot.name)
            if others:
                self.say(f"cells now run on {slot.name!r} ({', '.join(repr(n) for n in others)} also connected: "
                         f"%board NAME switches, %%on NAME runs one cell there)\n")

    async def disconnect_board(self, name: str | None) -> str | None:
        """Disconnect a board (default: the current one) for good: a restart does not reconnect it,
        and a named board leaves the notebook. Its description, or None if it was not connected."""
        slot = self.boards.get(name) if name is not None else self.current_slot
        slot.check_free()
        was = await self.on_board(lambda: slot.connection.disconnect(forget=True), slot=slot)
        active = self.boards.active
        self.boards.forget(slot)
        if self.boards.active != active and self.boards.names():
            self.say(f"cells now run on {self.boards.active!r} (%boards lists the boards)\n")
        return was

    # -- execution -------------------------------------------------------------------

    @answers_always(_execute_fault)
    async def do_execute(self, code: str, silent: bool, store_history: bool = True,
                         user_expressions: dict[str, Any] | None = None, allow_stdin: bool = False,
                         *, cell_meta: Any = None, cell_id: Any = None) -> dict[str, Any]:
        store_history = store_history and not silent  # the messaging spec: silent forces it off
        leaving = _EXIT_CELL.fullmatch(code)
        if leaving:
            # IPython's exit/quit: the front end (jupyter console) asks to leave.
            count = self.shell.execution_count
            if store_history:
                self.shell.execution_count += 1
            payload = {"source": "ask_exit", "keepkernel": leaving.group("keep") == "True"}
            return {"status": "ok", "execution_count": count, "payload": [payload], "user_expressions": {}}
        let_ipython_read_stdin(self, allow_stdin)
        ident, parent = current_request(self)
        self._request = (ident, None if silent else parent, allow_stdin)
        magic_lines, rest = split_leading_magics(code, magics.body_magics)
        host_python = bool(magic_lines) and magic_lines[-1].split()[0] == "%%local"
        pause_before_reply(self, host_python)
        if host_python:
            # Host IPython cell: counts, history and errors as IPython does them.
            count = self.shell.execution_count

            async def leading_magics() -> None:
                await self._run_magic_lines(magic_lines[:-1], "")

            failure = await self._host_side(leading_magics(), count, silent)
            if failure is not None:
                return failure
            return await super().do_execute(rest, silent, store_history, user_expressions, allow_stdin,
                                            cell_meta=cell_meta, cell_id=cell_id)
        count = self.shell.execution_count
        if store_history:
            self.shell.execution_count += 1

        self.current_cell = CellContext(count, silent, allow_stdin)
        self.pending_payload = []
        reply = await self._host_side(self._board_cell(magic_lines, rest), count, silent)
        reply = reply or {"status": "ok", "execution_count": count, "payload": [], "user_expressions": {}}
        if self.pending_payload and reply["status"] == "ok":
            reply["payload"] = self.pending_payload
        return reply

    async def _board_cell(self, magic_lines: list[str], rest: str) -> dict[str, Any] | None:
        """The current cell's leading magics, then its board code (unless a cell magic took it)."""
        consumed, reply = await self._run_magic_lines(magic_lines, rest)
        if consumed:
            return reply
        if rest.strip():
            cell = self.current_cell
            return await self.execute_on_board(rest, cell.silent, cell.allow_stdin, cell.count)
        return None

    async def run_cell_on(self, name: str, body: str) -> dict[str, Any] | None:
        """Run `body` (board code, after magics of its own) as the current cell on the board `name`
        (%%on NAME): completion, file magics, %%bg and Interrupt follow it until the cell ends."""
        slot = self.boards.get(name)
        magic_lines, rest = split_leading_magics(body, magics.body_magics)
        if magic_lines and magic_lines[-1].split()[0] == "%%local":
            raise HostError("UsageError", f"%%on {name} runs board code: a %%local cell reaches that board as "
                                          f"boards[{name!r}] (boards[{name!r}].eval(...), .exec(...))")
        previous, self._cell_slot = self._cell_slot, slot
        try:
            return await self._board_cell(magic_lines, rest)
        finally:
            self._cell_slot = previous

    async def _host_side(self, work: Any, count: int, silent: bool) -> dict[str, Any] | None:
        """Await `work`; turn every host-side failure into an error reply (never silence)."""
        try:
            return await work
        except MagicHelp as help_text:
            self.say(str(help_text))
            return None
        except HostError as exc:
            return self._error_reply(exc.ename, exc.evalue, count, silent)
        except MagicError as exc:
            return self._error_reply("UsageError", str(exc), count, silent)
        except (LinkError, DeviceError, OSError) as exc:
            # (A lost link has disconnected its board already: on_board knows which board it was.)
            return self._error_reply(type(exc).__name__, str(exc), count, silent)
        except KeyboardInterrupt:
            # Kernel -> Interrupt while the cell's host-side part ran on the event loop.
            return self._error_reply("KeyboardInterrupt", "interrupted", count, silent)
        except Exception as exc:
            self.log.error("host-side failure in a cell", exc_info=True)
            ename, evalue = host_fault(exc)
            return self._error_reply(ename, evalue, count, silent)

    async def _run_magic_lines(self, lines: list[str], cell_body: str) -> tuple[bool, dict[str, Any] | None]:
        """Run %magic lines in order. Returns (a cell magic consumed the body, the reply it made).

        A magic whose handler is a coroutine function runs on the event loop and makes the
        cell's reply itself (e.g. %%plot runs its body with `run_board_cell`); the others run
        on the board worker (or at once when host_only).
        """
        consumed, reply = False, None
        for line in lines:
            word, _, arg_text = line.partition(" ")
            magic = magics.lookup(word[1:])
            if magic is None:
                raise MagicError(f"unknown magic {word} (%lsmagic lists them)")
            args = magic.parser.parse_line(arg_text)
            if inspect.iscoroutinefunction(magic.handler):
                reply = await magic.handler(self, args, cell_body)
            elif magic.host_only:
                magic.handler(self, args, cell_body)
            else:
                slot = self.current_slot
                slot.check_free()   # refused at once, not queued behind a %%bg job
                await self.on_board(functools.partial(magic.handler, self, args, cell_body), slot=slot)
            consumed = consumed or magic.is_cell
        return consumed, reply

    async def run_board_cell(self, code: str, *, observe: Callable[[bytes], None] | None = None) -> dict[str, Any]:
        """Run `code` on the board as the current cell (for cell magics that wrap a board cell)."""
        cell = self.current_cell
        return await self.execute_on_board(code, cell.silent, cell.allow_stdin, cell.count, observe=observe)

    async def execute_on_board(self, code: str, silent: bool, allow_stdin: bool, count: int, *,
                               observe: Callable[[bytes], None] | None = None) -> dict[str, Any]:
        """Run `code` as a board cell of this request: output streamed to the page, Out[count], errors.

        `observe` sees every byte the board prints (on the board worker), e.g. %%plot's parser.
        """
        loop = asyncio.get_running_loop()
        slot = self.current_slot
        slot.check_free()
        ident, parent = current_request(self)

        def send_stream(text: str) -> None:
            self.session.send(self.iopub_socket, "stream", {"name": "stdout", "text": text},
                              parent=parent, ident=iopub_topic(self, "stream"))

        tail_display = {"display_id": f"edgekernel-tail-{parent['header']['msg_id']}", "shown": False}

        def show_tail(text: str) -> None:
            # One display of the latest lines, updated in place.
            self.show(text, tail_display["display_id"], update=tail_display["shown"])
            tail_display["shown"] = True

        out = StreamCoalescer(send_stream, limit=self.output_limit, show_tail=show_tail,
                              where_all=f"%output --save FILE writes all of it to a file; every byte the board "
                                        f"sent is in {slot.connection.log_path}")
        collected = bytearray()

        def on_output(data: bytes) -> None:
            collected.extend(data)
            if len(collected) > 2 * KEEP_OUTPUT_BYTES:
                del collected[:-KEEP_OUTPUT_BYTES]   # the session log keeps every byte
            if not silent:
                out.feed(data)
            if observe is not None:
                observe(data)

        def on_input(prompt: str) -> str | None:
            if not allow_stdin:
                return None
            out.flush()
            return self._ask_front_end(prompt, ident, parent)

        def run() -> ExecResult:
            slot.check_free()
            return slot.connection.require().exec(code, on_output=on_output, on_input=on_input,
                                                  show_value=not silent)

        job = asyncio.ensure_future(self.on_board(run, slot=slot))

        def flush_while_running(interval: float) -> None:
            # The interval grows while output keeps flowing: prompt at first,
            # then a few messages a second however long the cell prints.
            sent = out.flush()
            if not job.done():
                loop.call_later(interval, flush_while_running,
                                min(MAX_FLUSH_INTERVAL, interval * 2) if sent else interval)

        loop.call_later(FLUSH_INTERVAL, flush_while_running, FLUSH_INTERVAL)
        try:
            result: ExecResult = await job
        except LinkClosed as exc:
            out.flush(final=True)
            self.last_output, self.last_output_log = bytes(collected), slot.connection.log_path
            slot.connection.disconnect()
            again = slot.connection.reconnect_hint()
            raise LinkClosed(f"{exc}; nothing was lost up to here (%output shows it). "
                             f"Reconnect with {again}") from None
        out.flush(final=True)
        self.last_output, self.last_output_log = bytes(collected), slot.connection.log_path
        slot.signatures.learn(code)
        if result.error or result.reset:
            return self._board_error_reply(result, code, count, silent)
        if result.value is not None and not silent:
            self.session.send(self.iopub_socket, "execute_result",
                              {"execution_count": count, "data": {"text/plain": result.value}, "metadata": {}},
                              parent=parent, ident=iopub_topic(self, "execute_result"))
        return {"status": "ok", "execution_count": count, "payload": [], "user_expressions": {}}

    def _board_error_reply(self, result: ExecResult, code: str, count: int, silent: bool) -> dict[str, Any]:
        if result.reset and not result.error:
            what = "soft reset" if result.reset == "soft" else "reset"
            evalue = f"the board rebooted ({what}) while the cell ran: its variables and imports are gone"
            return self._error_reply("BoardReset", evalue, count, silent)
        error = result.error
        assert error is not None
        lines = ["Traceback (most recent call last):"] if error.frames else []
        source_lines = code.split("\n")
        for frame in error.frames:
            lines.append(str(frame))
            if frame.file == "<cell>" and 0 < frame.line <= len(source_lines):
                lines.append("    " + source_lines[frame.line - 1].strip())
        evalue = error.message
        if result.interrupted:
            evalue = evalue or f"interrupted ({result.interrupted.step}, {result.interrupted.seconds:.2f} s)"
        lines.append(f"{error.type}: {evalue}" if evalue else error.type)
        return self._error_reply(error.type, evalue, count, silent, lines)

    def _error_reply(self, ename: str, evalue: str, count: int, silent: bool,
                     traceback: list[str] | None = None) -> dict[str, Any]:
        """An error reply (and its iopub error message); the traceback defaults to one line."""
        content = {"ename": ename, "evalue": evalue, "traceback": traceback or [f"{ename}: {evalue}"]}
        if not silent:
            self.session.send(self.iopub_socket, "error", content, parent=self.get_parent("shell"),
                              ident=iopub_topic(self, "error"))
        return {"status": "error", "execution_count": count, **content}

    # Kernel -> Interrupt arrives as SIGINT (interrupt_mode "signal", or ipykernel
    # turning an interrupt_request message into one). While board code runs it
    # becomes Ctrl-C on the board instead of a KeyboardInterrupt in the event loop.
    # Requests on different boards may be awaited at once (a cell on one, a completion on another):
    # the handler stays installed while any is, and the previous one comes back after the last.
    def _catch_sigint(self, slot: BoardSlot) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._interruptible.append(slot)
        if len(self._interruptible) == 1:
            self._sigint_previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _release_sigint(self, slot: BoardSlot) -> None:
        if slot not in self._interruptible:
            return
        self._interruptible.remove(slot)
        if not self._interruptible:
            previous, self._sigint_previous = self._sigint_previous, None
            if previous is not None:   # None: not installed from Python, nothing to put back
                signal.signal(signal.SIGINT, previous)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self._input_cancelled.set()
        # The running cell's board; another board's %%bg job goes on (%bg stop ends it).
        cell = self._cell_slot or self.boards.active_slot
        targets = [cell] if cell in self._interruptible else list(dict.fromkeys(self._interruptible))
        for slot in targets:
            slot.interrupt_requested.set()
            board = slot.connection.board
            if board is not None:
                # From another thread: the board's worker may hold the link's write lock (a transfer).
                threading.Thread(target=board.interrupt, name=f"board-interrupt-{slot.name}", daemon=True).start()

    def _ask_front_end(self, prompt: str, ident: Any, parent: Any, password: bool = False) -> str | None:
        """An input_request for the board's input(), answered or interrupted.

        Runs on the board thread. ipykernel's own wait only ends on a
        KeyboardInterrupt in that thread, which SIGINT never raises there, so
        the wait is ours: Kernel -> Interrupt ends it and Ctrl-C reaches the board.
        """
        self._input_cancelled.clear()
        while True:  # drop stale replies
            try:
                self.stdin_socket.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                break
        self.session.send(self.stdin_socket, "input_request", {"prompt": prompt, "password": password},
                          parent, ident=ident)
        while not self._input_cancelled.is_set():
            if self.stdin_socket.poll(100):
                _, reply = self.session.recv(self.stdin_socket)
                if reply is not None:
                    value = reply["content"].get("value", "")
                    return None if value == "\x04" else value
        return ""  # the board's input() is being interrupted; its answer no longer matters

    # -- completion and inspection ---------------------------------------------------------

    @answers_always(_request_fault)
    async def do_complete(self, code: str, cursor_pos: int | None) -> dict[str, Any]:
        cursor_pos = len(code) if cursor_pos is None else cursor_pos
        slot = self.current_slot
        if slot.busy:   # the board is running something: answer now, without it
            return introspect.complete(None, code, cursor_pos)
        return await self.on_board(lambda: introspect.complete(self.board, code, cursor_pos), slot=slot)

    @answers_always(_request_fault)
    async def do_inspect(self, code: str, cursor_pos: int, detail_level: int = 0,
                         omit_sections: Any = ()) -> dict[str, Any]:
        slot = self.current_slot
        if slot.busy:
            return introspect.inspect(None, code, cursor_pos, slot.signatures)
        return await self.on_board(lambda: introspect.inspect(self.board, code, cursor_pos, slot.signatures),
                                   slot=slot)

    @answers_always(_is_complete_fault)
    async def do_is_complete(self, code: str) -> dict[str, Any]:
        reply = super().do_is_complete(code)
        return await reply if inspect.isawaitable(reply) else reply

    # The shell channel runs one request at a time; while a board cell runs,
    # these quick requests are answered at once instead of queueing behind it.
    _ANSWER_WHILE_BUSY = {"kernel_info_request", "complete_request", "inspect_request", "is_complete_request"}

    async def shell_main(self, subshell_id: str | None, msg: Any) -> None:
        if subshell_id is None and shell_is_busy(self) and self.session is not None:
            try:
                _, frames = self.session.feed_identities(msg, copy=False)
                msg_type = self.session.deserialize(frames, content=False, copy=False)["header"]["msg_type"]
            except Exception:
                msg_type = None
            if msg_type in self._ANSWER_WHILE_BUSY:
                shell_ident, shell_parent = current_request(self)
                try:
                    await self.dispatch_shell(msg, subshell_id=None)
                finally:
                    self.set_parent(shell_ident, shell_parent, channel="shell")
                return
        await super().shell_main(subshell_id, msg)

    # -- shutdown -------------------------------------------------------------------------

    @answers_always(_shutdown_fault)
    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        # Every step of every board runs whatever the one before it did: a board that fails to
        # close must not keep an emulator running or the reply from going out.
        for failure in self.boards.close(restart=restart):
            self.log.error("closing a board at shutdown failed", exc_info=failure)
        reply = super().do_shutdown(restart)
        return await reply if inspect.isawaitable(reply) else reply
