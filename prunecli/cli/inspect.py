"""``prunecli inspect``: show a model's pruning groups and how much of it pruning can reach."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from prunecli.cli.errors import error_boundary
from prunecli.cli.options import DebugOption, JsonOption, ThreadsOption, TrustPickleOption
from prunecli.errors import InputError

if TYPE_CHECKING:
    from prunecli.config.schema import ModelSpec


@error_boundary
def inspect(
    model: Annotated[
        Path,
        typer.Argument(
            help="Model file: .pt/.pth state_dict (with --arch), trusted pickle, torch.export .pt2, or .onnx.",
            show_default=False,
            metavar="MODEL",
        ),
    ],
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch",
            help="'package.module:Callable' or 'file.py:Callable' building the module a state_dict loads into.",
            show_default=False,
        ),
    ] = None,
    arch_kwargs: Annotated[
        str | None,
        typer.Option(
            "--kwargs", metavar="JSON", help="Keyword arguments for --arch, a JSON object.", show_default=False
        ),
    ] = None,
    input_shape: Annotated[
        str | None,
        typer.Option(
            "--input-shape", metavar="N,C,H,W", help="One input batch's shape, batch first, e.g. 1,3,224,224.",
            show_default=False,
        ),
    ] = None,
    model_format: Annotated[
        str, typer.Option("--format", help="auto, state_dict, pickle, export or onnx (auto: from the file).")
    ] = "auto",
    trust_pickle: TrustPickleOption = False,
    threads: ThreadsOption = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show a model's pruning groups (channels, prunable or why not) and its unprunable params and MACs."""
    from prunecli.graph.summary import inspect_model
    from prunecli.threads import torch_threads

    spec = _model_spec(model, arch=arch, arch_kwargs=arch_kwargs, input_shape=input_shape, model_format=model_format)
    with torch_threads(threads or 1):  # like a pipeline's default: steady on a shared machine
        summary = inspect_model(spec, base_dir=Path.cwd(), trust_pickle=trust_pickle)
    if json_output:
        typer.echo(json.dumps(summary))
    else:
        _show(summary)


def _model_spec(
    path: Path, *, arch: str | None, arch_kwargs: str | None, input_shape: str | None, model_format: str
) -> ModelSpec:
    from pydantic import ValidationError

    from prunecli.config.loading import describe_validation_error
    from prunecli.config.schema import ModelSpec

    try:
        return ModelSpec(
            path=path,
            arch=arch,
            kwargs=_json_object(arch_kwargs),
            input_shape=_shape(input_shape),
            format=model_format,
        )
    except ValidationError as exc:
        raise InputError(describe_validation_error(exc)) from None


def _json_object(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--kwargs is not valid JSON ({exc.msg}); pass an object, e.g. '{{\"width\": 16}}'") from None
    if not isinstance(value, dict):
        raise InputError(f"--kwargs must be a JSON object, got {type(value).__name__}; e.g. '{{\"width\": 16}}'")
    return value


def _shape(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(size) for size in text.split(",")]
    except ValueError:
        raise InputError(
            f"--input-shape must be integers separated by commas, e.g. 1,3,224,224; got '{text}'"
        ) from None


def _show(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pruning groups", title_justify="left")
    table.add_column("group", no_wrap=True)
    table.add_column("channels", justify="right")
    table.add_column("prunable")
    table.add_column("reason")
    for group in summary["groups"]:
        prunable = "yes" if group["prunable"] else "no"
        table.add_row(group["name"], str(group["channels"]), prunable, group["reason"] or "")
    Console().print(table)
    typer.echo(f"params: {summary['params']:,} ({summary['unprunable_params_share']:.2%} unprunable)")
    share = summary["unprunable_macs_share"]
    unprunable = "unprunable share unknown: no module breakdown" if share is None else f"{share:.2%} unprunable"
    typer.echo(f"MACs: {summary['macs']:,} per sample ({unprunable})")
