"""%%plot: the numbers a board cell prints, plotted live, kept as a DataFrame for %%local.

The parser's edge cases are unit tests; everything else runs through the real kernel on an emulated
unix board (jupyter_client, the kernel's own iopub messages, the host namespace %%local cells see).
"""
from __future__ import annotations

import base64
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from edgekernel.kernel.plot_magics import ChartFigure, render_png
from edgekernel.kernel.plot_parse import MAX_LINE, PlotData, parse_line
from kernel_fixtures import (boards, kernel_env, kernels, no_leftover_processes,  # noqa: F401
                             unix_board_and_kernel)

pytestmark = pytest.mark.timeout(180)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- the parser ------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, sample", [
    ("1 2 3", {"col1": 1.0, "col2": 2.0, "col3": 3.0}),
    ("1,2,3", {"col1": 1.0, "col2": 2.0, "col3": 3.0}),
    ("1, 2;\t3", {"col1": 1.0, "col2": 2.0, "col3": 3.0}),
    ("  -3 +2.5 .5 5. ", {"col1": -3.0, "col2": 2.5, "col3": 0.5, "col4": 5.0}),
    ("1e-05 1.5E+10 -2e3", {"col1": 1e-05, "col2": 1.5e10, "col3": -2000.0}),
    ("temp:21.5 hum:40", {"temp": 21.5, "hum": 40.0}),
    ("temp=21.5,hum=40", {"temp": 21.5, "hum": 40.0}),
    ("temp: 21.5 hum = 40", {"temp": 21.5, "hum": 40.0}),       # print("temp:", t, "hum =", h)
    ("t=3, 1.5 7", {"t": 3.0, "col1": 1.5, "col2": 7.0}),      # unnamed values numbered among themselves
    ("a.x:1 b_2:-1", {"a.x": 1.0, "b_2": -1.0}),
    ("x:1 x:2", {"x": 2.0}),                                    # a repeated name: the last value
])
def test_a_line_of_numbers_is_a_sample(line: str, sample: dict[str, float]) -> None:
    parsed = parse_line(line)
    assert parsed == sample
    assert parsed is not None and list(parsed) == list(sample)  # the line's order is the series' order


def test_nan_and_inf_are_numbers() -> None:
    sample = parse_line("nan inf -inf NaN t:-inf")
    assert sample is not None and list(sample) == ["col1", "col2", "col3", "col4", "t"]
    assert math.isnan(sample["col1"]) and math.isnan(sample["col4"])
    assert sample["col2"] == math.inf and sample["col3"] == -math.inf and sample["t"] == -math.inf


@pytest.mark.parametrize("line", [
    "", "   ", ",", "hello", "hello 1", "1 hello", "temp: 21C", "1.2.3", "2024-01-01", "12:30", "0x1F",
    "[1, 2]", "(1, 2)", "1 2 #", "temp:", ":5", "1:5", "--1", "1e", "e5", "True",
])
def test_anything_else_is_ordinary_text(line: str) -> None:
    assert parse_line(line) is None


def test_output_split_anywhere_gives_the_same_samples() -> None:
    text = "start\r\n1 2\r\ntemp:21.5 hum:40\r\nnot 1 number\r\n-1e-3,\tinf\r\n°C 5\r\n3 4"
    whole = PlotData()
    whole.feed(text.encode())
    whole.finish()
    encoded = text.encode()
    for size in (1, 2, 3, 5, 7):
        pieces = PlotData()
        for i in range(0, len(encoded), size):   # splits CRLFs, numbers and the UTF-8 of °
            pieces.feed(encoded[i:i + size])
        pieces.finish()
        assert pieces.samples == whole.samples
        assert pieces.text_lines == whole.text_lines == 3
    assert whole.columns == ["col1", "col2", "temp", "hum"]
    assert whole.samples[0] == {"col1": 1.0, "col2": 2.0}
    assert whole.samples[-1] == {"col1": 3.0, "col2": 4.0}   # the unfinished last line, at finish()


