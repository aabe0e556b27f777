"""``prunecli env``: the versions and devices a bug report needs."""

from __future__ import annotations

import json
from typing import Any

import typer

from prunecli import __version__
from prunecli.cli.errors import error_boundary
from prunecli.cli.options import DebugOption, JsonOption

# Distribution names to ask for each package's version; the first one installed wins.
_DISTRIBUTIONS = {
    "torch": ("torch",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "numpy": ("numpy",),
    "typer": ("typer",),
}


@error_boundary
def env(json_output: JsonOption = False, debug: DebugOption = False) -> None:
    """Show versions of Python, prunecli and its libraries, torch threads and CUDA devices."""
    facts = environment_facts()
    if json_output:
        typer.echo(json.dumps(facts))
        return
    width = max(len(key) for key in facts)
    for key, value in facts.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        typer.echo(f"{key:<{width}}  {'n/a' if shown in (None, '') else shown}")


def environment_facts() -> dict[str, Any]:
    """Versions (None when not installed), torch's intra-op threads and the CUDA devices seen."""
    import platform

    import torch

    cuda = torch.cuda.is_available()
    facts: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    facts["prunecli"] = __version__
    facts.update({name: _installed_version(names) for name, names in _DISTRIBUTIONS.items()})
    facts["torch_threads"] = torch.get_num_threads()
    facts["cuda_available"] = cuda
    devices = range(torch.cuda.device_count()) if cuda else range(0)
    facts["cuda_devices"] = [torch.cuda.get_device_name(index) for index in devices]
    return facts


def _installed_version(distributions: tuple[str, ...]) -> str | None:
    from importlib import metadata

    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None
