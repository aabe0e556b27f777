"""The ``prunecli`` Typer app and its console-script entry point ``main``."""

from __future__ import annotations

from typing import Annotated

import typer

from prunecli import __version__
from prunecli.cli import batch, env, inspect, run, schema, sensitivity, validate

app = typer.Typer(
    name="prunecli",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run.run)
app.command("validate")(validate.validate)
app.command("schema")(schema.schema)
app.command("env")(env.env)
app.command("inspect")(inspect.inspect)
app.command("sensitivity")(sensitivity.sensitivity)
app.command("batch")(batch.batch)
app.command("batch-merge")(batch.batch_merge)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"prunecli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Make saved neural networks smaller and faster: structural pruning with verified surgery
    and measured reports. Exit codes: 0 ok, 1 a gate failed, 2 bad input, 3 internal error."""


def main() -> None:
    """Console-script entry point (``prunecli``; ``python -m prunecli``)."""
    app()
