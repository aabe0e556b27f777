"""Which weights a sparsify step touches, and the step itself as a function of a module.

By default: the ``weight`` of every Conv1d/2d/3d and Linear module, except the model's output
layer (the last of them in ``named_modules`` order; ``include_output: true`` keeps it in) and
modules named by an ``ignore`` glob (or a parent module name, as in ``select.ignore``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch

from prunecli.sparsity.masks import magnitude_masks, n_m_fits, n_m_mask

_KINDS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def candidate_weights(
    module: torch.nn.Module, *, ignore: Sequence[str] = (), include_output: bool = False
) -> dict[str, torch.Tensor]:
    """Parameter name -> weight of the conv and linear layers a step considers, in model order."""
    layers = [(name, m) for name, m in module.named_modules() if isinstance(m, _KINDS) and m.weight is not None]
    if layers and not include_output:
        layers = layers[:-1]
    return {f"{name}.weight": m.weight for name, m in layers if not _ignored(name, ignore)}


def _ignored(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


def step_masks(
    weights: dict[str, torch.Tensor],
    *,
    ratio: float | None,
    threshold: float | None,
    pattern: tuple[int, int] | None,
    scope: str,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep-masks of one sparsify step, and the weights it left alone (name -> why)."""
    if pattern is None:
        return magnitude_masks(weights, ratio=ratio, threshold=threshold, scope=scope), {}
    n, m = pattern
    masks, skipped = {}, {}
    for name, weight in weights.items():
        if n_m_fits(weight, m):
            masks[name] = n_m_mask(weight, n=n, m=m)
        else:
            size = weight.numel() // weight.shape[0]
            skipped[name] = f"input size {size} is not a multiple of {m}"
    return masks, skipped
