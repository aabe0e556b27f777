"""Options and arguments shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PipelineArgument = Annotated[
    Path, typer.Argument(help="Pipeline YAML file.", show_default=False, metavar="PIPELINE")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a pipeline value; KEY is dotted with list indices, VALUE is YAML, "
        "e.g. --set steps.1.ratio=0.3. Repeatable.",
        show_default=False,
    ),
]
ModelOption = Annotated[
    Path | None,
    typer.Option(
        "--model", help="Model file; replaces model.path (relative to the current folder).", show_default=False
    ),
]
DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Data file or folder; replaces data.eval, and data.train when the pipeline fine-tunes "
        "or names a training split.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout and nothing else.")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Print the traceback of any error.")]
TrustPickleOption = Annotated[
    bool,
    typer.Option("--trust-pickle", help="Allow loading a pickled model: it can run code, so only for files you trust."),
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads", min=1, help="Intra-op threads for all torch/ONNX Runtime work (default: the pipeline's, else 1).",
        show_default=False,
    ),
]
