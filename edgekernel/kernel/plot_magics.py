"""%%plot: run a cell on the board and plot, live, the numbers it prints (no board code to change).

Thin: edgekernel.kernel.plot_parse turns output into samples; this module runs the cell (as the cell,
through the kernel's run_board_cell, or as a %%bg job with --bg), keeps one chart display updated in
place a few times a second, and leaves the numbers as a pandas DataFrame in the host namespace that
%%local cells use. Charts are drawn with matplotlib's Figure and Agg canvas (never pyplot: no global
figure state shared with the user's %%local plots), in a thread, so the event loop keeps serving.
"""
from __future__ import annotations

import asyncio
import base64
import io
import keyword
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

from .background import BackgroundJob
from .magics import REGISTRY as magics
from .magics import HostError, MagicError
from .plot_parse import PlotData

DEFAULT_NAME = "plot_data"
UPDATE_INTERVAL = 0.25   # seconds between chart updates while numbers arrive (at least)
RENDER_SHARE = 0.4       # ...and at most this share of one core spent drawing (slow charts update less often)
MAX_INTERVAL = 2.0       # ...but at least this often
POLL = 0.05              # how often the follower looks for new samples and the end of the run
MAX_POINTS = 20_000      # points drawn per series (evenly spaced); the DataFrame keeps every sample
SAMPLE_HINT = "a sample is a line of numbers like `21.5 40` or `temp:21.5 hum:40`"

_following: set[asyncio.Task[None]] = set()   # the live charts of %%plot --bg jobs (kept from the GC)


