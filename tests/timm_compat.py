"""Import timm offline on this project's CPU torch.

torchvision 0.28 (needed by timm) is a CUDA build; on the CPU torch its import fails with
"operator torchvision::nms does not exist" because the CPU torch lacks the schemas of its two
C++ ops. Defining those two schemas first lets torchvision (and so timm) import. Only the zoo
tests and the zoo bench need it; prunecli itself never imports torchvision.
"""

from __future__ import annotations

import os
from types import ModuleType

_LIBRARIES: list = []  # keeps the torch.library.Library objects (and so the schemas) alive


def define_torchvision_op_schemas() -> None:
    """Let a CUDA build of torchvision import on CPU torch (see the module docstring)."""
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


def import_timm() -> ModuleType:
    """timm, with the torchvision schemas defined first and the Hugging Face hub kept offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    define_torchvision_op_schemas()
    import timm

    return timm
