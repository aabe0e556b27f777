"""``timm:NAME`` models: the architecture with random weights (seed 0), never downloaded.

A batch writes the weights once, in a child process, then runs the model like any state_dict::

    python -m prunecli.batch.timm_source resnet18 out/.batch/resnet18.pt --kwargs '{"num_classes": 10}'
    # the run's model.arch is then prunecli.batch.timm_source:create, kwargs {model_name, num_classes}

timm imports torchvision; where torchvision is a CUDA build on a CPU torch its import fails on
two missing operator schemas, which are defined first (tests/timm_compat.py re-exports this shim).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from prunecli.errors import InputError

ARCH = "prunecli.batch.timm_source:create"
_LIBRARIES: list = []  # keeps the torch.library.Library objects (and so the schemas) alive


def create(*, model_name: str, num_classes: int = 1000, **kwargs: Any) -> Any:
    """``timm.create_model(model_name, pretrained=False, ...)``: random weights, no download."""
    timm = import_timm()
    if model_name not in timm.list_models():
        raise InputError(f"unknown timm architecture {model_name!r}; see timm.list_models()")
    return timm.create_model(model_name, pretrained=False, num_classes=num_classes, **kwargs)


def import_timm() -> ModuleType:
    """timm, offline, with the torchvision operator schemas defined when torchvision needs them."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    define_torchvision_op_schemas()
    try:
        import timm
    except ImportError as exc:
        raise InputError(f"timm:NAME models need timm ({exc}); pip install timm") from exc
    return timm


def define_torchvision_op_schemas() -> None:
    """Let a CUDA build of torchvision import on CPU torch: define its two missing operator schemas."""
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - present when torchvision matches torch
        return
    except (AttributeError, RuntimeError):
        pass
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARIES.append(library)


def write_weights(model_name: str, path: Path, *, kwargs: dict[str, Any]) -> None:
    """Save the state_dict of ``model_name`` (seed 0) to ``path`` atomically."""
    import torch

    from prunecli.model_io.atomic import atomic_path

    torch.manual_seed(0)
    module = create(model_name=model_name, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        torch.save(module.state_dict(), temporary)


def main(argv: list[str] | None = None) -> int:
    """Command line of the child process that writes a timm model's weights; exit 2 on bad input."""
    parser = argparse.ArgumentParser(description="Write a timm architecture's random weights (seed 0).")
    parser.add_argument("model_name")
    parser.add_argument("path", type=Path)
    parser.add_argument("--kwargs", type=json.loads, default={}, help="create_model keywords, as JSON.")
    args = parser.parse_args(argv)
    try:
        write_weights(args.model_name, args.path, kwargs=args.kwargs)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
