"""prunecli: make saved neural networks smaller and faster, with verified surgery and measured reports.

The Python API (``prunecli.api``) is imported on first use, so ``import prunecli`` stays light::

    import prunecli

    report = prunecli.run("pipeline.yaml", output="out/net")   # the report.json dict
    module = prunecli.load("out/net")                           # the pruned model
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load", "run"]

if TYPE_CHECKING:
    from prunecli.api import load, run

_LAZY = ("load", "run")


def __getattr__(name: str) -> Any:
    """``prunecli.load`` and ``prunecli.run``, imported from ``prunecli.api`` when first asked for."""
    if name in _LAZY:
        from prunecli import api

        return getattr(api, name)
    raise AttributeError(f"module 'prunecli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
