"""``summary.html``: a batch's summary as one self-contained page, with links to each model's report.html.

The table holds summary.md's cells (``prunecli.batch.summary.summary_cells``) plus a ``report``
column linking each model's ``report.html`` by a path relative to the summary (none when the run
wrote no report). Above it, accuracy against latency p50, one point per model before (hollow) and
after (filled) pruning, joined by a line: ``accuracy_latency.png`` embedded as a data URI, or,
without matplotlib, the same scatter drawn as inline SVG. Models without both figures are left out
of the scatter (the page says how many).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from prunecli.batch.rows import BatchRow
from prunecli.model_io.atomic import atomic_write_text
from prunecli.report.html import REPORT_HTML, data_uri, render_page
from prunecli.report.plots import INSTALL_HINT, plots_available, save_figure

SUMMARY_HTML = "summary.html"
SCATTER_PNG = "accuracy_latency.png"
SVG_SIZE = (640, 400)
SVG_MARGIN = 56


@dataclass
class Point:
    """One model in the scatter: latency p50 (ms) and accuracy (%) before and after pruning."""

    name: str
    before: tuple[float, float]
    after: tuple[float, float]


def write_summary_html(
    rows: list[BatchRow], folder: Path, *, header: list[str], cells: list[list[str]], line: str
) -> dict[str, Path]:
    """Write ``folder/summary.html`` (and ``accuracy_latency.png`` with matplotlib); returns their paths by kind.

    ``cells`` holds each row's summary.md cells under ``header``; ``line`` is the count and exit-code line.
    """
    points = scatter_points(rows)
    plot = write_scatter_plot(points, folder) if points and plots_available() else None
    written = {"html": folder / SUMMARY_HTML, **({"scatter": plot} if plot else {})}
    html = render_page(
        "summary.html.j2",
        title="prunecli batch",
        line=line,
        header=[*header, "report"],
        rows=[(row, row_cells, report_link(row, folder)) for row, row_cells in zip(rows, cells)],
        scatter=data_uri(folder, plot.name) if plot else None,
        svg=svg_scatter(points) if points and plot is None else None,
        left_out=len(rows) - len(points),
        hint=INSTALL_HINT,
    )
    atomic_write_text(written["html"], html)
    return written


def report_link(row: BatchRow, folder: Path) -> str | None:
    """The model's report.html relative to ``folder`` (``digits_cnn/report.html``); None when there is none."""
    if not row.output:
        return None
    report = Path(row.output) / REPORT_HTML
    if not report.is_file():
        return None
    return Path(os.path.relpath(report.resolve(), folder.resolve())).as_posix()


def scatter_points(rows: list[BatchRow]) -> list[Point]:
    """The models with latency and accuracy measured both before and after, in row order."""
    points = []
    for row in rows:
        figures = (row.latency_p50_ms_before, row.accuracy_before, row.latency_p50_ms_after, row.accuracy_after)
        if any(value is None for value in figures):
            continue
        latency_before, accuracy_before, latency_after, accuracy_after = figures
        points.append(Point(row.name, (latency_before, accuracy_before * 100), (latency_after, accuracy_after * 100)))
    return points


def write_scatter_plot(points: list[Point], folder: Path) -> Path:
    """Write ``folder/accuracy_latency.png`` atomically: per model a hollow point before, a filled one after."""
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in threads and on servers
    from matplotlib.figure import Figure  # a Figure not held by pyplot is freed with it

    figure = Figure(figsize=(7.0, 4.8), dpi=100)
    axes = figure.add_subplot()
    colours = matplotlib.colormaps["tab10"]
    for index, point in enumerate(points):
        colour = colours(index % 10)
        (x0, y0), (x1, y1) = point.before, point.after
        axes.plot([x0, x1], [y0, y1], color=colour, linewidth=1, alpha=0.6)
        axes.scatter([x0], [y0], facecolors="none", edgecolors=[colour], s=40)
        axes.scatter([x1], [y1], color=colour, s=40, label=point.name)
        axes.annotate(point.name[:24], (x1, y1), fontsize=7, xytext=(4, 4), textcoords="offset points")
    axes.scatter([], [], facecolors="none", edgecolors="grey", label="(hollow: before)")
    axes.set_xlabel("latency p50 (ms, first backend)")
    axes.set_ylabel("eval accuracy (%)")
    axes.set_title("accuracy against latency: before (hollow) and after (filled)")
    axes.grid(alpha=0.3)
    if len(points) <= 12:
        axes.legend(fontsize=7)
    return save_figure(figure, folder / SCATTER_PNG)


def svg_scatter(points: list[Point]) -> dict[str, object]:
    """The scatter laid out for the template's inline SVG: pixel coordinates, axis ranges and the canvas size."""
    xs = [value for point in points for value in (point.before[0], point.after[0])]
    ys = [value for point in points for value in (point.before[1], point.after[1])]
    x_range, y_range = _padded(min(xs), max(xs)), _padded(min(ys), max(ys))
    width, height = SVG_SIZE

    def place(x: float, y: float) -> tuple[float, float]:
        left = SVG_MARGIN + (x - x_range[0]) / (x_range[1] - x_range[0]) * (width - 2 * SVG_MARGIN)
        top = height - SVG_MARGIN - (y - y_range[0]) / (y_range[1] - y_range[0]) * (height - 2 * SVG_MARGIN)
        return round(left, 1), round(top, 1)

    placed = [(point.name, place(*point.before), place(*point.after)) for point in points]
    return {
        "width": width, "height": height, "margin": SVG_MARGIN, "points": placed,
        "x_range": [f"{value:.3f}" for value in x_range], "y_range": [f"{value:.1f}" for value in y_range],
    }  # fmt: skip


def _padded(low: float, high: float) -> tuple[float, float]:
    """``[low, high]`` widened by 5 % each side (by 1 when it is a single value) so no point sits on an axis."""
    pad = (high - low) * 0.05 or 1.0
    return low - pad, high + pad
