"""Norms over pruned channels in the masked original: normalise over the kept channels only.

Zeroing a removed channel is not enough for LayerNorm, GroupNorm or RMSNorm: the zeros
would still count in the mean and variance, which the pruned model no longer sees. Inside
``KeptChannelNorms`` a norm whose weight lost channels normalises the kept channels alone
and outputs zero on the removed ones: exactly what the pruned model computes, so the
pruned == masked invariant stays an exact check.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def _layer_norm(bound: dict[str, Any], kept: torch.Tensor) -> torch.Tensor:
    x, weight, bias = bound["input"], bound["weight"], bound.get("bias")
    out = torch.zeros_like(x)
    out[..., kept] = F.layer_norm(
        x[..., kept], (len(kept),), weight[kept], None if bias is None else bias[kept], bound.get("eps", 1e-5)
    )
    return out


def _group_norm(bound: dict[str, Any], kept: torch.Tensor) -> torch.Tensor:
    x, weight, bias = bound["input"], bound["weight"], bound.get("bias")
    out = torch.zeros_like(x)
    out[:, kept] = F.group_norm(
        x[:, kept], bound["num_groups"], weight[kept], None if bias is None else bias[kept], bound.get("eps", 1e-5)
    )
    return out


def _rms_norm(bound: dict[str, Any], kept: torch.Tensor) -> torch.Tensor:
    x, weight = bound["input"], bound["weight"]
    out = torch.zeros_like(x)
    out[..., kept] = F.rms_norm(x[..., kept], (len(kept),), weight[kept], bound.get("eps"))
    return out


_KEPT_NORMS: dict[Callable[..., Any], Callable[[dict[str, Any], torch.Tensor], torch.Tensor]] = {
    F.layer_norm: _layer_norm,
    F.group_norm: _group_norm,
    F.rms_norm: _rms_norm,
}


class KeptChannelNorms(TorchFunctionMode):
    """While active, norms whose weight is in ``kept`` (by identity) use only the kept channels."""

    def __init__(self, kept: Mapping[int, torch.Tensor]) -> None:
        super().__init__()
        self.kept = dict(kept)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        replacement = _KEPT_NORMS.get(func)
        if replacement is not None:
            bound = inspect.signature(func).bind(*args, **kwargs)
            bound.apply_defaults()
            weight = bound.arguments.get("weight")
            if weight is not None and id(weight) in self.kept:
                return replacement(bound.arguments, self.kept[id(weight)])
        return func(*args, **kwargs)
