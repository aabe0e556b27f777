"""Plots for report.md, drawn with matplotlib's Agg backend (an optional extra: ``pip install prunecli[plots]``).

``channels.png`` shows, per pruning group in model order, the original channel count as a grey bar
and the channels kept as a blue bar over it. Without matplotlib nothing is drawn and report.md says
how to get plots.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from prunecli.model_io.atomic import atomic_path

CHANNELS_PNG = "channels.png"
INSTALL_HINT = "plots need matplotlib: `pip install prunecli[plots]`"


def plots_available() -> bool:
    """Whether matplotlib can be imported (without importing it)."""
    return importlib.util.find_spec("matplotlib") is not None


def write_channels_plot(report: dict[str, Any], *, out_dir: Path) -> Path | None:
    """Write ``out_dir/channels.png`` atomically; None when there are no groups or no matplotlib."""
    groups = report.get("groups") or []
    if not groups or not plots_available():
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in threads and on servers
    from matplotlib.figure import Figure  # a Figure not held by pyplot is freed with it

    figure = Figure(figsize=(max(6.0, 0.35 * len(groups) + 2), 4.5), dpi=100)
    axes = figure.add_subplot()
    positions = range(len(groups))
    axes.bar(positions, [g.get("channels") or 0 for g in groups], color="#cccccc", label="original")
    axes.bar(positions, [g.get("kept") or 0 for g in groups], width=0.5, color="#1f77b4", label="kept")
    axes.set_xticks(list(positions), [_short(str(g.get("name"))) for g in groups], rotation=90, fontsize=7)
    axes.set_ylabel("channels")
    axes.set_title("channels kept per group (model order)")
    axes.legend()
    return save_figure(figure, out_dir / CHANNELS_PNG)


def save_figure(figure: Any, path: Path) -> Path:
    """Lay out a matplotlib ``Figure`` and write it as PNG atomically; returns ``path``."""
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    return path


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def plot_markdown(plot: Path | None) -> str:
    """The markdown that embeds ``plot`` (beside report.md), or says how to get plots when there is none."""
    return f"![channels kept per group]({plot.name})" if plot is not None else f"No plot: {INSTALL_HINT}."
