"""``prunecli batch`` and ``prunecli batch-merge``: a pipeline over many models, and shard summaries merged."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from prunecli.cli.errors import error_boundary
from prunecli.cli.options import JsonOption, PipelineArgument
from prunecli.errors import InputError

if TYPE_CHECKING:
    from prunecli.batch.rows import BatchRow

JunitOption = Annotated[
    Path | None,
    typer.Option("--junit", help="Also write JUnit XML here: a test case per model and per gate.", show_default=False),
]


@error_boundary
def batch(
    pipeline: PipelineArgument,
    models: Annotated[
        list[str],
        typer.Argument(help="Model files, globs, manifests (.yaml/.csv) or timm:NAME.", show_default=False),
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Folder for the summary and one output folder per model.")
    ] = Path("out/batch"),
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="Models run at the same time, one process each.")] = 1,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, help="Torch threads per model process (default: cores / jobs).",
                     show_default=False),
    ] = None,  # fmt: skip
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip models whose output folder is complete (a valid report.json).")
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option("--shard", metavar="K/N", help="Run only the K-th of N slices (models sorted by name).",
                     show_default=False),
    ] = None,  # fmt: skip
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=1, help="Seconds one model may run before it is killed and recorded.",
                     show_default=False),
    ] = None,  # fmt: skip
    memory_limit: Annotated[
        float | None,
        typer.Option("--memory-limit", metavar="GB", min=0.001,
                     help="Resident memory (GB) one model's processes may use before they are killed and recorded "
                          "(a manifest's memory_limit wins).", show_default=False),
    ] = None,  # fmt: skip
    junit: JunitOption = None,
    json_output: JsonOption = False,
) -> int:
    """Run PIPELINE on many models, each as `prunecli run` into OUTPUT/<model>/; write summary.json/.csv/.md.

    Exit code: the worst of the models' - 0 all passed, 1 a gate failed, 2 a model was bad input,
    3 a run crashed, timed out or passed its memory limit. A failed model is recorded and the batch goes on.
    """
    from prunecli.batch.execute import BatchSettings, run_batch
    from prunecli.batch.models import expand_models, select_shard

    if not pipeline.is_file():
        raise InputError(f"pipeline file not found: {pipeline}; check the path")
    entries = select_shard(expand_models(models), shard=shard)
    settings = BatchSettings(pipeline=pipeline, output=output, jobs=jobs, threads=threads, timeout_s=timeout,
                             memory_limit_gb=memory_limit, resume=resume)  # fmt: skip
    progress = None if json_output else _progress_line
    rows = run_batch(entries, settings, on_row=progress)
    return _finish(rows, output, shard=shard, junit=junit, json_output=json_output)


@error_boundary
def batch_merge(
    folders: Annotated[list[Path], typer.Argument(help="Output folders of prunecli batch (e.g. one per shard).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the merged summary.")] = Path(
        "out/batch-merged"
    ),
    junit: JunitOption = None,
    json_output: JsonOption = False,
) -> int:
    """Merge the summaries of batch shards into one summary.json/.csv/.md; exits as the whole batch would."""
    from prunecli.batch.summary import merge_summaries

    return _finish(merge_summaries(folders), output, shard=None, junit=junit, json_output=json_output)


def _finish(rows: list[BatchRow], output: Path, *, shard: str | None, junit: Path | None, json_output: bool) -> int:
    from prunecli.batch.junit import write_junit
    from prunecli.batch.summary import summary_dict, summary_markdown, write_summary

    paths = write_summary(rows, output, shard=shard)
    if junit is not None:
        write_junit(rows, junit)
    _append_step_summary(summary_markdown(rows))
    document = summary_dict(rows, shard=shard)
    if json_output:
        typer.echo(json.dumps(document))
    else:
        _show(rows)
        typer.echo(f"wrote {', '.join(str(path) for path in paths.values())}")
    return document["exit_code"]


def _progress_line(row: BatchRow) -> None:
    tail = " (resumed)" if row.resumed else ""
    peak = "" if row.peak_rss_mb is None else f", peak {row.peak_rss_mb:,.0f} MB"
    typer.echo(f"{row.name}: {row.status} (exit {row.exit_code}, {row.seconds:.1f} s{peak}){tail}", err=True)


def _append_step_summary(markdown: str) -> None:
    """Append the markdown summary to the GitHub Actions job summary when GITHUB_STEP_SUMMARY is set."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(markdown + "\n")


def _show(rows: list[BatchRow]) -> None:
    """A rich table on a terminal; the markdown summary when piped."""
    from prunecli.batch.summary import summary_markdown

    if not sys.stdout.isatty():
        typer.echo(summary_markdown(rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="prunecli batch")
    for column in ("model", "status", "exit", "params", "MACs", "p50 ms", "accuracy", "s", "peak MB", "error"):
        table.add_column(column, overflow="fold")
    for row in rows:
        colour = "green" if row.status == "passed" else "red"
        table.add_row(row.name, f"[{colour}]{row.status}[/]", str(row.exit_code),
                      _pair(row.params_before, row.params_after), _pair(row.macs_before, row.macs_after),
                      _pair(row.latency_p50_ms_before, row.latency_p50_ms_after, digits=3),
                      _pair(row.accuracy_before, row.accuracy_after, digits=4), f"{row.seconds:.1f}",
                      "-" if row.peak_rss_mb is None else f"{row.peak_rss_mb:,.0f}", row.error or "")  # fmt: skip
    Console().print(table)


def _pair(before: float | None, after: float | None, *, digits: int = 0) -> str:
    show = lambda value: "-" if value is None else f"{value:,.{digits}f}"  # noqa: E731
    return f"{show(before)} → {show(after)}"
