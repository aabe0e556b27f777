"""Data-driven criteria: run ``batch_count`` batches through the model and observe every member.

Activations are observed where the network uses a channel: at the inputs of every consumer
(conv/linear) of the group, i.e. after its normalisation and ReLU-like activation, after a
residual sum of all its branches, inside a concat (its offset part) and after a flatten (its
block of features); groups without such a consumer fall back to their producers' outputs (see
``hooks.observed_sites``).

- ``activation``: mean |activation| per channel.
- ``apoz`` (Hu et al. 2016): the average percentage of zeros; the score is ``1 - APoZ``, so a
  channel that is almost always zero scores low.
- ``taylor`` (Molchanov et al. 2017): |activation x dL/d(activation)| per example and position,
  averaged: the first-order change of the loss if the channel were zeroed, taken per example so
  that a converged model's gradients do not cancel out over a batch.
- ``gradient``: mean |dL/dw| over the group's weights (every member's slices).
- ``weight_activation``: mean |activation| times the sum of |w| over the channel's outgoing
  (consumer) weights.

The loss is cross-entropy on the data's labels. Member scores combine with ``reduction``;
groups without a conv/linear member to observe get no score.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

from prunecli.criteria.hooks import Recorder, Site, Stat, consumer_sites, observed_sites
from prunecli.criteria.inputs import Scores, ScoringInputs, loss_of, reduce_members, scoring_batches, to_channels
from prunecli.criteria.magnitude import member_sums
from prunecli.criteria.registry import register


def run_batches(inputs: ScoringInputs, *, label: str, backward: bool,
                after_batch: Callable[[], None] | None = None) -> int:  # fmt: skip
    """Forward (and backward, for gradients) the scoring batches; returns how many ran."""
    module, count = inputs.module, 0
    flags = {name: p.requires_grad for name, p in module.named_parameters()}
    try:
        for batch_inputs, labels in scoring_batches(inputs, label=label):
            if backward:
                module.requires_grad_(True)
                module.zero_grad(set_to_none=True)
                loss_of(module, batch_inputs, labels).backward()
            else:
                with torch.no_grad():
                    module(batch_inputs)
            if after_batch is not None:
                after_batch()
            count += 1
    finally:
        module.zero_grad(set_to_none=True)
        for name, parameter in module.named_parameters():
            parameter.requires_grad_(flags[name])
    return count


def site_scores(inputs: ScoringInputs, sites: list[Site], totals: list[np.ndarray], *, within: str) -> Scores:
    """Per-site totals mapped to group channels and reduced over each group's sites."""
    by_group: dict[int, list[np.ndarray]] = defaultdict(list)
    for site, total in zip(sites, totals):
        by_group[site.group_id].append(to_channels(total, site.positions, inputs.graph.group(site.group_id).channels,
                                                   within=within))  # fmt: skip
    return {group_id: reduce_members(scores, inputs.reduction) for group_id, scores in by_group.items()}


def _observe(inputs: ScoringInputs, stat: Stat, *, label: str, with_grad: bool = False,
             within: str = "mean") -> Scores:  # fmt: skip
    """Run the batches with the observed sites hooked; the per-batch mean of ``stat`` per channel."""
    sites = observed_sites(inputs.graph, inputs.module)
    with Recorder(inputs.module, sites, stat=stat, with_grad=with_grad) as recorder:
        count = run_batches(inputs, label=label, backward=with_grad)
    return site_scores(inputs, sites, [total / max(count, 1) for total in recorder.totals], within=within)


@register("activation")
def activation(inputs: ScoringInputs) -> Scores:
    """Mean |activation| per channel where the group's consumers read it."""
    return _observe(inputs, lambda values, _: values.abs().mean(0), label="activation")


@register("apoz")
def apoz(inputs: ScoringInputs) -> Scores:
    """1 - the fraction of zeros in the channel where its consumers read it."""
    zeros = _observe(inputs, lambda values, _: (values == 0).to(torch.float64).mean(0), label="apoz")
    return {group_id: 1.0 - fraction for group_id, fraction in zeros.items()}


@register("taylor")
def taylor(inputs: ScoringInputs) -> Scores:
    """|sum of activation x gradient| per channel where its consumers read it, averaged over batches."""
    return _observe(inputs, _taylor_stat, label="taylor", with_grad=True, within="sum")


def _taylor_stat(values: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Mean over examples and positions of |activation x gradient|; ``values`` is (examples x positions, channels).

    The absolute value comes before the mean (as in Molchanov et al. 2017): summed over a batch
    first, the products of a well-trained model cancel out and leave noise.
    """
    return (values * grads).abs().mean(0)


@register("gradient")
def gradient(inputs: ScoringInputs) -> Scores:
    """Mean |dL/dw| over each channel's weights in every member, averaged over batches."""
    parameters = dict(inputs.module.named_parameters())
    wanted = {m.tensor for g in inputs.graph.prunable_groups for m in g.members if m.tensor in parameters}
    totals = {name: torch.zeros_like(parameters[name], dtype=torch.float64) for name in wanted}

    def accumulate() -> None:
        for name in wanted:
            if parameters[name].grad is not None:
                totals[name] += parameters[name].grad.detach().abs().to(torch.float64)

    count = max(run_batches(inputs, label="gradient", backward=True, after_batch=accumulate), 1)
    scores = {}
    for group in inputs.graph.prunable_groups:
        members = [m for m in group.members if m.tensor in totals]
        per_member = [_mean_slices(totals[m.tensor] / count, m.dim, m.positions, group.channels) for m in members]
        if per_member:
            scores[group.id] = reduce_members(per_member, inputs.reduction)
    return scores


def _mean_slices(tensor: torch.Tensor, dim: int, positions: np.ndarray, channels: int) -> np.ndarray:
    per_position = tensor.movedim(dim, 0).reshape(tensor.shape[dim], -1).mean(1).cpu().numpy()
    return to_channels(per_position, positions, channels)


@register("weight_activation")
def weight_activation(inputs: ScoringInputs) -> Scores:
    """Mean |activation| times the sum of |w| over the channel's outgoing weights."""
    activations = activation(inputs)
    tensors = dict(inputs.module.named_parameters())
    consumers = {(site.group_id, site.tensor) for site in consumer_sites(inputs.graph, inputs.module)}
    scores = {}
    for group_id, mean_abs in activations.items():
        group = inputs.graph.group(group_id)
        outgoing = [m for m in group.members if (group_id, m.tensor) in consumers and not m.produces]
        sums = member_sums(outgoing, group.channels, tensors, power=1)
        scores[group_id] = mean_abs * (np.nansum(np.stack(sums), 0) if sums else 1.0)
    return scores
