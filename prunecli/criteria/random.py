"""The random criterion: a seeded baseline that every real criterion should beat."""

from __future__ import annotations

import numpy as np

from prunecli.criteria.inputs import Scores, ScoringInputs
from prunecli.criteria.registry import register


@register("random")
def random(inputs: ScoringInputs) -> Scores:
    """Uniform random scores, reproducible from ``inputs.seed`` (``reduction`` does not apply)."""
    rng = np.random.default_rng(inputs.seed)
    return {group.id: rng.random(group.channels) for group in inputs.graph.prunable_groups}
