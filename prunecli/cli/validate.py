"""``prunecli validate``: every check ``run`` makes before it starts work, and nothing more.

The same function as ``run``'s pre-run check (``prunecli.pipeline.checks``): schema, step order,
files, capabilities of the model format, data splits the steps need, then the model and data
are read (nothing runs) to check ``ignore`` names, ``min_channels`` and input shapes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from prunecli.cli.errors import error_boundary
from prunecli.cli.options import (
    DataOption,
    DebugOption,
    JsonOption,
    ModelOption,
    PipelineArgument,
    SetOption,
    TrustPickleOption,
)
from prunecli.errors import InputError

if TYPE_CHECKING:
    from prunecli.config.schema import Pipeline


@error_boundary
def validate(
    pipeline: PipelineArgument,
    overrides: SetOption = None,
    model: ModelOption = None,
    data: DataOption = None,
    json_output: JsonOption = False,
    trust_pickle: TrustPickleOption = False,
    debug: DebugOption = False,
) -> None:
    """Check a pipeline as run would before any work: schema, files, steps against model and data."""
    try:
        steps = _validated_steps(pipeline, overrides=overrides or (), model=model, data=data, trust_pickle=trust_pickle)
    except InputError as exc:
        if json_output:
            typer.echo(json.dumps({"ok": False, "error": str(exc)}))
        raise
    if json_output:
        typer.echo(json.dumps({"ok": True, "pipeline": str(pipeline), "steps": steps}))
    else:
        typer.echo(f"ok: {' -> '.join(steps)}")


def _validated_steps(
    path: Path, *, overrides: Sequence[str], model: Path | None, data: Path | None, trust_pickle: bool
) -> list[str]:
    from prunecli.config.loading import apply_cli_overrides, load_pipeline
    from prunecli.pipeline.checks import check_pipeline, prepare

    loaded = apply_cli_overrides(load_pipeline(path, overrides=overrides), model=model, data=data)
    base_dir = path.absolute().parent
    try:
        check_pipeline(loaded, base_dir=base_dir)
        prepare(loaded, base_dir=base_dir, trust_pickle=trust_pickle)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    return _describe_steps(loaded)


def _describe_steps(pipeline: Pipeline) -> list[str]:
    """Each step as ``kind(non-default options)``, e.g. ``select(ratio=0.5, scope=global)``."""
    return [_describe_step(step) for step in pipeline.steps]


def _describe_step(step: object) -> str:
    """``kind(non-default options)``; a repeat as ``repeat(rounds=3)[score -> select(ratio=0.5) -> prune]``."""
    options = step.model_dump(mode="json", exclude_defaults=True, exclude={"kind", "steps"})
    arguments = ", ".join(f"{key}={value}" for key, value in options.items())
    described = f"{step.kind}({arguments})" if arguments else step.kind
    if step.kind == "repeat":
        described += "[" + " -> ".join(_describe_step(inner) for inner in step.steps) + "]"
    return described
