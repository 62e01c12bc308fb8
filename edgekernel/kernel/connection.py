"""The kernel's board connection, owned in one place.

`Connection` is one board of the notebook (boards_registry.BoardRegistry holds them by
name). It connects (any board URL, through edgekernel.device.board.open_board),
connects by itself on the first board cell (a restarted kernel's last board; for the
default board then $EDGEKERNEL_PORT, the profile's emulator or MQTT URL, then the one
USB board found), asks for passwords, starts and stops emulated boards, and keeps the
board's session log in Jupyter's runtime folder:

- ``edgekernel-<connection file>.log`` (a named board: ``….NAME.log``): every byte the board sent;
- its part of ``edgekernel-<connection file>.state.json`` (written by the registry from
  `saved_state`): what to reconnect to after a restart (the URL, the baud rate, the *name*
  of a password variable, never a password).

It knows no Jupyter messages: the kernel hands it `say` (a host message in
the current cell) and `ask_secret` (a hidden prompt in the front end).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..boards import BoardKind
from ..device.board import Board
from ..device.opener import open_board
from ..device.files import BoardFiles
from ..links import link_class, url_scheme
from ..ports import auto_port, list_serial_ports
from .magics import HostError

PORT_ENV = "EDGEKERNEL_PORT"
BAUD_ENV = "EDGEKERNEL_BAUD"
#: Where a WebREPL password may also come from when no magic asked for one (EDGEKERNEL_PORT=ws://...).
WEBREPL_PASSWORD_ENV = "WEBREPL_PASSWORD"
MQTT_URL_ENV = "EDGEKERNEL_MQTT_URL"
MQTT_PASSWORD_ENV_ENV = "EDGEKERNEL_MQTT_PASSWORD_ENV"
MQTT_CA_ENV = "EDGEKERNEL_MQTT_CA"

Say = Callable[..., None]
AskSecret = Callable[[str], str]


def default_baud() -> int:
    return int(os.environ.get(BAUD_ENV, "115200"))


def flash_folder(kind: str, name: str | None = None) -> Path:
    """Where an emulated board of `kind` keeps its files (they persist across kernels); a named
    board (`--as NAME`) has a folder of its own, so two emulated boards never share their files."""
    data = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return data / "edgekernel" / (f"flash-{kind}-{name}" if name else f"flash-{kind}")


class Connection:
    """One board of the notebook: connect, auto-connect, reconnect after a restart, passwords, log.

    `name` is the board's name in the notebook; only the `default` board connects by itself
    from the environment, the profile or USB (a named board was connected by a magic, and a
    restarted kernel reconnects it from `restore`). `on_state` is called whenever
    `saved_state` changes (the registry writes the session's state file).
    """

    def __init__(self, log_path: Path, profile: BoardKind, *, name: str, default: bool,
                 restore: dict[str, Any] | None, on_state: Callable[[], None], say: Say,
                 ask_secret: AskSecret) -> None:
        self.log_path = log_path
        self.profile = profile
        self.name = name
        self.default = default
        self.say = say
        self.ask_secret = ask_secret
        self.board: Board | None = None
        self.url: str | None = None
        self.baud = default_baud()
        self._files: BoardFiles | None = None
        self.emulator: Any = None          # edgekernel.emulator.BoardProcess when we started one
        self.emulator_kind = ""
        self._on_state = on_state
        self._log = open(self.log_path, "ab", buffering=0)
        self._restore = restore            # a restarted kernel's board, used once
        self.saved_state: dict[str, Any] | None = restore   # what a restart reconnects to

    # -- the session's files ---------------------------------------------------------

    def _write_state(self, state: dict[str, Any] | None) -> None:
        self.saved_state = state
        self._on_state()

    def log(self, data: bytes) -> None:
        """Every byte the board sends (the session log)."""
        if not self._log.closed:
            self._log.write(data)

    # -- connecting -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.board is not None and not self.board.closed

    @property
    def remembered(self) -> bool:
        """Connected once and not disconnected on purpose (a lost link, a restarted kernel's board)."""
        return self.saved_state is not None

    @property
    def restoring(self) -> bool:
        """A restarted kernel's board, not reconnected yet (it reconnects when first used)."""
        return self._restore is not None

    @property
    def target(self) -> str | None:
        """What this board is, to tell whether a connect magic names it again: "emulator KIND" or its URL."""
        state = self.saved_state or {}
        if state.get("emulator"):
            return f"emulator {state['emulator']}"
        return state.get("url") or self.url

    @property
    def where(self) -> str:
        """The board for messages: "the emulated unix board" (its pty changes every start) or where it is."""
        target = self.target
        if target and target.startswith("emulator "):
            return f"the emulated {target.split(' ', 1)[1]} board"
        return target or "no board"

    @property
    def where_short(self) -> str:
        """The board's URL for %boards ("emulator unix" for an emulated board)."""
        return self.target or "-"

    @property
    def _as_name(self) -> str:
        return "" if self.default else f" --as {self.name}"

    def require(self) -> Board:
        """The board, connecting first when there is none (see the module's docstring for the order)."""
        if not self.connected:
            self.board = None
            self._auto_connect()
        assert self.board is not None
        return self.board

    def _auto_connect(self) -> None:
        state, self._restore = self._restore, None
        if not state and not self.default:
            raise HostError("NotConnected", f"board {self.name!r} is not connected: connect it again "
                                            f"({self.reconnect_hint()})")
        if state and state.get("emulator"):
            self.start_emulator(state["emulator"])
            return
        if state and state.get("url"):
            self.connect(state["url"], state.get("baud"), password_env=state.get("password_env"),
                         soft_reset=True, note="kernel restarted: reconnected and soft-reset the board")
            return
        if os.environ.get(PORT_ENV):
            self.connect(os.environ[PORT_ENV], default_baud())
            return
        if self.profile.emulator:
            self.start_emulator(self.profile.emulator)
            return
        if os.environ.get(MQTT_URL_ENV) and self.profile.mqtt:
            self.connect(self._mqtt_url_from_env(), password_env=os.environ.get(MQTT_PASSWORD_ENV_ENV) or None,
                         ask=False)
            return
        candidates = [p for p in list_serial_ports() if p.bridge and (p.is_esp or not self.profile.prefer_esp)]
        if len(candidates) == 1:
            self.connect(candidates[0].device, default_baud())
            return
        found = ", ".join(p.device for p in candidates) or "none"
        raise HostError("NotConnected", f"no board connected: run %serialconnect --port PATH (boards found: {found}); "
                                        "no hardware at hand? %serialconnect --emulator unix, or the "
                                        "\"MicroPython (emulated board)\" kernel")

    @staticmethod
    def _mqtt_url_from_env() -> str:
        url = os.environ[MQTT_URL_ENV]
        ca = os.environ.get(MQTT_CA_ENV)
        return f"{url}{'&' if '?' in url else '?'}ca={ca}" if ca else url

    def auto_port(self) -> str | None:
        """The USB board %serialconnect picks when given no port (it says which it found)."""
        port, ports = auto_port(prefer_esp=self.profile.prefer_esp)
        for p in ports:
            self.say(f"  found {p.device:<14} {p.usb_id:<10} {p.board_guess or p.description}\n")
        if port is not None:
            self.say(f"choosing {port}\n")
        return port

    def secret_source(self, url: str, password_env: str | None, ask: bool = True) -> Callable[[str], str]:
        """Where a password for `url` comes from: $password_env, else (WebREPL) $WEBREPL_PASSWORD,
        else a hidden prompt in the front end. It goes to the link only: never to the state file,
        the log or a message."""
        def secret(prompt: str) -> str:
            if password_env:
                password = os.environ.get(password_env)
                if not password:
                    raise HostError("NoPassword", f"${password_env} is not set in the kernel's environment: "
                                                  "set it before starting Jupyter, or leave out --password-env "
                                                  "to be asked")
                return password
            if url_scheme(url) in ("ws", "wss") and os.environ.get(WEBREPL_PASSWORD_ENV):
                return os.environ[WEBREPL_PASSWORD_ENV]
            if not ask:
                raise HostError("NoPassword", f"no password at hand for {url} (a typed one is not kept): connect "
                                              "again, or name the variable that holds it with --password-env")
            return self.ask_secret(prompt)
        return secret

    def connect(self, url: str, baud: int | None = None, *, password_env: str | None = None,
                soft_reset: bool = False, note: str | None = None, ask: bool = True) -> Board:
        """Connect to the board at `url` (any scheme open_board takes), replacing the current one."""
        self.disconnect()
        if self.emulator is not None and url != self.emulator.port:
            self.stop_emulator()   # connecting elsewhere: the emulated board this one replaces ends
        baud = baud or default_baud()
        # DTR/RTS matter on device paths only (URLs and WebREPL have no modem lines).
        link_options = {"esp_reset_lines": self.profile.esp_reset_lines} if not url_scheme(url) else {}
        board = open_board(url, baud=baud, secret=self.secret_source(url, password_env, ask), log=self.log,
                           link_options=link_options)
        if soft_reset:
            board.soft_reset()
        self.board, self.url, self.baud = board, url, baud
        state: dict[str, Any] = {"url": url, "baud": baud}
        if password_env:
            state["password_env"] = password_env   # the variable's name, never the password
        if self.emulator is not None:
            state = {"emulator": self.emulator_kind}   # its pty changes: a restart starts a new one
        self._write_state(state)
        # An emulated board's pty changes on every start: name the board instead, so a saved
        # notebook's output does not change from run to run (papermill, nbclient, nbconvert).
        where = f"the emulated {self.emulator_kind} board" if self.emulator is not None else board.description
        named = "" if self.default else f" as {self.name!r}"
        self.say(f"{note + ': ' if note else ''}connected to {where} {board.summary}{named}\n")
        return board

    def start_emulator(self, kind: str) -> Board:
        from ..emulator import BoardError, start_board

        self.disconnect()
        self.stop_emulator()
        flash = flash_folder(kind, None if self.default else self.name)
        flash.mkdir(parents=True, exist_ok=True)
        self.say(f"starting an emulated {kind} board (files in {flash})\n")
        try:
            self.emulator = start_board(kind, flash_dir=str(flash) if kind == "unix" else None)
        except BoardError as exc:
            raise HostError("EmulatorUnavailable", f"cannot start the emulated {kind} board: {exc}") from None
        self.emulator_kind = kind
        return self.connect(self.emulator.port, 115200)

    def files(self) -> BoardFiles:
        """The files of the board (one BoardFiles per connection: it learns what the board can do)."""
        board = self.require()
        if self._files is None or self._files.session is not board:
            self._files = BoardFiles.for_board(board)
        return self._files

    def hard_reset(self) -> None:
        """The chip's reset: the emulator's reset button, or the link's DTR/RTS."""
        board = self.require()
        if self.emulator is not None:
            self.emulator.hard_reset()
            self.connect(self.emulator.port, 115200, note="hard reset (emulated reset button)")
            return
        board.hard_reset()
        self.say("hard reset done\n")

    def disconnect(self, *, forget: bool = False) -> str | None:
        """Close the board (left in its friendly REPL); forget: a restart does not reconnect. Its description."""
        board, self.board = self.board, None
        if forget:
            self._write_state(None)
            self._restore = None
        if board is None:
            return None
        try:
            board.close()
        except Exception:
            pass
        return board.description

    def reconnect_hint(self) -> str:
        """The magic that connects this board again, for the message after its link is lost."""
        target = self.target or ""
        if target.startswith("emulator "):
            return f"%serialconnect --emulator {target.split(' ', 1)[1]}{self._as_name}"
        cls = link_class(target)
        magic = cls.connect_hint if cls is not None else "%mqttconnect"
        if self.default:
            return magic
        # A named board is never auto-detected: the hint names it in full.
        where = f"--port {target}" if magic == "%serialconnect" else target.split("?", 1)[0]
        return f"{magic} {where}{self._as_name}"

    def stop_emulator(self) -> None:
        emulator, self.emulator = self.emulator, None
        if emulator is not None:
            emulator.stop()

    def close(self, *, restart: bool) -> None:
        """At shutdown: a restart keeps the state file so the new kernel reconnects."""
        try:
            self.disconnect(forget=not restart)
        finally:
            try:
                self.stop_emulator()
            finally:
                self._log.close()
