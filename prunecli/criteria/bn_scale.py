"""bn_scale (network slimming, Liu et al. 2017): |gamma| of the normalisation after the producer.

A channel whose normalisation scale is near zero contributes only its shift: small = unimportant.
The group's normalisation members (BatchNorm, GroupNorm, InstanceNorm, LayerNorm weights over
the group's channels) combine with ``reduction``. A group with no such normalisation gets no
score: ``select`` keeps it whole and the report lists it under ``scoring.unscored``. When no
prunable group has one the run is refused (nothing could be pruned).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from prunecli.criteria.inputs import Scores, ScoringInputs, reduce_members, to_channels
from prunecli.criteria.registry import register
from prunecli.errors import InputError
from prunecli.graph.channel_graph import Member, PruningGroup

NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def group_scales(group: PruningGroup, module: torch.nn.Module) -> list[np.ndarray]:
    """|weight| per channel of each of the group's normalisation members (empty when it has none)."""
    scales = []
    for member in group.members:
        weight = _norm_weight(module, member)
        if weight is not None and weight.numel() == len(member.positions):
            weight = weight.detach().to(torch.float64).cpu().abs().reshape(-1).numpy()
            scales.append(to_channels(weight, member.positions, group.channels))
    return scales


def _norm_weight(module: torch.nn.Module, member: Member) -> torch.Tensor | None:
    """The normalisation scale that ``member`` is, or None."""
    if not member.is_parameter:
        return None
    if hasattr(module, "norm_scales"):  # an ONNX graph run in torch: scales by initializer name
        return module.norm_scales().get(member.tensor)
    owner = _owner(module, member.module)
    return owner.weight if isinstance(owner, NORMS) and member.tensor.endswith(".weight") else None


def _owner(module: torch.nn.Module, name: str) -> torch.nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


@register("bn_scale")
def bn_scale(inputs: ScoringInputs) -> Scores:
    """|gamma| of the normalisation that follows each channel's producer."""
    scores = {}
    for group in inputs.graph.prunable_groups:
        scales = group_scales(group, inputs.module)
        if scales:
            scores[group.id] = reduce_members(scales, inputs.reduction)
    if inputs.graph.prunable_groups and not scores:
        raise InputError(
            "criterion bn_scale needs a normalisation (e.g. BatchNorm) after the pruned layers and this model "
            "has none; use another criterion such as l2"
        )
    return scores
