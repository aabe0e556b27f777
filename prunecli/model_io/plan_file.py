"""``<stem>.plan.json``: what rebuilds a pruned state_dict's module from its unpruned arch.

Saved beside ``model.pt``; on load the arch is built, the kept channels are sliced out
(``prunecli.surgery.apply_keep``) and only then the weights are loaded::

    {"version": 1, "arch": "archs.py:DigitsCNN", "kwargs": {}, "input_shape": [1, 1, 8, 8],
     "keep": {"conv1.weight": {"0": [0, 2, 5]}, "conv1.bias": {"0": [0, 2, 5]}, ...},
     "attributes": {"blocks.0.attn": {"num_heads": 2}}, "modules": {"blocks.3": "identity"}}

A file path in ``arch`` is relative to the plan file's folder: ``save_model`` copies the arch file
there (``arch.portable_arch``), so an output folder can be moved. Older plans hold an absolute
path, which still loads; an importable ``arch`` (``timm:create_model``) is saved as it is.
``keep`` maps a tensor name to dim -> kept indices, always relative to the unpruned arch;
``attributes`` holds the new values of int attributes the model's code sizes tensors with;
``modules`` the modules ``prune_blocks`` replaced (path -> ``"identity"`` or ``"zero"``), replayed
after the channels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunecli.errors import InputError

PLAN_VERSION = 1

Keep = dict[str, dict[int, list[int]]]
KeepMapping = Mapping[str, Mapping[int, Sequence[int]]]


@dataclass(frozen=True)
class SavedPlan:
    """The contents of a plan.json: arch, its kwargs, the input shape and the kept channels."""

    arch: str
    kwargs: dict[str, Any]
    input_shape: tuple[int, ...] | None
    keep: Keep
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)


def plan_path_for(model_path: Path) -> Path:
    """The plan file beside ``model_path``: ``model.pt`` -> ``model.plan.json``."""
    return model_path.with_name(f"{model_path.stem}.plan.json")


def plan_to_json(plan: SavedPlan) -> str:
    """Serialise ``plan`` (dims become string keys, as JSON requires)."""
    document = {
        "version": PLAN_VERSION,
        "arch": plan.arch,
        "kwargs": plan.kwargs,
        "input_shape": None if plan.input_shape is None else list(plan.input_shape),
        "keep": {name: {str(dim): list(indices) for dim, indices in dims.items()} for name, dims in plan.keep.items()},
        "attributes": plan.attributes,
        "modules": plan.modules,
    }
    return json.dumps(document, indent=2) + "\n"


def read_plan(path: Path) -> SavedPlan:
    """Read and check a plan file; any problem is an InputError naming the file."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("version") != PLAN_VERSION:
            raise ValueError(f"version is {document.get('version')!r}, expected {PLAN_VERSION}")
        shape = document.get("input_shape")
        return SavedPlan(
            arch=str(document["arch"]),
            kwargs=dict(document.get("kwargs") or {}),
            input_shape=None if shape is None else tuple(int(size) for size in shape),
            keep=normalize_keep(document.get("keep") or {}),
            attributes={str(path): {str(k): _size(v) for k, v in values.items()}
                        for path, values in (document.get("attributes") or {}).items()},  # fmt: skip
            modules={str(path): str(kind) for path, kind in (document.get("modules") or {}).items()},
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(
            f"cannot read plan file {path}: {exc!r}; restore it or delete it to load the weights alone"
        ) from exc


def _size(value: Any) -> int | list[int]:
    """An attribute value from JSON: an int, or a shape as a list of ints."""
    return [int(item) for item in value] if isinstance(value, list) else int(value)


def normalize_keep(keep: Mapping[str, Mapping[Any, Sequence[int]]]) -> Keep:
    """Copy ``keep`` with int dims and int index lists (JSON gives string dims)."""
    return {name: {int(dim): [int(i) for i in indices] for dim, indices in dims.items()} for name, dims in keep.items()}


def compose_keep(first: KeepMapping, then: KeepMapping) -> Keep:
    """The keep of pruning by ``first`` and then by ``then`` (whose indices count ``first``'s survivors).

    Example: ``first={"w": {0: [1, 3, 4]}}``, ``then={"w": {0: [0, 2]}}`` -> ``{"w": {0: [1, 4]}}``.
    """
    composed = normalize_keep(first)
    for name, dims in then.items():
        for dim, indices in dims.items():
            earlier = composed.setdefault(name, {}).get(int(dim))
            composed[name][int(dim)] = [int(i) if earlier is None else earlier[int(i)] for i in indices]
    return composed


def merge_attributes(
    first: Mapping[str, Mapping[str, Any]], then: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Attribute values after applying ``first`` and then ``then`` (later values win)."""
    merged = {path: dict(values) for path, values in first.items()}
    for path, values in then.items():
        merged.setdefault(path, {}).update(values)
    return merged
