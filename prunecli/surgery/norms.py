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


def _standardized_weight(bound: dict[str, Any], kept_inputs: torch.Tensor, kernel: int) -> torch.Tensor:
    """Weight standardisation (``batch_norm(w.reshape(1, out, -1), training=True)``) over kept inputs only."""
    x = bound["input"]  # (1, out, in * kernel)
    positions = (kept_inputs[:, None] * kernel + torch.arange(kernel, device=x.device)).flatten()
    out = torch.zeros_like(x)
    weight, bias = bound.get("weight"), bound.get("bias")
    out[..., positions] = F.batch_norm(x[..., positions], None, None, weight, bias, True, 0.0, bound.get("eps", 1e-5))
    return out


_KEPT_NORMS: dict[Callable[..., Any], Callable[[dict[str, Any], torch.Tensor], torch.Tensor]] = {
    F.layer_norm: _layer_norm,
    F.group_norm: _group_norm,
    F.rms_norm: _rms_norm,
}


class KeptChannelNorms(TorchFunctionMode):
    """While active, statistics over pruned channels use only the kept ones.

    ``kept`` maps a tensor's identity to its kept indices per dimension. Norms whose weight is
    such a tensor normalise over its kept dim-0 channels; a weight standardised as in
    ``StdConv2d`` (batch_norm in training mode on a view of the conv weight) over its kept
    input channels.
    """

    def __init__(self, kept: Mapping[int, Mapping[int, torch.Tensor]]) -> None:
        super().__init__()
        self.kept = dict(kept)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        if func in _KEPT_NORMS or func is F.batch_norm:
            bound = inspect.signature(func).bind(*args, **kwargs)
            bound.apply_defaults()
            replaced = self._replace(func, bound.arguments)
            if replaced is not None:
                return replaced
        return func(*args, **kwargs)

    def _replace(self, func: Callable[..., Any], arguments: dict[str, Any]) -> torch.Tensor | None:
        if func is F.batch_norm:
            source = arguments["input"]._base
            kept = self.kept.get(id(source)) if source is not None and arguments.get("training") else None
            if kept is None or 1 not in kept:
                return None
            return _standardized_weight(arguments, kept[1], kernel=source[0, 0].numel())
        weight = arguments.get("weight")
        kept = self.kept.get(id(weight)) if weight is not None else None
        return _KEPT_NORMS[func](arguments, kept[0]) if kept is not None and 0 in kept else None
