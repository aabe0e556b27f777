"""Write a sensitivity sweep: ``sensitivity.json``, ``sensitivity.md`` and the plot ``sensitivity.png``.

The plot draws eval accuracy against the ratio removed, one line per group, and labels the
``LABELLED`` groups that lose the most at the largest ratio; the markdown holds the same numbers
as a table (one row per group, one column per ratio), worst groups first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunecli.model_io.atomic import atomic_write_text
from prunecli.report.plots import INSTALL_HINT, plots_available, save_figure

SENSITIVITY_PNG = "sensitivity.png"
LABELLED = 5


def write_sensitivity(sweep: dict[str, Any], *, out_dir: Path) -> dict[str, Path]:
    """Write the sweep's json, markdown and (with matplotlib) plot into ``out_dir``; returns the paths."""
    written = {"sensitivity_json": out_dir / "sensitivity.json", "sensitivity_md": out_dir / "sensitivity.md"}
    plot = _write_plot(sweep, out_dir=out_dir)
    atomic_write_text(written["sensitivity_json"], json.dumps(sweep, indent=2) + "\n")
    atomic_write_text(written["sensitivity_md"], sensitivity_markdown(sweep, plot=plot))
    return written if plot is None else {**written, "sensitivity_png": plot}


def sensitivity_markdown(sweep: dict[str, Any], *, plot: Path | None) -> str:
    """The sweep as markdown: the baseline, the plot (or how to get it) and accuracy per group and ratio."""
    baseline = sweep["baseline"]
    lines = [
        "# prunecli sensitivity",
        "",
        f"Each group pruned alone, no fine-tuning; baseline accuracy {_percent(baseline['accuracy'])}, "
        f"loss {baseline['loss']:.4f}. Rows: worst group first.",
        "",
        f"![accuracy against ratio removed]({plot.name})" if plot is not None else f"No plot: {INSTALL_HINT}.",
        "",
        "| group | channels | " + " | ".join(f"{ratio:g}" for ratio in sweep["ratios"]) + " |",
        "| --- | ---: |" + " ---: |" * len(sweep["ratios"]),
    ]
    for group in _worst_first(sweep["groups"]):
        cells = [group["name"].replace("|", "\\|"), str(group["channels"])]
        cells += [_percent(point["accuracy"]) for point in group["curve"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sensitivity_section(plot: Path | None) -> str:
    """The markdown a run's report.md embeds when its select step used a sensitivity sweep."""
    picture = f"![accuracy against ratio removed]({plot.name})" if plot is not None else f"No plot: {INSTALL_HINT}."
    return "\n\n".join([
        "## Sensitivity",
        "Each group pruned alone at each swept ratio, no fine-tuning (numbers in sensitivity.md); "
        "the select step kept, per group, the largest ratio within max_drop.",
        picture,
    ])


def _write_plot(sweep: dict[str, Any], *, out_dir: Path) -> Path | None:
    if not sweep["groups"] or not plots_available():
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=100)
    axes = figure.add_subplot()
    labelled = {group["name"] for group in _worst_first(sweep["groups"])[:LABELLED]}
    for group in sweep["groups"]:
        points = [(p["ratio"], p["accuracy"]) for p in group["curve"] if p["accuracy"] is not None]
        if not points:
            continue
        ratios, accuracies = zip(*points)
        emphasis = {"linewidth": 1.8} if group["name"] in labelled else {"linewidth": 0.8, "alpha": 0.5}
        axes.plot(ratios, accuracies, marker=".", **emphasis)
        if group["name"] in labelled:
            axes.annotate(group["name"][:30], (ratios[-1], accuracies[-1]), fontsize=7, xytext=(3, 0),
                          textcoords="offset points")  # fmt: skip
    axes.axhline(sweep["baseline"]["accuracy"], color="black", linestyle="--", linewidth=0.8, label="unpruned")
    axes.set_xlim(right=max(sweep["ratios"]) + 0.2)  # room for the labels at the lines' ends
    axes.set_xlabel("fraction of the group's channels removed")
    axes.set_ylabel("eval accuracy (no fine-tuning)")
    axes.set_title("sensitivity: each group pruned alone")
    axes.legend(loc="lower left")
    return save_figure(figure, out_dir / SENSITIVITY_PNG)


def _worst_first(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups by accuracy at the largest ratio, lowest first (failed points count as worst)."""
    return sorted(groups, key=lambda group: group["curve"][-1]["accuracy"] or -1.0)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"
