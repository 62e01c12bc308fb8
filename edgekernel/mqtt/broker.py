"""Start an MQTT broker on loopback: mosquitto (the real thing) or amqtt (pure Python, zero-install).

Tests, benchmarks and `%mqtt broker start` use these. Both listen on 127.0.0.1 only.
mosquitto gets `set_tcp_nodelay true`: without it every small publish waits on Nagle's
algorithm and a round trip costs tens of milliseconds instead of well under one.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


class BrokerError(RuntimeError):
    """A broker could not be started. The message says what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(host: str, port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise BrokerError(f"the broker on {host}:{port} exited while starting")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)
    raise BrokerError(f"no broker listening on {host}:{port} after {timeout:.0f} s")


@dataclass
class RunningBroker:
    """A broker this process started. `stop()` ends it (idempotent)."""

    kind: str
    host: str
    port: int
    pid: int  # the broker's process (our own for amqtt, which runs in a thread)
    _stop: Callable[[], None] = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._stop()

    def __enter__(self) -> "RunningBroker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None)


def start_mosquitto(port: int = 0, *, users: dict[str, str] | None = None, timeout: float = 10.0) -> RunningBroker:
    """Run mosquitto on 127.0.0.1:`port` (0 picks a free one). `users` turns on password login."""
    exe = mosquitto_path()
    if exe is None:
        raise BrokerError("mosquitto is not installed: apt-get install --no-install-recommends mosquitto")
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="edgekernel-mosquitto-"))
    lines = [f"listener {port} 127.0.0.1", "set_tcp_nodelay true", "persistence false",
             "log_dest stderr", "log_type error", "log_type warning"]
    if os.geteuid() == 0:
        # Started as root, mosquitto drops to the "mosquitto" user, which cannot read our private files.
        lines.append("user root")
    if users:
        passwd = workdir / "passwd"
        passwd.touch(mode=0o600)
        for user, password in users.items():
            # -b would put the password on a command line; mosquitto_passwd reads it from stdin otherwise,
            # so write the file ourselves in its documented "user:password" form and let -U hash it.
            with passwd.open("a") as f:
                f.write(f"{user}:{password}\n")
        subprocess.run([shutil.which("mosquitto_passwd") or "mosquitto_passwd", "-U", str(passwd)],
                       check=True, capture_output=True)
        lines += ["allow_anonymous false", f"password_file {passwd}"]
    else:
        lines.append("allow_anonymous true")
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(workdir, ignore_errors=True)

    try:
        wait_listening("127.0.0.1", port, timeout, alive=lambda: proc.poll() is None)
    except BrokerError as exc:
        err = proc.stderr.read().decode(errors="replace").strip() if proc.poll() is not None and proc.stderr else ""
        stop()
        raise BrokerError(f"{exc}{': ' + err.splitlines()[-1] if err else ''}") from None
    return RunningBroker("mosquitto", "127.0.0.1", port, proc.pid, stop)


def start_amqtt(port: int = 0, *, timeout: float = 10.0) -> RunningBroker:
    """Run amqtt's broker in a background thread of this process on 127.0.0.1:`port`."""
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise BrokerError("amqtt is not installed: pip install 'edgekernel[telemetry]'") from None
    port = port or free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []
    broker_box: list[object] = []

    async def serve() -> None:
        broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}}})
        await broker.start()
        broker_box.append(broker)

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # reported to the starting thread
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name=f"amqtt-{port}", daemon=True)
    thread.start()
    if not ready.wait(timeout) or failure:
        raise BrokerError(f"amqtt did not start on 127.0.0.1:{port}: {failure[0] if failure else 'timed out'}")

    def stop() -> None:
        async def shutdown() -> None:
            await broker_box[0].shutdown()  # type: ignore[attr-defined]
        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        except Exception:
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    return RunningBroker("amqtt", "127.0.0.1", port, os.getpid(), stop)


def start_broker(kind: str = "mosquitto", port: int = 0, **options: object) -> RunningBroker:
    """Start a broker by name: "mosquitto" or "amqtt"."""
    if kind == "mosquitto":
        return start_mosquitto(port, **options)  # type: ignore[arg-type]
    if kind == "amqtt":
        return start_amqtt(port, **options)  # type: ignore[arg-type]
    raise BrokerError(f"unknown broker {kind!r}: use mosquitto or amqtt")
