"""``prunecli sensitivity``: each prunable group pruned alone at several ratios, accuracy measured."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from prunecli.cli.errors import error_boundary
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
from prunecli.errors import InputError

DEFAULT_RATIOS = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"


@error_boundary
def sensitivity(
    pipeline: PipelineArgument,
    ratios: Annotated[
        str, typer.Option("--ratios", help="Comma-separated fractions of a group's channels to remove.")
    ] = DEFAULT_RATIOS,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Folder for the outputs; default out/<pipeline stem>-sensitivity.",
                     show_default=False),
    ] = None,  # fmt: skip
    model: ModelOption = None,
    data: DataOption = None,
    overrides: SetOption = None,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
    trust_pickle: TrustPickleOption = False,
    debug: DebugOption = False,
) -> None:
    """Prune each group alone at each ratio (no fine-tuning) and measure eval accuracy and loss.

    Writes sensitivity.json, sensitivity.md and sensitivity.png. An interrupted sweep continues
    where it stopped when run again with the same pipeline, model, data and ratios.
    """
    from prunecli.api import sensitivity_file

    with _progress(enabled=sys.stderr.isatty() and not json_output) as progress:
        result = sensitivity_file(
            pipeline, ratios=parse_ratios(ratios), model=model, data=data, output=output, set=overrides or (),
            threads=threads, trust_pickle=trust_pickle, progress=progress,
        )  # fmt: skip
    if json_output:
        typer.echo(json.dumps(result.sweep))
        return
    written = ", ".join(str(path) for path in result.written.values())
    typer.echo(f"swept {len(result.sweep['groups'])} groups at {len(result.sweep['ratios'])} ratios; wrote {written}")


def parse_ratios(text: str) -> list[float]:
    """``"0.1,0.5"`` -> ``[0.1, 0.5]``; each ratio in (0, 1), sorted and unique."""
    try:
        ratios = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise InputError(f"--ratios {text!r}: give comma-separated numbers, e.g. 0.1,0.3,0.5") from None
    if not ratios or not all(0 < ratio < 1 for ratio in ratios):
        raise InputError(f"--ratios {text!r}: every ratio must be above 0 and below 1, e.g. 0.1,0.3,0.5")
    return ratios


@contextmanager
def _progress(*, enabled: bool) -> Iterator[object]:
    """A ``(done, total)`` callback driving a rich progress bar on stderr; None when not enabled."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("sensitivity", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
