"""Score a graph with a named criterion or a hybrid, and describe the cost for the report."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from prunecli.criteria.hybrid import hybrid
from prunecli.criteria.inputs import Scores, ScoringInputs
from prunecli.criteria.registry import DATA_DRIVEN, get_criterion
from prunecli.errors import InputError

CriterionSpec = str | Mapping[str, float]  # a name, or hybrid weights by name

_UNSCORED_REASON = {
    "bn_scale": "no normalisation follows its producer",
    "fpgm": "no producer filters to compare",
}


@dataclass(frozen=True)
class ScoringResult:
    """Scores per group, groups left without a score (and why), and what scoring cost."""

    criterion: str | dict[str, float]
    scores: Scores
    unscored: dict[int, str]
    batches: int
    seconds: float

    def to_report(self, *, names: Mapping[int, str]) -> dict[str, Any]:
        """The report's ``scoring`` entry for this step."""
        return {
            "criterion": self.criterion if isinstance(self.criterion, str) else {"hybrid": self.criterion},
            "seconds": round(self.seconds, 4),
            "batches": self.batches,
            "groups_scored": len(self.scores),
            "unscored": {names[group_id]: reason for group_id, reason in self.unscored.items()},
        }


def score_groups(criterion: CriterionSpec, inputs: ScoringInputs) -> ScoringResult:
    """Run ``criterion`` (a name, or hybrid weights) on ``inputs``; refuse data-driven criteria without data."""
    names = [criterion] if isinstance(criterion, str) else list(criterion)
    needs_data = [name for name in names if name in DATA_DRIVEN]
    if needs_data and inputs.batches_per_pass == 0:
        raise InputError(f"criterion {needs_data[0]} needs data: set data.train or data.eval")
    start = time.perf_counter()
    if isinstance(criterion, str):
        scores = get_criterion(criterion)(inputs)
    else:
        scores = hybrid(criterion, inputs)
    seconds = time.perf_counter() - start
    reason = _unscored_reason(names)
    unscored = {group.id: reason for group in inputs.graph.prunable_groups if group.id not in scores}
    spec = criterion if isinstance(criterion, str) else dict(criterion)
    return ScoringResult(spec, _as_float(scores), unscored, len(needs_data) * inputs.batches_per_pass, seconds)


def _unscored_reason(names: list[str]) -> str:
    if len(names) > 1:
        return "hybrid: a part of it could not score the group; kept whole"
    return f"{names[0]}: {_UNSCORED_REASON.get(names[0], 'no conv or linear layer to observe')}; kept whole"


def _as_float(scores: Scores) -> Scores:
    return {group_id: np.asarray(values, dtype=np.float64) for group_id, values in scores.items()}
