"""Pruning schedules: how much a ``repeat`` block has pruned by the end of each round.

A schedule runs over the *kept* fraction ``k`` of the unpruned model (its channels, MACs, params
or weights), from a first round's value to the final one. ``N`` rounds; round ``i`` (1-based) sits
at position ``p_i = i / N`` when it starts from the unpruned model (``k_0 = 1``, the natural
start: every round removes something), or at ``p_i = (i - 1) / (N - 1)`` when ``start`` gives
round 1's own value::

    linear     k_i = k_0 + (k_N - k_0) * p_i
    agp        k_i = k_N + (k_0 - k_N) * (1 - p_i) ** 3      (Zhu & Gupta 2017: big steps first)
    geometric  k_i = k_0 * (k_N / k_0) ** p_i                (each round keeps the same share of the last)

A ``ratio`` (fraction removed) is ``1 - k``; for linear and agp the formulas are the same on the
fraction removed. Final ratio 0.5 over 4 rounds::

    scheduled_ratios("linear", rounds=4, final=0.5)      # [0.125, 0.25, 0.375, 0.5]
    scheduled_ratios("agp", rounds=4, final=0.5)         # [0.2891, 0.4375, 0.4922, 0.5]
    scheduled_ratios("geometric", rounds=4, final=0.5)   # [0.1591, 0.2929, 0.4054, 0.5]
    scheduled_kept("agp", rounds=2, final=0.3, start=0.6)  # [0.6, 0.3]: MACs kept, round 1 given
"""

from __future__ import annotations

from collections.abc import Callable

from prunecli.errors import InternalError

SCHEDULES = ("linear", "agp", "geometric")

_KEPT_AT: dict[str, Callable[[float, float, float], float]] = {
    "linear": lambda first, final, p: first + (final - first) * p,
    "agp": lambda first, final, p: final + (first - final) * (1.0 - p) ** 3,
    "geometric": lambda first, final, p: first * (final / first) ** p,
}


def scheduled_kept(schedule: str, *, rounds: int, final: float, start: float | None = None) -> list[float]:
    """The kept fraction each of ``rounds`` rounds reaches; the last is exactly ``final``.

    ``start`` is round 1's kept fraction; without it the schedule starts from the unpruned model
    (kept 1.0, before round 1). Kept fractions must be in (0, 1].
    """
    if schedule not in _KEPT_AT:
        raise InternalError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if rounds < 1 or not 0 < final <= 1 or (start is not None and not 0 < start <= 1):
        raise InternalError(f"schedule out of range: rounds={rounds}, final={final}, start={start}")
    first = 1.0 if start is None else start
    if start is None:
        positions = [index / rounds for index in range(1, rounds + 1)]
    else:
        positions = [index / (rounds - 1) for index in range(rounds)] if rounds > 1 else [1.0]
    values = [_KEPT_AT[schedule](first, final, position) for position in positions]
    if start is not None:
        values[0] = start
    return [*values[:-1], final]


def scheduled_ratios(schedule: str, *, rounds: int, final: float, start: float | None = None) -> list[float]:
    """The fraction removed each round reaches (``1 - kept``); ``start`` is round 1's ratio."""
    kept = scheduled_kept(schedule, rounds=rounds, final=1.0 - final, start=None if start is None else 1.0 - start)
    ratios = [1.0 - value for value in kept]
    if start is not None:
        ratios[0] = start
    return [*ratios[:-1], final]
