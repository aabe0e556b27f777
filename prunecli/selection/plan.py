"""Turn per-channel scores into a plan: which channels of which group are removed."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from prunecli.config.schema import SelectStep
from prunecli.graph.channel_graph import ChannelGraph, PruningGroup


@dataclass
class PrunePlan:
    """Channels removed per group id (sorted indices), plus groups skipped and why."""

    removed: dict[int, np.ndarray]
    skipped: dict[int, str] = field(default_factory=dict)

    def leave_intact(self, reasons: Mapping[int, str]) -> None:
        """Take groups out of the plan, recording why they stay whole."""
        for group_id, reason in reasons.items():
            self.removed.pop(group_id, None)
            self.skipped[group_id] = reason

    def kept(self, group: PruningGroup) -> int:
        """How many channels of ``group`` survive."""
        return group.channels - len(self.removed.get(group.id, ()))


def select_channels(graph: ChannelGraph, scores: Mapping[int, np.ndarray], step: SelectStep) -> PrunePlan:
    """Remove the ``step.ratio`` lowest-scored fraction of channels, per group or globally.

    ``local``: each group loses ``floor(ratio * channels)``. ``global``: scores are divided by
    their group's mean and the lowest ``ratio`` of all channels go. Either way each group then
    keeps a multiple of ``round_to`` (rounded up) and at least ``min_channels``.
    """
    skipped = {g.id: "ignored by select.ignore" for g in graph.prunable_groups if _ignored(g, step.ignore)}
    groups = [g for g in graph.prunable_groups if g.id not in skipped and g.id in scores]
    counts = _local_counts(groups, step.ratio) if step.scope == "local" else _global_counts(groups, scores, step.ratio)
    removed = {}
    for group in groups:
        count = _adjust(group.channels, counts[group.id], round_to=step.round_to, min_channels=step.min_channels)
        if count:
            order = np.argsort(scores[group.id], kind="stable")
            removed[group.id] = np.sort(order[:count])
    return PrunePlan(removed=removed, skipped=skipped)


def _ignored(group: PruningGroup, patterns: Sequence[str]) -> bool:
    modules = {member.module for member in group.producers}
    return any(fnmatch.fnmatchcase(m, p) or m.startswith(p + ".") for m in modules for p in patterns)


def _local_counts(groups: Sequence[PruningGroup], ratio: float) -> dict[int, int]:
    return {group.id: math.floor(ratio * group.channels) for group in groups}


def _global_counts(groups: Sequence[PruningGroup], scores: Mapping[int, np.ndarray], ratio: float) -> dict[int, int]:
    if not groups:
        return {}
    normalized = [scores[g.id] / (scores[g.id].mean() if scores[g.id].mean() > 0 else 1.0) for g in groups]
    owners = np.concatenate([np.full(g.channels, i) for i, g in enumerate(groups)])
    order = np.argsort(np.concatenate(normalized), kind="stable")
    lowest = owners[order[: math.floor(ratio * len(owners))]]
    return {g.id: int((lowest == i).sum()) for i, g in enumerate(groups)}


def _adjust(channels: int, count: int, *, round_to: int, min_channels: int) -> int:
    keep = channels - count
    keep = min(channels, round_to * math.ceil(keep / round_to)) if keep else 0
    keep = max(keep, min(min_channels, channels), 1)
    return channels - keep
