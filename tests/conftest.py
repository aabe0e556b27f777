"""Shared test set-up.

torchvision 0.28 (needed by timm for the zoo tests) is a CUDA build; on this project's CPU torch its
import fails with "operator torchvision::nms does not exist" because the CPU torch lacks the schemas
of its two C++ ops. Defining those two schemas first lets torchvision (and so timm) import. Only the
zoo tests need it; prunecli itself never imports torchvision.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"
CONFIGS = REPO / "configs"


def define_torchvision_op_schemas() -> None:
    """Let a CUDA build of torchvision import on CPU torch (see the module docstring)."""
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - present when torchvision matches torch
        return
    except (AttributeError, RuntimeError):
        pass
    library = torch.library.Library("torchvision", "DEF")  # kept alive by the module-level reference below
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARIES.append(library)


_LIBRARIES: list = []


@pytest.fixture(scope="session")
def timm_module():
    """timm, importable offline on this machine's CPU torch."""
    define_torchvision_op_schemas()
    return pytest.importorskip("timm")