class ChartFigure:
    """One chart's matplotlib Figure (Agg canvas, no pyplot), redrawn with new data: reusing the axes,
    lines and legend costs about half of drawing a new figure each time."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(7.5, 3.6), dpi=96)
        FigureCanvasAgg(self.figure)
        self.axes = self.figure.add_subplot()
        self.axes.grid(True, alpha=0.3)
        # Fixed margins: tight_layout would cost a third of the drawing time, several times a second.
        self.figure.subplots_adjust(left=0.1, right=0.98, top=0.91, bottom=0.14)
        self.lines: dict[str, Any] = {}

    def png(self, columns: list[str], series: dict[str, list[float]], first: int, *, x: str | None,
            title: str) -> bytes:
        """One line per series against the sample number, or against series `x`, as PNG bytes."""
        import numpy as np

        count = len(next(iter(series.values()), []))
        step = max(1, math.ceil(count / MAX_POINTS))
        use_x = x is not None and x in columns
        xs = (np.asarray(series[x][::step], dtype=float) if x is not None and use_x
              else np.arange(first, first + count, step, dtype=float))
        added = False   # a new line (or a changed one): the legend is made again
        for name in columns:
            if use_x and name == x:
                continue
            ys = np.asarray(series[name][::step], dtype=float)
            # Only the points a series has: a series printed on every other line is still one line.
            keep = np.isfinite(xs) & np.isfinite(ys)
            line = self.lines.get(name)
            if line is None:
                line, = self.axes.plot([], [], label=name, linewidth=1.2)
                self.lines[name] = line
                added = True
            line.set_data(xs[keep], ys[keep])
            marker = "." if keep.sum() <= 60 else "None"   # dots while there are few points
            if line.get_marker() != marker:
                line.set_marker(marker)
                added = True   # the legend shows the lines as they are drawn now
        if use_x and x in self.lines:
            self.lines.pop(x).remove()   # x was drawn as a series before lines with it came
            added = True
        if added:
            self.axes.legend(loc="upper left", fontsize="small")
        self.axes.relim()
        self.axes.autoscale_view()
        self.axes.set_title(title, fontsize="medium")
        self.axes.set_xlabel(x if x is not None and use_x else "sample")
        out = io.BytesIO()
        self.figure.savefig(out, format="png")
        return out.getvalue()


def render_png(columns: list[str], series: dict[str, list[float]], first: int, *, x: str | None,
               title: str) -> bytes:
    """A chart drawn once (see ChartFigure)."""
    return ChartFigure().png(columns, series, first, x=x, title=title)


def _warm_up() -> None:
    """The first imports of matplotlib and pandas (a second or more), made while the board starts."""
    import pandas  # noqa: F401
    from matplotlib import font_manager
    from matplotlib.backends import backend_agg  # noqa: F401

    font_manager.findfont("DejaVu Sans")   # builds the font cache if there is none yet


class LiveChart:
    """One chart display for one %%plot run: shown once, updated in place, ended with all the data.

    Messages carry the %%plot cell's request as their parent, so a --bg job's updates still land in
    its own cell while other cells run. The numbers reach the host namespace as a DataFrame `name`.
    """

    def __init__(self, kernel: Any, *, name: str, window: int | None, x: str | None, shown: bool) -> None:
        self.kernel = kernel
        self.name = name
        self.window = window
        self.x = x
        self.shown = shown
        self.data = PlotData()
        self.parent = kernel.get_parent("shell")
        self.display_id = f"edgekernel-plot-{uuid.uuid4().hex}"
        self.feed_failure: str | None = None
        self.draw_failure: str | None = None
        self._drawn_version = -1
        self._figure: ChartFigure | None = None   # drawn in one thread at a time (each update is awaited)
        self._published: Any = None

    # -- on the board worker -------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Board output (the board worker's thread): parsed, never raising into the board exchange."""
        if self.feed_failure is not None:
            return
        try:
            self.data.feed(data)
        except Exception as exc:   # a parser bug must not break the cell: the plot stops, the cell runs on
            self.feed_failure = f"{type(exc).__name__}: {exc}"

    # -- on the event loop ---------------------------------------------------------------
    def _send(self, bundle: dict[str, Any], *, update: bool) -> None:
        if not self.shown or self.parent is None:
            return
        self.kernel.show(bundle, self.display_id, update=update, parent=self.parent)

    def start(self, waiting: str) -> None:
        self._send({"text/plain": waiting}, update=False)

    def _summary(self, final: bool) -> str:
        n = len(self.data)
        shown = f", the last {self.window:,} shown" if self.window and n > self.window else ""
        return f"{self.name}: {n:,} sample{'s' if n != 1 else ''}{'' if final else ' so far'}{shown}"

    def _draw(self, final: bool) -> dict[str, Any]:
        """Runs in a thread: the display's bundle for the current data (PNG and a line of text)."""
        version, columns, series, first, count = self.data.snapshot(self.window)
        title = self._summary(final)
        if self._figure is None:
            self._figure = ChartFigure()
        png = self._figure.png(columns, series, first, x=self.x, title=title)
        self._drawn_version = version
        against = f" against {self.x}" if self.x in columns else ""
        # What the picture shows, in words (front ends without images, and the tests).
        text = f"<{title}: {', '.join(c for c in columns if c != self.x or not against)}{against}; " \
               f"samples {first} to {first + count - 1}>"
        return {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": text}

    async def _update(self, final: bool, publish: bool) -> float:
        """Redraw (in a thread) and update the display; the seconds it took."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        if publish:   # first, so %%local has at least what the chart shows
            self._publish(await loop.run_in_executor(None, self.data.frame), final)
        if self.shown:
            bundle = await loop.run_in_executor(None, self._draw, final)
            self._send(bundle, update=True)
        return time.monotonic() - started

    def _publish(self, frame: Any, final: bool) -> None:
        ns = self.kernel.shell.user_ns
        if self._published is not None and ns.get(self.name) is not self._published:
            return   # the user rebound the name meanwhile (a %%local cell): theirs stays
        ns[self.name] = frame
        self._published = frame

    async def follow(self, finished: Callable[[], bool], *, publish_live: bool) -> None:
        """Update the chart while new samples arrive, until `finished()`; then the final chart."""
        loop = asyncio.get_running_loop()
        # matplotlib's first import (and, in a fresh environment, its font cache) can take seconds:
        # done now, while the board starts, so the first chart is not late and that time is not
        # taken for the cost of every drawing.
        warm_up = loop.run_in_executor(None, _warm_up)
        next_at = time.monotonic() + UPDATE_INTERVAL
        try:
            await warm_up
            while not finished():
                await asyncio.sleep(POLL)
                if time.monotonic() >= next_at and self.data.version != self._drawn_version and len(self.data):
                    took = await self._update(False, publish_live)
                    next_at = time.monotonic() + min(MAX_INTERVAL, max(UPDATE_INTERVAL, took / RENDER_SHARE))
        except Exception as exc:
            # Drawing failed (a host fault): the run goes on; the end still leaves the DataFrame.
            self.kernel.log.error("%%plot: live chart failed", exc_info=True)
            self.draw_failure = f"{type(exc).__name__}: {exc}"
            while not finished():
                await asyncio.sleep(POLL)
        try:
            await self.finish()
        except Exception as exc:
            self.kernel.log.error("%%plot: final chart failed", exc_info=True)
            self.draw_failure = f"{type(exc).__name__}: {exc}"
            self._publish(self.data.frame(), True)
            self._send({"text/plain": f"%%plot could not draw the chart ({self.draw_failure}, a fault on the "
                                      f"host: the kernel log has the details); {self.name} has the numbers"},
                       update=True)

    async def finish(self) -> None:
        self.data.finish()
        if len(self.data):
            await self._update(True, publish=False)
        else:
            self._send({"text/plain": self.no_numbers_note()}, update=True)
        self._publish(await asyncio.get_running_loop().run_in_executor(None, self.data.frame), True)

    def no_numbers_note(self) -> str:
        return (f"%%plot: the cell printed no numbers, so there is nothing to plot ({SAMPLE_HINT}); "
                f"{self.name} is an empty DataFrame")

    def report(self) -> str:
        """The line said after a foreground run."""
        if self.feed_failure:
            return (f"%%plot stopped reading the output ({self.feed_failure}, a fault on the host); {self.name} "
                    f"has the {len(self.data):,} samples read before it\n")
        if not len(self.data):
            return self.no_numbers_note() + "\n"
        if self.draw_failure:
            return (f"%%plot could not draw the chart ({self.draw_failure}, a fault on the host: the kernel log "
                    f"has the details); {self.name} has the {len(self.data):,} samples\n")
        columns = self.data.columns
        note = ""
        if self.x is not None and self.x not in columns:
            note = f"; --x {self.x}: no such series (there are {', '.join(columns)}), so the x axis is the sample number"
        return (f"{self.name}: {len(self.data):,} samples of {', '.join(columns)}, a pandas DataFrame for "
                f"%%local cells{note}\n")


def _plot_args(p: Any) -> None:
    p.add_argument("--as", dest="name", default=DEFAULT_NAME, metavar="NAME",
                   help=f"the DataFrame's name in the host namespace (%%%%local cells), default {DEFAULT_NAME}")
    p.add_argument("--window", type=int, metavar="N", help="chart only the last N samples (the DataFrame keeps all)")
    p.add_argument("--x", metavar="FIELD", help="the series to use as x axis (a name, or colN for the N-th unnamed "
                                                "number of a line); default: the sample number")
    p.add_argument("--bg", action="store_true", help="run as a %%%%bg job: the chart keeps updating while the "
                                                     "notebook is used (%%bg shows the job, %%bg stop ends it)")


@magics.add("plot", "run the cell on the board and plot the numbers it prints, live (`1.5 2` or `temp:21 hum:40` "
                    "lines); --as NAME keeps them as a DataFrame for %%local, --window N, --x FIELD, --bg",
            cell=True, arguments=_plot_args)
async def _plot(kernel: Any, args: Any, body: str) -> dict[str, Any] | None:
    if not args.name.isidentifier() or keyword.iskeyword(args.name):
        raise MagicError(f"%%plot: --as {args.name!r} is not a Python name (use e.g. --as readings)")
    if args.window is not None and args.window < 1:
        raise MagicError(f"%%plot: --window {args.window}: give the number of samples to show, 1 or more")
    if not body.strip():
        raise HostError("UsageError", "%%plot needs code after its line (code that prints numbers)")
    cell = kernel.current_cell
    chart = LiveChart(kernel, name=args.name, window=args.window, x=args.x, shown=not cell.silent)
    if args.bg:
        return await _plot_in_background(kernel, chart, body)

    chart.start("%%plot: waiting for numbers from the board...")
    done = False
    follower = asyncio.ensure_future(chart.follow(lambda: done, publish_live=False))
    try:
        reply = await kernel.run_board_cell(body, observe=chart.feed)
    finally:
        # The data so far is kept and drawn whatever ended the cell (an error, Interrupt, a lost link).
        done = True
        await follower
        kernel.say(chart.report(), name="stderr" if chart.feed_failure or chart.draw_failure else "stdout")
    return reply


async def _plot_in_background(kernel: Any, chart: LiveChart, body: str) -> dict[str, Any] | None:
    kernel.check_board_free()   # refused at once, not queued behind a running %%bg job
    board = await kernel.on_board(kernel.require_board)   # connects first if needed
    job = BackgroundJob(board, body, kernel.submit_to_board, observe=chart.feed)
    kernel.bg_job = job
    chart.start("%%plot --bg: waiting for numbers from the board...")
    kernel.say(f"started in the background: the chart updates until the job ends; {chart.name} in %%local "
               f"cells has the numbers so far (%bg shows the job, %bg stop ends it)\n")
    task = asyncio.ensure_future(chart.follow(lambda: not job.running, publish_live=True))
    _following.add(task)
    task.add_done_callback(_following.discard)
    return None   # the cell's reply: ok (the job's own end shows in %bg and in the chart)
