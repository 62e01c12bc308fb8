"""bench/telemetry.py's measure_ingest end to end, briefly: a paced publisher, a real kernel with the
live plot attached, every message recorded (the timing itself is the benchmark's business)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_measure_ingest_records_every_message_with_the_plot_attached(mosquitto):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import telemetry as bench
    finally:
        sys.path.remove(str(ROOT / "bench"))
    result = bench.measure_ingest(2.0, publisher="paho:300", broker=mosquitto, max_rows=200, plot_rate=5)
    assert result["kernel_errors"] == []
    assert result["sent"] > 300 and result["received"] == result["sent"]
    assert result["rows_kept"] == 200          # --max-rows bounds the recording
    assert result["plot_updates"] >= 1         # the live plot was redrawn while messages came in
    assert result["msg_per_s"] > 0
