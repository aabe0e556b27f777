"""Movement sparsity (Sanh et al. 2020): zero the weights that training moves toward zero.

The variant implemented is *hard movement pruning, one-shot after accumulation*:

1. train the whole model (dense, every weight updated; masks of earlier sparsify steps held) for
   ``epochs`` epochs with cross-entropy, Adam and a cosine schedule;
2. after every backward pass, add ``-w * dL/dw`` to each considered weight's score, so that after
   T steps ``S = -sum_t w_t * g_t``. A weight whose gradient has the sign of the weight is pushed
   toward zero by gradient descent and scores negative; one pushed away from zero scores positive;
3. zero the ``floor(ratio * n)`` lowest scores (per layer, or over all layers with ``scope:
   global``); the masks are fixed from then on (later fine-tuning keeps the zeros).

Unlike the paper there is no cubic schedule of the kept fraction and no straight-through top-k in
the forward pass during the accumulation: the ranking is made once, from the dense run's scores.

    scores = movement_scores(module, weights, training=MovementTraining(train=split, epochs=1))
    keep = lowest_out(scores, ratio=0.5, scope="local")   # bool keep-masks, as magnitude_masks gives
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from prunecli.config.schema import FinetuneStep
from prunecli.data.dataset import Split
from prunecli.finetune import TrainingHooks, finetune

if TYPE_CHECKING:
    from prunecli.config.schema import SparsifyStep
    from prunecli.pipeline.state import RunState

DEFAULT_EPOCHS = 1
DEFAULT_LR = 1e-3


@dataclass(frozen=True)
class MovementTraining:
    """The training run that accumulates the scores: ``epochs`` over ``train`` with Adam at ``lr``, cosine."""

    train: Split
    epochs: int = DEFAULT_EPOCHS
    lr: float = DEFAULT_LR
    batch_size: int = 64
    seed: int = 0
    device: str = "cpu"


def movement_scores(
    module: torch.nn.Module,
    weights: Mapping[str, torch.Tensor],
    *,
    training: MovementTraining,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Train ``module`` in place; return ``-sum_t w * dL/dw`` per entry of each of ``weights`` (float64, CPU).

    ``weights`` are parameters of ``module`` by name; ``masks`` (earlier sparsify steps) stay applied.
    """
    scores = {name: torch.zeros(weight.shape, dtype=torch.float64) for name, weight in weights.items()}

    def accumulate() -> None:
        with torch.no_grad():
            for name, weight in weights.items():
                if weight.grad is not None:
                    scores[name] -= (weight * weight.grad).to("cpu", torch.float64)

    step = FinetuneStep(kind="finetune", epochs=training.epochs, lr=training.lr, optimizer="adam", schedule="cosine")
    finetune(
        module, train=training.train, step=step, batch_size=training.batch_size, device=training.device,
        seed=training.seed, masks=masks, hooks=TrainingHooks(after_backward=accumulate),
    )  # fmt: skip
    return scores


def movement_masks(
    module: torch.nn.Module,
    weights: Mapping[str, torch.Tensor],
    *,
    ratio: float,
    scope: str,
    training: MovementTraining,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Train accumulating movement scores, then keep-masks without the lowest ``ratio`` of the scores.

    Weights already masked by ``masks`` rank lowest, so ``ratio`` is the fraction zero afterwards.
    """
    scores = movement_scores(module, weights, training=training, masks=masks)
    for name, mask in (masks or {}).items():
        if name in scores:
            scores[name][~mask.cpu()] = -torch.inf
    return lowest_out(scores, ratio=ratio, scope=scope)


def lowest_out(scores: Mapping[str, torch.Tensor], *, ratio: float, scope: str) -> dict[str, torch.Tensor]:
    """Keep-masks False at the ``floor(ratio * n)`` lowest scores, per tensor or over all (ties by position)."""
    if scope == "local":
        return {name: _keep_highest(score.flatten(), ratio).view_as(score) for name, score in scores.items()}
    keep = _keep_highest(torch.cat([score.flatten() for score in scores.values()]), ratio)
    pieces = keep.split([score.numel() for score in scores.values()])
    return {name: piece.view_as(score) for (name, score), piece in zip(scores.items(), pieces)}


def _keep_highest(flat: torch.Tensor, ratio: float) -> torch.Tensor:
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    count = int(ratio * flat.numel())
    if count > 0:
        keep[torch.argsort(flat, stable=True)[:count]] = False
    return keep


def step_movement_masks(
    state: RunState, step: SparsifyStep, weights: Mapping[str, torch.Tensor], *, module: torch.nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """A ``sparsify: {method: movement}`` step's keep-masks on a run; trains ``module`` (default ``state.module``)
    in place."""
    training = MovementTraining(
        train=state.data.train, epochs=step.epochs or DEFAULT_EPOCHS, lr=step.lr or DEFAULT_LR,
        batch_size=state.pipeline.data.batch_size, seed=state.seed, device=state.device,
    )  # fmt: skip
    masks = state.sparsity.masks if state.sparsity else None
    module = module if module is not None else state.module
    return movement_masks(module, weights, ratio=step.ratio, scope=step.scope, training=training, masks=masks)
