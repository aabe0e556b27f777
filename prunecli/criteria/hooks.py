"""Where data-driven criteria look: hook sites on every member of a coupled group.

A ``Site`` is one layer whose output (a producer: conv/linear rows that make the group's
channels) or input (a consumer: conv/linear columns that read them) carries the group's
channels along ``axis``; ``positions`` maps that axis to group channels (-1 = another group),
exactly as ``Member.positions`` does. A residual group has one producer site per branch, a
concat part one consumer site whose other positions are -1, a head group a site whose several
positions map to one head. ``Recorder`` hooks all sites at once and adds a per-position
statistic over batches::

    with Recorder(model, observed_sites(graph, model), stat=mean_abs) as recorder:
        for inputs, _ in batches: model(inputs)
    recorder.totals[site_index]     # np.ndarray (positions,), summed over batches
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from prunecli.graph.channel_graph import ChannelGraph, Member

# (values (M, positions), grads (M, positions) or None) -> (positions,)
Stat = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class Site:
    """One hooked layer of one group: its output (producer) or input (consumer) along ``axis``."""

    group_id: int
    module: str
    axis: int
    positions: np.ndarray
    on: str = "output"  # "output" of a producer, "input" of a consumer
    value: str | None = None  # an ONNX graph value to observe instead of a layer (prunecli.onnx_torch.sites)
    tensor: str = ""  # the member's weight tensor


def producer_sites(graph: ChannelGraph, module: nn.Module) -> list[Site]:
    """A site per producer member of every prunable group whose layer is a conv or linear."""
    if hasattr(module, "value_sites"):  # an ONNX graph run in torch: sites on graph values
        return module.value_sites(graph, produces=True)
    sites = []
    for group in graph.prunable_groups:
        for member in group.producers:
            axis = _channel_axis(_owner(module, member.module), member, produces=True)
            if axis is not None:
                sites.append(Site(group.id, member.module, axis, member.positions, "output", tensor=member.tensor))
    return sites


def consumer_sites(graph: ChannelGraph, module: nn.Module) -> list[Site]:
    """A site per consumer member (a conv/linear weight's input dimension) of every prunable group."""
    if hasattr(module, "value_sites"):  # an ONNX graph run in torch: sites on graph values
        return module.value_sites(graph, produces=False)
    sites = []
    for group in graph.prunable_groups:
        for member in group.members:
            if member.is_parameter and not member.produces:
                axis = _channel_axis(_owner(module, member.module), member, produces=False)
                if axis is not None:
                    sites.append(Site(group.id, member.module, axis, member.positions, "input", tensor=member.tensor))
    return sites


def observed_sites(graph: ChannelGraph, module: nn.Module) -> list[Site]:
    """Where a channel's activation is observed: the consumers' inputs, else the producers' outputs.

    A consumer's input is the channel as the network uses it (after normalisation and
    activation, summed over a residual's branches); zeroing it there is exactly what pruning
    does. Groups with no conv/linear consumer fall back to their producers' outputs.
    """
    consumers = consumer_sites(graph, module)
    covered = {site.group_id for site in consumers}
    fallback = [site for site in producer_sites(graph, module) if site.group_id not in covered]
    return consumers + fallback


def _owner(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name) if name else None
    except AttributeError:
        return None


def _channel_axis(layer: nn.Module | None, member: Member, *, produces: bool) -> int | None:
    """The channel axis of the layer's output (or input) that ``member`` indexes; None if unsupported."""
    if not member.tensor.endswith(".weight") or isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return None
    if isinstance(layer, nn.modules.conv._ConvNd):
        size = layer.out_channels if produces else layer.in_channels
        dim_ok = member.dim == (0 if produces else 1) and (produces or layer.groups == 1)
        return 1 if dim_ok and size == len(member.positions) else None
    if isinstance(layer, nn.Linear):
        size = layer.out_features if produces else layer.in_features
        return -1 if member.dim == (0 if produces else 1) and size == len(member.positions) else None
    return None


class Recorder:
    """Hooks ``sites`` of ``module``; adds ``stat`` per position of each site into ``totals``.

    A site reads its layer's output (``Site.on == "output"``) or first input (``"input"``). With
    ``with_grad`` the statistic is taken when the backward pass reaches the tensor (values and
    gradient of the loss).
    """

    def __init__(self, module: nn.Module, sites: list[Site], *, stat: Stat, with_grad: bool = False) -> None:
        self.module, self.sites, self.stat, self.with_grad = module, sites, stat, with_grad
        self.totals = [np.zeros(len(site.positions)) for site in sites]
        self._handles: list = []

    def __enter__(self) -> "Recorder":
        for index, site in enumerate(self.sites):
            if site.value is not None:  # an OnnxModule's graph value
                self._handles.append(self.module.observe(site.value, functools.partial(self._seen, index)))
                continue
            layer = self.module.get_submodule(site.module)
            if site.on == "output":
                hook = layer.register_forward_hook(lambda _m, _i, out, index=index: self._seen(index, out))
            else:
                hook = layer.register_forward_pre_hook(lambda _m, args, index=index: self._seen(index, args[0]))
            self._handles.append(hook)
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._handles:
            hook.remove()
        self._handles.clear()

    def _seen(self, index: int, tensor: torch.Tensor) -> None:
        if not self.with_grad:
            self._add(index, tensor.detach(), None)
        elif tensor.requires_grad:
            tensor.register_hook(lambda grad: self._add(index, tensor.detach(), grad.detach()))

    def _add(self, index: int, values: torch.Tensor, grads: torch.Tensor | None) -> None:
        axis = self.sites[index].axis
        flat = values.movedim(axis, -1).reshape(-1, values.shape[axis])  # (M, positions)
        flat_grads = None if grads is None else grads.movedim(axis, -1).reshape(-1, values.shape[axis])
        self.totals[index] += self.stat(flat, flat_grads).to(torch.float64).cpu().numpy()
