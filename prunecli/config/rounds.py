"""What a ``repeat`` block may hold, and which of its options the schedule drives.

A round is a small pipeline of its own: the channel graph is rebuilt after every prune, so a
``select`` needs a ``score`` before it in the same round and a ``prune`` after it. The schedule
drives one value per scheduled step (``ScheduledValue``): a select's ``ratio`` (fraction
removed) or ``target`` (fraction of the original MACs or params kept), a sparsify's ``ratio``.
The checks raise ``ValueError`` with the fix; pydantic adds the location (``steps.2``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

REPEATABLE = ("score", "select", "prune", "finetune", "sparsify", "evaluate")
_NEEDS = {"select": "score", "prune": "select"}


@dataclass(frozen=True)
class ScheduledValue:
    """One option a schedule drives: inner step ``index``, its ``option`` (``ratio``, ``target.macs``), final value.

    ``kept`` says whether the value is a fraction kept (targets) rather than removed (ratios).
    """

    index: int
    option: str
    final: float

    @property
    def kept(self) -> bool:
        return self.option.startswith("target.")


def scheduled_values(steps: Sequence[Any]) -> list[ScheduledValue]:
    """The options a schedule drives in a round's ``steps``, in step order."""
    values = []
    for index, step in enumerate(steps):
        if step.kind == "select" and step.target is not None:
            metric, value = step.target.metric
            values.append(ScheduledValue(index, f"target.{metric}", value))
        elif step.kind in ("select", "sparsify") and step.ratio is not None:
            values.append(ScheduledValue(index, "ratio", step.ratio))
    return values


def check_repeat(repeat: Any) -> None:
    """Refuse, with the fix, a repeat block whose rounds cannot run or whose schedule has nothing to drive."""
    kinds = [step.kind for step in repeat.steps]
    for index, kind in enumerate(kinds):
        if kind not in REPEATABLE:
            raise ValueError(f"steps.{index}: {_not_repeatable(kind)}")
    if "prune" not in kinds and "sparsify" not in kinds:
        raise ValueError("a repeat needs a prune or a sparsify step: otherwise no round removes anything")
    if "prune" in kinds and "sparsify" in kinds:
        raise ValueError(
            "a repeat can't hold both prune and sparsify (the next round's prune would drop the masks); "
            "put the sparsify step after the repeat"
        )
    if kinds.count("prune") > 1:
        raise ValueError("a round holds one prune step; remove the others (the rounds repeat it)")
    _check_order(kinds)
    for index, step in enumerate(repeat.steps):
        _check_schedulable(index, step)
    _check_start(repeat)


def check_dynamic_in_repeat(steps: Sequence[Any]) -> None:
    """Refuse ``sparsify: dynamic`` outside a repeat (top-level ``steps``): run once, it is a plain sparsify."""
    for index, step in enumerate(steps):
        if step.kind == "sparsify" and step.dynamic:
            raise ValueError(
                f"steps.{index}: dynamic recomputes masks each round of a repeat; "
                "move this sparsify step into a repeat block or remove dynamic"
            )


def _not_repeatable(kind: str) -> str:
    if kind == "repeat":
        return "a repeat can't hold another repeat; give one repeat the steps and rounds of both"
    if kind == "quantize":
        return "quantize can't run inside a repeat; put it after the repeat, as the last step"
    return f"'{kind}' can't run inside a repeat; allowed: {', '.join(REPEATABLE)}"


def _check_order(kinds: Sequence[str]) -> None:
    for index, kind in enumerate(kinds):
        needs = _NEEDS.get(kind)
        if needs and needs not in kinds[:index]:
            raise ValueError(
                f"steps.{index}: inside a repeat, '{kind}' needs a '{needs}' step before it in the same round "
                "(the channel graph is rebuilt after every prune)"
            )
        if kind == "select" and "prune" not in kinds[index:]:
            raise ValueError(f"steps.{index}: a select inside a repeat needs a prune after it in the same round")


def _check_schedulable(index: int, step: Any) -> None:
    if step.kind == "select":
        if step.mode not in ("ratio", "target"):
            raise ValueError(
                f"steps.{index}: inside a repeat, select needs ratio or target (the value the last round reaches); "
                f"{step.mode} has no value to schedule"
            )
        if step.target is not None and step.target.latency_ms is not None:
            raise ValueError(
                f"steps.{index}: a latency_ms target can't be scheduled over rounds (latency is measured, not "
                "interpolated); use target: {macs: ...} inside the repeat"
            )
    if step.kind == "sparsify" and step.ratio is None:
        raise ValueError(f"steps.{index}: inside a repeat, sparsify needs ratio (the value the last round reaches)")


def _check_start(repeat: Any) -> None:
    if repeat.start is None:
        return
    values = scheduled_values(repeat.steps)
    if len(values) != 1:
        where = ", ".join(f"steps.{value.index}.{value.option}" for value in values)
        raise ValueError(f"start gives one value, but this repeat schedules {len(values)} ({where}); remove start")
    value = values[0]
    low, high = (value.final, 1.0) if value.kept else (0.0, value.final)
    if not low <= repeat.start <= high or (value.kept and repeat.start == 0):
        unit = "fraction kept" if value.kept else "fraction removed"
        raise ValueError(
            f"start {repeat.start:g} is outside [{low:g}, {high:g}]: it is round 1's {unit} "
            f"(steps.{value.index}.{value.option} is the last round's, {value.final:g})"
        )
