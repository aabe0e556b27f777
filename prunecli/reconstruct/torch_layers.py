"""Reconstruction of a pruned torch model: refit each layer that lost input channels, in forward order.

For each such ``nn.Linear`` / ``nn.Conv2d`` of the pruned model, its inputs are read from the
pruned model (already reconstructed up to it, so earlier layers' errors are compensated) and its
targets are the same layer's outputs in the original model, restricted to the output channels
the layer kept (``keep[name.weight][0]``). ``NormalEquations`` then refits weight and bias::

    result = reconstruct_layers(pruned, original, keep, batches=[x1, x2], ridge=1e-3)
    result.layers[0].error_before, result.layers[0].error_after   # relative output error of that layer
    result.skipped                                                 # {"name": "why it was not refit"}

Layers called more or less than once per forward, other layer types (Conv1d/3d, transposed
convolutions) and convolutions with a non-zero ``padding_mode`` are left as they are, each with
its reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunecli.reconstruct.least_squares import NormalEquations, conv_patches, conv_targets

Keep = Mapping[str, Mapping[Any, Sequence[int]]]


@dataclass(frozen=True)
class LayerFit:
    """One refit layer: its name, type, kept/original input width, calibration rows and output error before/after."""

    name: str
    kind: str
    inputs: str
    rows: int
    error_before: float
    error_after: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "inputs": self.inputs, "rows": self.rows,
                "error_before": self.error_before, "error_after": self.error_after}  # fmt: skip


@dataclass
class Reconstruction:
    """What ``reconstruct_layers`` did: the layers refit (forward order) and the candidates skipped, with why."""

    layers: list[LayerFit] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


class _Captured(Exception):
    """Raised by a hook once it holds what it needs: the rest of the forward is not run."""


def reconstruct_layers(
    pruned: nn.Module, original: nn.Module, keep: Keep, *, batches: Sequence[torch.Tensor], ridge: float
) -> Reconstruction:
    """Refit, in place, every layer of ``pruned`` whose input channels ``keep`` shrank (see module doc)."""
    result = Reconstruction()
    training = pruned.training, original.training
    pruned.eval(), original.eval()
    try:
        for name in _forward_order(pruned, _lost_inputs(pruned, keep), batches[0], result.skipped):
            reason = _unsupported(pruned.get_submodule(name))
            if reason:
                result.skipped[name] = reason
                continue
            result.layers.append(_refit(name, pruned, original, keep, batches=batches, ridge=ridge))
    finally:
        pruned.train(training[0]), original.train(training[1])
    return result


def _lost_inputs(module: nn.Module, keep: Keep) -> list[str]:
    """Names of the modules whose ``weight`` lost positions along dim 1 (its input channels or features)."""
    names = []
    for name, _ in module.named_modules():
        dims = {int(dim) for dim in keep.get(f"{name}.weight", {})}
        if name and 1 in dims:
            names.append(name)
    return names


def _forward_order(module: nn.Module, names: list[str], example: torch.Tensor, skipped: dict[str, str]) -> list[str]:
    """``names`` in the order a forward pass calls them; those not called exactly once go to ``skipped``."""
    calls: list[str] = []
    handles = [
        module.get_submodule(name).register_forward_pre_hook(lambda _m, _a, name=name: calls.append(name))
        for name in names
    ]
    try:
        with torch.inference_mode():
            module(example)
    finally:
        for handle in handles:
            handle.remove()
    for name in names:
        if calls.count(name) != 1:
            skipped[name] = f"called {calls.count(name)} times per forward; only layers called once are refit"
    return [name for name in dict.fromkeys(calls) if name not in skipped]


def _unsupported(layer: nn.Module) -> str | None:
    """Why ``layer`` cannot be refit, or None."""
    if type(layer) not in (nn.Linear, nn.Conv2d):
        return f"{type(layer).__name__} is not refit (only Linear and Conv2d)"
    if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
        return f"padding_mode '{layer.padding_mode}' is not refit (only zeros)"
    return None


def _refit(
    name: str, pruned: nn.Module, original: nn.Module, keep: Keep, *, batches: Sequence[torch.Tensor], ridge: float
) -> LayerFit:
    """Accumulate the layer's normal equations over ``batches``, solve, and write the new weight and bias."""
    layer, reference = pruned.get_submodule(name), original.get_submodule(name)
    kept_outputs = _kept(keep, f"{name}.weight", dim=0, size=reference.weight.shape[0])
    groups = getattr(layer, "groups", 1)
    weight = layer.weight.detach()
    equations = NormalEquations(
        groups=groups, inputs=weight[0].numel(), outputs=weight.shape[0] // groups, bias=layer.bias is not None,
        device=weight.device,
    )  # fmt: skip
    for batch in batches:
        inputs = _capture(pruned, layer, batch, output=False)
        targets = _capture(original, reference, batch, output=True).index_select(1, kept_outputs.to(batch.device))
        equations.add(*_rows(layer, inputs, targets))
    prior = (weight.reshape(groups, -1, weight[0].numel()), _grouped_bias(layer, groups))
    before = equations.relative_error(*prior)
    fit = equations.solve(ridge=ridge, prior=prior)
    with torch.no_grad():
        layer.weight.copy_(fit.weight.reshape(weight.shape).to(weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_(fit.bias.reshape(-1).to(layer.bias.dtype))
    return LayerFit(name, type(layer).__name__, f"{_in_width(layer)}/{_in_width(reference)}", equations.rows,
                    before, fit.error_after)  # fmt: skip


def _capture(module: nn.Module, layer: nn.Module, batch: torch.Tensor, *, output: bool) -> torch.Tensor:
    """``layer``'s first input (or its output) when ``module`` runs on ``batch``; the forward stops there."""
    held: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple, result: Any = None) -> None:
        held.append((result if output else args[0]).detach())
        raise _Captured

    handle = layer.register_forward_hook(hook) if output else layer.register_forward_pre_hook(hook)
    try:
        with torch.inference_mode():
            module(batch)
    except _Captured:
        pass
    finally:
        handle.remove()
    return held[0]


def _rows(layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's inputs and target outputs as least-squares rows: (groups, rows, columns) each."""
    if isinstance(layer, nn.Linear):
        return inputs.reshape(-1, inputs.shape[-1]), targets.reshape(-1, targets.shape[-1])
    patches = conv_patches(
        inputs, kernel_size=layer.kernel_size, stride=layer.stride, padding=_padding(layer),
        dilation=layer.dilation, groups=layer.groups,
    )  # fmt: skip
    return patches, conv_targets(targets, groups=layer.groups)


def _padding(layer: nn.Conv2d) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zeros the convolution adds, its ``'same'`` and ``'valid'`` forms included."""
    if layer.padding == "valid":
        return 0, 0, 0, 0
    if layer.padding == "same":
        total = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
        return total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2
    height, width = layer.padding
    return height, height, width, width


def _kept(keep: Keep, tensor: str, *, dim: int, size: int) -> torch.Tensor:
    """Kept positions of ``tensor`` along ``dim`` (all of them when ``keep`` does not shrink it)."""
    dims = {int(d): indices for d, indices in keep.get(tensor, {}).items()}
    indices = dims.get(dim)
    return torch.arange(size) if indices is None else torch.as_tensor(list(indices), dtype=torch.long)


def _grouped_bias(layer: nn.Module, groups: int) -> torch.Tensor | None:
    return None if layer.bias is None else layer.bias.detach().reshape(groups, -1)


def _in_width(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
