"""``prunecli schema``: the JSON Schema of pipeline files, for editors and CI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from prunecli.cli.errors import error_boundary
from prunecli.cli.options import DebugOption


@error_boundary
def schema(
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write to this file instead of stdout.", show_default=False)
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Print the JSON Schema of a pipeline file."""
    from prunecli.config.loading import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    from prunecli.model_io.atomic import atomic_write_text

    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, text)
    typer.echo(f"wrote {output}")
