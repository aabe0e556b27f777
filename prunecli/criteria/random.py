"""The random criterion: a seeded baseline that every real criterion should beat."""

from __future__ import annotations

import numpy as np
import torch

from prunecli.criteria.registry import register
from prunecli.graph.channel_graph import ChannelGraph


@register("random")
def random(graph: ChannelGraph, *, module: torch.nn.Module, seed: int) -> dict[int, np.ndarray]:
    """Uniform random scores, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return {group.id: rng.random(group.channels) for group in graph.prunable_groups}
