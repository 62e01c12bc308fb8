"""Telemetry ingest benchmark: MQTT messages/s recorded into a DataFrame by `%mqtt sub` in a real
Python 3 kernel, with `%mqtt plot` and `%mqtt table` attached, sustained for 30 s.

    python bench/telemetry.py [--duration 30] [--max-rows 50000] [--publishers paho:5000,paho,micropython]

One row per publisher, run one after the other against the same broker (mosquitto with
set_tcp_nodelay, else amqtt) in one run:
  paho[:RATE]    a CPython paho-mqtt client publishing QoS 0 JSON at RATE msg/s (or flat out);
  mosquitto_pub  mosquitto's C client reading one message per line from a pipe (-l);
  micropython    firmware/sensor_demo.py on an emulated unix board (real MicroPython, ekmqtt), rate 0.
Each publisher floods; the rate that counts is what the kernel recorded per second over the
measured window (after a warm-up), next to what the publisher sent. The kernel's RSS is sampled:
with --max-rows the recording keeps the latest N rows (the live plot always draws a bounded
window), so memory must level off once N rows are held; --max-rows 0 records everything, and then
memory grows with the rows by design (reported as bytes per row).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from jupyter_client import KernelManager

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekernel.mqtt.broker import RunningBroker, mosquitto_path, start_amqtt, start_mosquitto  # noqa: E402

WARMUP = 3.0
TOPIC = "bench/telemetry"

PAHO_PUBLISHER = r"""
import json, sys, time
import paho.mqtt.client as mqtt
host, port, seconds, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[5])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-paho", protocol=mqtt.MQTTv311)
c.connect(host, port)
c.loop_start()
start = time.monotonic()
n, end = 0, start + seconds
while time.monotonic() < end:
    if rate and n % 50 == 0:   # paced in groups of 50: sleep until the group is due
        time.sleep(max(0.0, start + n / rate - time.monotonic()))
    info = c.publish("%s/paho" % sys.argv[4], json.dumps({"count": n, "temperature": 21.5 + n % 10 / 10, "humidity": 40.0}))
    n += 1
    if n % 500 == 0:
        info.wait_for_publish(5)   # back-pressure: QoS 0 "published" = written to the socket
