"""Reach a target (MACs, params or latency kept) by bisection over how many globally ranked channels go.

The search is pure: it knows only a ``measure(n)`` callable that prunes the ``n`` lowest-ranked
channels (see ``plan.select_channels``) and returns the figure to compare with the target,
e.g. the fraction of the original MACs kept. The figure must not grow as ``n`` grows (noise in a
latency measurement may break this a little; the search still ends)::

    search = bisect_target(lambda n: 1 - n / 100, requested=0.5, high=100)
    search.count, search.achieved, search.measurements   # 50, 0.5, 9
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TargetSearch:
    """The chosen count of channels removed, its measured figure, and how many candidates were measured."""

    count: int
    achieved: float
    measurements: int


def bisect_target(measure: Callable[[int], float], *, requested: float, high: int) -> TargetSearch:
    """The ``n`` in ``[0, high]`` whose ``measure(n)`` is closest to ``requested``.

    Bisection finds the smallest ``n`` with ``measure(n) <= requested``; of it and ``n - 1``
    (the last one above) the closer wins. When even ``high`` stays above, ``high`` is chosen.
    """
    measured: dict[int, float] = {}

    def at(n: int) -> float:
        if n not in measured:
            measured[n] = float(measure(n))
        return measured[n]

    low, top = 0, high
    if at(low) <= requested:
        return TargetSearch(0, at(0), len(measured))
    if at(top) > requested:
        return TargetSearch(top, at(top), len(measured))
    while top - low > 1:  # invariant: at(low) > requested >= at(top)
        middle = (low + top) // 2
        if at(middle) > requested:
            low = middle
        else:
            top = middle
    best = min((low, top), key=lambda n: (abs(at(n) - requested), n))
    return TargetSearch(best, at(best), len(measured))


def ranked_owners(score_sets: list[np.ndarray]) -> np.ndarray:
    """Group positions of all channels, lowest normalized score first (each group's scores over their mean).

    ``np.bincount(owners[:n], minlength=len(score_sets))`` is then how many channels each group
    loses when the ``n`` lowest-ranked channels go (the same ranking as ``scope: global``).
    """
    if not score_sets:
        return np.zeros(0, dtype=np.int64)
    normalized = [s / (s.mean() if s.mean() > 0 else 1.0) for s in score_sets]
    owners = np.concatenate([np.full(len(s), i) for i, s in enumerate(score_sets)])
    return owners[np.argsort(np.concatenate(normalized), kind="stable")]


def uniform_owners(sizes: list[int]) -> np.ndarray:
    """Group positions in the order that keeps every group's removed fraction as equal as possible.

    The ``k``-th channel of a group of ``c`` comes at ``(k + 1) / c``, so the first ``n`` entries take
    about the same fraction of every group (``scope: local``): one channel at a time, not one ratio
    step for all groups at once, so that a target can be met closely.
    """
    if not sizes:
        return np.zeros(0, dtype=np.int64)
    owners = np.concatenate([np.full(size, i) for i, size in enumerate(sizes)])
    fractions = np.concatenate([(np.arange(size) + 1) / size for size in sizes])
    return owners[np.argsort(fractions, kind="stable")]
