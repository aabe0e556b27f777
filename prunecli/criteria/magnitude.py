"""Magnitude criteria: the L1 or L2 norm of every parameter entry a channel's removal would remove.

For a group, channel c's importance combines its members' slices: conv rows, BatchNorm entries,
consumer columns, ... With the default ``reduction: sum`` this is the group-lasso norm
``(sum over members of sum |w|^p) ** (1/p)``; ``mean``/``max`` take the mean/max over members of
the per-member sums before the root. Buffers do not count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from prunecli.criteria.inputs import Reduction, Scores, ScoringInputs, reduce_members, to_channels
from prunecli.criteria.registry import register
from prunecli.graph.channel_graph import Member, PruningGroup


def member_sums(
    members: Sequence[Member], channels: int, tensors: dict[str, torch.Tensor], *, power: int
) -> list[np.ndarray]:
    """Per parameter member: sum of |w|^power over each channel's slices (NaN where the member lacks it)."""
    sums = []
    for member in members:
        if not member.is_parameter or member.tensor not in tensors:
            continue
        tensor = tensors[member.tensor].detach().to(torch.float64).cpu()
        per_position = position_sums(tensor, member.dim, power=power)
        sums.append(to_channels(per_position.numpy(), member.positions, channels, within="sum"))
    return sums


def position_sums(tensor: torch.Tensor, dim: int, *, power: int) -> torch.Tensor:
    """Sum of |w|^power over each position of ``dim`` (shape ``(tensor.shape[dim],)``); differentiable."""
    return tensor.abs().pow(power).movedim(dim, 0).reshape(tensor.shape[dim], -1).sum(1)


def group_norm(
    group: PruningGroup, tensors: dict[str, torch.Tensor], *, power: int, reduction: Reduction = "sum"
) -> np.ndarray:
    """The reduced member sums of |w|^power, to the power 1/power (zeros for a group without parameters)."""
    sums = member_sums(group.members, group.channels, tensors, power=power)
    if not sums:
        return np.zeros(group.channels)
    return reduce_members(sums, reduction) ** (1.0 / power)


def _scores(inputs: ScoringInputs, power: int) -> Scores:
    tensors = inputs.parameter_tensors()
    return {
        group.id: group_norm(group, tensors, power=power, reduction=inputs.reduction)
        for group in inputs.graph.prunable_groups
    }


@register("l1")
def l1(inputs: ScoringInputs) -> Scores:
    """Sum of absolute values of each channel's parameters."""
    return _scores(inputs, 1)


@register("l2")
def l2(inputs: ScoringInputs) -> Scores:
    """Euclidean norm of each channel's parameters."""
    return _scores(inputs, 2)
