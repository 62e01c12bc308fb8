"""The %mqtt line magic for host IPython kernels (load with `%load_ext edgekernel.telemetry`).

Thin: parses arguments (MagicParser, one per subcommand) and wires the MQTT plumbing (client.py),
the recordings (recording.py) and the live views (views.py) into the notebook: recordings appear
as DataFrames in the user namespace, refreshed when a cell starts; views are displayed once and
then updated in place by display id.
"""
from __future__ import annotations

import argparse
import getpass
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.display import HTML, Image, display

from edgekernel.kernel.magics import MagicError, MagicHelp, MagicParser

from . import client as mq
from .recording import CsvRecorder, Recording
from .views import DEFAULT_RATE, Refresher, View, render_plot, render_table

SUMMARY = {
    "connect": "set the default broker: %mqtt connect mqtt://[user@]host[:port] [--password-env VAR]",
    "sub": "record topics (wildcards + and #) into a pandas DataFrame NAME",
    "plot": "a live plot of a recording, updated in place",
    "table": "the latest value per topic of a recording, updated in place",
    "record": "write a recording to a CSV file, and keep appending until %mqtt stop",
    "pub": "publish one message",
    "devices": "presence of every edgekernel agent on the broker",
    "stop": "stop a recording (its DataFrame stays)",
    "wait": "wait until a recording has at least N rows",
    "status": "recordings, their rates and views",
    "broker": "start or stop a zero-install broker (amqtt) on 127.0.0.1",
}


def _broker_options(p: MagicParser) -> None:
    p.add_argument("--broker", metavar="URL", help="mqtt://[user@]host[:port] (default: %%mqtt connect, "
                   f"${mq.ENV_URL}, or {mq.DEFAULT_URL})")
    p.add_argument("--password-env", metavar="VAR", help="read the broker password from this environment variable")


def _parsers() -> dict[str, MagicParser]:
    ps = {name: MagicParser(f"mqtt {name}", summary) for name, summary in SUMMARY.items()}
    ps["connect"].add_argument("url")
    ps["connect"].add_argument("--password-env", metavar="VAR")
    ps["sub"].add_argument("topics", nargs="+", metavar="TOPIC")
    ps["sub"].add_argument("--as", dest="name", default="telemetry", help="the DataFrame's name (default: telemetry)")
    ps["sub"].add_argument("--qos", type=int, choices=(0, 1), default=0)
    ps["sub"].add_argument("--max-rows", type=int, metavar="N",
                           help="keep only the latest N rows (default: keep every row)")
    _broker_options(ps["sub"])
    ps["plot"].add_argument("name")
    ps["plot"].add_argument("--y", nargs="+", metavar="FIELD", help="fields to draw (default: every numeric field)")
    ps["plot"].add_argument("--window", type=int, default=500, metavar="N", help="draw the last N messages (default 500)")
    ps["plot"].add_argument("--rate", type=float, default=DEFAULT_RATE, metavar="HZ", help="redraws per second at most")
    ps["table"].add_argument("name")
    ps["table"].add_argument("--rate", type=float, default=DEFAULT_RATE, metavar="HZ")
    ps["record"].add_argument("name")
    ps["record"].add_argument("file", metavar="FILE.csv")
    ps["pub"].add_argument("topic")
    ps["pub"].add_argument("payload")
    ps["pub"].add_argument("--retain", action="store_true")
    ps["pub"].add_argument("--qos", type=int, choices=(0, 1), default=1)
    _broker_options(ps["pub"])
    _broker_options(ps["devices"])
    ps["devices"].add_argument("--settle", type=float, default=0.3, help=argparse.SUPPRESS)
    ps["stop"].add_argument("name", nargs="?")
    ps["stop"].add_argument("--all", action="store_true")
    ps["wait"].add_argument("name")
    ps["wait"].add_argument("--rows", type=int, default=1, metavar="N")
    ps["wait"].add_argument("--timeout", type=float, default=30.0, metavar="S")
    ps["broker"].add_argument("action", choices=("start", "stop"))
    ps["broker"].add_argument("--port", type=int, default=0, help="default: 1883 if free, else any free port")
    return ps


