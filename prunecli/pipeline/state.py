"""RunState: what one step hands the next. No global session: the runner owns one of these."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from prunecli.config.schema import Pipeline
    from prunecli.data.dataset import DataSet
    from prunecli.graph.channel_graph import ChannelGraph
    from prunecli.graph.fallbacks import FallbackLog
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
    by stage name, in the order they were taken; ``snapshots`` each stage's model (a copy, or
    the ONNX file) for the interleaved latency measurement at the end. ``timings_s`` adds up
    wall-clock seconds per phase of the run (load, trace, score, prune, finetune, measure, ...).
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
    scoring: list[dict[str, Any]] = field(default_factory=list)  # per score step: criterion, cost, unscored
    plan: PrunePlan | None = None
    keep: dict[str, dict[int, Any]] = field(default_factory=dict)
    attributes: dict[str, dict[str, int]] = field(default_factory=dict)
    verification: Verification | None = None
    surgery_fallbacks: FallbackLog | None = None
    sensitivity: dict[str, Any] | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshots: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    onnx_error: str | None = None
    sparsity: Any | None = None  # SparsityState (prunecli.sparsity): masks kept through fine-tuning
    quantization: dict[str, Any] | None = None  # quantize step: mode, int8 file (or error); see quantize.stage
    regularization: list[dict[str, Any]] = field(default_factory=list)  # per regularize step; see regularize.report
    graph_of: torch.nn.Module | None = None  # the module ``graph`` was built from: score rebuilds it for another
    original_channels: dict[str, int] | None = None  # group name -> channels in the first graph (the unpruned model)
    stage_prefix: str | None = None  # inside a repeat: "round2", so measure_stage names "round2.pruned"
    rounds: list[dict[str, Any]] = field(default_factory=list)  # repeat: one record per round (pipeline.repeat)
    blocks: dict[str, Any] | None = None  # prune_blocks: candidates, scores, removed, verification (blocks.stage)
    replaced_modules: dict[str, str] = field(default_factory=dict)  # prune_blocks: path -> "identity" | "zero"
    reconstruction: list[dict[str, Any]] = field(default_factory=list)  # per reconstruct step; see reconstruct.report
    onnx_graph_of: Path | None = None  # ONNX input: the file ``graph`` was built from (score rebuilds it for another)
    onnx_workdir: Path | None = None  # ONNX input: temporary folder of the pruned graphs (see onnx_graph.pipeline)
    distributed: dict[str, Any] | None = None  # world size, backend, structure check (prunecli.distributed)

    @property
    def latency_threads(self) -> int:
        """Intra-op threads for latency measurement: ``latency.threads``, else the run's ``threads``."""
        return self.pipeline.latency.threads or self.pipeline.threads

    def timed(self, phase: str) -> contextlib.AbstractContextManager[None]:
        """Add the block's wall-clock seconds to ``timings_s[phase]``."""
        return timed(self.timings_s, phase)


@contextmanager
def timed(timings_s: dict[str, float], phase: str) -> Iterator[None]:
    """Add the block's wall-clock seconds to ``timings_s[phase]`` (also when it raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings_s[phase] = timings_s.get(phase, 0.0) + time.perf_counter() - start
