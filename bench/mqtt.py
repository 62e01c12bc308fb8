"""MQTT benchmark: cells run through a broker and the board agent, mosquitto and amqtt side by side
in one run, with the serial (pty) link of the same emulated unix board as a reference.

    python bench/mqtt.py [--runs 200] [--json out.json]

  1+1      exec round trip of `1+1` with its value shown (MqttSession.exec / BoardSession.exec),
           median and p99 of --runs, taken in alternating blocks so every path sees the same load.
  print    a 2000-line print (8,890 bytes of output), median of 5.
  ingest   telemetry messages/s into a DataFrame with a live plot (bench/telemetry.py's
           measure_ingest(), when present).

Targets (issue 6): 1+1 <= 2 ms median on loopback with mosquitto.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekernel.device import BoardSession  # noqa: E402
from edgekernel.mqtt.agent import start_agent_board  # noqa: E402
from edgekernel.mqtt.broker import mosquitto_path, start_amqtt, start_mosquitto  # noqa: E402
from edgekernel.mqtt.session import MqttSession  # noqa: E402

BLOCKS = 4
PRINT_CODE = "for i in range(2000):\n    print(i)"
PRINT_BYTES = sum(len(f"{i}\n") for i in range(2000))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def one_plus_one(session, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        result = session.exec("1+1", show_value=True)
        times.append(time.perf_counter() - t)
        assert result.value == "2", result
    return times


def big_print(session, n: int = 5) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        result = session.exec(PRINT_CODE)
        times.append(time.perf_counter() - t)
        assert len(result.output.replace(b"\r\n", b"\n")) == PRINT_BYTES, len(result.output)
    return times


def telemetry_ingest(seconds: float) -> dict | None:
    """The telemetry benchmark (bench/telemetry.py, measure_ingest()), when it is here."""
    path = Path(__file__).with_name("telemetry.py")
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("ek_bench_telemetry", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    measure = getattr(module, "measure_ingest", None)
    return measure(seconds) if measure else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--ingest-seconds", type=float, default=30.0,
                        help="how long to measure telemetry ingest (0: skip it)")
    args = parser.parse_args()

    brokers = []
    if mosquitto_path():
        brokers.append(start_mosquitto())
    else:
        print("mosquitto is not installed: its column is skipped", file=sys.stderr)
    brokers.append(start_amqtt())
    boards = []
    paths: dict[str, object] = {}
    try:
        for broker in brokers:
            url = f"mqtt://127.0.0.1:{broker.port}/bench-{broker.kind}"
            boards.append(start_agent_board(url))
            paths[f"mqtt/{broker.kind}"] = MqttSession.open(url)
        # Reference: the same kind of emulated board on its serial (pty) link, raw REPL.
        from edgekernel.emulator import start_board
        serial_board = start_board("unix")
        boards.append(serial_board)
        paths["serial (pty)"] = BoardSession.open(serial_board.port)

        samples: dict[str, list[float]] = {name: [] for name in paths}
        per_block = max(1, args.runs // BLOCKS)
        for name, session in paths.items():
            one_plus_one(session, 20)  # warm up
        for _ in range(BLOCKS):
            for name, session in paths.items():
                samples[name] += one_plus_one(session, per_block)
        prints = {name: big_print(session) for name, session in paths.items()}
    finally:
        for session in paths.values():
            session.close()  # type: ignore[attr-defined]
        for board in boards:
            board.stop()
        for broker in brokers:
            broker.stop()
    # Alone on the machine: its own broker and publisher, nothing of the above still running.
    ingest = telemetry_ingest(args.ingest_seconds) if args.ingest_seconds > 0 else None

    rows = []
    base = statistics.median(samples.get("mqtt/mosquitto") or next(iter(samples.values())))
    for name in paths:
        med = statistics.median(samples[name])
        p99 = percentile(samples[name], 99)
        pr = statistics.median(prints[name])
        rows.append({"path": name, "median_ms": med * 1000, "p99_ms": p99 * 1000, "print_2000_s": pr,
                     "print_bytes_per_s": PRINT_BYTES / pr, "ratio_to_mosquitto": med / base})
    print(f"\n1+1 round trip ({len(samples[next(iter(samples))])} runs each, alternating blocks) and a 2000-line print")
    print("| path | `1+1` median / p99 | vs mosquitto | 2000-line print |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['median_ms']:.2f} / {r['p99_ms']:.2f} ms | {r['ratio_to_mosquitto']:.2f}x "
              f"| {r['print_2000_s'] * 1000:.1f} ms ({r['print_bytes_per_s'] / 1e6:.2f} MB/s) |")
    if "mqtt/mosquitto" in samples:
        med = statistics.median(samples["mqtt/mosquitto"]) * 1000
        print(f"\ntarget: 1+1 <= 2 ms median with mosquitto: {med:.2f} ms, {'met' if med <= 2 else 'NOT met'}")
    if ingest is None:
        print("\ntelemetry ingest: not measured (bench/telemetry.py missing, or --ingest-seconds 0)")
    else:
        print(f"\ntelemetry ingest into a DataFrame with a live plot and table ({ingest.get('broker')}, "
              f"{ingest.get('seconds')} s): {ingest.get('msg_per_s')} msg/s sustained "
              f"(slowest second {ingest.get('min_1s_msg_per_s')}), received/sent {ingest.get('received/sent')}, "
              f"memory growth after the row cap {ingest.get('rss_growth_after_cap_mb')} MB; target >= 5,000 msg/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ingest": ingest}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
