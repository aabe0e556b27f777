"""Magnitude criteria: the L1 or L2 norm of every parameter entry a channel's removal would remove.

For a group, channel c's importance is the norm over all its members' slices: conv rows,
BatchNorm entries, consumer columns, ... (a group-lasso norm). Buffers do not count.
"""

from __future__ import annotations

import numpy as np
import torch

from prunecli.criteria.registry import register
from prunecli.graph.channel_graph import ChannelGraph, PruningGroup

Scores = dict[int, np.ndarray]


def group_norm(group: PruningGroup, tensors: dict[str, torch.Tensor], *, power: int) -> np.ndarray:
    """(sum over members of sum |w|^power over each channel's slices) ** (1 / power)."""
    total = np.zeros(group.channels, dtype=np.float64)
    for member in group.members:
        if not member.is_parameter or member.tensor not in tensors:
            continue
        tensor = tensors[member.tensor].detach().to(torch.float64).cpu()
        per_position = tensor.abs().pow(power).movedim(member.dim, 0).reshape(tensor.shape[member.dim], -1).sum(1)
        valid = member.positions >= 0
        np.add.at(total, member.positions[valid], per_position.numpy()[valid])
    return total ** (1.0 / power)


def _scores(graph: ChannelGraph, module: torch.nn.Module, power: int) -> Scores:
    tensors = dict(module.named_parameters())
    return {group.id: group_norm(group, tensors, power=power) for group in graph.prunable_groups}


@register("l1")
def l1(graph: ChannelGraph, *, module: torch.nn.Module, seed: int) -> Scores:
    """Sum of absolute values of each channel's parameters."""
    return _scores(graph, module, 1)


@register("l2")
def l2(graph: ChannelGraph, *, module: torch.nn.Module, seed: int) -> Scores:
    """Euclidean norm of each channel's parameters."""
    return _scores(graph, module, 2)
