"""``%mqttconnect``: board cells run through an MQTT broker and the board's agent.

    %mqttconnect mqtt://broker.local/kitchen                 # anonymous
    %mqttconnect mqtt://alice@broker.local:1883/kitchen      # asks for the password (hidden)
    %mqttconnect mqtts://alice@broker.example/kitchen --password-env MQTT_PASSWORD

The "MicroPython (MQTT)" kernelspec connects by itself from its kernel.json env:
``EDGEKERNEL_MQTT_URL`` and, for a password, ``EDGEKERNEL_MQTT_PASSWORD_ENV`` (the *name* of the
variable that holds it, so the password itself is in no file the kernelspec ships).
"""
from __future__ import annotations

import os
from typing import Any

from .magics import REGISTRY as magics
from .magics import HostError

URL_ENV = "EDGEKERNEL_MQTT_URL"
PASSWORD_ENV_ENV = "EDGEKERNEL_MQTT_PASSWORD_ENV"
CA_ENV = "EDGEKERNEL_MQTT_CA"


def connect(kernel: Any, url_text: str, *, password_env: str | None = None, ask: bool = True,
            ca_file: str | None = None, insecure: bool = False, timeout: float = 10.0) -> None:
    """Connect `kernel` to a board through the broker; the one-line errors are HostErrors."""
    from ..mqtt.session import MqttSession, parse_mqtt_url

    try:
        url = parse_mqtt_url(url_text)
    except ValueError as exc:
        raise HostError("UsageError", str(exc)) from None
    password = None
    if password_env:
        password = os.environ.get(password_env)
        if password is None:
            raise HostError("MqttError", f"environment variable {password_env} is not set "
                                         "(it should hold the MQTT password)")
    elif url.user is not None and ask:
        try:
            password = kernel.getpass(f"MQTT password for {url.user}@{url.host}: ")
        except Exception:
            raise HostError("MqttError", "this front end cannot ask for a password: "
                                         "use %mqttconnect URL --password-env VAR") from None
    elif url.user is not None:
        raise HostError("MqttError", f"the URL names user {url.user} and no password is at hand (a typed one is "
                                     f"not kept): run %mqttconnect again, or set {PASSWORD_ENV_ENV} to the name "
                                     "of the variable that holds it")
    session = MqttSession.open(url, password=password, timeout=timeout, ca_file=ca_file, insecure=insecure,
                               log=kernel._log_board_bytes)
    kernel.attach_board(session, {"mqtt": str(url), "password_env": password_env},
                        f"connected to {url} through the broker: {session.describe_presence()}\n")
    if session.online is not True:
        kernel.say(f"warning: {session.describe_presence()}; cells wait for it up to 10 s\n", name="stderr")


def connect_from_env(kernel: Any, state: dict[str, Any] | None = None) -> bool:
    """The MQTT kernelspec's own connection (or a restarted kernel's); False when none is configured."""
    url = (state or {}).get("mqtt") or os.environ.get(URL_ENV)
    if not url:
        return False
    password_env = (state or {}).get("password_env") or os.environ.get(PASSWORD_ENV_ENV) or None
    connect(kernel, url, password_env=password_env, ask=False, ca_file=os.environ.get(CA_ENV) or None)
    return True


def _mqttconnect_args(p: Any) -> None:
    p.add_argument("url", help="mqtt://[user@]broker[:port]/DEVICE_ID (mqtts:// for TLS)")
    p.add_argument("--password-env", metavar="VAR", help="environment variable holding the password "
                   "(default: ask, hidden, when the URL names a user)")
    p.add_argument("--ca", metavar="FILE", help="CA certificate of the broker (mqtts://)")
    p.add_argument("--insecure", action="store_true", help="mqtts:// without checking the certificate")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker (default 10)")


@magics.add("mqttconnect", "run board cells through an MQTT broker and the board's agent", arguments=_mqttconnect_args)
def _mqttconnect(kernel: Any, args: Any, body: str) -> None:
    connect(kernel, args.url, password_env=args.password_env, ca_file=args.ca, insecure=args.insecure,
            timeout=args.timeout)
