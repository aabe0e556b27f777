"""``hybrid``: a weighted sum of other criteria, each normalised per group by rank first.

``criterion: {hybrid: {l2: 0.5, taylor: 0.5}}``: in every group, each criterion's scores are
replaced by their ranks scaled to [0, 1] (0 = least important channel, 1 = most; ties share
their mean rank), then summed with the weights. Ranks make criteria of different units and
scales comparable; a group gets a score only when every listed criterion scores it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from prunecli.criteria.inputs import Scores, ScoringInputs
from prunecli.criteria.registry import get_criterion


def rank_normalised(scores: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1], ties averaged: [3.0, 1.0, 3.0, 2.0] -> [0.833, 0, 0.833, 0.333]."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(len(scores), dtype=np.float64)
    _, inverse = np.unique(scores, return_inverse=True)
    ranks = np.bincount(inverse, weights=ranks)[inverse] / np.bincount(inverse)[inverse]
    return ranks / max(len(scores) - 1, 1)


def hybrid(weights: Mapping[str, float], inputs: ScoringInputs) -> Scores:
    """The weighted sum of the named criteria's rank-normalised scores, per group."""
    parts = {name: get_criterion(name)(inputs) for name in weights}
    common = set.intersection(*(set(scores) for scores in parts.values()))
    return {
        group_id: sum(weight * rank_normalised(parts[name][group_id]) for name, weight in weights.items())
        for group_id in sorted(common)
    }
