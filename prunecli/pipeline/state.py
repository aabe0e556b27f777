"""RunState: what one step hands the next. No global session: the runner owns one of these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from prunecli.config.schema import Pipeline
    from prunecli.data.dataset import DataSet
    from prunecli.graph.channel_graph import ChannelGraph
    from prunecli.model_io import LoadedModel
    from prunecli.pipeline.options import RunOptions
    from prunecli.selection import PrunePlan
    from prunecli.surgery.verify import Verification


@dataclass
class RunState:
    """The model being pruned and everything learned about it so far.

    ``module`` is the current torch model (None for ONNX inputs); ``original`` stays the
    unpruned one (teacher for distillation, reference for verification). ``sample`` is a real
    batch of inputs used for tracing and verification. ``stages`` holds the measurements,
    by stage name, in the order they were taken.
    """

    pipeline: Pipeline
    options: RunOptions
    loaded: LoadedModel
    data: DataSet
    device: str
    seed: int
    sample: torch.Tensor | None = None
    module: torch.nn.Module | None = None
    original: torch.nn.Module | None = None
    graph: ChannelGraph | None = None
    scores: dict[int, np.ndarray] | None = None
    plan: PrunePlan | None = None
    keep: dict[str, dict[int, Any]] = field(default_factory=dict)
    attributes: dict[str, dict[str, int]] = field(default_factory=dict)
    verification: Verification | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
