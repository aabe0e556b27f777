"""Slice a torch module's parameters and buffers to the kept positions, then fix attributes."""

from __future__ import annotations

from collections import defaultdict
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
    aliases = _aliases(module)
    owners = set()
    for name, dims in keep.items():
        owner_name, _, leaf = name.rpartition(".")
        tensor = _get_tensor(module.get_submodule(owner_name), leaf, name)
        sliced = tensor.detach()
        for dim, indices in sorted(dims.items()):
            sliced = sliced.index_select(int(dim), _index(indices, sliced.device))
        sliced = sliced.clone()
        value = nn.Parameter(sliced, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else sliced
        for alias in aliases.get(name, [name]):  # a tied weight stays tied: every name gets the sliced one
            alias_owner, _, alias_leaf = alias.rpartition(".")
            _set_tensor(module.get_submodule(alias_owner), alias_leaf, value)
            owners.add(alias_owner)
    for path, values in (attributes or {}).items():
        owner = module.get_submodule(path)
        for name, value in values.items():
            setattr(owner, name, value)
    for owner_name in owners:  # last: a layer's own shape attributes follow its tensors, whatever matched above
        fix_attributes(module.get_submodule(owner_name))


def shape_mismatch(original: nn.Module, pruned: nn.Module, keep: Keep) -> str | None:
    """The first parameter or buffer of ``pruned`` whose shape is not the one ``keep`` implies, or None.

    ``keep[tensor][dim]`` positions survive along ``dim``; every other dimension, and every
    tensor ``keep`` does not name, keeps its size (a tied weight sliced under one name only
    shows up here under the other).
    """
    before, aliases = _named_tensors(original), _aliases(original)
    for name, tensor in _named_tensors(pruned).items():
        planned = list(before[name].shape)
        for dim, indices in (item for alias in aliases[name] for item in keep.get(alias, {}).items()):
            planned[int(dim)] = len(indices)
        if list(tensor.shape) != planned:
            return f"tensor '{name}' has shape {tuple(tensor.shape)}, the plan implies {tuple(planned)}"
    return None


def _named_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    parameters = module.named_parameters(remove_duplicate=False)
    return {**dict(parameters), **dict(module.named_buffers(remove_duplicate=False))}


def _aliases(module: nn.Module) -> dict[str, list[str]]:
    """Every name of each parameter and buffer, by each of its names (a tied weight has several)."""
    by_identity: dict[int, list[str]] = defaultdict(list)
    for name, tensor in _named_tensors(module).items():
        by_identity[id(tensor)].append(name)
    return {name: names for names in by_identity.values() for name in names}


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
        owner._parameters[leaf] = value
    else:
        owner._buffers[leaf] = value
