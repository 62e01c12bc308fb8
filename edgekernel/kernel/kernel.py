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
import json
import os
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import zmq
from ipykernel.ipkernel import IPythonKernel
from jupyter_core.paths import jupyter_runtime_dir

from .. import __version__
from ..device import (BoardSession, DeviceError, ExecResult, LinkClosed, LinkError,
                      board_text)
from ..links import is_webrepl_url
from ..ports import auto_port, list_serial_ports
from . import file_magics, firmware_magics, mqtt_magics, webrepl_magics  # noqa: F401  (they register their magics)
from . import introspect
from .background import BackgroundJob
from .magics import REGISTRY as magics
from .magics import HostError, MagicError, MagicHelp, split_leading_magics
from .output import FLUSH_INTERVAL, MAX_FLUSH_INTERVAL, StreamCoalescer, human_size, output_limit_from_env

PROFILE_ENV = "EDGEKERNEL_PROFILE"
KEEP_OUTPUT_BYTES = 64 << 20  # the latest board output kept in memory for %output
PORT_ENV = "EDGEKERNEL_PORT"
BAUD_ENV = "EDGEKERNEL_BAUD"

# What each kernelspec means (its kernel.json sets EDGEKERNEL_PROFILE).
PROFILES: dict[str, dict[str, Any]] = {
    "esp8266": {"display": "MicroPython ESP8266", "prefer_esp": True, "esp_reset_lines": True},
    "serial": {"display": "MicroPython (serial)", "prefer_esp": False, "esp_reset_lines": False},
    "emulator": {"display": "MicroPython (emulated board)", "prefer_esp": False, "esp_reset_lines": False},
    "mqtt": {"display": "MicroPython (MQTT)", "prefer_esp": False, "esp_reset_lines": False},
}

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
    return kernel._error_reply(ename, evalue, [f"{ename}: {evalue}"], kernel.shell.execution_count, silent)


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
    """What `%%local` cells see as `board`: values move as data, never eval'd text.

    >>> board.eval("[p.value() for p in pins]")      # -> a Python list
    >>> board.exec("led.on()")                         # -> output text
    """

    def __init__(self, kernel: "MicroPythonKernel") -> None:
        self._kernel = kernel

    def eval(self, expression: str) -> Any:
        return self._kernel.require_board().eval(expression)

    def exec(self, code: str) -> str:
        result = self._kernel.require_board().exec(code)
        if result.error:
            raise DeviceError(f"{result.error.type}: {result.error.message}")
        return result.text

    def put(self, name: str, value: Any) -> None:
        """Set a board variable from plain host data (numbers, strings, lists, dicts...)."""
        if not name.isidentifier():
            raise ValueError(f"not a variable name: {name!r}")
        self.exec(f"{name} = {value!r}")

    def __repr__(self) -> str:
        board = self._kernel.board
        return f"<board {board.link.description if board else '(not connected)'}>"


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
        return f"edgekernel {__version__}: {self.profile['display']}. %lsmagic lists the magics."

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.profile_name = os.environ.get(PROFILE_ENV, "serial")
        self.profile = PROFILES.get(self.profile_name, PROFILES["serial"])
        self.board: BoardSession | None = None
        self.emulator: Any = None  # edgekernel.emulator.BoardProcess when we started one
        self.emulator_kind = ""
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="board")
        self._state_file, log_path = self._runtime_paths()
        self.log_path = log_path
        self._session_log = open(log_path, "ab", buffering=0)
        self.last_output = b""
        self.output_limit = output_limit_from_env()   # characters of a cell's output sent to the page
        self._reconnect = self._read_state()
        self._reconnect_password: str | None = None  # asked after a restart; used once, never stored
        self.signatures = introspect.SignatureIndex()
        self.bg_job: BackgroundJob | None = None
        self.pending_payload: list[dict[str, Any]] = []  # e.g. set_next_input from %fetchfile --load
        self._input_cancelled = threading.Event()
        if self.shell is not None:
            self.shell.user_ns["board"] = BoardHandle(self)

    # -- files of this kernel session -------------------------------------------

    def _runtime_paths(self) -> tuple[Path, Path]:
        connection_file = getattr(self.parent, "abs_connection_file", None) or f"kernel-{os.getpid()}.json"
        stem = Path(connection_file).stem
        runtime = Path(jupyter_runtime_dir())
        runtime.mkdir(parents=True, exist_ok=True)
        # The connection file (and so these names) survives a kernel restart.
        return runtime / f"edgekernel-{stem}.state.json", runtime / f"edgekernel-{stem}.log"

    def _read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return None

    def _write_state(self, data: dict[str, Any] | None) -> None:
        if data is None:
            self._state_file.unlink(missing_ok=True)
        else:
            self._state_file.write_text(json.dumps(data))

    def _log_board_bytes(self, data: bytes) -> None:
        self._session_log.write(data)

    # -- connection ----------------------------------------------------------------

    def check_board_free(self) -> None:
        if self.bg_job is not None and self.bg_job.running:
            raise HostError("BoardBusy", "board busy: a %%bg job is running (%bg shows it, %bg stop ends it)")

    def require_board(self) -> BoardSession:
        self.check_board_free()
        if self.board is None or self.board.closed:
            self.board = None
            self._auto_connect()
        assert self.board is not None
        return self.board

    def _auto_connect(self) -> None:
        if self._reconnect:
            state, self._reconnect = self._reconnect, None
            if state.get("mqtt") and mqtt_magics.connect_from_env(self, state):
                return
            if state.get("port") and not state.get("emulator"):
                password = webrepl_magics.reconnect_password(self, state) if is_webrepl_url(state["port"]) else None
                self.connect(state["port"], state.get("baud", 115200), soft_reset=True,
                             note="kernel restarted: reconnected and soft-reset the board",
                             password=password, password_env=state.get("password_env"))
                return
        port = os.environ.get(PORT_ENV)
        if port:
            self.connect(port, int(os.environ.get(BAUD_ENV, "115200")))
            return
        if self.profile_name == "emulator":
            self.start_emulator("unix")
            return
        if self.profile_name == "mqtt" and mqtt_magics.connect_from_env(self):
            return
        candidates = [p for p in list_serial_ports() if p.bridge and (p.is_esp or not self.profile["prefer_esp"])]
        if len(candidates) == 1:
            self.connect(candidates[0].device, int(os.environ.get(BAUD_ENV, "115200")))
            return
        found = ", ".join(p.device for p in candidates) or "none"
        raise HostError("NotConnected", f"no board connected: run %serialconnect --port PATH (boards found: {found}); "
                                        "no hardware at hand? %serialconnect --emulator unix, or the "
                                        "\"MicroPython (emulated board)\" kernel")

    def connect(self, port: str, baud: int, *, soft_reset: bool = False, note: str | None = None,
                password: str | None = None, password_env: str | None = None) -> None:
        self.check_board_free()
        self.disconnect()
        link_options: dict[str, Any] = {"esp_reset_lines": self.profile["esp_reset_lines"]} if "://" not in port else {}
        if is_webrepl_url(port):
            password = password or os.environ.get(webrepl_magics.PASSWORD_ENV)   # as the CLI does
            if not password:
                raise HostError("NoPassword", f"{port} is a WebREPL: connect with %websocketconnect {port} "
                                              "(it asks for the password)")
            link_options = {"password": password}   # the password goes to the link only
        board = BoardSession.open(port, baud, log=self._log_board_bytes, link_options=link_options)
        if soft_reset:
            board.soft_reset()
        state = {"port": port, "baud": baud, "emulator": self.emulator is not None}
        if password_env:
            state["password_env"] = password_env   # the variable's name, never the password
        where = "over WebREPL" if is_webrepl_url(port) else f"at {baud} baud"
        # An emulated board's pty changes on every start: name the board instead, so a saved
        # notebook's output does not change from run to run (papermill, nbclient, nbconvert).
        name = f"the emulated {self.emulator_kind} board" if self.emulator is not None else f"{port} {where}"
        self.attach_board(board, state, f"{note + ': ' if note else ''}connected to {name}"
                                        f" ({'raw-paste' if board.raw_paste is not False else 'raw REPL'})\n")

    def attach_board(self, board: Any, state: dict[str, Any], message: str) -> None:
        """Make `board` (a BoardSession, or anything with its exec/interrupt surface, e.g. an
        MqttSession) the one cells run on; `state` lets a restarted kernel reconnect."""
        self.check_board_free()
        if board is not self.board:
            self.disconnect()
        self.board = board
        self._write_state(state)
        self.say(message)

    def start_emulator(self, kind: str) -> None:
        from ..emulator import BoardError, start_board

        self.disconnect()
        self._stop_emulator()
        flash = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "edgekernel" / f"flash-{kind}"
        flash.mkdir(parents=True, exist_ok=True)
        self.say(f"starting an emulated {kind} board (files in {flash})\n")
        try:
            self.emulator = start_board(kind, flash_dir=str(flash) if kind == "unix" else None)
        except BoardError as exc:
            raise HostError("EmulatorUnavailable", f"cannot start the emulated {kind} board: {exc}") from None
        self.emulator_kind = kind
        self.connect(self.emulator.port, 115200)

    def disconnect(self) -> None:
        self.check_board_free()
        board, self.board = self.board, None
        if board is not None:
            try:
                board.close()
            except Exception:
                pass

    def say(self, text: str, name: str = "stdout") -> None:
        """A host-side message in the current cell's output."""
        if self._parent_header_for_output is not None:
            self.session.send(self.iopub_socket, "stream", {"name": name, "text": text},
                              parent=self._parent_header_for_output, ident=self._topic("stream"))

    _parent_header_for_output: dict[str, Any] | None = None

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
        self._allow_stdin = allow_stdin   # for getpass() in magics (IPython's do_execute sets it for its cells)
        self._parent_header_for_output = None if silent else self.get_parent("shell")
        magic_lines, rest = split_leading_magics(code, magics.body_magics)
        if magic_lines and magic_lines[-1].split()[0] == "%%local":
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

        async def board_cell() -> dict[str, Any] | None:
            body = rest
            if await self._run_magic_lines(magic_lines, rest):
                body = ""
            if body.strip():
                return await self._execute_on_board(body, silent, allow_stdin, count)
            return None

        self.pending_payload = []
        reply = await self._host_side(board_cell(), count, silent)
        reply = reply or {"status": "ok", "execution_count": count, "payload": [], "user_expressions": {}}
        if self.pending_payload and reply["status"] == "ok":
            reply["payload"] = self.pending_payload
        return reply

    async def _host_side(self, work: Any, count: int, silent: bool) -> dict[str, Any] | None:
        """Await `work`; turn every host-side failure into an error reply (never silence)."""
        try:
            return await work
        except MagicHelp as help_text:
            self.say(str(help_text))
            return None
        except HostError as exc:
            return self._error_reply(exc.ename, exc.evalue, [f"{exc.ename}: {exc.evalue}"], count, silent)
        except MagicError as exc:
            return self._error_reply("UsageError", str(exc), [f"UsageError: {exc}"], count, silent)
        except (LinkError, DeviceError, OSError) as exc:
            if isinstance(exc, LinkClosed):
                self.disconnect()
            name = type(exc).__name__
            return self._error_reply(name, str(exc), [f"{name}: {exc}"], count, silent)
        except KeyboardInterrupt:
            # Kernel -> Interrupt while a magic ran on the event loop.
            return self._error_reply("KeyboardInterrupt", "interrupted", ["KeyboardInterrupt: interrupted"],
                                     count, silent)
        except Exception as exc:
            self.log.error("host-side failure in a cell", exc_info=True)
            ename, evalue = host_fault(exc)
            return self._error_reply(ename, evalue, [f"{ename}: {evalue}"], count, silent)

    async def _run_magic_lines(self, lines: list[str], cell_body: str) -> bool:
        """Run %magic lines in order; True if a cell magic consumed the body."""
        consumed = False
        for line in lines:
            consumed = self._run_magic_line(line, cell_body) or consumed
        return consumed

    async def _execute_on_board(self, code: str, silent: bool, allow_stdin: bool, count: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.check_board_free()
        board = self.board
        if board is None or board.closed:
            webrepl_magics.prepare_reconnect(self)   # a password prompt must come from this thread
            board = await loop.run_in_executor(self._worker, self.require_board)
        parent = self.get_parent("shell")
        ident = self._get_shell_context_var(self._shell_parent_ident)

        def send_stream(text: str) -> None:
            self.session.send(self.iopub_socket, "stream", {"name": "stdout", "text": text},
                              parent=parent, ident=self._topic("stream"))

        tail_display = {"display_id": f"edgekernel-tail-{parent['header']['msg_id']}", "shown": False}

        def show_tail(text: str) -> None:
            # One display of the latest lines, updated in place (update_display_data).
            msg_type = "update_display_data" if tail_display["shown"] else "display_data"
            tail_display["shown"] = True
            self.session.send(self.iopub_socket, msg_type,
                              {"data": {"text/plain": text}, "metadata": {},
                               "transient": {"display_id": tail_display["display_id"]}},
                              parent=parent, ident=self._topic(msg_type))

        out = StreamCoalescer(send_stream, limit=self.output_limit, show_tail=show_tail,
                              where_all=f"%output --save FILE writes all of it to a file; every byte the board "
                                        f"sent is in {self.log_path}")
        collected = bytearray()

        def on_output(data: bytes) -> None:
            collected.extend(data)
            if len(collected) > 2 * KEEP_OUTPUT_BYTES:
                del collected[:-KEEP_OUTPUT_BYTES]   # the session log keeps every byte
            if not silent:
                out.feed(data)

        def on_input(prompt: str) -> str | None:
            if not allow_stdin:
                return None
            out.flush()
            return self._ask_front_end(prompt, ident, parent)

        job = loop.run_in_executor(self._worker, lambda: board.exec(
            code, on_output=on_output, on_input=on_input, show_value=not silent))

        def flush_while_running(interval: float) -> None:
            # The interval grows while output keeps flowing: prompt at first,
            # then a few messages a second however long the cell prints.
            sent = out.flush()
            if not job.done():
                loop.call_later(interval, flush_while_running,
                                min(MAX_FLUSH_INTERVAL, interval * 2) if sent else interval)

        loop.call_later(FLUSH_INTERVAL, flush_while_running, FLUSH_INTERVAL)
        previous = self._catch_sigint()
        try:
            result: ExecResult = await job
        except LinkClosed as exc:
            out.flush(final=True)
            self.last_output = bytes(collected)
            self.disconnect()
            again = "%websocketconnect" if is_webrepl_url(str(getattr(board.link, "description", ""))) else "%serialconnect"
            raise LinkClosed(f"{exc}; nothing was lost up to here (%output shows it). "
                             f"Reconnect with {again}") from None
        finally:
            self._release_sigint(previous)
        out.flush(final=True)
        self.last_output = bytes(collected)
        self.signatures.learn(code)
        if result.error or result.reset:
            return self._board_error_reply(result, code, count, silent)
        if result.value is not None and not silent:
            self.session.send(self.iopub_socket, "execute_result",
                              {"execution_count": count, "data": {"text/plain": result.value}, "metadata": {}},
                              parent=parent, ident=self._topic("execute_result"))
        return {"status": "ok", "execution_count": count, "payload": [], "user_expressions": {}}

    def _board_error_reply(self, result: ExecResult, code: str, count: int, silent: bool) -> dict[str, Any]:
        if result.reset and not result.error:
            what = "soft reset" if result.reset == "soft" else "reset"
            evalue = f"the board rebooted ({what}) while the cell ran: its variables and imports are gone"
            return self._error_reply("BoardReset", evalue, [f"BoardReset: {evalue}"], count, silent)
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
        return self._error_reply(error.type, evalue, lines, count, silent)

    def _error_reply(self, ename: str, evalue: str, traceback: list[str], count: int,
                     silent: bool) -> dict[str, Any]:
        content = {"ename": ename, "evalue": evalue, "traceback": traceback}
        if not silent:
            self.session.send(self.iopub_socket, "error", content, parent=self.get_parent("shell"),
                              ident=self._topic("error"))
        return {"status": "error", "execution_count": count, **content}

    # Kernel -> Interrupt arrives as SIGINT (interrupt_mode "signal", or ipykernel
    # turning an interrupt_request message into one). While board code runs it
    # becomes Ctrl-C on the board instead of a KeyboardInterrupt in the event loop.
    def _catch_sigint(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGINT, self._on_sigint)

    def _release_sigint(self, previous: Any) -> None:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self._input_cancelled.set()
        board = self.board
        if board is not None:
            board.interrupt()

    def _ask_front_end(self, prompt: str, ident: Any, parent: Any) -> str | None:
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
        self.session.send(self.stdin_socket, "input_request", {"prompt": prompt, "password": False},
                          parent, ident=ident)
        while not self._input_cancelled.is_set():
            if self.stdin_socket.poll(100):
                _, reply = self.session.recv(self.stdin_socket)
                if reply is not None:
                    value = reply["content"].get("value", "")
                    return None if value == "\x04" else value
        return ""  # the board's input() is being interrupted; its answer no longer matters

    # -- magics ------------------------------------------------------------------------

    def _run_magic_line(self, line: str, cell_body: str) -> bool:
        """Run one %magic line; return True if it consumed the cell body."""
        word, _, arg_text = line.partition(" ")
        magic = magics.lookup(word[1:])
        if magic is None:
            raise MagicError(f"unknown magic {word} (%lsmagic lists them)")
        args = magic.parser.parse_line(arg_text)
        magic.handler(self, args, cell_body)
        return magic.is_cell

    # -- completion and inspection ---------------------------------------------------------

    @answers_always(_request_fault)
    async def do_complete(self, code: str, cursor_pos: int | None) -> dict[str, Any]:
        cursor_pos = len(code) if cursor_pos is None else cursor_pos
        return introspect.complete(self.board, code, cursor_pos)

    @answers_always(_request_fault)
    async def do_inspect(self, code: str, cursor_pos: int, detail_level: int = 0,
                         omit_sections: Any = ()) -> dict[str, Any]:
        return introspect.inspect(self.board, code, cursor_pos, self.signatures)

    @answers_always(_is_complete_fault)
    async def do_is_complete(self, code: str) -> dict[str, Any]:
        reply = super().do_is_complete(code)
        return await reply if inspect.isawaitable(reply) else reply

    # The shell channel runs one request at a time; while a board cell runs,
    # these quick requests are answered at once instead of queueing behind it.
    _ANSWER_WHILE_BUSY = {"kernel_info_request", "complete_request", "inspect_request", "is_complete_request"}

    async def shell_main(self, subshell_id: str | None, msg: Any) -> None:
        lock = getattr(self, "_main_asyncio_lock", None)
        if subshell_id is None and lock is not None and lock.locked() and self.session is not None:
            try:
                _, frames = self.session.feed_identities(msg, copy=False)
                msg_type = self.session.deserialize(frames, content=False, copy=False)["header"]["msg_type"]
            except Exception:
                msg_type = None
            if msg_type in self._ANSWER_WHILE_BUSY:
                shell_parent = self.get_parent("shell")
                shell_ident = self._get_shell_context_var(self._shell_parent_ident)
                try:
                    await self.dispatch_shell(msg, subshell_id=None)
                finally:
                    self.set_parent(shell_ident, shell_parent, channel="shell")
                return
        await super().shell_main(subshell_id, msg)

    # -- shutdown -------------------------------------------------------------------------

    @answers_always(_shutdown_fault)
    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        # Every step runs whatever the one before it did: a board that fails to
        # close must not keep the emulator running or the reply from going out.
        steps = [self._stop_background_job, self.disconnect, self._stop_emulator, self._session_log.close]
        if not restart:
            steps.insert(0, lambda: self._write_state(None))
        for step in steps:
            try:
                step()
            except Exception:
                self.log.error("shutdown step %s failed", getattr(step, "__name__", step), exc_info=True)
        reply = super().do_shutdown(restart)
        return await reply if inspect.isawaitable(reply) else reply

    def _stop_background_job(self) -> None:
        job, self.bg_job = self.bg_job, None  # shutting down: the board is released whatever the job did
        if job is not None and job.running:
            job.stop()

    def _stop_emulator(self) -> None:
        emulator, self.emulator = self.emulator, None
        if emulator is not None:
            emulator.stop()


# -- the magics themselves: thin wrappers over the kernel's methods ------------------------

def _serialconnect_args(p: Any) -> None:
    p.add_argument("--port", "-p", help="device path or pyserial URL (default: auto-detect by USB ID)")
    p.add_argument("--baud", "-b", type=int, default=None, help="baud rate (default 115200)")
    p.add_argument("--emulator", choices=["unix", "microbit"], help="start and connect an emulated board")


@magics.add("serialconnect", "connect to a board on a serial port (auto-detected by USB ID)", arguments=_serialconnect_args)
def _serialconnect(kernel: MicroPythonKernel, args: Any, body: str) -> None:
    if args.emulator:
        kernel.start_emulator(args.emulator)
        return
    baud = args.baud or int(os.environ.get(BAUD_ENV, "115200"))
    port = args.port
    if port is None:
        if kernel.profile_name == "emulator" and not list_serial_ports():
            kernel.start_emulator("unix")
            return
        port, ports = auto_port(prefer_esp=kernel.profile["prefer_esp"])
        for p in ports:
            kernel.say(f"  found {p.device:<14} {p.usb_id:<10} {p.board_guess or p.description}\n")
        if port is None:
            raise HostError("NoBoardFound", "no USB serial board found: plug one in or give --port PATH")
        kernel.say(f"choosing {port}\n")
    kernel.connect(port, baud)


@magics.add("disconnect", "release the board's port (leaves it in its friendly REPL)")
def _disconnect(kernel: MicroPythonKernel, args: Any, body: str) -> None:
    was = kernel.board.link.description if kernel.board else None
    kernel.disconnect()
    kernel._write_state(None)
    kernel.say(f"disconnected from {was}\n" if was else "not connected\n")


def _reboot_args(p: Any) -> None:
    p.add_argument("--hard", action="store_true", help="reset the chip (DTR/RTS on ESP boards) instead of a soft reset")


@magics.add("reboot", "soft-reset the board (clean heap, boot.py runs); --hard resets the chip", arguments=_reboot_args)
def _reboot(kernel: MicroPythonKernel, args: Any, body: str) -> None:
    board = kernel.require_board()
    if args.hard:
        if kernel.emulator is not None:
            kernel.emulator.hard_reset()
            kernel.connect(board.link.description, 115200, note="hard reset (emulated reset button)")
            return
        board.hard_reset()
        kernel.say("hard reset done\n")
    else:
        board.soft_reset()
        kernel.say("soft reset done: the board's variables are cleared\n")


@magics.add("lsmagic", "list the magics")
def _lsmagic(kernel: MicroPythonKernel, args: Any, body: str) -> None:
    kernel.say("\n".join(magics.summary_lines()) + "\n")


def _output_args(p: Any) -> None:
    p.add_argument("--save", metavar="FILE", help="write all of the last board cell's output to a host file")
    p.add_argument("--limit", type=int, metavar="CHARS",
                   help="how much of a cell's output the page shows from now on (0: no limit; "
                        "default $EDGEKERNEL_OUTPUT_LIMIT or 262144)")


@magics.add("output", "show the last board cell's output again (its end, past the page's limit), "
                      "--save FILE writes all of it, --limit sets the page's limit", arguments=_output_args)
def _output(kernel: MicroPythonKernel, args: Any, body: str) -> None:
    if args.limit is not None:
        kernel.output_limit = args.limit if args.limit > 0 else None
        kernel.say(f"a cell's output in the page is now limited to {human_size(args.limit)}\n" if args.limit > 0
                   else "a cell's output in the page is no longer limited\n")
        return
    text = board_text(kernel.last_output)
    if args.save:
        path = Path(args.save).expanduser()
        path.write_text(text, encoding="utf-8")
        kernel.say(f"wrote {len(text):,} characters ({text.count(chr(10)):,} lines) to {path.resolve()}\n")
        return
    limit = kernel.output_limit
    if limit is not None and len(text) > limit:
        start = text.find("\n", len(text) - limit) + 1 or len(text) - limit
        kernel.say(f"[its first {text.count(chr(10), 0, start):,} lines ({human_size(start)}) are not shown: "
                   f"%output --save FILE writes all of it]\n", name="stderr")
        text = text[start:]
    kernel.say(text or "(the last board cell printed nothing)\n")
    kernel.say(f"[every byte the board sent is in {kernel.log_path}]\n", name="stderr")


@magics.add("bg", "run the cell on the board in the background; %bg shows it, %bg stop ends it", cell=True)
def _bg_cell(kernel: MicroPythonKernel, args: Any, body: str) -> None:
    board = kernel.require_board()
    if not body.strip():
        raise HostError("UsageError", "%%bg needs code after its line")
    kernel.bg_job = BackgroundJob(board, body)
    kernel.say("started in the background: the board is busy until it ends "
               "(%bg shows its output, %bg stop ends it)\n")


def _bg_args(p: Any) -> None:
    p.add_argument("action", nargs="?", choices=["status", "stop"], default="status")
    p.add_argument("--lines", type=int, default=20, help="how many of the latest output lines to show")


@magics.add("bg", "show the background job (status and latest output), or stop it", arguments=_bg_args)
def _bg_line(kernel: MicroPythonKernel, args: Any, body: str) -> None:
    job = kernel.bg_job
    if job is None:
        kernel.say("no background job: start one with %%bg\n")
        return
    if args.action == "stop" and job.running:
        job.stop()
    kernel.say(f"background job {job.status()}\n")
    text = job.output_text(args.lines)
    if text:
        kernel.say(text if text.endswith("\n") else text + "\n")


@magics.add("local", "run the cell in host IPython (pandas, matplotlib, widgets); `board.eval(expr)` brings board values", cell=True)
def _local(kernel: MicroPythonKernel, args: Any, body: str) -> None:
    raise AssertionError("handled in do_execute")  # %%local is routed before magics run

