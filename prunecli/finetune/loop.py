"""The fine-tuning loop: a few epochs of supervised training, optionally distilled from a teacher.

    losses = finetune(pruned, train=data.train, step=FinetuneStep(kind="finetune", epochs=3),
                      batch_size=64, device="cpu", seed=0, teacher=original)
    # [0.84, 0.41, 0.33]: mean training loss per epoch

Runs are reproducible: the same seed gives the same batches (``batches(..., seed=seed + epoch)``)
and the same weights. ``TrainingHooks`` let a caller add a penalty to every batch's loss (sparsity
regularisation) or read the gradients after backward (movement scores) without another loop.
Under torchrun the same call trains with DistributedDataParallel, each rank on its slice of every
global batch (``prunecli.finetune.sharding``); a single process runs as it always did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prunecli.config.schema import FinetuneStep
from prunecli.data.dataset import Split, batches
from prunecli.errors import InputError
from prunecli.finetune.distill import distillation_loss
from prunecli.finetune.optim import make_optimizer, make_scheduler
from prunecli.finetune.sharding import DataParallel, data_parallel
from prunecli.model_io.outputs import first_tensor
from prunecli.sparsity.masks import bind_masks

Advance = Callable[[float], None]


@dataclass(frozen=True)
class TrainingHooks:
    """Extension points of the training loop; both are called once per batch.

    ``penalty()`` returns a differentiable scalar added to the batch's loss (the reported losses
    include it), e.g. ``lambda: 1e-4 * sum(bn.weight.abs().sum() for bn in norms)``.
    ``after_backward()`` runs after ``loss.backward()`` and before the optimizer step, with the
    gradients in ``parameter.grad``, e.g. to accumulate ``-weight * grad`` (movement scores).
    """

    penalty: Callable[[], torch.Tensor] | None = None
    after_backward: Callable[[], None] | None = None


NO_HOOKS = TrainingHooks()


def finetune(
    module: torch.nn.Module,
    *,
    train: Split,
    step: FinetuneStep,
    batch_size: int,
    device: str,
    seed: int,
    teacher: torch.nn.Module | None = None,
    progress: bool = False,
    masks: Mapping[str, torch.Tensor] | None = None,
    hooks: TrainingHooks = NO_HOOKS,
) -> list[float]:
    """Train ``module`` in place (moved to ``device``); returns the mean training loss of each epoch.

    With ``step.distill`` and a ``teacher`` the loss is the distillation blend (see ``distill``);
    otherwise cross-entropy. ``step.epochs == 0`` changes nothing. The module ends in eval mode.
    ``masks`` (parameter name -> bool keep-mask, from sparsify steps) re-zero weights after every optimizer step.
    ``hooks`` add a penalty to the loss and/or run after every backward pass (see ``TrainingHooks``).
    """
    if step.epochs == 0:
        return []
    torch.manual_seed(seed)
    module.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()  # under torchrun every rank runs its own teacher on its slice
    parallel = data_parallel(module, masks=masks, device=device, batch_size=batch_size)  # DDP under torchrun
    batches_per_epoch = parallel.batches_per_epoch(len(train), batch_size)
    optimizer = make_optimizer(module.parameters(), step)
    reapply_masks = bind_masks(module, masks)
    scheduler = make_scheduler(optimizer, step, batches_per_epoch=batches_per_epoch)
    epoch_losses: list[float] = []
    try:
        with _progress_bar(enabled=progress, total=step.epochs * batches_per_epoch) as advance:
            for epoch in range(step.epochs):
                epoch_batches = parallel.shard(batches(train, batch_size=batch_size, shuffle=True, seed=seed + epoch))
                mean_loss = _train_epoch(
                    parallel, epoch_batches, optimizer=optimizer, scheduler=scheduler, step=step, teacher=teacher,
                    device=device, advance=advance, reapply_masks=reapply_masks, hooks=hooks,
                )
                epoch_losses.append(_checked_mean(mean_loss, epoch=epoch))
    finally:
        module.eval()
    return epoch_losses


def _train_epoch(
    parallel: DataParallel,
    epoch_batches: Iterable[tuple[torch.Tensor, torch.Tensor, float]],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    step: FinetuneStep,
    teacher: torch.nn.Module | None,
    device: str,
    advance: Advance,
    reapply_masks: Callable[[], None] = lambda: None,
    hooks: TrainingHooks = NO_HOOKS,
) -> float:
    """One pass over ``epoch_batches`` (inputs, labels, loss weight); returns the mean loss per sample."""
    loss_sum, samples = 0.0, 0
    for inputs, labels, weight in epoch_batches:
        inputs, labels = inputs.to(device), labels.to(device)
        loss = _batch_loss(parallel.model, inputs, labels, step=step, teacher=teacher)
        if hooks.penalty is not None:
            loss = loss + hooks.penalty()
        optimizer.zero_grad(set_to_none=True)
        (loss * weight if weight != 1 else loss).backward()  # weight: this rank's share of the global batch
        if hooks.after_backward is not None:
            hooks.after_backward()
        optimizer.step()
        reapply_masks()  # weights zeroed by a sparsify step stay zero
        if scheduler is not None:
            scheduler.step()
        batch_loss = loss.item()
        loss_sum, samples = loss_sum + batch_loss * len(labels), samples + len(labels)
        advance(batch_loss)
    return parallel.mean(loss_sum, samples)


def _batch_loss(
    module: torch.nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    step: FinetuneStep,
    teacher: torch.nn.Module | None,
) -> torch.Tensor:
    logits = first_tensor(module(inputs))
    if step.distill is None or teacher is None:
        return F.cross_entropy(logits, labels)
    with torch.no_grad():
        teacher_logits = first_tensor(teacher(inputs))
    distill = step.distill
    return distillation_loss(logits, teacher_logits, labels, alpha=distill.alpha, temperature=distill.temperature)


def _checked_mean(mean_loss: float, *, epoch: int) -> float:
    if not math.isfinite(mean_loss):
        raise InputError(f"the fine-tuning loss became {mean_loss} in epoch {epoch + 1}; lower finetune.lr")
    return mean_loss


@contextmanager
def _progress_bar(*, enabled: bool, total: int) -> Iterator[Advance]:
    """A rich progress bar on stderr when ``enabled``; yields ``advance(loss)`` (a no-op when not)."""
    if not enabled:
        yield lambda loss: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("fine-tuning", total=total)
        yield lambda loss: bar.update(task, advance=1, description=f"fine-tuning (loss {loss:.4f})")
