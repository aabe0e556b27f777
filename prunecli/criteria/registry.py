"""The registry of importance criteria, by name. Light to import: no torch at module level.

A criterion is a function ``(inputs: ScoringInputs) -> dict[group_id, np.ndarray]`` (see
``criteria.inputs``) registered with ``@register("name")``; its module is listed in ``_MODULES`` so
that looking a name up imports it. ``DATA_DRIVEN`` names the criteria that run batches of data.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from prunecli.registry import Registry, unknown_name

Criterion = Callable[..., Any]

_MODULES = {
    "l1": "magnitude", "l2": "magnitude", "random": "random", "fpgm": "fpgm", "bn_scale": "bn_scale",
    "activation": "data_driven", "apoz": "data_driven", "taylor": "data_driven", "gradient": "data_driven",
    "weight_activation": "data_driven",
}  # fmt: skip
DATA_DRIVEN = frozenset({"activation", "apoz", "taylor", "gradient", "weight_activation"})
CRITERIA: Registry[str, Criterion] = Registry("criterion")
register = CRITERIA.register


def check_criterion_name(name: str) -> str:
    """Return ``name`` if it is a known criterion, else raise ValueError naming the known ones."""
    if name not in _MODULES:
        raise ValueError(unknown_name("criterion", name, list(_MODULES)))
    return name


def known_criteria() -> list[str]:
    """Every criterion name, sorted (``hybrid`` combines them and is not one)."""
    return sorted(_MODULES)


def get_criterion(name: str) -> Criterion:
    """The criterion function registered as ``name`` (imports its module on first use)."""
    check_criterion_name(name)
    if name not in CRITERIA:
        importlib.import_module(f"prunecli.criteria.{_MODULES[name]}")
    return CRITERIA.lookup(name)
