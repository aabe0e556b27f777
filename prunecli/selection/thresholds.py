"""Score cutoffs: pure functions from scores and a threshold form to the score below which channels go.

A form is ``(name, value)``: ``("absolute", 0.3)``, ``("relative", 0.1)``, ``("std", 1.0)`` or
``("percentile", 30)``. Channels scored strictly below the cutoff are removed::

    scores = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    local_cutoff(scores, ("relative", 0.25))    # 2.25 (a quarter of the max): removes 0, 1, 2
    local_cutoff(scores, ("percentile", 30))    # 2.7: removes 0, 1, 2
    count_below(scores, 2.25)                   # 3
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prunecli.errors import InternalError

Form = tuple[str, float]


def local_cutoff(scores: np.ndarray, form: Form) -> float:
    """The cutoff of one group's ``scores``: relative is a fraction of the group's max score."""
    name, value = form
    if name == "relative":
        return value * float(scores.max(initial=0.0))
    return _cutoff(scores, form)


def global_cutoff(normalized: np.ndarray, form: Form) -> float:
    """The cutoff over all groups' normalized scores (each divided by its group's mean, see ``normalize``).

    relative is a fraction of the mean of ``normalized``; an absolute number is returned as it is
    (it compares with raw scores, see ``select_by_threshold``).
    """
    name, value = form
    if name == "relative":
        return value * float(normalized.mean()) if normalized.size else 0.0
    return _cutoff(normalized, form)


def normalize(scores: np.ndarray) -> tuple[np.ndarray, float]:
    """``scores`` divided by their mean (by 1 when the mean is not positive), and the divisor."""
    mean = float(scores.mean()) if scores.size else 0.0
    divisor = mean if mean > 0 else 1.0
    return scores / divisor, divisor


def count_below(scores: np.ndarray, cutoff: float) -> int:
    """How many of ``scores`` are strictly below ``cutoff``: the channels a threshold removes."""
    return int((scores < cutoff).sum())


def threshold_counts(score_sets: Sequence[np.ndarray], form: Form, *, scope: str) -> tuple[list[int], list[float]]:
    """Channels removed per group and each group's cutoff in its own score units.

    ``local``: each group's cutoff from its own scores. ``global``: one cutoff over all groups'
    normalized scores, which is ``cutoff * mean`` in a group's units. An absolute threshold is a
    raw score in either scope.
    """
    if form[0] == "absolute":
        cutoffs = [float(form[1])] * len(score_sets)
    elif scope == "local":
        cutoffs = [local_cutoff(scores, form) for scores in score_sets]
    else:
        normalized = [normalize(scores) for scores in score_sets]
        pooled = np.concatenate([values for values, _ in normalized]) if normalized else np.zeros(0)
        shared = global_cutoff(pooled, form)
        cutoffs = [shared * divisor for _, divisor in normalized]
    return [count_below(s, c) for s, c in zip(score_sets, cutoffs)], cutoffs


def _cutoff(scores: np.ndarray, form: Form) -> float:
    name, value = form
    if scores.size == 0:
        return 0.0
    if name == "std":
        return float(scores.mean() - value * scores.std())
    if name == "percentile":
        return float(np.percentile(scores, value))
    if name == "absolute":
        return float(value)
    raise InternalError(f"unknown threshold form {name!r}")
