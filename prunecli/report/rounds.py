"""The report's ``rounds`` entry (one row per round of a repeat), its markdown table and ``rounds.png``.

Each round is measured at its last stage (``round3.finetuned``); MACs and params kept are
fractions of the original stage's. The plot draws accuracy against MACs kept, round by round from
the original: the trade-off curve of the schedule. Rounds that only sparsify keep every MAC, so
their plot uses the fraction of the masked layers' weights kept instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunecli.report.plots import INSTALL_HINT, plots_available, save_figure

ROUNDS_PNG = "rounds.png"


def rounds_entry(rounds: list[dict[str, Any]], stages: dict[str, dict[str, Any]]) -> list[dict[str, Any]] | None:
    """One row per round: its stage's measurements beside the round's record; None without rounds."""
    if not rounds:
        return None
    original = stages.get("original") or {}
    return [{**record, **_measured(stages.get(record["stage"]) or {}, original)} for record in rounds]


def _measured(stage: dict[str, Any], original: dict[str, Any]) -> dict[str, Any]:
    latency = stage.get("latency_ms") or {}
    speedup = latency.get("speedup") or {}
    return {
        "macs": stage.get("macs"),
        "macs_kept": _fraction(stage.get("macs"), original.get("macs")),
        "params": stage.get("params"),
        "params_kept": _fraction(stage.get("params"), original.get("params")),
        "accuracy": stage.get("accuracy"),
        "latency_ms_p50": latency.get("p50"),
        "latency_backend": latency.get("backend"),
        "speedup": speedup.get("median"),
    }


def _fraction(value: float | None, whole: float | None) -> float | None:
    return round(value / whole, 6) if value is not None and whole else None


def rounds_markdown(report: dict[str, Any], *, plot: Path | None) -> str | None:
    """The ``## Rounds`` section: a row for the original and one per round, then the plot (or how to get it)."""
    rows = report.get("rounds")
    if not rows:
        return None
    sparse = any("weights_zero" in row for row in rows)
    header = ["round", "stage", "scheduled", "MACs kept", "params", "accuracy", "p50 ms", "speed-up", "verified"]
    header += ["weights zero", "revived"] if sparse else []
    original = report.get("original") or {}
    first = ["0", "original", "", "1.000", _count(original.get("params")), _percent(original.get("accuracy")),
             _ms(original.get("latency_ms")), "baseline", ""] + (["", ""] if sparse else [])  # fmt: skip
    rule = "|" + "|".join(" --- " if index < 3 else " ---: " for index in range(len(header))) + "|"
    lines = [_row(header), rule, _row(first)]
    lines += [_row(_cells(row, sparse=sparse)) for row in rows]
    picture = f"![accuracy against MACs kept per round]({plot.name})" if plot else f"No plot: {INSTALL_HINT}."
    intro = (
        "Each round measured at its last stage; MACs and params kept are fractions of the original, "
        "p50 and speed-up on the first latency backend, timed interleaved with the original."
    )
    return "\n\n".join(["## Rounds", intro, "\n".join(lines), picture])


def _cells(row: dict[str, Any], *, sparse: bool) -> list[str]:
    scheduled = ", ".join(f"{key.split('.', 2)[-1]} {value:.4g}" for key, value in row["scheduled"].items())
    check = row.get("verification")
    verified = "" if check is None else ("passed" if check.get("passed") else "FAILED")
    cells = [str(row["round"]), f"`{row['stage']}`", scheduled, _number(row.get("macs_kept"), ".3f"),
             _count(row.get("params")), _percent(row.get("accuracy")), _number(row.get("latency_ms_p50"), ".3f"),
             _number(row.get("speedup"), ".2f", suffix="x"), verified]  # fmt: skip
    if sparse:
        cells += [_percent(row.get("weights_zero")), str(row.get("weights_revived", ""))]
    return cells


def write_rounds_plot(report: dict[str, Any], *, out_dir: Path) -> Path | None:
    """Write ``out_dir/rounds.png`` (accuracy against MACs kept, per round) atomically; None without matplotlib."""
    rows = report.get("rounds") or []
    points = _curve(report, rows)
    if not points or not plots_available():
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    label, values = points
    figure = Figure(figsize=(6.5, 4.5), dpi=100)
    axes = figure.add_subplot()
    kept, accuracy = zip(*values)
    axes.plot(kept, [a * 100 for a in accuracy], marker="o", color="#1f77b4")
    for index, (x, y) in enumerate(values):
        axes.annotate("original" if index == 0 else f"round {index}", (x, y * 100), fontsize=8, xytext=(4, 4),
                      textcoords="offset points")  # fmt: skip
    axes.invert_xaxis()  # rounds go left to right as they remove more
    axes.set_xlabel(label)
    axes.set_ylabel("eval accuracy (%)")
    axes.set_title("trade-off per round")
    axes.grid(alpha=0.3)
    return save_figure(figure, out_dir / ROUNDS_PNG)


def _curve(report: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[str, list[tuple[float, float]]] | None:
    """The x-axis label and (kept, accuracy) points from the original through every round with an accuracy."""
    original = report.get("original") or {}
    if original.get("accuracy") is None:
        return None
    pruned = any(row.get("macs_kept") is not None and row["macs_kept"] < 1 for row in rows)
    label = "fraction of the original MACs kept" if pruned else "fraction of the masked layers' weights kept"

    def kept(row: dict[str, Any]) -> float | None:
        return row.get("macs_kept") if pruned else 1.0 - row.get("weights_zero", 0.0)

    values = [(1.0, original["accuracy"])]
    values += [(kept(row), row["accuracy"]) for row in rows
               if row.get("accuracy") is not None and kept(row) is not None]  # fmt: skip
    return label, values


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _number(value: float | None, spec: str, *, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{int(value):,}"


def _ms(latency: dict[str, Any] | None) -> str:
    return _number((latency or {}).get("p50"), ".3f")
