"""%websocketconnect: the kernel on a board's WebREPL (ws://HOST:8266).

The password is asked with a Jupyter password prompt (input_request with password=True) or read
from an environment variable named by --password-env. It is handed to the link and nowhere else:
not to the cell, the state file that lets a restarted kernel reconnect, the session log, or an error.
"""
from __future__ import annotations

import os
import threading
from typing import Any

from ipykernel.kernelbase import StdinNotImplementedError

from ..links import is_webrepl_url
from .magics import REGISTRY as magics
from .magics import HostError

#: Where a WebREPL password may also come from when no magic asked for one (EDGEKERNEL_PORT=ws://...).
PASSWORD_ENV = "WEBREPL_PASSWORD"


def webrepl_password(kernel: Any, url: str, password_env: str | None) -> str:
    """The password for `url`: from $password_env, or asked in the front end (main thread only)."""
    if password_env:
        password = os.environ.get(password_env)
        if not password:
            raise HostError("NoPassword", f"${password_env} is not set in the kernel's environment: "
                                          "set it before starting Jupyter, or leave out --password-env to be asked")
        return password
    if threading.current_thread() is not threading.main_thread():
        raise HostError("NoPassword", f"the WebREPL password for {url} cannot be asked here: "
                                      f"run %websocketconnect {url}")
    try:
        password = kernel.getpass(f"WebREPL password for {url}: ")
    except StdinNotImplementedError:
        raise HostError("NoPassword", "this front end cannot ask for a password: use "
                                      f"%websocketconnect {url} --password-env VAR (VAR set in the kernel's environment)") from None
    except (EOFError, KeyboardInterrupt):
        raise HostError("NoPassword", "no password entered: the board was not connected") from None
    if not password:
        raise HostError("NoPassword", "no password entered: the board was not connected")
    return password


def prepare_reconnect(kernel: Any) -> None:
    """After a restart, a WebREPL board needs its password again: ask now, on the main thread,
    before the connection is made on the board thread."""
    state = kernel._reconnect
    if state and is_webrepl_url(state.get("port", "")) and not state.get("password_env") \
            and kernel._reconnect_password is None:
        kernel._reconnect_password = webrepl_password(kernel, state["port"], None)


def reconnect_password(kernel: Any, state: dict[str, Any]) -> str:
    password, kernel._reconnect_password = kernel._reconnect_password, None
    return password or webrepl_password(kernel, state["port"], state.get("password_env"))


def _websocketconnect_args(p: Any) -> None:
    p.add_argument("url", help="the board's WebREPL, ws://HOST:8266 (the ESP8266's own network: ws://192.168.4.1:8266)")
    p.add_argument("--password-env", metavar="VAR",
                   help="read the password from this environment variable of the kernel (default: ask for it)")
    p.add_argument("--password", help="not accepted: a password in a cell ends up in the notebook file")


@magics.add("websocketconnect", "connect to a board's WebREPL (ws://HOST:8266); asks for the password",
            arguments=_websocketconnect_args)
def _websocketconnect(kernel: Any, args: Any, body: str) -> None:
    if args.password is not None:
        raise HostError("UsageError", "a password in a cell would be saved in the notebook: leave out --password "
                                      "to be asked for it, or use --password-env VAR")
    url = args.url if "://" in args.url else f"ws://{args.url}"
    if not is_webrepl_url(url):
        raise HostError("UsageError", f"not a WebREPL address: {args.url} (expected ws://HOST:8266)")
    kernel.check_board_free()
    password = webrepl_password(kernel, url, args.password_env)
    kernel.connect(url, 115200, password=password, password_env=args.password_env)
