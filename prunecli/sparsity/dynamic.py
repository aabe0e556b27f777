"""Dynamic magnitude masks: recomputed every round of a repeat, so that a weight masked earlier can come back.

A plain sparsify step combines its masks with the earlier ones: a weight zeroed once stays zero.
A ``dynamic: true`` step (magnitude, ``ratio``) recomputes the masks of its layers every time it
runs, at that round's ratio, from the magnitudes of *all* the weights it considers:

- a kept weight counts with its current value (fine-tuning has moved it);
- a masked weight counts with the value it had when it was masked, remembered on the
  ``SparsityState`` (in the model it is zero, and fine-tuning re-zeroes it after every step).

This is how Zhu & Gupta's gradual pruning keeps its masked weights: outside the model, with a new
threshold over all of them at each pruning step. A masked weight whose remembered |w| now ranks
above a kept weight's current |w| comes back with its remembered value, and the kept one goes::

    layer weights |w|: kept a=0.9, b=0.2 (shrank while fine-tuning); masked c (remembered 0.5)
    ratio 1/3 -> c comes back at 0.5, b is masked and remembered at 0.2

Between rounds the masks hold exactly as plain masks do, so every measured round is as sparse as
scheduled. A dynamic step owns the masks of the layers it covers: it replaces any earlier mask there.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from prunecli.sparsity.masks import magnitude_masks
from prunecli.sparsity.state import SparsityState


def recompute_masks(
    sparsity: SparsityState, weights: Mapping[str, torch.Tensor], *, ratio: float, scope: str
) -> dict[str, torch.Tensor]:
    """Fresh keep-masks for ``weights`` at ``ratio``; revived weights get their remembered values back.

    The layers' old masks are dropped from ``sparsity`` (the caller adds the new ones and zeroes the
    weights), and the values of the weights masked now are remembered for the next round.
    """
    dense = {name: _dense_values(sparsity, name, weight) for name, weight in weights.items()}
    masks = magnitude_masks(dense, ratio=ratio, scope=scope)
    with torch.no_grad():
        for name, weight in weights.items():
            weight.copy_(dense[name])  # revived weights return; the caller zeroes the newly masked ones
            sparsity.masks.pop(name, None)
            sparsity.remembered[name] = (dense[name] * ~masks[name]).detach().cpu()
    return masks


def _dense_values(sparsity: SparsityState, name: str, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` with its masked positions at their remembered values (as it is, when it has no mask)."""
    current = weight.detach().clone()
    mask, remembered = sparsity.masks.get(name), sparsity.remembered.get(name)
    if mask is None or remembered is None:
        return current
    return torch.where(mask.to(current.device), current, remembered.to(current.device, current.dtype))
