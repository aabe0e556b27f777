"""Interleaved timing: compare models in one session of rounds, and say how sure the comparison is.

Timing model A now and model B a minute later compares two different machines whenever another
process comes and goes. So all models are timed together (DESIGN.md 3a):

- every model gets ``warmup`` untimed calls, then a calibration that picks how many calls
  (``loops``) make one timing last at least ``MIN_ROUND_MS``;
- each of ``rounds`` rounds times every model once (``loops`` calls, mean per call), in
  alternating order (A B C, C B A, ...), so a slow moment of the machine hits all of them;
- a speed-up is the median of the per-round ratios (baseline time / model time), with a
  distribution-free 95 % confidence interval for that median from binomial order statistics.
  It is *stable* when there are enough rounds for such an interval and the interval is no wider
  than ``max_interval_width`` times the median.

Example::

    times_ms = time_interleaved({"original": run_a, "pruned": run_b}, warmup=5, rounds=30)
    speedup(times_ms["original"], times_ms["pruned"], max_interval_width=0.2)
    # Speedup(median=1.84, low=1.79, high=1.90, rounds=30, stable=True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MIN_ROUND_MS = 2.0  # one timing lasts at least this long: sub-millisecond models get several calls
MAX_LOOPS = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Speedup:
    """How many times faster a model is than the baseline: median of per-round ratios and its interval."""

    median: float
    low: float
    high: float
    rounds: int
    stable: bool

    def to_dict(self) -> dict[str, float | int | bool]:
        return {"median": self.median, "low": self.low, "high": self.high, "rounds": self.rounds,
                "stable": self.stable}  # fmt: skip


def time_interleaved(
    runs: Mapping[str, Callable[[], object]],
    *,
    warmup: int,
    rounds: int,
    synchronize: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Milliseconds per call of each run, one figure per round, the runs alternating within rounds."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    synchronize()
    loops = {name: _calibrated_loops(run, synchronize) for name, run in runs.items()}
    times_ms: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for index in range(rounds):
        for name in order if index % 2 == 0 else reversed(order):
            times_ms[name].append(_time_loops(runs[name], loops[name], synchronize) / loops[name])
    return times_ms


def speedup(baseline_ms: Sequence[float], candidate_ms: Sequence[float], *, max_interval_width: float) -> Speedup:
    """The candidate's speed-up over the baseline, from per-round times taken in the same rounds."""
    ratios = np.asarray(baseline_ms, dtype=float) / np.asarray(candidate_ms, dtype=float)
    median = float(np.median(ratios))
    low, high, exact = median_interval(ratios)
    stable = exact and (high - low) <= max_interval_width * median
    return Speedup(median=median, low=low, high=high, rounds=len(ratios), stable=stable)


def median_interval(values: Sequence[float]) -> tuple[float, float, bool]:
    """A ``CONFIDENCE`` interval for the median of ``values`` (order statistics), and whether it is one.

    With n values the interval is [x_(k), x_(n-k+1)], k the largest count with
    P(Binomial(n, 1/2) <= k-1) <= (1 - CONFIDENCE) / 2; e.g. n = 30 gives [x_(10), x_(21)].
    With fewer than 6 values no such k exists: the range is returned and flagged as not exact.
    """
    ordered = np.sort(np.asarray(values, dtype=float))
    n = len(ordered)
    tail, cumulative, k = (1.0 - CONFIDENCE) / 2, 0.0, 0
    while k < n and cumulative + math.comb(n, k) / 2**n <= tail:
        cumulative += math.comb(n, k) / 2**n
        k += 1
    if k == 0:
        return float(ordered[0]), float(ordered[-1]), False
    return float(ordered[k - 1]), float(ordered[n - k]), True


def _calibrated_loops(run: Callable[[], object], synchronize: Callable[[], None]) -> int:
    """Calls per timing so that one timing lasts at least MIN_ROUND_MS (from the fastest of 3 calls)."""
    fastest_ms = min(_time_loops(run, 1, synchronize) for _ in range(3))
    return int(min(MAX_LOOPS, max(1, math.ceil(MIN_ROUND_MS / max(fastest_ms, 1e-6)))))


def _time_loops(run: Callable[[], object], loops: int, synchronize: Callable[[], None]) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        run()
    synchronize()
    return (time.perf_counter() - start) * 1000.0
