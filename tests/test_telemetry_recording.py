"""Recordings (rows -> DataFrame), payload parsing, CSV, broker URLs and topic filters: no broker."""
from __future__ import annotations

import csv
import json
import threading

import pandas as pd
import pytest

from edgekernel.telemetry import client as mq
from edgekernel.telemetry.recording import CHUNK, CsvRecorder, Recording, parse_payload


@pytest.mark.parametrize("payload, fields", [
    (b'{"t": 21.5, "ok": true}', {"t": 21.5, "ok": True}),
    (b"42", {"value": 42}),
    (b"-3.25", {"value": -3.25}),
    (b"[1, 2]", {"value": [1, 2]}),
    (b"on", {"value": "on"}),
    (b"", {"value": ""}),
    (b"\xff\x00", {"value": "ff00"}),
])
def test_payloads_become_fields(payload, fields):
    assert parse_payload(payload) == fields


def test_frame_has_every_row_in_order_across_chunks():
    rec = Recording("r", ["#"])
    n = CHUNK * 2 + 17
    for i in range(n):
        rec.add("a/b" if i % 2 else "a/c", json.dumps({"i": i, "x": i * 0.5}).encode(), when=1_700_000_000 + i)
    frame = rec.frame()
    assert len(frame) == n == len(rec) == rec.received
    assert list(frame.columns[:2]) == ["time", "topic"]
    assert frame["i"].tolist() == list(range(n))
    assert frame["time"].iloc[0] == pd.Timestamp(1_700_000_000, unit="s")
    assert set(frame["topic"]) == {"a/b", "a/c"}
    # Asking again without new rows gives the same object (no rebuild); new rows extend it.
    assert rec.frame() is frame
    rec.add("a/b", b'{"i": -1}')
    assert rec.frame()["i"].tolist() == list(range(n)) + [-1]


def test_mixed_payloads_make_aligned_columns():
    rec = Recording("r", ["#"])
    rec.add("t/1", b'{"temperature": 20.5}')
    rec.add("t/2", b"7")
    rec.add("t/3", b'{"time": 5, "topic": "x"}')
    frame = rec.frame()
    assert frame["temperature"].iloc[0] == 20.5 and pd.isna(frame["temperature"].iloc[1])
    assert frame["value"].iloc[1] == 7
    # Payload fields that clash with our columns are kept under another name.
    assert frame["time_"].iloc[2] == 5 and frame["topic_"].iloc[2] == "x"
    assert frame["topic"].tolist() == ["t/1", "t/2", "t/3"]


def test_max_rows_keeps_the_latest_rows():
    rec = Recording("r", ["#"], max_rows=1000)
    for i in range(CHUNK * 3):
        rec.add("a", str(i).encode())
    frame = rec.frame()
    assert len(frame) == 1000 == len(rec)
    assert frame["value"].tolist() == list(range(CHUNK * 3 - 1000, CHUNK * 3))
    assert rec.received == CHUNK * 3
    # Memory stays bounded: at most max_rows plus one chunk are held.
    assert rec._chunk_rows + len(rec._pending) <= 1000 + CHUNK


def test_rows_added_from_threads_while_reading_are_all_kept():
    rec = Recording("r", ["#"])
    def writer(k: int) -> None:
        for i in range(5000):
            rec.add(f"w/{k}", str(i).encode())
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        rec.frame()
    for t in threads:
        t.join()
    frame = rec.frame()
    assert len(frame) == 20000
    for k in range(4):
        assert frame[frame.topic == f"w/{k}"]["value"].tolist() == list(range(5000))


def test_window_and_latest():
    rec = Recording("r", ["#"], recent_rows=10)
    for i in range(30):
        rec.add(f"dev/{i % 3}", json.dumps({"n": i}).encode())
    assert rec.window(5)["n"].tolist() == [25, 26, 27, 28, 29]
    rec.want_recent(20)
    rec.add("dev/0", b'{"n": 30}')
    assert len(rec.window(20)) == 11   # the window only grows from now on
    latest = rec.latest_frame()
    assert latest.loc["dev/0", "n"] == 30 and latest.loc["dev/2", "n"] == 29


def test_csv_recorder_writes_snapshot_then_new_rows(tmp_path):
    rec = Recording("r", ["#"])
    rec.add("a", b'{"x": 1, "y": "one"}')
    path = tmp_path / "r.csv"
    recorder = CsvRecorder(rec, str(path))
    rec.add("a", b'{"x": 2, "y": "two"}')
    rec.add("b", b'{"x": 3, "z": [1]}')      # z was not a column: counted, not written
    recorder.close()
    rows = list(csv.DictReader(path.open()))
    assert [r["x"] for r in rows] == ["1", "2", "3"]
    assert [r["topic"] for r in rows] == ["a", "a", "b"]
    assert rows[1]["y"] == "two" and rows[2]["y"] == ""
    assert recorder.rows_written == 3 and recorder.dropped_fields == 1
    assert rows[0]["time"][:4] == rows[2]["time"][:4]   # one time format for snapshot and appended rows
    rec.add("a", b'{"x": 4}')                # after close: not written
    assert len(list(csv.DictReader(path.open()))) == 3


def test_csv_recorder_of_an_empty_recording_takes_columns_from_first_rows(tmp_path):
    rec = Recording("r", ["#"])
    path = tmp_path / "r.csv"
    recorder = CsvRecorder(rec, str(path))
    rec.add("a", b'{"t": 1.5}')
    recorder.flush()
    rows = list(csv.DictReader(path.open()))
    assert rows == [{"time": rows[0]["time"], "topic": "a", "t": "1.5"}]
    recorder.close()


@pytest.mark.parametrize("url, host, port, user, tls", [
    ("mqtt://127.0.0.1", "127.0.0.1", 1883, None, False),
    ("mqtt://lab@broker.local:18830", "broker.local", 18830, "lab", False),
    ("mqtts://pi.lan", "pi.lan", 8883, None, True),
    ("10.0.0.2:1884", "10.0.0.2", 1884, None, False),
])
def test_broker_urls(url, host, port, user, tls):
    address = mq.parse_broker_url(url)
    assert (address.host, address.port, address.user, address.tls) == (host, port, user, tls)


def test_a_password_in_the_url_is_refused_without_echoing_it():
    with pytest.raises(mq.TelemetryError) as info:
        mq.parse_broker_url("mqtt://lab:hunter2-secret@host")
    assert "hunter2-secret" not in str(info.value)
    assert "--password-env" in str(info.value)


def test_the_password_is_not_in_the_address_repr_or_url():
    address = mq.parse_broker_url("mqtt://lab@host").with_password("hunter2-secret")
    assert "hunter2-secret" not in repr(address) and "hunter2-secret" not in address.url


@pytest.mark.parametrize("bad", ["a/b#", "a/#/b", "a/b+", "", "+a/b"])
def test_bad_topic_filters_are_refused(bad):
    with pytest.raises(mq.TelemetryError, match="bad topic filter"):
        mq._check_filter(bad)


@pytest.mark.parametrize("good", ["#", "a/+/c", "a/b/#", "+", "edgekernel/+/telemetry/#"])
def test_good_topic_filters(good):
    mq._check_filter(good)
