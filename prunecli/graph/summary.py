"""How much of a model structural pruning can reach: parameters and MACs inside prunable groups.

Definitions (MACs on one sample):

- a parameter tensor is *prunable* when at least one of its dimensions is a member of a
  prunable group; ``unprunable_params_share`` = numel of the parameters with no prunable
  dimension / numel of all parameters;
- MACs are torch's ``FlopCounterMode`` flops / 2, broken down by module. The MACs of a leaf
  module that owns a ``weight`` (conv, linear, ...) are prunable when a dimension of that weight
  is a member of a prunable group. Every other MAC counts as unprunable: leaves whose weight is
  fixed, and ops outside weighted leaf modules (the ``q @ k`` matmul of attention, a functional
  conv on a parent's parameter), so ``unprunable_macs_share`` is an upper bound. It is None when
  no weighted leaf module computes any MAC although the model does: a flat graph such as a
  loaded ``.pt2`` never calls its submodules, so its MACs cannot be attributed this way.

Example: in ``sample_models/archs.py:DigitsCNN`` the ``fc`` group (10 output rows) reaches the
model output, so ``fc.bias`` (10 values) is the only parameter with no prunable dimension;
``fc.weight`` is prunable along dim 1 through the ``hidden_fc`` group, so every conv and linear
leaf counts as prunable and ``unprunable_macs_share`` is 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prunecli.graph.channel_graph import ChannelGraph, PruningGroup
from prunecli.graph.trace import build_channel_graph
from prunecli.metrics.macs import macs_by_module
from prunecli.model_io import load_model

if TYPE_CHECKING:
    from prunecli.config.schema import ModelSpec

GRAPH_BATCH_SIZE = 2  # a batch of 2 keeps the batch dimension apart from channel dimensions of size 1


def inspect_model(spec: ModelSpec, *, base_dir: Path, trust_pickle: bool, seed: int = 0) -> dict[str, Any]:
    """Load the model ``spec`` names, build its channel graph on a seeded random batch and summarize it."""
    loaded = load_model(spec, base_dir=base_dir, trust_pickle=trust_pickle)
    if loaded.module is None:  # an ONNX graph: its own front-end (prunecli.onnx_graph)
        from prunecli.onnx_graph.summary import onnx_prunability

        return onnx_prunability(loaded)
    generator = torch.Generator().manual_seed(seed)
    example_input = torch.randn((GRAPH_BATCH_SIZE, *loaded.input_shape[1:]), generator=generator)
    graph = build_channel_graph(loaded.module, example_input)
    return prunability(graph, loaded.module, example_input)


def prunability(
    graph: ChannelGraph, module: torch.nn.Module, example_input: torch.Tensor, *, left_intact: Collection[int] = ()
) -> dict[str, Any]:
    """Params, MACs (one sample), the shares pruning cannot reach (see the module docstring), every group.

    Returns ``{"params", "macs", "unprunable_params_share", "unprunable_macs_share", "groups",
    "unprunable_reasons", "fallbacks"}``; each group is ``{"name", "channels", "prunable", "reason",
    "members"}`` with members as ``"tensor:dim"``, ``unprunable_reasons`` counts unprunable groups by
    reason, and ``fallbacks`` counts the graph's fallbacks by kind (``prunecli.graph.fallbacks``).
    Groups in ``left_intact`` (prunable, but kept whole by the run) count as unprunable.
    """
    prunable_groups = [group for group in graph.prunable_groups if group.id not in left_intact]
    prunable_tensors = {member.tensor for group in prunable_groups for member in group.members}
    parameters = dict(module.named_parameters())
    params = sum(parameter.numel() for parameter in parameters.values())
    unprunable_params = sum(p.numel() for name, p in parameters.items() if name not in prunable_tensors)
    macs, leaf_macs = _macs_by_weighted_leaf(module, example_input)
    return {
        "params": params,
        "macs": macs,
        "unprunable_params_share": _share(unprunable_params, params),
        "unprunable_macs_share": _unprunable_macs_share(macs, leaf_macs, prunable_tensors=prunable_tensors),
        "groups": [_group_row(group) for group in graph.groups],
        "unprunable_reasons": dict(Counter(group.reason for group in graph.groups if not group.prunable)),
        "fallbacks": graph.fallbacks.counts(),
    }


def _macs_by_weighted_leaf(module: torch.nn.Module, example_input: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Total MACs on the first sample, and the MACs of each leaf module owning a ``weight`` by its name."""
    total, by_module = macs_by_module(module, example_input)
    leaf_macs = {
        name: by_module.get(name, 0)
        for name, child in module.named_modules()
        if name and next(child.children(), None) is None and isinstance(getattr(child, "weight", None), torch.Tensor)
    }
    return total, leaf_macs


def _unprunable_macs_share(macs: int, leaf_macs: dict[str, int], *, prunable_tensors: set[str]) -> float | None:
    if macs and not any(leaf_macs.values()):
        return None  # a flat graph: no module breakdown to attribute MACs with
    prunable_macs = sum(count for name, count in leaf_macs.items() if f"{name}.weight" in prunable_tensors)
    return _share(macs - prunable_macs, macs)


def _group_row(group: PruningGroup) -> dict[str, Any]:
    return {
        "name": group.name,
        "channels": group.channels,
        "prunable": group.prunable,
        "reason": group.reason,
        "members": [f"{member.tensor}:{member.dim}" for member in group.members],
    }


def _share(part: int, total: int) -> float:
    return part / total if total else 0.0
