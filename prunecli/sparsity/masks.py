"""Keep-masks for weights (True = the weight stays), as pure functions of the weights.

    masks = magnitude_masks({"fc1.weight": w1, "fc2.weight": w2}, ratio=0.9, scope="global")
    keep = n_m_mask(conv.weight, n=2, m=4)  # groups of 4 along each row of weight.reshape(out, -1)

Masks are bool tensors shaped like their weights, on the weights' device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

Scope = str  # "local" (per layer) or "global" (over all layers together)


def magnitude_masks(
    weights: Mapping[str, torch.Tensor],
    *,
    ratio: float | None = None,
    threshold: float | None = None,
    scope: Scope = "local",
) -> dict[str, torch.Tensor]:
    """Keep-masks zeroing the smallest |w|: ``ratio`` of the weights (per layer or over all), or |w| < ``threshold``.

    With ``ratio``, exactly ``floor(ratio * count)`` weights go (ties broken by position), so
    ``ratio=0`` keeps everything. ``threshold`` is absolute and ignores ``scope``.
    """
    if threshold is not None:
        return {name: w.detach().abs() >= threshold for name, w in weights.items()}
    ratio = ratio or 0.0
    if scope == "local":
        return {name: _smallest_out(w.detach().abs().flatten(), ratio).view_as(w) for name, w in weights.items()}
    flat = torch.cat([w.detach().abs().flatten().cpu() for w in weights.values()]) if weights else torch.zeros(0)
    keep = _smallest_out(flat, ratio)
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = keep[start : start + w.numel()].view_as(w).to(w.device)
        start += w.numel()
    return masks


def _smallest_out(magnitudes: torch.Tensor, ratio: float) -> torch.Tensor:
    """A flat keep-mask that is False at the ``floor(ratio * n)`` smallest entries."""
    count = int(ratio * magnitudes.numel())
    keep = torch.ones(magnitudes.numel(), dtype=torch.bool, device=magnitudes.device)
    if count > 0:
        keep[torch.argsort(magnitudes, stable=True)[:count]] = False
    return keep


def n_m_mask(weight: torch.Tensor, *, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest |w| of every ``m`` consecutive weights along the input dimension.

    The input dimension is a row of ``weight.reshape(out, -1)`` (for convs: input channels with
    the kernel); its size must be a multiple of ``m`` (see ``n_m_fits``).
    """
    rows = weight.detach().abs().reshape(weight.shape[0], -1)
    groups = rows.reshape(rows.shape[0], -1, m)
    top = torch.topk(groups, n, dim=-1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return keep.reshape(weight.shape)


def n_m_fits(weight: torch.Tensor, m: int) -> bool:
    """Whether the input size of ``weight`` (a row of ``weight.reshape(out, -1)``) is a multiple of ``m``."""
    return weight.dim() >= 2 and (weight.numel() // weight.shape[0]) % m == 0


def apply_masks(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero ``params[name]`` in place wherever ``masks[name]`` is False."""
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].device, params[name].dtype))


def bind_masks(module: torch.nn.Module, masks: Mapping[str, torch.Tensor] | None) -> Callable[[], None]:
    """A function that re-zeroes ``module``'s masked weights (a no-op without masks); masks moved once."""
    if not masks:
        return lambda: None
    params = dict(module.named_parameters())
    bound = {name: mask.to(params[name].device, params[name].dtype) for name, mask in masks.items()}

    def reapply() -> None:
        with torch.no_grad():
            for name, mask in bound.items():
                params[name].mul_(mask)

    return reapply
