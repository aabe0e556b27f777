"""``model.arch`` for benchmarks that run timm models through the CLI: ``bench/timm_arch.py:create``.

timm needs the repository's compat shim on this project's CPU torch (``tests/timm_compat.py``);
an arch file applies it in the ``prunecli`` process itself before building the model.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def create(*, model_name: str, num_classes: int, **kwargs):
    """``timm.create_model(model_name, pretrained=False, num_classes=...)``, never downloading."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.timm_compat import import_timm

    return import_timm().create_model(model_name, pretrained=False, num_classes=num_classes, **kwargs)
