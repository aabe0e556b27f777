"""Prune a torch module by a plan, leaving intact the groups whose removal breaks its forward pass."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from prunecli.graph.channel_graph import ChannelGraph
from prunecli.surgery.torch_surgery import Attributes, Keep, apply_keep
from prunecli.surgery.verify import Verification, verify_surgery


@dataclass
class PruneOutcome:
    """The pruned module, what was applied to get it, its verification, and the groups left intact."""

    module: nn.Module
    keep: Keep
    attributes: Attributes
    verification: Verification
    left_intact: dict[int, str] = field(default_factory=dict)


def prune_module(
    module: nn.Module,
    graph: ChannelGraph,
    removed: Mapping[int, Sequence[int]],
    *,
    inputs: torch.Tensor,
    tolerance: float,
) -> PruneOutcome:
    """Remove ``removed`` channels from a copy of ``module`` and verify it against masking.

    Model code can hard-wire sizes the graph cannot see (``view(-1, 512)``); when the pruned
    forward raises, groups are added back one at a time and those that break it stay intact,
    each with the error as its reason. A forward that runs but differs from the masked
    original is not hidden: the verification says so.
    """
    attempt = _attempt(module, graph, removed, inputs)
    left_intact: dict[int, str] = {}
    if isinstance(attempt, Exception):
        removed, left_intact = _without_breaking_groups(module, graph, removed, inputs)
        attempt = _attempt(module, graph, removed, inputs)
        if isinstance(attempt, Exception):
            raise attempt
    pruned, keep, attributes = attempt
    verification = verify_surgery(original=module, pruned=pruned, keep=keep, inputs=inputs, tolerance=tolerance)
    return PruneOutcome(pruned, keep, attributes, verification, left_intact)


def _attempt(module: nn.Module, graph: ChannelGraph, removed: Mapping[int, Sequence[int]], inputs: torch.Tensor):
    keep = graph.keep_indices(removed)
    attributes = graph.attribute_updates(removed, module)
    pruned = copy.deepcopy(module)
    try:
        apply_keep(pruned, keep, attributes=attributes)
        with torch.inference_mode():
            pruned.eval()(inputs[:2])
    except Exception as error:  # the model's own code can fail in any way on new shapes
        return error
    return pruned, keep, attributes


def _without_breaking_groups(
    module: nn.Module, graph: ChannelGraph, removed: Mapping[int, Sequence[int]], inputs: torch.Tensor
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    accepted: dict[int, Sequence[int]] = {}
    broken: dict[int, str] = {}
    for group_id, indices in removed.items():
        attempt = _attempt(module, graph, {**accepted, group_id: indices}, inputs)
        if isinstance(attempt, Exception):
            message = (str(attempt).strip().splitlines() or [type(attempt).__name__])[0][:160]
            broken[group_id] = f"the model's forward fails once pruned ({type(attempt).__name__}: {message})"
        else:
            accepted[group_id] = indices
    return accepted, broken
