"""Write a report as report.json and report.md, each atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunecli.model_io.atomic import atomic_write_text
from prunecli.report.render import report_markdown


def write_report(report: dict[str, Any], *, out_dir: Path) -> dict[str, Path]:
    """Write ``out_dir/report.json`` (keys in report order) and ``out_dir/report.md``.

    Returns the written paths by kind: ``{"report_json": ..., "report_md": ...}``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"report_json": out_dir / "report.json", "report_md": out_dir / "report.md"}
    atomic_write_text(written["report_json"], json.dumps(report, indent=2) + "\n")
    atomic_write_text(written["report_md"], report_markdown(report))
    return written
