"""Slice a torch module's parameters and buffers to the kept positions, then fix attributes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from typing import Any

import numpy as np
import torch
from torch import nn

from prunecli.surgery.attributes import fix_attributes

Keep = Mapping[str, Mapping[int, Sequence[int]]]
Attributes = Mapping[str, Mapping[str, Any]]


def apply_keep(module: nn.Module, keep: Keep, *, attributes: Attributes | None = None) -> None:
    """Keep only ``keep[tensor][dim]`` positions of each named parameter/buffer, in place.

    ``keep`` comes from ``ChannelGraph.keep_indices`` (or a saved plan): tensor names are
    state_dict keys. Modules whose tensors changed get their shape attributes updated;
    ``attributes`` (module path -> attribute -> int, from ``ChannelGraph.attribute_updates``)
    sets the sizes that the model's own code uses, such as ``num_heads``.
    """
    owners = set()
    for name, dims in keep.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        tensor = _get_tensor(owner, leaf, name)
        sliced = tensor.detach()
        for dim, indices in sorted(dims.items()):
            sliced = sliced.index_select(int(dim), _index(indices, sliced.device))
        _set_tensor(owner, leaf, sliced.clone())
        owners.add(owner_name)
    for path, values in (attributes or {}).items():
        owner = module.get_submodule(path)
        for name, value in values.items():
            setattr(owner, name, value)
    for owner_name in owners:  # last: a layer's own shape attributes follow its tensors, whatever matched above
        fix_attributes(module.get_submodule(owner_name))


def zero_removed(module: nn.Module, keep: Keep) -> None:
    """Zero, in place, every position of each named tensor that ``keep`` would remove (masking)."""
    with torch.no_grad():
        for name, dims in keep.items():
            owner_name, _, leaf = name.rpartition(".")
            tensor = _get_tensor(module.get_submodule(owner_name), leaf, name)
            for dim, indices in dims.items():
                removed = torch.ones(tensor.shape[int(dim)], dtype=torch.bool, device=tensor.device)
                removed[_index(indices, tensor.device)] = False
                tensor.index_fill_(int(dim), removed.nonzero().flatten(), 0)


def _index(indices: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(indices, dtype=np.int64), device=device)


def _get_tensor(owner: nn.Module, leaf: str, name: str) -> torch.Tensor:
    if leaf in owner._parameters and owner._parameters[leaf] is not None:
        return owner._parameters[leaf]
    if leaf in owner._buffers and owner._buffers[leaf] is not None:
        return owner._buffers[leaf]
    raise KeyError(f"no parameter or buffer named '{name}'")


def _set_tensor(owner: nn.Module, leaf: str, value: torch.Tensor) -> None:
    if leaf in owner._parameters:
        old = owner._parameters[leaf]
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        owner._buffers[leaf] = value