PARSERS = _parsers()


@dataclass
class Active:
    """A recording and what is attached to it."""

    recording: Recording
    subscription: mq.Subscription | None
    csv: list[CsvRecorder] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    errors: int = 0
    last_error: str = ""


@magics_class
class TelemetryMagics(Magics):
    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.address: mq.BrokerAddress | None = None   # set by %mqtt connect / broker start
        self.broker = None
        self.recordings: dict[str, Active] = {}
        self.refresher = Refresher()
        self._shown: dict[str, Any] = {}   # name -> the frame we last put in the user namespace

    # -- the magic ----------------------------------------------------------------------
    @line_magic
    def mqtt(self, line: str) -> Any:
        """MQTT telemetry: %mqtt connect|sub|plot|table|record|pub|devices|stop|wait|status|broker ... (-h for help)"""
        command, _, rest = line.strip().partition(" ")
        if command in ("", "-h", "--help", "help"):
            print("\n".join(f"%mqtt {name:<8} {text}" for name, text in SUMMARY.items()))
            return None
        parser = PARSERS.get(command)
        if parser is None:
            raise UsageError(f"%mqtt: unknown command {command!r} (choose from {', '.join(SUMMARY)})")
        try:
            words = rest.split()
            if words[:1] in (["-h"], ["--help"]) or (command != "pub" and {"-h", "--help"} & set(words)):
                raise MagicHelp(parser.format_help())
            args = split_pub_line(rest) if command == "pub" else parser.parse_line(rest)
            return getattr(self, f"_{command}")(args)
        except MagicHelp as help_text:
            print(str(help_text))
        except (MagicError, mq.TelemetryError) as exc:
            raise UsageError(str(exc)) from None
        except Exception as exc:
            from edgekernel.mqtt.broker import BrokerError
            if isinstance(exc, (BrokerError, OSError)):
                raise UsageError(f"%mqtt {command}: {exc}") from None
            raise
        return None

    # -- broker address -----------------------------------------------------------------
    def _address(self, args: argparse.Namespace) -> mq.BrokerAddress:
        if getattr(args, "broker", None):
            address = mq.parse_broker_url(args.broker)
        elif self.address is not None:
            if getattr(args, "password_env", None):
                return self.address.with_password(mq.password_from_env(args.password_env))
            return self.address
        else:
            address = mq.parse_broker_url(mq.default_url())
        return self._with_password(address, getattr(args, "password_env", None))

    def _with_password(self, address: mq.BrokerAddress, env: str | None) -> mq.BrokerAddress:
        if address.user is None:
            if env:
                raise mq.TelemetryError("--password-env needs a user: mqtt://user@host")
            return address
        if env:
            return address.with_password(mq.password_from_env(env))
        return address.with_password(getpass.getpass(f"MQTT password for {address.user}@{address.host}: "))

    def _connect(self, args: argparse.Namespace) -> None:
        address = self._with_password(mq.parse_broker_url(args.url), args.password_env)
        mq.close(mq.connect(address))
        self.address = address
        print(f"%mqtt uses {address.url} from now on")

    def _broker(self, args: argparse.Namespace) -> str | None:
        from edgekernel.mqtt.broker import free_port, start_amqtt
        if args.action == "start":
            if self.broker is not None:
                print(f"a broker is already running at {self.broker.url}")
                return self.broker.url
            port = args.port or _port_if_free(1883) or free_port()
            self.broker = start_amqtt(port)
            self.address = mq.parse_broker_url(self.broker.url)
            print(f"amqtt broker running at {self.broker.url} (loopback only); %mqtt uses it from now on")
            return self.broker.url
        else:
            if self.broker is None:
                raise mq.TelemetryError("no broker was started here: %mqtt broker start starts one")
            url = self.broker.url
            self.broker.stop()
            self.broker = None
            if self.address is not None and self.address.url == url:
                self.address = None
            print(f"broker at {url} stopped")
        return None

    # -- recordings ---------------------------------------------------------------------
    def _sub(self, args: argparse.Namespace) -> None:
        name = args.name
        if not name.isidentifier():
            raise mq.TelemetryError(f"--as {name!r} is not a Python name: use letters, digits and _")
        if name in self.recordings and self.recordings[name].subscription is not None:
            raise mq.TelemetryError(f"{name} is already recording: %mqtt stop {name} first, or use --as OTHER")
        if args.max_rows is not None and args.max_rows < 1:
            raise mq.TelemetryError("--max-rows must be at least 1")
        address = self._address(args)
        recording = Recording(name, args.topics, max_rows=args.max_rows)
        active = Active(recording, None)

        def deliver(topic: str, payload: bytes) -> None:
            try:
                recording.add(topic, payload)
            except Exception as exc:  # the MQTT thread must never print a traceback into a cell
                active.errors += 1
                active.last_error = f"{type(exc).__name__}: {exc}"

        active.subscription = mq.Subscription(address, args.topics, deliver, qos=args.qos)
        self.recordings[name] = active
        self._publish_frame(name)
        bound = f", keeping the latest {args.max_rows} rows" if args.max_rows else ""
        print(f"recording {' '.join(args.topics)} from {address.url} into {name} "
              f"(a pandas DataFrame, refreshed when a cell starts{bound})")

    def _get(self, name: str) -> Active:
        if name not in self.recordings:
            known = ", ".join(self.recordings) or "none yet"
            raise mq.TelemetryError(f"no recording named {name!r} (recordings: {known}); start one with "
                                    f"%mqtt sub TOPIC --as {name}")
        return self.recordings[name]

    def _stop(self, args: argparse.Namespace) -> None:
        if args.all:
            names = list(self.recordings)
        elif args.name:
            self._get(args.name)
            names = [args.name]
        else:
            raise mq.TelemetryError("%mqtt stop NAME (or --all)")
        for name in names:
            active = self.recordings[name]
            if active.subscription is not None:
                active.subscription.close()
                active.subscription = None
            for recorder in active.csv:
                self.refresher.remove_task(recorder.flush)
                recorder.close()
            active.csv.clear()
            for view in self.refresher.remove_for(active.recording):
                view.refresh(time.monotonic())   # a last draw with every message
            self._publish_frame(name)
            print(f"stopped {name}: {len(active.recording)} rows")

    def _wait(self, args: argparse.Namespace) -> None:
        recording = self._get(args.name).recording
        deadline = time.monotonic() + args.timeout
        while len(recording) < args.rows:
            if time.monotonic() > deadline:
                raise mq.TelemetryError(f"{args.name} has {len(recording)} rows after {args.timeout:g} s, "
                                        f"not {args.rows}: is anything publishing to {' '.join(recording.topics)}?")
            time.sleep(0.02)
        self._publish_frame(args.name)

    def _status(self, args: argparse.Namespace) -> Any:
        import pandas as pd
        rows = []
        for name, active in self.recordings.items():
            views = [v for v in self.refresher.views if v.recording is active.recording]
            seconds = time.monotonic() - active.started
            rows.append({"name": name, "topics": " ".join(active.recording.topics),
                         "recording": active.subscription is not None,
                         "connected": active.subscription is not None and active.subscription.client.is_connected(),
                         "rows": len(active.recording),
                         "received": active.recording.received,
                         "msg/s": round(active.recording.received / seconds, 1) if seconds else 0.0,
                         "views": len(views), "csv": ", ".join(r.path for r in active.csv),
                         "errors": active.errors + sum(v.errors for v in views),
                         "last error": active.last_error or next((v.last_error for v in views if v.last_error), "")})
        return pd.DataFrame(rows).set_index("name") if rows else None

    # -- views --------------------------------------------------------------------------
    def _plot(self, args: argparse.Namespace) -> None:
        recording = self._get(args.name).recording
        if args.window < 1 or args.rate <= 0:
            raise mq.TelemetryError("--window must be at least 1 and --rate above 0")
        recording.want_recent(args.window)

        def render() -> Image:
            return Image(render_plot(recording.window(args.window), args.y, args.name), format="png")

        self._show(recording, render, args.rate)

    def _table(self, args: argparse.Namespace) -> None:
        recording = self._get(args.name).recording

        def render() -> HTML:
            return HTML(render_table(recording.latest_frame(), args.name))

        self._show(recording, render, args.rate)

    def _show(self, recording: Recording, render: Any, rate: float) -> None:
        # Displayed here, in the calling cell, once; the refresher only updates it by display id.
        handle = display(render(), display_id=True)
        view = View(recording, render, handle.update, 1.0 / rate, drawn_version=recording.version,
                    drawn_at=time.monotonic())
        if self.recordings[recording.name].subscription is not None:
            self.refresher.add(view)

    def _record(self, args: argparse.Namespace) -> None:
        active = self._get(args.name)
        path = os.path.expanduser(args.file)
        try:
            recorder = CsvRecorder(active.recording, path)
        except OSError as exc:
            raise mq.TelemetryError(f"cannot write {path}: {exc.strerror or exc}") from None
        if active.subscription is not None:
            active.csv.append(recorder)
            self.refresher.add_task(recorder.flush)
            print(f"writing {args.name} to {path} ({recorder.rows_written} rows so far, more until %mqtt stop {args.name})")
        else:
            recorder.close()
            print(f"wrote {recorder.rows_written} rows of {args.name} to {path}")

    # -- one-shot commands --------------------------------------------------------------
    def _pub(self, args: argparse.Namespace) -> None:
        address = self._address(args)
        mq.publish(address, args.topic, args.payload.encode(), retain=args.retain, qos=args.qos)

    def _devices(self, args: argparse.Namespace) -> Any:
        import pandas as pd
        found = mq.presence(self._address(args), settle=args.settle)
        if not found:
            print(f"no edgekernel agents have announced themselves on {self._address(args).url}")
            return None
        return pd.DataFrame.from_dict(found, orient="index").rename_axis("device")

    # -- the user namespace -------------------------------------------------------------
    def _publish_frame(self, name: str) -> None:
        """Put the recording's current DataFrame in the user namespace, unless the user took the name."""
        ns = self.shell.user_ns
        if name in ns and ns[name] is not self._shown.get(name):
            if name in self._shown:
                return   # the user reassigned it: leave theirs alone
        frame = self.recordings[name].recording.frame()
        ns[name] = frame
        self._shown[name] = frame

    def refresh_namespace(self, *_: Any) -> None:
        for name in self.recordings:
            self._publish_frame(name)

    def close(self) -> None:
        for name, active in list(self.recordings.items()):
            if active.subscription is not None:
                active.subscription.close()
                active.subscription = None
            for recorder in active.csv:
                recorder.close()
        self.refresher.stop()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None


