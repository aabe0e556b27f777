"""Fine-tuning split across torchrun's ranks with DistributedDataParallel, equal to one process's.

``data.batch_size`` stays the global batch: every epoch walks the same seeded permutation as a
single-process run (``batches(..., seed=seed + epoch)``), and each global batch is cut into
``world_size`` consecutive slices, one per rank::

    parallel = data_parallel(module, masks=masks, device="cpu", batch_size=64)   # rank 1 of 2
    for inputs, labels, weight in parallel.shard(batches(train, batch_size=64, shuffle=True, seed=0)):
        loss = cross_entropy(parallel.model(inputs), labels)   # samples 32..63 of each global batch
        (loss * weight).backward()                             # DDP averages the gradients over ranks

``weight = rank's samples * world_size / global batch's samples`` makes DDP's average of the
ranks' gradients the gradient of the global batch's mean loss even when the last batch does not
split evenly, so a 2-process run takes the same steps as a 1-process run (up to BatchNorm, below,
and float summation order). A last global batch with fewer samples than ranks is skipped by every rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch

from prunecli.distributed import (
    World, check_structure, control_device, current_world, per_rank_batch_size, structure_fingerprint,
)  # fmt: skip
from prunecli.model_io.outputs import first_tensor

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class DataParallel:
    """One fine-tuning run's share of the work: ``model`` is what to call (DDP-wrapped under torchrun).

    In a single-process run ``model`` is the module itself, ``shard`` passes batches through with
    weight 1 and ``mean`` is the local mean: the loop runs exactly as it always did.
    """

    world: World
    model: torch.nn.Module

    def shard(self, epoch_batches: Iterable[Batch]) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        """This rank's slice of each global batch, with its loss weight (see the module's docstring)."""
        size, rank = self.world.size, self.world.rank
        for inputs, labels in epoch_batches:
            count = len(labels)
            if count < size:
                continue  # too few samples left to give every rank one: skipped on every rank alike
            start, end = rank * count // size, (rank + 1) * count // size
            yield inputs[start:end], labels[start:end], (end - start) * size / count

    def batches_per_epoch(self, samples: int, batch_size: int) -> int:
        """Optimizer steps per epoch: the global batches ``shard`` yields."""
        return samples // batch_size + (1 if samples % batch_size >= self.world.size else 0)

    def mean(self, loss_sum: float, samples: int) -> float:
        """The mean loss per sample over every rank's samples (all-reduced under torchrun)."""
        if not self.world.distributed:
            return loss_sum / samples
        import torch.distributed as dist

        totals = torch.tensor([loss_sum, float(samples)], dtype=torch.float64, device=control_device())
        dist.all_reduce(totals)
        return float(totals[0] / totals[1])


def data_parallel(
    module: torch.nn.Module, *, masks: Mapping[str, torch.Tensor] | None, device: str, batch_size: int
) -> DataParallel:
    """Prepare ``module`` (already on ``device``, in train mode) for fine-tuning in the current world.

    Under torchrun: checks that ``batch_size`` splits evenly over the ranks and that every rank
    holds the same pruned structure (``DistributedMismatchError`` otherwise), then wraps ``module``
    in DistributedDataParallel. The wrapper trains ``module``'s own parameters in place.
    """
    world = current_world()
    if not world.distributed:
        return DataParallel(world=world, model=module)
    per_rank_batch_size(batch_size, world)
    check_structure(world, structure_fingerprint(module, masks), where="before fine-tuning")
    from torch.nn.parallel import DistributedDataParallel

    # BatchNorm: plain DDP, not SyncBatchNorm. Each rank normalises with its own slice's statistics
    # (batch_size / world_size samples) and the running statistics are broadcast from rank 0 before
    # every forward (DDP's default), so all ranks hold rank 0's and the saved model is rank 0's.
    # SyncBatchNorm would match one process more closely, but it runs on CUDA only (not gloo/CPU),
    # adds a collective per BN layer per forward, and would change the module types we save.
    # The loss reads the first output only (``first_tensor``): DDP wraps a view of the model that returns
    # just that, and static_graph lets it skip, every step alike, the parameters only other outputs use
    # (an auxiliary head), which would otherwise never get the gradients DDP waits for.
    device_ids = [torch.cuda.current_device()] if device.startswith("cuda") else None  # cuda:LOCAL_RANK
    wrapped = DistributedDataParallel(_FirstOutput(module), device_ids=device_ids, static_graph=True)
    return DataParallel(world=world, model=wrapped)


class _FirstOutput(torch.nn.Module):
    """``module`` returning only its first output tensor, the logits the loss is computed on."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return first_tensor(self.module(inputs))
