"""Turn per-channel scores into a plan: which channels of which group are removed.

Every mode first decides how many channels each group loses, then the same rules finish the
plan: a group matched by ``overrides`` loses its override's ratio instead, every other group at
most ``max_ratio`` of its channels, then each group keeps a multiple of ``round_to`` (rounded up)
and at least ``min_channels``; the lowest-scored channels go. ``PrunePlan.choices`` records,
per group, the threshold used and which limit changed the count, for the report.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prunecli.config.schema import SelectStep
from prunecli.errors import InternalError
from prunecli.graph.channel_graph import ChannelGraph, PruningGroup
from prunecli.selection.targets import bisect_target, ranked_owners, uniform_owners
from prunecli.selection.thresholds import threshold_counts

Removed = Mapping[int, np.ndarray]
Measure = Callable[[Removed], float]


@dataclass(frozen=True)
class GroupChoice:
    """How one group's count was decided: its score cutoff (threshold modes), its override, its limit.

    ``limit`` is ``"max_ratio"`` when the mode wanted more than ``max_ratio`` of the group, and
    ``"min_channels"`` when it would have left fewer than ``min_channels`` (e.g. a threshold above
    every score of the group).
    """

    threshold: float | None = None
    override: float | None = None
    limit: str | None = None


@dataclass
class PrunePlan:
    """Channels removed per group id (sorted indices), groups skipped and why, and how it was chosen.

    ``selection`` summarises the mode for the report, e.g. ``{"mode": "target", "metric": "macs",
    "requested": 0.5, "achieved": 0.497, "measurements": 12}``.
    """

    removed: dict[int, np.ndarray]
    skipped: dict[int, str] = field(default_factory=dict)
    choices: dict[int, GroupChoice] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)

    def leave_intact(self, reasons: Mapping[int, str]) -> None:
        """Take groups out of the plan, recording why they stay whole."""
        for group_id, reason in reasons.items():
            self.removed.pop(group_id, None)
            self.skipped[group_id] = reason

    def kept(self, group: PruningGroup) -> int:
        """How many channels of ``group`` survive."""
        return group.channels - len(self.removed.get(group.id, ()))


@dataclass(frozen=True)
class _Inputs:
    """What every mode shares: the groups in play, their scores, the step, and the fixed (overridden) ratios."""

    groups: list[PruningGroup]
    scores: Mapping[int, np.ndarray]
    step: SelectStep
    overrides: dict[int, float]
    skipped: dict[int, str]
    original: Mapping[str, int] = field(default_factory=dict)  # group name -> channels before any prune

    @property
    def free(self) -> list[PruningGroup]:
        return [g for g in self.groups if g.id not in self.overrides]

    def before(self, group: PruningGroup) -> int:
        """``group``'s channels in the unpruned model (its current count when unknown)."""
        return max(self.original.get(group.name, group.channels), group.channels)

    def count(self, group: PruningGroup, ratio: float) -> int:
        """Channels of ``group`` to remove now for ``floor(ratio * before)`` to be gone in all."""
        before = self.before(group)
        return max(math.floor(ratio * before) - (before - group.channels), 0)


def select_channels(
    graph: ChannelGraph,
    scores: Mapping[int, np.ndarray],
    step: SelectStep,
    *,
    measure: Measure | None = None,
    group_ratios: Mapping[str, float] | None = None,
    original_channels: Mapping[str, int] | None = None,
) -> PrunePlan:
    """The plan of ``step``'s mode (ratio, threshold or target) over the graph's prunable groups.

    ``ratio``, ``local``: each group loses ``floor(ratio * channels)``; ``global``: scores are
    divided by their group's mean and the lowest ``ratio`` of all channels go. ``threshold``: see
    ``prunecli.selection.thresholds``. ``target``: ``measure(removed)`` gives the figure of a
    candidate plan (fraction of MACs or params kept, or latency in ms) and the number of ranked
    channels removed is bisected to meet it (``prunecli.selection.targets``): ranked over all
    groups (``global``) or taking the same fraction of every group (``local``).
    ``sensitivity``: ``group_ratios`` gives each group's ratio by group name (from a sweep).
    Ratios (``ratio``, ``overrides``, ``max_ratio``, sensitivity) count against ``original_channels``
    (group name -> channels before any prune, e.g. rounds of a repeat): a group of 32 channels cut
    to 24 loses 8 more at ``ratio: 0.5``. Without it, against the current counts.
    """
    skipped = {g.id: "ignored by select.ignore" for g in graph.prunable_groups if _matches(g, step.ignore)}
    groups = [g for g in graph.prunable_groups if g.id not in skipped and g.id in scores]
    overrides = {g.id: ratio for g in groups if (ratio := _override(g, step.overrides)) is not None}
    inputs = _Inputs(
        groups=groups, scores=scores, step=step, overrides=overrides, skipped=skipped,
        original=original_channels or {},
    )  # fmt: skip
    if step.mode == "target":
        return _select_target(inputs, measure)
    if step.mode == "sensitivity":
        return _select_by_group_ratios(inputs, group_ratios or {})
    free = inputs.free
    if step.mode == "threshold":
        form = ("absolute", float(step.threshold)) if isinstance(step.threshold, (int, float)) else step.threshold.form
        counts, cutoffs = threshold_counts([scores[g.id] for g in free], form, scope=step.scope)
        plan = _finish(inputs, dict(zip([g.id for g in free], counts)), dict(zip([g.id for g in free], cutoffs)))
        plan.selection = {"mode": "threshold", "form": form[0], "value": form[1], "scope": step.scope}
        return plan
    counts = _local_counts(inputs, step.ratio) if step.scope == "local" else _global_counts(inputs, step.ratio)
    plan = _finish(inputs, counts, {})
    plan.selection = {"mode": "ratio", "ratio": step.ratio, "scope": step.scope}
    return plan


