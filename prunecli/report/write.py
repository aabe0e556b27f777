"""Write a report as report.json, report.md and report.html, each atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunecli.model_io.atomic import atomic_write_text
from prunecli.regularize.report import write_regularization_plot
from prunecli.report.html import REPORT_HTML, report_html
from prunecli.report.plots import plot_markdown, write_channels_plot
from prunecli.report.render import report_markdown
from prunecli.report.rounds import rounds_markdown, write_rounds_plot
from prunecli.report.sensitivity import sensitivity_section, write_sensitivity


def write_report(
    report: dict[str, Any], *, out_dir: Path, plots: bool = False, sensitivity: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write ``out_dir/report.json`` (keys in report order), ``report.md``, ``report.html`` and, with ``plots``, plots.

    Returns the written paths by kind: ``{"report_json": ..., "report_md": ..., "report_html": ...,
    "channels_plot": ...}``
    (no ``channels_plot`` without groups or without matplotlib: report.md then says how to get it,
    see ``prunecli.report.plots``). A ``sensitivity`` sweep (from ``select: by: sensitivity``) is
    written beside the report (json, md, png) and embedded in report.md.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"report_json": out_dir / "report.json", "report_md": out_dir / "report.md"}
    sections = []
    if plots and report.get("groups"):
        plot = write_channels_plot(report, out_dir=out_dir)
        written.update({"channels_plot": plot} if plot else {})
        sections.append(plot_markdown(plot))
    if sensitivity is not None:
        files = write_sensitivity(sensitivity, out_dir=out_dir)
        written.update(files)
        sections.append(sensitivity_section(files.get("sensitivity_png")))
    if plots and report.get("regularization"):  # regularize steps: histogram before/after, named in the report
        plot = write_regularization_plot(report["regularization"], out_dir=out_dir)
        written.update({"regularization_plot": plot} if plot else {})
        report["regularization"]["plot"] = plot.name if plot else None
    rounds_plot = write_rounds_plot(report, out_dir=out_dir) if plots and report.get("rounds") else None
    written.update({"rounds_plot": rounds_plot} if rounds_plot else {})  # repeat: accuracy against MACs kept
    atomic_write_text(written["report_json"], json.dumps(report, indent=2) + "\n")
    parts = {"plot_section": "\n\n".join(sections) or None, "rounds_section": rounds_markdown(report, plot=rounds_plot)}
    atomic_write_text(written["report_md"], report_markdown(report, **parts))
    written["report_html"] = out_dir / REPORT_HTML  # the same sections, plots embedded: one self-contained file
    atomic_write_text(written["report_html"], report_html(report, out_dir=out_dir, **parts))
    return written
