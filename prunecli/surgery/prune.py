"""Prune a torch module by a plan, leaving intact the groups whose removal breaks its forward pass."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from prunecli.errors import InternalError
from prunecli.graph.channel_graph import ChannelGraph
from prunecli.graph.fallbacks import FallbackLog
from prunecli.surgery.torch_surgery import Attributes, Keep, apply_keep, shape_mismatch
from prunecli.surgery.verify import Verification, verify_surgery

_REASONS = {
    "forward_fails": "the model's forward fails once pruned ({detail})",
    "surgery_error": "slicing it failed, a prunecli bug ({detail})",
}


@dataclass
class PruneOutcome:
    """The pruned module, what was applied to get it, its verification, and the groups left intact.

    ``left_intact`` maps a group id to why it stays whole; ``fallbacks`` holds one record per
    such group (kind ``forward_fails``, or ``surgery_error`` outside strict mode), see
    ``prunecli.graph.fallbacks``.
    """

    module: nn.Module
    keep: Keep
    attributes: Attributes
    verification: Verification
    left_intact: dict[int, str] = field(default_factory=dict)
    fallbacks: FallbackLog = field(default_factory=FallbackLog)


@dataclass(frozen=True)
class _Failure:
    """Why one surgery attempt gave no working model: its fallback kind and one line of detail."""

    kind: str
    detail: str


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
    each with the error as its reason. Slicing that raises or leaves a parameter or buffer
    with another shape than the plan's is a prunecli bug: an ``InternalError`` in strict mode
    (``prunecli.graph.fallbacks``), a group left intact otherwise. A forward that runs but
    differs from the masked original is not hidden: the verification says so.
    """
    attempt = _attempt(module, graph, removed, inputs)
    fallbacks = FallbackLog()
    left_intact: dict[int, str] = {}
    if isinstance(attempt, _Failure):
        removed, left_intact = _without_breaking_groups(module, graph, removed, inputs, fallbacks)
        attempt = _attempt(module, graph, removed, inputs)
        if isinstance(attempt, _Failure):
            raise InternalError(f"groups that prune alone fail together: {attempt.kind}: {attempt.detail}")
    pruned, keep, attributes = attempt
    verification = verify_surgery(original=module, pruned=pruned, keep=keep, inputs=inputs, tolerance=tolerance)
    return PruneOutcome(pruned, keep, attributes, verification, left_intact, fallbacks)


def _attempt(module: nn.Module, graph: ChannelGraph, removed: Mapping[int, Sequence[int]], inputs: torch.Tensor):
    """The pruned copy with what was applied to it, or the ``_Failure`` that stopped it."""
    keep = graph.keep_indices(removed)
    attributes = graph.attribute_updates(removed, module)
    pruned = copy.deepcopy(module)
    try:
        apply_keep(pruned, keep, attributes=attributes)
    except Exception as error:  # slicing planned positions cannot fail on a correct plan: a bug
        return _Failure("surgery_error", f"slicing raised {_one_line(error)}")
    mismatch = shape_mismatch(module, pruned, keep)
    if mismatch is not None:
        return _Failure("surgery_error", mismatch)
    try:
        with torch.inference_mode():
            pruned.eval()(inputs[:2])
    except Exception as error:  # the model's own code can fail in any way on new shapes
        return _Failure("forward_fails", _one_line(error))
    return pruned, keep, attributes


def _without_breaking_groups(
    module: nn.Module,
    graph: ChannelGraph,
    removed: Mapping[int, Sequence[int]],
    inputs: torch.Tensor,
    fallbacks: FallbackLog,
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Add groups one at a time; those whose removal fails stay whole, each recorded in ``fallbacks``."""
    accepted: dict[int, Sequence[int]] = {}
    broken: dict[int, str] = {}
    for group_id, indices in removed.items():
        attempt = _attempt(module, graph, {**accepted, group_id: indices}, inputs)
        if isinstance(attempt, _Failure):
            fallbacks.record(attempt.kind, f"group {graph.group(group_id).name}", attempt.detail)
            broken[group_id] = _REASONS[attempt.kind].format(detail=attempt.detail)
        else:
            accepted[group_id] = indices
    return accepted, broken


def _one_line(error: Exception) -> str:
    message = (str(error).strip().splitlines() or [""])[0][:160]
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