def _select_target(inputs: _Inputs, measure: Measure | None) -> PrunePlan:
    if measure is None:
        raise InternalError("a select target needs a measure of candidate plans")
    free = inputs.free
    if inputs.step.scope == "global":
        owners = ranked_owners([inputs.scores[g.id] for g in free])
    else:
        owners = uniform_owners([g.channels for g in free])

    def plan_for(count: int) -> PrunePlan:
        removed = np.bincount(owners[:count], minlength=len(free))
        return _finish(inputs, {g.id: int(n) for g, n in zip(free, removed)}, {})

    metric, requested = inputs.step.target.metric
    search = bisect_target(lambda n: measure(plan_for(n).removed), requested=requested, high=len(owners))
    plan = plan_for(search.count)
    plan.selection = {
        "mode": "target", "metric": metric, "requested": requested, "achieved": search.achieved,
        "measurements": search.measurements, "ranked_channels_removed": search.count, "scope": inputs.step.scope,
    }  # fmt: skip
    return plan


def _select_by_group_ratios(inputs: _Inputs, group_ratios: Mapping[str, float]) -> PrunePlan:
    counts = {g.id: inputs.count(g, group_ratios.get(g.name, 0.0)) for g in inputs.free}
    plan = _finish(inputs, counts, {})
    chosen = {g.name: group_ratios.get(g.name, 0.0) for g in inputs.free}
    plan.selection = {"mode": "sensitivity", "max_drop": inputs.step.max_drop, "group_ratios": chosen}
    return plan


def _finish(inputs: _Inputs, counts: Mapping[int, int], cutoffs: Mapping[int, float]) -> PrunePlan:
    """Apply overrides, max_ratio, round_to and min_channels; the lowest-scored channels go."""
    step = inputs.step
    removed, choices = {}, {}
    for group in inputs.groups:
        override = inputs.overrides.get(group.id)
        wanted = inputs.count(group, override) if override is not None else counts.get(group.id, 0)
        cap = group.channels if override is not None else inputs.count(group, step.max_ratio)
        limit = "max_ratio" if wanted > cap else None
        wanted = min(wanted, cap)
        if group.channels - wanted < min(step.min_channels, group.channels) or wanted >= group.channels:
            limit = "min_channels"
        count = _adjust(group.channels, wanted, round_to=step.round_to, min_channels=step.min_channels)
        choices[group.id] = GroupChoice(threshold=cutoffs.get(group.id), override=override, limit=limit)
        if count:
            order = np.argsort(inputs.scores[group.id], kind="stable")
            removed[group.id] = np.sort(order[:count])
    return PrunePlan(removed=removed, skipped=dict(inputs.skipped), choices=choices)


def _matches(group: PruningGroup, patterns: Sequence[str]) -> bool:
    """Whether a producer module of ``group`` is named by one of ``patterns`` (a glob, or a parent module)."""
    modules = {member.module for member in group.producers} | set(group.modules)
    return any(fnmatch.fnmatchcase(m, p) or m.startswith(p + ".") for m in modules for p in patterns)


def _override(group: PruningGroup, overrides: Mapping[str, float]) -> float | None:
    """The ratio of the first ``overrides`` glob that names a producer of ``group``, or None."""
    return next((ratio for pattern, ratio in overrides.items() if _matches(group, [pattern])), None)


def _local_counts(inputs: _Inputs, ratio: float) -> dict[int, int]:
    return {group.id: inputs.count(group, ratio) for group in inputs.free}


def _global_counts(inputs: _Inputs, ratio: float) -> dict[int, int]:
    """The lowest-ranked channels go until ``floor(ratio * all channels before any prune)`` are gone."""
    groups = inputs.free
    owners = ranked_owners([inputs.scores[g.id] for g in groups])
    before = sum(inputs.before(g) for g in groups)
    count = max(math.floor(ratio * before) - (before - len(owners)), 0)
    lowest = np.bincount(owners[:count], minlength=len(groups))
    return {g.id: int(n) for g, n in zip(groups, lowest)}


def _adjust(channels: int, count: int, *, round_to: int, min_channels: int) -> int:
    keep = channels - count
    keep = min(channels, round_to * math.ceil(keep / round_to)) if keep else 0
    keep = max(keep, min(min_channels, channels), 1)
    return channels - keep