def test_a_partial_line_waits_for_its_newline() -> None:
    data = PlotData()
    data.feed(b"12")
    assert len(data) == 0
    data.feed(b"3 4")
    assert len(data) == 0
    data.feed(b"\n")
    assert data.samples == [{"col1": 123.0, "col2": 4.0}]


def test_an_overlong_line_is_not_a_sample_even_if_it_ends_in_numbers() -> None:
    data = PlotData()
    data.feed(b"1 " * (MAX_LINE // 2 + 10))   # no newline yet: past the limit, dropped
    data.feed(b"5 6\n7 8\n")
    assert data.samples == [{"col1": 7.0, "col2": 8.0}]
    assert data.text_lines == 1


def test_frame_has_every_sample_with_nan_for_missing_series() -> None:
    data = PlotData()
    data.feed(b"a:1 b:2\na:3\nb:4 c:5\n")
    frame = data.frame()
    assert list(frame.columns) == ["a", "b", "c"] and frame.index.name == "sample"
    assert frame.shape == (3, 3)
    assert frame["a"].tolist()[:2] == [1.0, 3.0] and math.isnan(frame["a"][2])
    assert PlotData().frame().shape == (0, 0)


def test_a_reused_chart_draws_what_a_new_one_draws() -> None:
    """Live updates redraw one Figure: nothing of the earlier data (ranges, lines, markers, legend) stays."""
    data = PlotData()
    chart = ChartFigure()
    data.feed(b"".join(b"%d %d\n" % (i, i % 5) for i in range(10)))
    _, columns, series, first, _ = data.snapshot()
    small = chart.png(columns, series, first, x=None, title="a")
    data.feed(b"".join(b"%d %d z:%d\n" % (3 * i, -i % 5, i) for i in range(100)))
    _, columns, series, first, _ = data.snapshot(50)
    redrawn = chart.png(columns, series, first, x=None, title="b")
    assert redrawn.startswith(PNG_MAGIC) and redrawn != small
    assert redrawn == render_png(columns, series, first, x=None, title="b")
    # With a series as x axis, that series is no longer a line of its own.
    assert chart.png(columns, series, first, x="z", title="b") == render_png(columns, series, first, x="z", title="b")


# -- through the kernel ------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _checked_for_leftovers(no_leftover_processes: None) -> None:
    """Set up before (so torn down after) every other fixture of the module."""


@pytest.fixture(scope="module")
def kernel(unix_board_and_kernel):
    return unix_board_and_kernel[1]


def local_json(kernel, expression: str) -> Any:
    """A host value, as %%local cells see it, through JSON."""
    run = kernel.ok(f"%%local\nimport json\nprint(json.dumps({expression}))")
    return json.loads(run.stream())


def frame_of(kernel, name: str = "plot_data") -> dict[str, Any]:
    return local_json(kernel, f"{{'columns': list({name}.columns), 'rows': {name}.values.tolist(), "
                              f"'type': type({name}).__name__}}")


def displays(messages: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(msg_type, display_id, data) of the display messages."""
    return [(m["msg_type"], m["content"]["transient"]["display_id"], m["content"]["data"]) for m in messages
            if m["msg_type"] in ("display_data", "update_display_data")]


def chart_messages(run) -> tuple[str, list[dict[str, Any]]]:
    """The %%plot chart's display id and its updates, checking it was displayed exactly once."""
    shown = [(kind, did, data) for kind, did, data in displays(run.iopub) if did.startswith("edgekernel-plot-")]
    assert shown and shown[0][0] == "display_data", run
    display_id = shown[0][1]
    assert all(did == display_id for _, did, _ in shown)
    assert [kind for kind, _, _ in shown].count("display_data") == 1
    return display_id, [data for kind, _, data in shown[1:]]


def shown_count(text: str) -> int:
    """The number of samples a chart's text says it has ("<name: 1,234 samples...")."""
    return int(text.split(": ")[1].split(" ")[0].replace(",", ""))


def png_of(data: dict[str, Any]) -> bytes:
    png = base64.b64decode(data["image/png"])
    assert png.startswith(PNG_MAGIC)
    return png


def test_columns_are_plotted_and_become_a_dataframe(kernel) -> None:
    run = kernel.ok("%%plot\nfor i in range(5):\n    print(i, i * i, -i / 2)")
    _, updates = chart_messages(run)
    final = updates[-1]
    png_of(final)
    assert final["text/plain"] == "<plot_data: 5 samples: col1, col2, col3; samples 0 to 4>"
    # The numbers are also shown as text (as a serial monitor shows them), and the end says where they are.
    assert run.stream().startswith("0 0 0.0\n1 1 -0.5\n")
    assert "plot_data: 5 samples of col1, col2, col3, a pandas DataFrame for %%local cells" in run.stream()
    frame = frame_of(kernel)
    assert frame == {"type": "DataFrame", "columns": ["col1", "col2", "col3"],
                     "rows": [[i, i * i, -i / 2] for i in range(5)]}


def test_named_series_and_ordinary_text_stays_output(kernel) -> None:
    run = kernel.ok("%%plot --as weather\nprint('starting the sensor')\nfor i in range(4):\n"
                    "    print('temp:%d hum:%d' % (20 + i, 40 - i))\n    print('temp:', 20.5 + i)\n"
                    "print('done, 4 readings')")
    stream = run.stream()
    assert stream.startswith("starting the sensor\ntemp:20 hum:40\ntemp: 20.5\n")
    assert "done, 4 readings\n" in stream
    _, updates = chart_messages(run)
    assert updates[-1]["text/plain"] == "<weather: 8 samples: temp, hum; samples 0 to 7>"
    frame = frame_of(kernel, "weather")
    assert frame["columns"] == ["temp", "hum"]
    temps = [row[0] for row in frame["rows"]]
    assert temps == [20, 20.5, 21, 21.5, 22, 22.5, 23, 23.5]
    hums = [row[1] for row in frame["rows"]]
    assert hums[0::2] == [40, 39, 38, 37] and all(h is None or math.isnan(h) for h in hums[1::2])


def released_loop(release: Path, line: str) -> str:
    """Board code printing `line` (with i) every 50 ms until the test creates `release` in the board's
    flash: the test decides when it has seen enough, so no wall-clock guess can make it flaky."""
    return (f"import os, time\ni = 0\nwhile {release.name!r} not in os.listdir():\n    print({line})\n"
            f"    i += 1\n    time.sleep(0.05)\n")


def test_the_chart_updates_in_place_while_the_cell_prints(unix_board_and_kernel) -> None:
    board, kernel = unix_board_and_kernel
    release = Path(board.flash_dir) / "release-the-plot"
    msg_id = kernel.send_execute("%%plot\n" + released_loop(release, "i, (i * 7) % 11"))
    try:
        pump_until(kernel, msg_id, lambda ms: sum("so far" in d[2].get("text/plain", "") for d in displays(ms)) >= 2)
    finally:
        release.write_text("")
    run = kernel.collect(msg_id)
    release.unlink()
    assert run.status == "ok", run
    display_id, updates = chart_messages(run)
    live = [u for u in updates if "so far" in u["text/plain"]]
    # Each update shows more samples than the one before, and the pictures differ.
    counts = [shown_count(u["text/plain"]) for u in live]
    assert counts == sorted(counts) and len(set(counts)) == len(counts) >= 2
    assert len({png_of(u) for u in live}) == len(live)
    final = updates[-1]["text/plain"]
    count = shown_count(final)
    # The final update: every sample (the board may have stopped before printing another after the last
    # live update), no longer "so far".
    assert count >= counts[-1] and final == f"<plot_data: {count} samples: col1, col2; samples 0 to {count - 1}>"
    assert frame_of(kernel)["rows"] == [[i, (i * 7) % 11] for i in range(count)]
    # The updates came while the board printed, between its output, not all at its end.
    types = [m["msg_type"] for m in run.iopub]
    first_update, last_stream = types.index("update_display_data"), len(types) - 1 - types[::-1].index("stream")
    assert first_update < last_stream


def test_window_keeps_the_last_samples_on_the_chart_and_all_in_the_frame(kernel) -> None:
    run = kernel.ok("%%plot --window 10\nfor i in range(50):\n    print(i)")
    _, updates = chart_messages(run)
    assert updates[-1]["text/plain"] == "<plot_data: 50 samples, the last 10 shown: col1; samples 40 to 49>"
    assert frame_of(kernel)["rows"] == [[i] for i in range(50)]


def test_x_uses_a_named_field_as_the_x_axis(kernel) -> None:
    run = kernel.ok("%%plot --x t\nfor i in range(6):\n    print('t=%d' % (i * 10), 'v=%d' % (i % 3))")
    _, updates = chart_messages(run)
    assert updates[-1]["text/plain"] == "<plot_data: 6 samples: v against t; samples 0 to 5>"
    assert frame_of(kernel)["rows"] == [[i * 10, i % 3] for i in range(6)]
    # Against the sample number the picture differs.
    plain = kernel.ok("%%plot\nfor i in range(6):\n    print('t=%d' % (i * 10), 'v=%d' % (i % 3))")
    assert png_of(chart_messages(plain)[1][-1]) != png_of(updates[-1])


def test_x_naming_no_series_says_so(kernel) -> None:
    run = kernel.ok("%%plot --x time\nprint(1, 2)")
    assert "--x time: no such series (there are col1, col2), so the x axis is the sample number" in run.stream()


def test_a_line_split_across_outputs_is_one_sample(kernel) -> None:
    kernel.ok("%%plot\nimport time\nprint(1, end='')\ntime.sleep(0.3)\nprint('.5 2', end='')\ntime.sleep(0.3)\nprint()")
    assert frame_of(kernel)["rows"] == [[1.5, 2]]


def test_no_numbers_gives_a_clear_note_and_an_empty_frame(kernel) -> None:
    run = kernel.ok("%%plot\nprint('hello')\nprint('no numbers here')")
    assert run.stream().startswith("hello\nno numbers here\n")
    note = "%%plot: the cell printed no numbers, so there is nothing to plot"
    assert note in run.stream()
    _, updates = chart_messages(run)
    assert list(updates[-1]) == ["text/plain"] and updates[-1]["text/plain"].startswith(note)
    assert frame_of(kernel) == {"type": "DataFrame", "columns": [], "rows": []}


def test_a_board_error_gives_its_traceback_and_the_data_so_far(kernel) -> None:
    run = kernel.execute("%%plot --as partial\nfor i in range(3):\n    print(i, 10 * i)\nraise ValueError('sensor gone')")
    assert run.status == "error" and run.content["ename"] == "ValueError"
    traceback = "\n".join(run.content["traceback"])
    assert "raise ValueError('sensor gone')" in traceback and "sensor gone" in traceback
    assert "partial: 3 samples of col1, col2" in run.stream()
    _, updates = chart_messages(run)
    assert updates[-1]["text/plain"] == "<partial: 3 samples: col1, col2; samples 0 to 2>"
    assert frame_of(kernel, "partial")["rows"] == [[0, 0], [1, 10], [2, 20]]


def test_interrupt_keeps_the_data_so_far(kernel) -> None:
    msg_id = kernel.send_execute("%%plot --as stopped_here\nimport time\ni = 0\nwhile True:\n    print(i, -i)\n"
                                 "    i += 1\n    time.sleep(0.02)")
    pump_until(kernel, msg_id, lambda ms: any("so far" in d[2].get("text/plain", "") for d in displays(ms)))
    kernel.km.interrupt_kernel()
    run = kernel.collect(msg_id)
    assert run.status == "error" and run.content["ename"] == "KeyboardInterrupt"
    _, updates = chart_messages(run)
    final = updates[-1]["text/plain"]
    count = shown_count(final)
    assert "so far" not in final and count > 0
    assert f"stopped_here: {count:,} samples of col1, col2" in run.stream()
    assert frame_of(kernel, "stopped_here")["rows"] == [[i, -i] for i in range(count)]


def test_a_print_flood_past_the_pages_limit_keeps_every_sample(kernel) -> None:
    # 30,000 lines (~300 KB) are past the page's 256 KB: the page shows the end, the DataFrame has all.
    run = kernel.ok("%%plot --window 500\nfor i in range(30000):\n    print(i, i % 100, 'v:%d' % (i // 100))")
    assert "not shown here" in json.dumps([m["content"] for m in run.iopub])
    _, updates = chart_messages(run)
    assert updates[-1]["text/plain"] == ("<plot_data: 30,000 samples, the last 500 shown: col1, col2, v; "
                                         "samples 29500 to 29999>")
    frame = local_json(kernel, "[len(plot_data), plot_data['col1'].sum(), plot_data['v'].iloc[-1]]")
    assert frame == [30000, sum(range(30000)), 299]


def test_a_silent_cell_shows_nothing_and_still_keeps_the_numbers(kernel) -> None:
    run = kernel.execute("%%plot --as quiet\nfor i in range(3):\n    print(i)", silent=True)
    assert run.status == "ok" and run.output_types == []
    assert frame_of(kernel, "quiet")["rows"] == [[0], [1], [2]]


@pytest.mark.parametrize("line, says", [
    ("%%plot --window 0", "--window 0"),
    ("%%plot --as 2x", "not a Python name"),
    ("%%plot --as class", "not a Python name"),
    ("%%plot --bogus", "--bogus"),
])
def test_bad_options_are_one_line_errors(kernel, line: str, says: str) -> None:
    run = kernel.execute(f"{line}\nprint(1)")
    assert run.status == "error" and says in run.content["evalue"]
    assert len(run.content["traceback"]) == 1
    assert not run.stream()   # nothing ran on the board


def test_an_empty_cell_is_an_error(kernel) -> None:
    run = kernel.execute("%%plot\n\n")
    assert run.status == "error" and "needs code" in run.content["evalue"]


def pump_until(kernel, msg_id: str, done, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The iopub messages of an earlier request (a --bg chart's later updates), until done(messages)."""
    deadline = time.monotonic() + timeout
    while True:
        kernel._pump(0.05)
        messages = kernel._iopub.get(msg_id, [])
        if done(messages):
            return messages
        assert time.monotonic() < deadline, f"gave up waiting: {displays(messages)!r}"


def test_bg_keeps_updating_the_chart_while_the_notebook_is_used(unix_board_and_kernel) -> None:
    board, kernel = unix_board_and_kernel
    release = Path(board.flash_dir) / "release-the-bg-plot"
    msg_id = kernel.send_execute("%%plot --bg --as live\n" + released_loop(release, "'n:%d sq:%d' % (i, i * i)"))
    run = kernel.collect(msg_id)
    try:
        assert run.status == "ok" and "started in the background" in run.stream()
        display_id, _ = chart_messages(run)
        # The notebook is usable meanwhile: %%local sees the numbers so far, board cells say "busy".
        assert "running" in kernel.ok("%bg").stream()
        so_far = pump_until(kernel, msg_id,
                            lambda ms: sum("so far" in d[2].get("text/plain", "") for d in displays(ms)) >= 2)
        busy = kernel.execute("print('hi')")
        assert busy.status == "error" and "busy" in busy.content["evalue"]
        partial_rows = local_json(kernel, "len(live)")
        assert partial_rows > 0, "the DataFrame should have the numbers so far while the job runs"
        assert "running" in kernel.ok("%bg").stream()
    finally:
        release.write_text("")
    # The chart keeps updating in the %%plot cell's output (same display id, its request as parent),
    # and ends with every sample.
    later = pump_until(kernel, msg_id, lambda ms: any(d[2].get("text/plain", "").startswith("<live: ")
                                                      and "so far" not in d[2]["text/plain"] for d in displays(ms)))
    release.unlink()
    updates = [d for d in displays(later) if d[0] == "update_display_data"]
    assert all(did == display_id for _, did, _ in updates)
    assert len(updates) >= 3 and len(so_far) <= len(later)
    count = shown_count(updates[-1][2]["text/plain"])
    assert count >= partial_rows and updates[-1][2]["text/plain"] == f"<live: {count} samples: n, sq; samples 0 to {count - 1}>"
    assert "finished" in kernel.ok("%bg").stream()
    frame = frame_of(kernel, "live")
    assert frame["columns"] == ["n", "sq"] and frame["rows"] == [[i, i * i] for i in range(count)]
    assert kernel.ok("print('free')").stream() == "free\n"


def test_bg_stopped_keeps_the_data_so_far(kernel) -> None:
    msg_id = kernel.send_execute("%%plot --bg --as stopped\nimport time\ni = 0\nwhile True:\n    print(i)\n"
                                 "    i += 1\n    time.sleep(0.02)")
    kernel.collect(msg_id)
    pump_until(kernel, msg_id, lambda ms: any("so far" in d[2].get("text/plain", "") for d in displays(ms)))
    assert "stopped" in kernel.ok("%bg stop").stream()
    done = pump_until(kernel, msg_id, lambda ms: any(d[2].get("text/plain", "").startswith("<stopped: ")
                                                     and "so far" not in d[2]["text/plain"] for d in displays(ms)))
    final = [d for d in displays(done) if "so far" not in d[2].get("text/plain", "so far")][-1][2]
    count = shown_count(final["text/plain"])
    rows = frame_of(kernel, "stopped")["rows"]
    assert len(rows) == count > 0 and rows == [[i] for i in range(count)]
    # The board's own count went at least as far as the samples the host read.
    assert int(kernel.ok("i").result_text) >= count - 1


def test_bg_refused_while_another_job_runs(kernel) -> None:
    kernel.ok("%%bg\nimport time\ntime.sleep(30)")
    try:
        refused = kernel.execute("%%plot --bg\nprint(1)")
        assert refused.status == "error" and "busy" in refused.content["evalue"]
    finally:
        kernel.ok("%bg stop")


def test_plot_on_a_named_board_while_another_runs_a_bg_plot(kernels) -> None:
    """With two boards, %%on NAME + %%plot plots that board's output, and a --bg plot on one board
    goes on while the other board runs a %%plot cell."""
    two = kernels.start("micropython", name="micropython/plot-two-boards", EDGEKERNEL_PORT="")
    try:
        for name in ("left", "right"):
            assert "connected" in two.ok(f"%serialconnect --emulator unix --as {name}").stream()
        two.ok("%%on left\nwhere = 'L'")
        two.ok("where = 'R'")   # 'right' is the active board
        msg_id = two.send_execute("%%on left\n%%plot --bg --as left_data\nimport time\nfor i in range(40):\n"
                                  "    print('side:1 i:%d' % i)\n    time.sleep(0.05)")
        assert "started in the background" in two.collect(msg_id).stream()
        right = two.ok("%%plot --as right_data\nfor i in range(5):\n    print('side:2 i:%d' % i)\nprint(where)")
        assert right.stream().endswith("R\nright_data: 5 samples of side, i, a pandas DataFrame for %%local cells\n")
        pump_until(two, msg_id, lambda ms: any(d[2].get("text/plain", "").startswith("<left_data: 40 samples:")
                                               for d in displays(ms)))
        assert frame_of(two, "left_data")["rows"] == [[1, i] for i in range(40)]
        assert frame_of(two, "right_data")["rows"] == [[2, i] for i in range(5)]
    finally:
        kernels.shutdown(two)


def test_plot_on_the_microbit(boards, kernels) -> None:
    """The micro:bit's MicroPython 1.9.2 (16 KB of RAM, no raw-paste) prints; the host does the rest."""
    board = boards.start("microbit", baud=115200)
    bit = kernels.start("micropython", port=board.port, name="micropython/plot-microbit")
    try:
        run = bit.ok("%%plot --as bit\nfor i in range(8):\n    print('x:%d y:%d' % (i, i * i))")
        _, updates = chart_messages(run)
        assert updates[-1]["text/plain"] == "<bit: 8 samples: x, y; samples 0 to 7>"
        assert frame_of(bit, "bit")["rows"] == [[i, i * i] for i in range(8)]
    finally:
        kernels.shutdown(bit)
        boards.stop(board)
