"""Rank candidates by how much the model needs them (lower = removed first), and choose which go.

- ``loss``: the increase of the model's cross-entropy loss (eval mode) when the candidate alone is
  removed, imitated by hooks (``surgery.imitated``), over the scoring batches. It can be negative:
  the model does better without that block on those batches.
- ``relative_norm``: how much the candidate changes what flows through it, without labels: per
  sample ``||f(x)|| / ||x||`` for a branch (``f(x)`` read at its zero point's output, ``x`` at its
  first module's input) and ``||M(x) - x|| / ||x||`` for a block or layer, averaged over samples.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from prunecli.blocks.candidates import BlockCandidate
from prunecli.blocks.surgery import imitated
from prunecli.criteria.inputs import loss_of
from prunecli.data.dataset import Split, batches
from prunecli.errors import InputError

Batch = tuple[torch.Tensor, torch.Tensor]


def scoring_batches(split: Split, *, batch_size: int, count: int, seed: int, device: str) -> list[Batch]:
    """The first ``count`` seeded shuffled batches of ``split``, on ``device`` (kept: every candidate reuses them)."""
    chosen = itertools.islice(batches(split, batch_size=batch_size, shuffle=True, seed=seed), count)
    return [(inputs.to(device), labels.to(device)) for inputs, labels in chosen]


def score_candidates(
    module: nn.Module, candidates: Sequence[BlockCandidate], *, criterion: str, data: list[Batch]
) -> list[float]:
    """One score per candidate by ``criterion`` (``loss`` or ``relative_norm``); the model is left as it was."""
    module.eval()
    with torch.no_grad():
        if criterion == "loss":
            base = _mean_loss(module, data)
            return [_removed_loss(module, candidate, data) - base for candidate in candidates]
        return _relative_norms(module, candidates, data)


def _mean_loss(module: nn.Module, data: list[Batch]) -> float:
    total = sum(float(loss_of(module, inputs, labels)) * len(labels) for inputs, labels in data)
    return total / max(1, sum(len(labels) for _, labels in data))


def _removed_loss(module: nn.Module, candidate: BlockCandidate, data: list[Batch]) -> float:
    with imitated(module, [candidate]):
        return _mean_loss(module, data)


def _relative_norms(module: nn.Module, candidates: Sequence[BlockCandidate], data: list[Batch]) -> list[float]:
    """All candidates' relative norms in one pass per batch: hooks read each one's sites."""
    seen: dict[tuple[str, str], torch.Tensor] = {}
    sums = np.zeros(len(candidates))
    handles = []
    for path in {path for candidate in candidates for path in candidate.sites}:
        handles.append(module.get_submodule(path).register_forward_hook(_reader(path, seen)))
    try:
        for inputs, _ in data:
            module(inputs)
            for index, candidate in enumerate(candidates):
                sums[index] += float(_ratio(candidate, seen).sum())
    finally:
        for handle in handles:
            handle.remove()
    return list(sums / max(1, sum(len(inputs) for inputs, _ in data)))


def _reader(path: str, seen: dict[tuple[str, str], torch.Tensor]):
    def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        seen[(path, "in")], seen[(path, "out")] = args[0], output

    return hook


def _ratio(candidate: BlockCandidate, seen: dict[tuple[str, str], torch.Tensor]) -> torch.Tensor:
    """Per sample: ||f(x)|| / ||x|| (branch) or ||M(x) - x|| / ||x|| (block, layer)."""
    first, last = candidate.sites
    x, out = seen[(first, "in")], seen[(last, "out")]
    change = out if candidate.kind == "branch" else out - x
    return change.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)


def choose(
    candidates: Sequence[BlockCandidate], scores: Sequence[float], *, count: int | None, ratio: float | None
) -> list[int]:
    """Indices of the candidates removed: lowest score first, skipping any that overlaps one already chosen.

    ``count`` removes that many; ``ratio`` removes ``floor(ratio * len(candidates))``. Asking for
    more than there are, or than can go together, is an ``InputError``.
    """
    wanted = count if count is not None else int(float(ratio or 0) * len(candidates))
    if wanted > len(candidates):
        raise InputError(
            f"prune_blocks.count is {wanted} but the model has only {len(candidates)} removable candidate(s) "
            f"(after ignore); lower count to at most {len(candidates)}, or use ratio"
        )
    chosen: list[int] = []
    for index in sorted(range(len(candidates)), key=lambda i: (scores[i], candidates[i].order)):
        if len(chosen) == wanted:
            break
        if not any(candidates[index].overlaps(candidates[other]) for other in chosen):
            chosen.append(index)
    if len(chosen) < wanted:
        raise InputError(
            f"prune_blocks: only {len(chosen)} of the {wanted} requested candidates can be removed together "
            "(the others contain or sit inside chosen ones); lower count or ratio, or drop 'layer' from candidates"
        )
    return sorted(chosen, key=lambda i: candidates[i].order)
