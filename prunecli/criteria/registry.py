"""The registry of importance criteria, by name. Light to import: no torch at module level.

A criterion is a function ``(graph, *, seed) -> dict[group_id, np.ndarray]`` registered with
``@register("name")``; its module is listed in ``_MODULES`` so that looking a name up imports it.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any

Criterion = Callable[..., Any]

_MODULES = {"l1": "magnitude", "l2": "magnitude", "random": "random"}
_REGISTRY: dict[str, Criterion] = {}


def register(name: str) -> Callable[[Criterion], Criterion]:
    """Register a criterion under ``name``; registering a name twice is an error."""

    def decorate(function: Criterion) -> Criterion:
        if name in _REGISTRY:
            raise ValueError(f"criterion '{name}' is registered twice")
        _REGISTRY[name] = function
        return function

    return decorate


def check_criterion_name(name: str) -> str:
    """Return ``name`` if it is a known criterion, else raise ValueError naming the known ones."""
    if name in _MODULES:
        return name
    known = ", ".join(sorted(_MODULES))
    close = difflib.get_close_matches(name, list(_MODULES), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"unknown criterion '{name}'; known: {known}{hint}")


def get_criterion(name: str) -> Criterion:
    """The criterion function registered as ``name`` (imports its module on first use)."""
    check_criterion_name(name)
    if name not in _REGISTRY:
        importlib.import_module(f"prunecli.criteria.{_MODULES[name]}")
    return _REGISTRY[name]
