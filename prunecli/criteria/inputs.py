"""What a criterion reads: ``ScoringInputs``, and the helpers every criterion shares.

A criterion is a function ``(inputs: ScoringInputs) -> Scores``: one float per channel of every
prunable group it can score (higher = more important). Groups it cannot score are left out.
Static criteria read ``inputs.graph`` and ``inputs.module``; data-driven ones also run
``inputs.batch_count`` batches of ``inputs.split`` through the model (see ``scoring_batches``)::

    inputs = ScoringInputs(graph=graph, module=model, split=data.train, batch_size=64, batch_count=8)
    scores = get_criterion("taylor")(inputs)    # {group_id: array of shape (channels,)}
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from prunecli.data.dataset import Split, batches
from prunecli.graph.channel_graph import ChannelGraph
from prunecli.model_io.outputs import first_tensor

Scores = dict[int, np.ndarray]
Reduction = Literal["sum", "mean", "max"]


@dataclass(frozen=True)
class ScoringInputs:
    """Everything a criterion may read; static criteria need only ``graph`` and ``module`` (or ``tensors``).

    ``reduction`` says how the scores of a coupled group's members combine into one score per
    channel (``sum``, ``mean`` or ``max``). ``split`` (with ``batch_size`` and ``batch_count``)
    feeds data-driven criteria; ``progress`` shows a bar on stderr while they run. ``tensors``
    (name -> numpy or torch array) replaces the module's parameters for static criteria: an ONNX
    graph's initializers, by the names its ``Member``s use, with ``module=None``.
    """

    graph: ChannelGraph
    module: torch.nn.Module | None
    seed: int = 0
    reduction: Reduction = "sum"
    split: Split | None = None
    batch_size: int = 64
    batch_count: int = 8
    device: str = "cpu"
    progress: bool = False
    tensors: Mapping[str, Any] | None = None

    def parameter_tensors(self) -> dict[str, torch.Tensor]:
        """The weights static criteria read, by member tensor name: ``tensors`` if given, else the module's."""
        if self.tensors is None:
            return dict(self.module.named_parameters())
        return {name: torch.as_tensor(np.array(value)) for name, value in self.tensors.items()}

    @property
    def batches_per_pass(self) -> int:
        """Batches one pass over the data runs: ``batch_count``, or fewer when the split is small."""
        if self.split is None:
            return 0
        return min(self.batch_count, -(-len(self.split) // self.batch_size))


def reduce_members(member_scores: Sequence[np.ndarray], how: Reduction) -> np.ndarray:
    """Combine per-member channel scores (NaN where a member lacks a channel); all-NaN -> 0."""
    stacked = np.stack(member_scores)  # (members, channels)
    present = ~np.isnan(stacked)
    filled = np.where(present, stacked, 0.0)
    if how == "sum":
        return filled.sum(0)
    if how == "max":
        return np.where(present, stacked, -np.inf).max(0).clip(min=0.0) * present.any(0)
    return filled.sum(0) / np.maximum(present.sum(0), 1)


def to_channels(values: np.ndarray, positions: np.ndarray, channels: int, *, within: str = "mean") -> np.ndarray:
    """Per-position ``values`` of one member mapped to group channels (``Member.positions``).

    Positions of one channel (a head's rows, a flattened block) are averaged (``within="mean"``)
    or added (``"sum"``); channels the member lacks are NaN.
    """
    valid = positions >= 0
    totals = np.bincount(positions[valid], weights=values[valid], minlength=channels)
    counts = np.bincount(positions[valid], minlength=channels)
    if within == "mean":
        totals = totals / np.maximum(counts, 1)
    return np.where(counts > 0, totals, np.nan)


def scoring_batches(inputs: ScoringInputs, *, label: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``batches_per_pass`` shuffled batches (seeded), on ``inputs.device``, with a progress bar."""
    if inputs.split is None:
        return
    chosen = itertools.islice(
        batches(inputs.split, batch_size=inputs.batch_size, shuffle=True, seed=inputs.seed), inputs.batches_per_pass
    )
    with _progress_bar(enabled=inputs.progress, total=inputs.batches_per_pass, label=label) as advance:
        for batch_inputs, labels in chosen:
            yield batch_inputs.to(inputs.device), labels.to(inputs.device)
            advance()


def loss_of(module: torch.nn.Module, batch_inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the model's (first) output on the labels, as fine-tuning trains it."""
    return F.cross_entropy(first_tensor(module(batch_inputs)), labels)


@contextmanager
def _progress_bar(*, enabled: bool, total: int, label: str) -> Iterator:
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"scoring ({label})", total=total)
        yield lambda: bar.update(task, advance=1)
