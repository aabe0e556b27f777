"""``prunecli run``: load a pipeline, run it, show the report; exit 1 when a gate failed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from prunecli.cli.errors import error_boundary
from prunecli.distributed import leaving_together
from prunecli.cli.options import (
    DataOption,
    DebugOption,
    JsonOption,
    ModelOption,
    PipelineArgument,
    SetOption,
    ThreadsOption,
    TrustPickleOption,
)

if TYPE_CHECKING:
    from prunecli.pipeline.options import RunResult


@leaving_together  # torchrun: one process group per command; a failing run ends on rank 0 first (its report, its error)
@error_boundary
def run(
    pipeline: PipelineArgument,
    model: ModelOption = None,
    data: DataOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", help="Folder for the outputs; default out/<pipeline file stem>.", show_default=False
        ),
    ] = None,
    overrides: SetOption = None,
    device: Annotated[
        Literal["cpu", "cuda"] | None,
        typer.Option("--device", help="Overrides the pipeline's device.", show_default=False),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Overrides the pipeline's seed.", show_default=False)
    ] = None,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
    trust_pickle: TrustPickleOption = False,
    debug: DebugOption = False,
) -> int:
    """Run a pipeline: prune, fine-tune, measure; write the model and report.json/report.md."""
    from prunecli.api import run_file

    output_dir = output if output is not None else Path("out") / pipeline.stem
    result = run_file(
        pipeline, model=model, data=data, output=output_dir, set=overrides or (), device=device, seed=seed,
        threads=threads, trust_pickle=trust_pickle, progress=sys.stderr.isatty() and not json_output,
    )  # fmt: skip
    if result.rank != 0:  # torchrun: rank 0 shows the report; this rank exits with its verdict
        return 0 if result.gates_passed else 1
    if json_output:
        typer.echo(json.dumps(result.report))
    else:
        _show(result, output_dir=output_dir)
    _warn_failed_gates(result)
    return 0 if result.gates_passed else 1


def _show(result: RunResult, *, output_dir: Path) -> None:
    from rich.console import Console

    from prunecli.report.render import gates_table, report_table
    from prunecli.report.rows import verification_line

    console = Console(width=None if sys.stdout.isatty() else 120)  # piped output: no cells cut to 80 columns
    console.print(report_table(result.report))
    if result.report.get("gates"):
        console.print(gates_table(result.report))
    typer.echo(verification_line(result.report))
    if result.report.get("blocks"):
        from prunecli.blocks.report import blocks_line

        typer.echo(blocks_line(result.report))
    written = ", ".join(path.name for path in result.written.values())
    typer.echo(f"wrote {output_dir}: {written}" if written else f"outputs in {output_dir}")


def _warn_failed_gates(result: RunResult) -> None:
    for name, gate in (result.report.get("gates") or {}).items():
        if not gate.get("passed"):
            typer.echo(f"gate failed: {name}: value {gate.get('value')}, limit {gate.get('limit')}", err=True)
