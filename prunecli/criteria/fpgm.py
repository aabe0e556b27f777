"""FPGM (He et al. 2019, "Filter Pruning via Geometric Median"): redundancy by distance.

For every producer of a group (the conv/linear rows that make the channels), channel c's score
is the sum of Euclidean distances from its filter to the other filters of that producer: a
filter near the geometric median is well replaced by the others, so a small score means
redundant. A duplicated filter scores lowest among filters that are otherwise alike. The
producers' scores combine with ``reduction``.
"""

from __future__ import annotations

import numpy as np
import torch

from prunecli.criteria.inputs import Scores, ScoringInputs, reduce_members
from prunecli.criteria.registry import register
from prunecli.graph.channel_graph import Member, PruningGroup


def distance_sums(filters: np.ndarray) -> np.ndarray:
    """(channels, features) -> (channels,): sum of Euclidean distances from each row to all rows."""
    squared = (filters**2).sum(1)
    gram = filters @ filters.T
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * gram, 0.0))
    return distances.sum(1)


def channel_filters(member: Member, weight: torch.Tensor, channels: int) -> np.ndarray | None:
    """(channels, features): the member's slices per group channel, None if channels have unequal slices."""
    rows = weight.detach().to(torch.float64).cpu().movedim(member.dim, 0)
    rows = rows.reshape(rows.shape[0], -1).numpy()
    valid = np.flatnonzero(member.positions >= 0)
    counts = np.bincount(member.positions[valid], minlength=channels)
    if counts.min() == 0 or (counts != counts[0]).any():
        return None
    order = valid[np.argsort(member.positions[valid], kind="stable")]
    return rows[order].reshape(channels, -1)


def group_fpgm(group: PruningGroup, tensors: dict[str, torch.Tensor], reduction: str) -> np.ndarray | None:
    """The reduced distance sums over the group's producers; None when no producer has filters."""
    scores = []
    for member in group.producers:
        if member.tensor in tensors:
            filters = channel_filters(member, tensors[member.tensor], group.channels)
            if filters is not None:
                scores.append(distance_sums(filters))
    return reduce_members(scores, reduction) if scores else None


@register("fpgm")
def fpgm(inputs: ScoringInputs) -> Scores:
    """Sum of distances from each channel's producer filter(s) to the group's other filters."""
    tensors = inputs.parameter_tensors()
    scores = {group.id: group_fpgm(group, tensors, inputs.reduction) for group in inputs.graph.prunable_groups}
    return {group_id: score for group_id, score in scores.items() if score is not None}
