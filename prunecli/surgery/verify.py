"""The surgery invariant: the pruned model's outputs equal the original's with the removed channels zeroed."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from prunecli.model_io.outputs import output_tensors
from prunecli.surgery.norms import KeptChannelNorms
from prunecli.surgery.torch_surgery import Keep, zero_removed


@dataclass(frozen=True)
class Verification:
    """Largest absolute difference between pruned and masked-original outputs, and the verdict."""

    max_abs_diff: float
    tolerance: float
    passed: bool

    def to_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance, "passed": self.passed}


def masked_copy(module: nn.Module, keep: Keep) -> nn.Module:
    """A copy of ``module`` whose to-be-removed parameter and buffer positions are zero."""
    masked = copy.deepcopy(module)
    zero_removed(masked, keep)
    return masked


def _kept_by_identity(module: nn.Module, keep: Keep) -> dict[int, dict[int, torch.Tensor]]:
    """Kept indices per dimension of each pruned tensor, keyed by the tensor's identity."""
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return {
        id(tensors[name]): {
            int(dim): torch.as_tensor(list(indices), dtype=torch.long, device=tensors[name].device)
            for dim, indices in dims.items()
        }
        for name, dims in keep.items()
        if name in tensors
    }


def verify_surgery(
    *, original: nn.Module, pruned: nn.Module, keep: Keep, inputs: torch.Tensor, tolerance: float
) -> Verification:
    """Compare ``pruned(inputs)`` with the masked original; tolerance scales with the output magnitude."""
    masked = masked_copy(original, keep).eval()
    was_training = pruned.training
    pruned.eval()
    with torch.inference_mode():
        with KeptChannelNorms(_kept_by_identity(masked, keep)):
            expected = output_tensors(masked(inputs))
        actual = output_tensors(pruned(inputs))
    pruned.train(was_training)
    if len(expected) != len(actual) or any(e.shape != a.shape for e, a in zip(expected, actual)):
        return Verification(float("inf"), tolerance, False)
    diff = max((float((e - a).abs().max()) for e, a in zip(expected, actual) if e.numel()), default=0.0)
    scale = max((float(e.abs().max()) for e in expected if e.numel()), default=1.0)
    return Verification(diff, tolerance, diff <= tolerance * max(1.0, scale))