c.disconnect(); c.loop_stop()
print(n)
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Kernel:
    """A Python 3 kernel with the telemetry extension loaded; iopub drained in a thread."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env)
        self.pid = self.km.provisioner.process.pid
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(60)
        self.plot_updates = 0
        self.other_outputs: list[str] = []
        self._plot_id: str | None = None
        self._stop = threading.Event()
        self._drain = threading.Thread(target=self._drain_iopub, daemon=True)
        self._drain.start()

    def _drain_iopub(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.kc.iopub_channel.get_msg(timeout=0.1)
            except queue.Empty:
                continue
            kind = msg["msg_type"]
            if kind == "display_data" and "image/png" in msg["content"]["data"]:
                self._plot_id = msg["content"]["transient"]["display_id"]
            elif kind == "update_display_data" and msg["content"]["transient"]["display_id"] == self._plot_id:
                self.plot_updates += 1
            elif kind == "error":
                self.other_outputs.append(msg["content"]["evalue"])

    def run(self, code: str) -> None:
        """Execute `code`; raise if it failed."""
        msg_id = self.kc.execute(code)
        while True:
            reply = self.kc.get_shell_msg(timeout=120)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"{code!r} failed: {reply['content'].get('ename')}: {reply['content'].get('evalue')}")

    def value(self, expression: str) -> object:
        msg_id = self.kc.execute("", user_expressions={"v": expression})
        while True:
            reply = self.kc.get_shell_msg(timeout=120)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        v = reply["content"]["user_expressions"]["v"]
        if v["status"] != "ok":
            raise RuntimeError(f"{expression!r}: {v.get('evalue')}")
        return json.loads(v["data"]["text/plain"].replace("'", '"'))

    def close(self) -> None:
        self._stop.set()
        self._drain.join(2)
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


RECORDING = ("get_ipython().magics_manager.registry['TelemetryMagics'].recordings['t'].recording")


def start_publisher(kind: str, broker: RunningBroker, seconds: float) -> tuple[object, Callable[[], int]]:
    """Start a flooding publisher; returns (handle, finish() -> messages sent)."""
    if kind.startswith("paho"):
        rate = kind.partition(":")[2] or "0"
        proc = subprocess.Popen([sys.executable, "-c", PAHO_PUBLISHER, broker.host, str(broker.port), str(seconds),
                                 TOPIC, rate], stdout=subprocess.PIPE, text=True)
        return proc, lambda: int(proc.communicate(timeout=seconds + 30)[0].strip() or 0)
    if kind == "mosquitto_pub":
        exe = shutil.which("mosquitto_pub")
        if exe is None:
            raise RuntimeError("mosquitto_pub is not installed (apt-get install mosquitto-clients)")
        proc = subprocess.Popen([exe, "-h", broker.host, "-p", str(broker.port), "-t", f"{TOPIC}/mosquitto_pub",
                                 "-l", "-q", "0"], stdin=subprocess.PIPE)
        sent = [0]

        def feed() -> None:
            end = time.monotonic() + seconds
            n = 0
            try:
                while time.monotonic() < end:
                    block = "".join(json.dumps({"count": n + i, "temperature": 21.5, "humidity": 40.0}) + "\n"
                                    for i in range(200))
                    proc.stdin.write(block.encode())
                    n += 200
                proc.stdin.close()
            except BrokenPipeError:
                pass
            sent[0] = n

        feeder = threading.Thread(target=feed)
        feeder.start()

        def finish() -> int:
            feeder.join()
            proc.wait(30)
            return sent[0]
        return proc, finish
    if kind == "micropython":
        from edgekernel.telemetry.demo import start_sensor_board
        sensor = start_sensor_board(broker.url, device_id="bench", rate=0)
        stop_at = time.monotonic() + seconds

        def finish() -> int:
            time.sleep(max(0.0, stop_at - time.monotonic()))
            sensor.stop()
            return -1   # counted from the readings' own counter
        return sensor, finish
    raise ValueError(kind)


def measure_ingest(duration: float = 30.0, *, publisher: str = "paho", broker: RunningBroker | None = None,
                   max_rows: int | None = 50_000, window: int = 500, plot_rate: float = 2.0) -> dict[str, object]:
    """Messages/s recorded by %mqtt sub with a live plot and table attached, for `duration` seconds."""
    own_broker = broker is None
    if broker is None:
        broker = start_mosquitto() if mosquitto_path() else start_amqtt()
    kernel = Kernel()
    try:
        bound = f" --max-rows {max_rows}" if max_rows else ""
        kernel.run(f"%load_ext edgekernel.telemetry\n%mqtt connect {broker.url}\n"
                   f"%mqtt sub {TOPIC}/# edgekernel/+/telemetry/# --as t{bound}")
        kernel.run(f"%mqtt plot t --window {window} --rate {plot_rate}")
        kernel.run(f"%mqtt table t --rate {plot_rate}")
        rss_start = rss_mb(kernel.pid)
        # The publisher outlasts the sampling (whose reads take time too), so no sample sees it stop.
        _, finish = start_publisher(publisher, broker, duration + WARMUP + 3)
        time.sleep(WARMUP)
        samples: list[tuple[float, int, float]] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration:
            samples.append((time.monotonic(), int(kernel.value(f"{RECORDING}.received")), rss_mb(kernel.pid)))
            time.sleep(1.0)
        samples.append((time.monotonic(), int(kernel.value(f"{RECORDING}.received")), rss_mb(kernel.pid)))
        sent = finish()
        time.sleep(1.0)
        received_total = int(kernel.value(f"{RECORDING}.received"))
        rows = int(kernel.value(f"len({RECORDING})"))
        if sent < 0:   # the MicroPython board numbers its readings
            sent = int(kernel.value(f"int({RECORDING}.frame()['count'].max()) + 1"))
        # Ingest is only as fast as the messages arriving: also give each second's rate.
        per_second = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(samples, samples[1:])]
        rate = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
        cap_reached = next((s for s in samples if max_rows and s[1] >= max_rows + 4096), None)
        plot_updates = kernel.plot_updates
        kernel.run("%mqtt stop t")
        return {
            "publisher": publisher, "broker": broker.kind, "seconds": round(samples[-1][0] - samples[0][0], 1),
            "sent": sent, "received": received_total, "received/sent": round(received_total / sent, 4) if sent else None,
            "msg_per_s": round(rate), "min_1s_msg_per_s": round(min(per_second)) if per_second else None,
            "median_1s_msg_per_s": round(statistics.median(per_second)) if per_second else None,
            "rows_kept": rows, "max_rows": max_rows or "all",
            "rss_mb_start": round(rss_start, 1), "rss_mb_measure_start": round(samples[0][2], 1),
            "rss_mb_cap_reached": round(cap_reached[2], 1) if cap_reached else None,
            "rss_mb_end": round(samples[-1][2], 1),
            "rss_growth_after_cap_mb": round(samples[-1][2] - cap_reached[2], 1) if cap_reached else None,
            "plot_updates": plot_updates, "plot_updates_per_s": round(plot_updates / (duration + WARMUP + 3), 2),
            "kernel_errors": kernel.other_outputs,
            "rss_mb_every_5s": [round(r, 1) for _, _, r in samples[::5]],
            "msg_per_s_every_s": [round(r) for r in per_second],
        }
    finally:
        kernel.close()
        if own_broker:
            broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--max-rows", type=int, default=50_000, help="0: keep every row")
    parser.add_argument("--publishers", default="paho:5000,paho:10000,paho,micropython,mosquitto_pub",
                        help="paho[:RATE] (RATE msg/s offered; none: flat out), mosquitto_pub, micropython")
    parser.add_argument("--broker", choices=("mosquitto", "amqtt"), default="mosquitto" if mosquitto_path() else "amqtt")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    broker = start_mosquitto() if args.broker == "mosquitto" else start_amqtt()
    results = []
    try:
        for kind in args.publishers.split(","):
            try:
                results.append(measure_ingest(args.duration, publisher=kind, broker=broker,
                                              max_rows=args.max_rows or None))
            except Exception as exc:
                results.append({"publisher": kind, "error": f"{type(exc).__name__}: {exc}"})
            print(json.dumps(results[-1]), file=sys.stderr)
    finally:
        broker.stop()
    cols = ["publisher", "broker", "seconds", "sent", "received/sent", "msg_per_s", "min_1s_msg_per_s",
            "rows_kept", "rss_mb_start", "rss_mb_cap_reached", "rss_mb_end", "rss_growth_after_cap_mb",
            "plot_updates_per_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        if "error" in r:
            print(f"| {r['publisher']} | ERROR {r['error']} |")
        else:
            print("| " + " | ".join(str(r.get(c)) for c in cols) + " |")
    ok = [r for r in results if "error" not in r]
    if ok:
        best = max(r["msg_per_s"] for r in ok)
        print(f"\ntarget >= 5,000 msg/s ingested: best {best:,} msg/s ({best / 5000:.1f}x the target)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
