"""The repeat step: the same steps for several rounds, each round pruning to its scheduled value.

Round ``k`` runs the block's steps with every scheduled option (``config.rounds.scheduled_values``)
set to its round-``k`` value from ``selection.schedule``. Within a round:

- ``score`` rebuilds the channel graph, because the previous round's prune replaced the module;
- ``select`` counts ratios against the unpruned model's channels and targets against its MACs or
  params, so round ``k`` of ``target: {macs: 0.3}`` lands on its scheduled share of the original;
- ``prune`` verifies the surgery against the round's own input model, every round;
- stages are named ``round<k>.<stage>`` (``round2.pruned``, ``round2.finetuned``). Only a round's
  last stage keeps a snapshot for the latency measurement at the end of the run: the stages of
  one round share their structure, so one timing per round is enough and many rounds stay cheap.

``state.rounds`` gets one record per round (its stages, scheduled values, verification, and the
fraction of masked weights for sparsify rounds); ``round_rows`` joins them with the measured
stages for the report. After the last round the report's group table describes the whole block:
the unpruned model's groups, with the channels the rounds left in all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from prunecli.config.rounds import ScheduledValue, scheduled_values
from prunecli.config.schema import RepeatStep
from prunecli.graph.channel_graph import ChannelGraph, PruningGroup
from prunecli.pipeline.state import RunState
from prunecli.selection.plan import PrunePlan
from prunecli.selection.schedule import scheduled_kept, scheduled_ratios


def round_values(repeat: RepeatStep) -> dict[int, tuple[ScheduledValue, list[float]]]:
    """Per inner step index: the option the schedule drives and its value in each round."""
    values = {}
    for value in scheduled_values(repeat.steps):
        schedule = scheduled_kept if value.kept else scheduled_ratios
        values[value.index] = (value, schedule(repeat.schedule, rounds=repeat.rounds, final=value.final,
                                               start=repeat.start))  # fmt: skip
    return values


def step_at_round(step: Any, value: ScheduledValue | None, number: float | None) -> Any:
    """``step`` with its scheduled option set to ``number`` (``step`` itself when nothing is scheduled)."""
    if value is None or number is None:
        return step
    if value.option == "ratio":
        return step.model_copy(update={"ratio": number})
    metric = value.option.removeprefix("target.")
    return step.model_copy(update={"target": step.target.model_copy(update={metric: number})})


def run_rounds(state: RunState, repeat: RepeatStep) -> None:
    """Run every round of ``repeat`` on ``state``; record them, then describe the whole block in the plan."""
    values = round_values(repeat)
    first: tuple[ChannelGraph, Any] | None = None  # round 1's graph and scores: the unpruned model's
    prunes = any(inner.kind == "prune" for inner in repeat.steps)
    selections: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}  # group name -> why a round left it whole
    first_file = state.loaded.onnx_path  # ONNX input: the file round 1's graph is built from (None for torch)
    for number in range(1, repeat.rounds + 1):
        masks_before = _mask_copies(state)
        scored = _run_round(state, repeat, number=number, values=values)
        first = first or scored
        if prunes:
            selections.append(state.plan.selection)
            skipped.update({state.graph.group(group_id).name: why for group_id, why in state.plan.skipped.items()})
        record = _round_record(state, f"round{number}", number=number, values=values, masks_before=masks_before)
        record["verification"] = state.verification.to_dict() if prunes else None
        state.rounds.append(record)
    if first is not None and prunes:
        selection = {"mode": "repeat", "schedule": repeat.schedule, "rounds": selections}
        _describe_whole_block(state, first=first, skipped=skipped, selection=selection)
        state.onnx_graph_of = first_file


def _run_round(
    state: RunState, repeat: RepeatStep, *, number: int, values: Mapping[int, tuple[ScheduledValue, list[float]]]
) -> tuple[ChannelGraph, Any] | None:  # fmt: skip
    """Run round ``number``'s steps, stages named ``round<number>.<stage>``; the graph and scores of its first score."""
    from prunecli.pipeline.steps import run_step

    scored = None
    state.stage_prefix = f"round{number}"
    try:
        for index, inner in enumerate(repeat.steps):
            value, numbers = values.get(index, (None, None))
            run_step(state, step_at_round(inner, value, numbers[number - 1] if numbers else None))
            if inner.kind == "score" and scored is None:
                scored = (state.graph, state.scores)
    finally:
        state.stage_prefix = None
    return scored


def _round_record(
    state: RunState, prefix: str, *, number: int, values: Mapping[int, tuple[ScheduledValue, list[float]]],
    masks_before: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The round's stages (only the last keeps its snapshot), scheduled values and masks."""
    stages = [name for name in state.stages if name.startswith(prefix + ".")]
    for name in stages[:-1]:
        state.snapshots.pop(name, None)
    record: dict[str, Any] = {
        "round": number,
        "stage": stages[-1] if stages else None,
        "stages": stages,
        "scheduled": {f"steps.{value.index}.{value.option}": round(numbers[number - 1], 6)
                      for value, numbers in values.values()},  # fmt: skip
    }
    if state.sparsity is not None and state.sparsity.masks:
        record.update(_mask_figures(state.sparsity.masks, masks_before))
    return record


def _mask_copies(state: RunState) -> dict[str, Any]:
    return {name: mask.clone() for name, mask in state.sparsity.masks.items()} if state.sparsity else {}


def _mask_figures(masks: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    """Fraction of the masked layers' weights zeroed, and how many weights came back this round."""
    zeros = sum(int((~mask).sum()) for mask in masks.values())
    total = sum(mask.numel() for mask in masks.values())
    revived = sum(int((~before[name] & mask).sum()) for name, mask in masks.items() if name in before)
    return {"weights_zero": round(zeros / total, 6) if total else 0.0, "weights_revived": revived}


def _describe_whole_block(
    state: RunState, *, first: tuple[ChannelGraph, Any], skipped: Mapping[str, str], selection: dict[str, Any]
) -> None:
    """Point the report's group table at the unpruned model: its graph, round 1's scores, all channels removed.

    The rounds' graphs name their groups after the same modules, so a group left whole in a round
    is found again by name.
    """
    graph, scores = first
    removed = {group.id: gone for group in graph.prunable_groups if (gone := removed_channels(group, state.keep)).size}
    state.graph, state.graph_of, state.scores = graph, None, scores
    state.plan = PrunePlan(
        removed=removed, skipped={group.id: skipped[group.name] for group in graph.groups if group.name in skipped},
        selection=selection,
    )  # fmt: skip


def removed_channels(group: PruningGroup, keep: Mapping[str, Mapping[int, Any]]) -> np.ndarray:
    """The channels of ``group`` (a group of the unpruned model) that ``keep`` no longer holds, sorted.

    ``keep`` gives the kept positions of each pruned tensor dimension relative to the unpruned
    model (every round composed); a member's ``positions`` map them back to the group's channels.
    """
    for member in group.members:
        kept_positions = keep.get(member.tensor, {}).get(member.dim)
        if kept_positions is None:
            continue
        channels = member.positions[np.asarray(kept_positions, dtype=np.int64)]
        kept = np.unique(channels[channels >= 0])
        return np.setdiff1d(np.arange(group.channels), kept)
    return np.zeros(0, dtype=np.int64)
