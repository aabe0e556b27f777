"""The report's ``regularization`` entry, its markdown section and the histogram ``regularization.png``.

Per regularize step the entry holds the penalised quantity (|gamma| per normalisation channel,
the L2 norm per group channel, |w| per weight) before and after training: ``count``, ``mean``,
``median``, ``max``, the share of values below 1 % of the largest value before (``small_below``),
the penalty's value, and a histogram over shared edges that ``regularization.png`` draws::

    {"steps": [{"penalty": "l1_bn", "strength": 0.0001, "epochs": 10, "quantity": "...",
                "small_below": 0.013, "before": {"count": 128, "mean": ..., "small_share": 0.0, "penalty": 90.1},
                "after": {...}, "histogram": {"edges": [...], "before": [...], "after": [...]},
                "losses": [...]}],
     "plot": "regularization.png"}       # None without matplotlib (the markdown says how to get it)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prunecli.report.plots import INSTALL_HINT, plots_available, save_figure

if TYPE_CHECKING:
    from prunecli.config.schema import RegularizeStep
    from prunecli.regularize.penalties import Penalty

REGULARIZATION_PNG = "regularization.png"
BINS = 40
SMALL = 0.01  # "small": below this fraction of the largest value before regularisation


def regularization_entry(
    step: RegularizeStep, penalty: Penalty, *, before: np.ndarray, after: np.ndarray, losses: list[float]
) -> dict[str, Any]:
    """One regularize step's report entry from the penalised quantity before and after training."""
    small_below = SMALL * float(before.max()) if before.size else 0.0
    return {
        "penalty": step.penalty,
        "strength": step.strength,
        "epochs": step.epochs,
        "quantity": penalty.quantity,
        "small_below": small_below,
        "before": _summary(before, power=penalty.power, small_below=small_below),
        "after": _summary(after, power=penalty.power, small_below=small_below),
        "histogram": _histogram(before, after),
        "losses": [round(loss, 6) for loss in losses],
    }


def regularization_report(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The report's ``regularization`` entry (None without a regularize step); ``plot`` is set when written."""
    return {"steps": entries, "plot": None} if entries else None


def _summary(values: np.ndarray, *, power: int, small_below: float) -> dict[str, float]:
    if values.size == 0:
        return {"count": 0, "mean": 0.0, "median": 0.0, "max": 0.0, "small_share": 0.0, "penalty": 0.0}
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "max": float(values.max()),
        "small_share": float((values < small_below).mean()),
        "penalty": float((values**power).sum()),  # the penalty's value, before the strength
    }


def _histogram(before: np.ndarray, after: np.ndarray) -> dict[str, list[float]]:
    top = max(float(before.max(initial=0.0)), float(after.max(initial=0.0))) or 1.0
    edges = np.linspace(0.0, top, BINS + 1)
    return {
        "edges": [float(edge) for edge in edges],
        "before": [int(count) for count in np.histogram(before, bins=edges)[0]],
        "after": [int(count) for count in np.histogram(after, bins=edges)[0]],
    }


def write_regularization_plot(entry: dict[str, Any], *, out_dir: Path) -> Path | None:
    """Write ``out_dir/regularization.png`` (one panel per regularize step); None without matplotlib."""
    if not entry["steps"] or not plots_available():
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in threads and on servers
    from matplotlib.figure import Figure  # a Figure not held by pyplot is freed with it

    steps = entry["steps"]
    figure = Figure(figsize=(7.0, 3.6 * len(steps)), dpi=100)
    for index, step in enumerate(steps, start=1):
        axes = figure.add_subplot(len(steps), 1, index)
        histogram = step["histogram"]
        axes.stairs(histogram["before"], histogram["edges"], fill=True, color="#cccccc", label="before")
        axes.stairs(histogram["after"], histogram["edges"], color="#1f77b4", linewidth=1.6, label="after")
        axes.set_xlabel(step["quantity"])
        axes.set_ylabel("count")
        axes.set_title(f"{step['penalty']} (strength {step['strength']:g}, {step['epochs']} epochs)")
        axes.legend()
    return save_figure(figure, out_dir / REGULARIZATION_PNG)


def regularization_markdown(report: dict[str, Any]) -> list[str]:
    """The ``## Regularization`` section of report.md (empty without a regularize step)."""
    entry = report.get("regularization")
    if not entry:
        return []
    sections = ["## Regularization"]
    for step in entry["steps"]:
        sections += [_step_line(step), _step_table(step)]
    plot = entry.get("plot")
    sections.append(f"![distribution before and after]({plot})" if plot else f"No plot: {INSTALL_HINT}.")
    return sections


def _step_line(step: dict[str, Any]) -> str:
    before, after = step["before"], step["after"]
    return (
        f"`{step['penalty']}`, strength {step['strength']:g}, {step['epochs']} epochs: {step['quantity']} "
        f"({before['count']} values); penalty {before['penalty']:.4g} before, {after['penalty']:.4g} after."
    )


def _step_table(step: dict[str, Any]) -> str:
    rows = ["| | mean | median | max | below " + f"{step['small_below']:.3g} |", "|---|---:|---:|---:|---:|"]
    for label in ("before", "after"):
        values = step[label]
        rows.append(f"| {label} | {values['mean']:.4g} | {values['median']:.4g} | {values['max']:.4g} | "
                    f"{values['small_share']:.1%} |")  # fmt: skip
    return "\n".join(rows)
