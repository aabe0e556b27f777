"""Shared test set-up: repository paths, offline Hugging Face hub, and the timm fixture.

timm needs a compat shim on this machine's CPU torch (see ``tests/timm_compat.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.timm_compat import define_torchvision_op_schemas

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"
CONFIGS = REPO / "configs"


@pytest.fixture(scope="session")
def timm_module():
    """timm, importable offline on this machine's CPU torch."""
    define_torchvision_op_schemas()
    return pytest.importorskip("timm")
