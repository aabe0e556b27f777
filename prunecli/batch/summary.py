"""A batch's summary: ``summary.json``, ``summary.csv``, ``summary.md`` and ``summary.html``, written atomically.

    write_summary(rows, Path("out/zoo"), shard="1/2")    # the four files, one row per model
    rows = merge_summaries([Path("out/shard1"), Path("out/shard2")])   # batch-merge

``summary.json`` holds ``exit_code`` (see ``prunecli.batch.rows``), the count of models per
status, the shard (None for a whole batch) and the rows sorted by model name.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any

from prunecli.batch.html import write_summary_html
from prunecli.batch.rows import BatchRow, batch_exit_code
from prunecli.errors import InputError
from prunecli.model_io.atomic import atomic_write_text

SUMMARY_JSON = "summary.json"
SUMMARY_HEADER = ["model", "status", "exit", "params", "MACs", "p50 ms", "accuracy", "gates", "s", "peak MB", "error"]
_COLUMNS = [item.name for item in fields(BatchRow)]


def summary_dict(rows: list[BatchRow], *, shard: str | None) -> dict[str, Any]:
    """The content of summary.json."""
    ordered = sorted(rows, key=lambda row: row.name)
    return {
        "exit_code": batch_exit_code(ordered),
        "counts": dict(sorted(Counter(row.status for row in ordered).items())),
        "shard": shard,
        "rows": [row.to_dict() for row in ordered],
    }


def write_summary(rows: list[BatchRow], folder: Path, *, shard: str | None) -> dict[str, Path]:
    """Write summary.json, summary.csv, summary.md and summary.html into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / SUMMARY_JSON, "csv": folder / "summary.csv", "md": folder / "summary.md"}
    atomic_write_text(paths["json"], json.dumps(summary_dict(rows, shard=shard), indent=2) + "\n")
    atomic_write_text(paths["csv"], summary_csv(rows))
    atomic_write_text(paths["md"], summary_markdown(rows))
    ordered = sorted(rows, key=lambda row: row.name)  # summary.html: the same cells, report links, a scatter
    cells = [summary_cells(row) for row in ordered]
    paths.update(write_summary_html(ordered, folder, header=SUMMARY_HEADER, cells=cells, line=summary_line(ordered)))
    return paths


def summary_csv(rows: list[BatchRow]) -> str:
    """The rows as CSV, one column per row field (gates as ``name=pass|fail`` joined by ``;``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda row: row.name):
        values = row.to_dict()
        values["gates"] = ";".join(f"{name}={'pass' if ok else 'fail'}" for name, ok in row.gates.items())
        writer.writerow(values)
    return buffer.getvalue()


def summary_markdown(rows: list[BatchRow]) -> str:
    """A markdown table of the rows and a line saying what the exit code means."""
    ordered = sorted(rows, key=lambda row: row.name)
    lines = ["## prunecli batch", "", summary_line(ordered), "", "| " + " | ".join(SUMMARY_HEADER) + " |",
             "|---|---|---:|---|---|---|---|---|---:|---:|---|"]  # fmt: skip
    for row in ordered:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in summary_cells(row)) + " |")
    return "\n".join(lines) + "\n"


def summary_line(rows: list[BatchRow]) -> str:
    """``3 models: 1 bad_input, 2 passed; exit code 2 (a model was bad input).`` (summary.md, summary.html)."""
    code = batch_exit_code(rows)
    counts = Counter(row.status for row in rows)
    return (f"{len(rows)} models: " + ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
            + f"; exit code {code} ({_meaning(code)}).")  # fmt: skip


def summary_cells(row: BatchRow) -> list[str]:
    """A row's cells under ``SUMMARY_HEADER``: before → after pairs, gates, seconds, error line (unescaped)."""
    return [row.name, row.status, str(row.exit_code), _pair(row.params_before, row.params_after, "{:,}"),
            _pair(row.macs_before, row.macs_after, "{:,}"),
            _pair(row.latency_p50_ms_before, row.latency_p50_ms_after, "{:.3f}"),
            _pair(row.accuracy_before, row.accuracy_after, "{:.4f}"), _gates(row), f"{row.seconds:.1f}",
            "-" if row.peak_rss_mb is None else f"{row.peak_rss_mb:,.0f}", row.error or ""]  # fmt: skip


def merge_summaries(folders: list[Path]) -> list[BatchRow]:
    """The rows of the summaries in ``folders`` (shard outputs), checked free of duplicate models."""
    rows: dict[str, BatchRow] = {}
    for folder in folders:
        for row in _read_rows(folder):
            if row.name in rows:
                raise InputError(f"model {row.name!r} is in two summaries (one in {folder}); merge each shard once")
            rows[row.name] = row
    return sorted(rows.values(), key=lambda row: row.name)


def _read_rows(folder: Path) -> list[BatchRow]:
    path = folder / SUMMARY_JSON
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return [BatchRow.from_dict(row) for row in document["rows"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"cannot read the batch summary {path}: {exc}; pass folders written by prunecli batch"
        ) from exc


def _meaning(code: int) -> str:
    meanings = {0: "all passed", 1: "a gate failed", 2: "a model was bad input"}
    return meanings.get(code, "a run crashed, timed out or passed its memory limit")


def _pair(before: float | None, after: float | None, pattern: str) -> str:
    if before is None and after is None:
        return "-"
    show = lambda value: "-" if value is None else pattern.format(value)  # noqa: E731
    return f"{show(before)} → {show(after)}"


def _gates(row: BatchRow) -> str:
    if not row.gates:
        return "-"
    return ", ".join(f"{name} {'pass' if ok else 'FAIL'}" for name, ok in row.gates.items())
