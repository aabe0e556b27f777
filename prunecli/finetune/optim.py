"""Optimizer and learning-rate schedule for a ``finetune`` step.

Schedules step once per batch: ``cosine`` anneals to 0 over all the run's batches; ``step``
multiplies the rate by ``gamma`` every ``step_size`` epochs; ``none`` keeps it constant.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from prunecli.config.schema import FinetuneStep
from prunecli.errors import InputError


def make_optimizer(parameters: Iterable[torch.nn.Parameter], step: FinetuneStep) -> torch.optim.Optimizer:
    """The optimizer ``step.optimizer`` names, over the parameters that require gradients."""
    trainable = [parameter for parameter in parameters if parameter.requires_grad]
    if not trainable:
        raise InputError("the model has no trainable parameters to fine-tune; remove the finetune step")
    if step.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=step.lr, momentum=step.momentum, weight_decay=step.weight_decay)
    if step.optimizer == "adam":
        return torch.optim.Adam(trainable, lr=step.lr, weight_decay=step.weight_decay)
    return torch.optim.AdamW(trainable, lr=step.lr, weight_decay=step.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, step: FinetuneStep, *, batches_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-batch schedule ``step.schedule`` names; None for a constant rate."""
    if step.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=step.epochs * batches_per_epoch)
    if step.schedule == "step":
        step_batches = step.step_size * batches_per_epoch
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_batches, gamma=step.gamma)
    return None
