"""Shared test set-up: repository paths, offline Hugging Face hub, and the timm fixture.

timm needs a compat shim on this machine's CPU torch (see ``tests/timm_compat.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from tests.timm_compat import define_torchvision_op_schemas

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Engine fallbacks (a rule that raises, a surgery that breaks shapes) are errors in the tests.
os.environ.setdefault("PRUNECLI_STRICT", "1")
# One intra-op thread: spinning OpenMP threads slow torch down by 10-250x when another process
# shares the cores (DESIGN.md 3a). Subprocesses inherit it through OMP_NUM_THREADS (Makefile).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"
CONFIGS = REPO / "configs"


@pytest.fixture(scope="session")
def timm_module():
    """timm, importable offline on this machine's CPU torch."""
    define_torchvision_op_schemas()
    return pytest.importorskip("timm")


def load_sample_cnn() -> torch.nn.Module:
    """The trained sample CNN (sample_models/digits_cnn.pt into archs.py:DigitsCNN), in eval mode."""
    return load_sample("cnn")


def load_sample(name: str) -> torch.nn.Module:
    """A trained sample model, ``cnn`` or ``mlp`` (sample_models/digits_NAME.pt into archs.py), in eval mode."""
    sys.path.insert(0, str(SAMPLES))
    try:
        import archs
    finally:
        sys.path.remove(str(SAMPLES))
    module = getattr(archs, f"Digits{name.upper()}")().eval()
    module.load_state_dict(torch.load(SAMPLES / f"digits_{name}.pt", weights_only=True))
    return module


def save_sample_cnn_program(path: Path) -> Path:
    """The trained sample CNN as a ``torch.export`` program (batch 2) saved at ``path``."""
    torch.export.save(torch.export.export(load_sample_cnn(), (torch.zeros(2, 1, 8, 8),), strict=False), path)
    return path