_PUB_FLAGS = {"--retain": 0, "--qos": 1, "--broker": 1, "--password-env": 1}


def split_pub_line(line: str) -> argparse.Namespace:
    """%mqtt pub [options] TOPIC PAYLOAD [options]: the payload is the rest of the line, verbatim
    (JSON keeps its double quotes), or one quoted word ('{"led": 1}', "a b")."""
    words = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", line)]
    first, last = 0, len(words)
    options: list[str] = []
    while first < last and words[first][2] in _PUB_FLAGS:
        n = _PUB_FLAGS[words[first][2]] + 1
        options += [w[2] for w in words[first:first + n]]
        first += n
    moved = True
    while moved:
        moved = False
        for flag, n in _PUB_FLAGS.items():
            if last - n - 1 > first + 1 and words[last - n - 1][2] == flag:
                options += [w[2] for w in words[last - n - 1:last]]
                last -= n + 1
                moved = True
                break
    if last - first < 2:
        PARSERS["pub"].error("needs a TOPIC and a PAYLOAD")
    topic = words[first][2]
    payload = line[words[first + 1][0]:words[last - 1][1]]
    if len(payload) >= 2 and payload[0] == payload[-1] and payload[0] in "'\"":
        try:
            unquoted = shlex.split(payload)
        except ValueError:
            unquoted = []
        if len(unquoted) == 1:
            payload = unquoted[0]
    args = PARSERS["pub"].parse_line(" ".join(shlex.quote(o) for o in options) + " _ _")
    args.topic, args.payload = topic, payload
    return args


def _port_if_free(port: int) -> int | None:
    import socket
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return None
    return port
