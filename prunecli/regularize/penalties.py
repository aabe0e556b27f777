"""Sparsity penalties: differentiable functions of a module's weights that training adds to its loss.

    penalty = make_penalty("l1_bn", module, graph=None)
    loss = cross_entropy + strength * penalty.value()      # every batch (prunecli.finetune.TrainingHooks)
    penalty.distribution()                                 # what it drives toward zero: |gamma| per channel

Each penalty is a set of non-negative *terms* (one per normalisation channel, channel group or
weight) and a power: ``value() = sum(terms() ** power)``.

- ``l1_bn``: the terms are |gamma|, every entry of the scale of every normalisation layer
  (BatchNorm, InstanceNorm, GroupNorm, LayerNorm with an affine weight): network slimming (Liu et
  al. 2017). ``bn_scale`` then scores channels by the same |gamma|.
- ``group_lasso``: one term per channel of every prunable group, the L2 norm of all the entries
  its removal would remove, in every member of the group (producer rows, norm entries, consumer
  columns, every branch of a residual sum): Wen et al. 2016, unweighted. The same number as the
  ``l2`` criterion with ``reduction: sum``.
- ``l1`` / ``l2``: the terms are |w| of every weight with at least 2 dimensions (conv, linear and
  embedding weights; biases and normalisation parameters excluded), power 1 / 2: plain weight decay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from prunecli.criteria.bn_scale import NORMS
from prunecli.criteria.magnitude import position_sums
from prunecli.errors import InputError
from prunecli.graph.channel_graph import ChannelGraph, PruningGroup
from prunecli.registry import Registry

EPSILON = 1e-12  # under the square root of a channel's squared sum: a finite gradient at zero


@dataclass(frozen=True)
class Penalty:
    """One penalty bound to a module's parameters.

    ``terms()`` returns the flat, non-negative, differentiable tensor of what the penalty drives
    toward zero; ``value()`` is ``sum(terms() ** power)``, the scalar added (times the strength)
    to the loss; ``distribution()`` is ``terms()`` detached, as float64 numpy, for the report.
    """

    name: str
    quantity: str
    terms: Callable[[], torch.Tensor]
    power: int = 1

    def value(self) -> torch.Tensor:
        """The penalty, unscaled: a differentiable scalar."""
        return self.terms().pow(self.power).sum()

    def distribution(self) -> np.ndarray:
        """The terms now, without gradients."""
        with torch.no_grad():
            return self.terms().detach().to(torch.float64).cpu().numpy()


Builder = Callable[[torch.nn.Module, ChannelGraph | None], Penalty]  # (module, its channel graph) -> Penalty
PENALTIES: Registry[str, Builder] = Registry("penalty")


def make_penalty(name: str, module: torch.nn.Module, *, graph: ChannelGraph | None) -> Penalty:
    """The penalty ``name`` bound to ``module`` (``group_lasso`` needs ``graph``, the module's channel graph)."""
    try:
        builder = PENALTIES.lookup(name)
    except KeyError as error:
        raise InputError(error.args[0]) from None
    return builder(module, graph)


@PENALTIES.register("l1_bn")
def _l1_bn(module: torch.nn.Module, graph: ChannelGraph | None) -> Penalty:
    return Penalty("l1_bn", "|gamma| per normalisation channel", _norm_scale_terms(module))


@PENALTIES.register("group_lasso")
def _group_lasso(module: torch.nn.Module, graph: ChannelGraph | None) -> Penalty:
    return Penalty("group_lasso", "L2 norm per channel of every prunable group", _group_terms(module, graph))


@PENALTIES.register("l1")
def _l1(module: torch.nn.Module, graph: ChannelGraph | None) -> Penalty:
    return Penalty("l1", "|w| per weight", _weight_terms(module))


@PENALTIES.register("l2")
def _l2(module: torch.nn.Module, graph: ChannelGraph | None) -> Penalty:
    return Penalty("l2", "|w| per weight", _weight_terms(module), power=2)


def _norm_scale_terms(module: torch.nn.Module) -> Callable[[], torch.Tensor]:
    scales = [m.weight for m in module.modules() if isinstance(m, NORMS) and getattr(m, "weight", None) is not None]
    if hasattr(module, "norm_scales"):  # an ONNX graph run in torch (prunecli.onnx_torch): by initializer name
        scales = list(module.norm_scales().values())
    if not scales:
        raise InputError(
            "regularize penalty l1_bn needs normalisation layers with a scale (BatchNorm, GroupNorm, LayerNorm) "
            "and this model has none; use penalty: group_lasso or l1"
        )
    return lambda: torch.cat([scale.abs().reshape(-1) for scale in scales])


def _weight_terms(module: torch.nn.Module) -> Callable[[], torch.Tensor]:
    weights = [p for p in module.parameters() if p.dim() >= 2 and p.requires_grad]
    if not weights:
        raise InputError("regularize found no trainable weights with 2 or more dimensions; remove the step")
    return lambda: torch.cat([weight.abs().reshape(-1) for weight in weights])


def _group_terms(module: torch.nn.Module, graph: ChannelGraph | None) -> Callable[[], torch.Tensor]:
    groups = graph.prunable_groups if graph is not None else []
    if not groups:
        raise InputError(
            "regularize penalty group_lasso found no prunable channel group in this model; use penalty: l1 or l2"
        )
    params = dict(module.named_parameters())
    norms = [_channel_norms(group, params) for group in groups]
    return lambda: torch.cat([norm() for norm in norms])


def _channel_norms(group: PruningGroup, params: dict[str, torch.nn.Parameter]) -> Callable[[], torch.Tensor]:
    """A function giving the group's per-channel L2 norm over all its parameter members' slices."""
    slices = []  # (parameter, dim, positions kept (>= 0), their channels)
    for member in group.members:
        if member.is_parameter and member.tensor in params:
            valid = np.flatnonzero(member.positions >= 0)
            channels = torch.from_numpy(member.positions[valid].astype(np.int64))
            slices.append((params[member.tensor], member.dim, torch.from_numpy(valid), channels))

    reference = slices[0][0] if slices else torch.zeros(0)  # dtype and device of the sums

    def norms() -> torch.Tensor:
        squares = reference.new_zeros(group.channels)
        for parameter, dim, valid, channels in slices:
            per_position = position_sums(parameter, dim, power=2)  # (positions along dim,)
            squares = squares.index_add(0, channels.to(squares.device), per_position[valid.to(squares.device)])
        return (squares + EPSILON).sqrt()

    return norms
