"""Lay a report out as rich tables (for the terminal) or as markdown (report.md).

Both views show the same rows (see ``prunecli.report.rows``): one column per stage, the
change of the last stage against the first, the gates, and in markdown also the
verification result and a per-group table of channels kept.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from prunecli.report.rows import (
    Row,
    comparison_rows,
    gate_rows,
    gates_passed,
    group_rows,
    selection_line,
    verification_line,
)
from prunecli.reconstruct.report import reconstruction_markdown
from prunecli.regularize.report import regularization_markdown
from prunecli.sparsity.report import sparsity_markdown
from prunecli.blocks.report import blocks_markdown

# Columns of words rather than numbers: aligned left (also in report.html).
TEXT_COLUMNS = frozenset({"status", "result"})


def report_table(report: dict[str, Any]) -> Table:
    """The stage comparison (params, MACs, size, latency, accuracy, top-5, loss) as a rich table."""
    header, rows = comparison_rows(report)
    return _rich_table(header, rows, title="prunecli report")


def gates_table(report: dict[str, Any]) -> Table:
    """The gates as a rich table; the result column is green for pass and red for FAIL."""
    header, rows = gate_rows(report)
    return _rich_table(header, rows, title="gates")


def report_markdown(
    report: dict[str, Any], *, plot_section: str | None = None, rounds_section: str | None = None
) -> str:
    """The whole report as markdown: run facts, stage comparison, verification, gates, selection, groups.

    ``plot_section`` (from ``prunecli.report.plots.plot_markdown``) follows the group table;
    ``rounds_section`` (a repeat's rounds, ``prunecli.report.rounds``) follows the measurements.
    """
    sections = ["# prunecli report", facts_markdown(report)]
    sections += ["## Measurements", _markdown_table(*comparison_rows(report))]
    sections += [rounds_section] if rounds_section else []
    sections += ["## Verification", verification_line(report)]
    gate_header, gates = gate_rows(report)
    if gates:
        verdict = "all gates passed" if gates_passed(report) else "a gate FAILED"
        sections += ["## Gates", verdict, _markdown_table(gate_header, gates)]
    if report.get("selection"):
        sections += ["## Selection", selection_line(report)]
    sections += regularization_markdown(report)
    sections += reconstruction_markdown(report)
    sections += blocks_markdown(report)
    sections += sparsity_markdown(report)
    group_header, groups = group_rows(report)
    if groups:
        sections += ["## Channels kept per group", _markdown_table(group_header, groups)]
        sections += [plot_section] if plot_section else []
    return "\n\n".join(sections) + "\n"


def _rich_table(header: Row, rows: list[Row], *, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(header[0], no_wrap=True)
    for name in header[1:]:
        table.add_column(name, justify="left" if name in TEXT_COLUMNS else "right", overflow="fold")
    for row in rows:
        table.add_row(*(_rich_cell(cell) for cell in row))
    return table


def _rich_cell(cell: str) -> Text:
    """Plain text (no markup parsing, so names with brackets show as written); verdicts coloured."""
    style = {"pass": "green", "FAIL": "bold red"}.get(cell, "")
    return Text(cell, style=style)


def facts_markdown(report: dict[str, Any]) -> str:
    """The run facts as a markdown list: model, device, seed, threads, version, reach, outputs, timings."""
    model = report.get("model") or {}
    facts = [
        f"- model: `{model.get('path')}` ({model.get('format')})",
        f"- device: {report.get('device')}, seed: {report.get('seed')}, threads: {_threads(report.get('threads'))}",
        f"- prunecli version: {report.get('prunecli_version')}",
    ]
    facts += _processes_fact(report.get("distributed"))
    share = report.get("prunability") or {}
    if share:
        facts.append(f"- out of pruning's reach: {_percent(share.get('unprunable_params_share'))} of params, "
                     f"{_percent(share.get('unprunable_macs_share'))} of MACs")  # fmt: skip
    fallbacks = share.get("fallbacks") or {}
    if fallbacks:
        counted = ", ".join(f"{kind} {count}" for kind, count in sorted(fallbacks.items()))
        facts.append(f"- engine fallbacks: {counted}")
    for name, path in (report.get("outputs") or {}).items():
        facts.append(f"- output {name}: `{path}`")
    if report.get("onnx_export_error"):
        facts.append(f"- no model.onnx: {report['onnx_export_error']}")
    timings = report.get("timings_s") or {}
    if timings:
        phases = ", ".join(f"{phase} {seconds:.2f}" for phase, seconds in timings.items())
        facts.append(f"- wall-clock seconds: {phases}")
    return "\n".join(facts)


def _processes_fact(distributed: dict[str, Any] | None) -> list[str]:
    """torchrun runs: the world size and the structure check (nothing for a single process)."""
    if not distributed or distributed.get("world_size", 1) <= 1:
        return []
    check = distributed.get("structure_check") or {}
    verdict = f"identical on every rank (fingerprint {check['fingerprint'][:12]})" if check else "not checked"
    processes = f"{distributed['world_size']} (torchrun, {distributed.get('backend')})"
    return [f"- processes: {processes}; pruned structure {verdict}"]


def _threads(threads: dict[str, int] | None) -> str:
    if not threads:
        return "n/a"
    return f"{threads.get('work')} (latency: {threads.get('latency')})"


def _percent(share: float | None) -> str:
    return "unknown" if share is None else f"{share * 100:.1f}%"


def _markdown_table(header: Row, rows: list[Row]) -> str:
    rule = [" --- " if index == 0 or name in TEXT_COLUMNS else " ---: " for index, name in enumerate(header)]
    lines = [_markdown_row(header), "|" + "|".join(rule) + "|"]
    lines += [_markdown_row(row) for row in rows]
    return "\n".join(lines)


def _markdown_row(cells: Row) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
