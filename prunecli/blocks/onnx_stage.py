"""``prune_blocks`` on an ONNX input: the graph's residual branches, scored and verified in ONNX Runtime.

The step's flow, options, choice and report entry are the torch step's (``blocks.stage``); this is
its ``BlockRemoval`` for the current ONNX model (``onnx_graph.pipeline.current_model``):

- ``find``: ``onnx_residuals.find_onnx_branches`` (``candidates: [layer]`` has no ONNX form: a note says so);
- ``score``: ``relative_norm`` reads each branch's skip and output as extra graph outputs, per sample
  ``||f(x)|| / ||x||``, averaged; ``loss`` is the cross-entropy increase with the branch output
  multiplied by 0 (``onnx_residuals.zeroed``), both over the step's scoring batches;
- ``remove``: the branches cut out, the full ONNX checker, then the ONNX Runtime check against the
  original with those branches zeroed, on the run's sample batch;
- ``commit``: the pruned graph becomes the current model (the channel graph is rebuilt by a later
  ``score``) and sparsify masks of removed initializers are forgotten.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from prunecli.blocks.candidates import BlockCandidate, CandidateSearch
from prunecli.blocks.onnx_residuals import (
    OnnxBlockCandidate,
    find_onnx_branches,
    remove_onnx_branches,
    tensor_types,
    verify_onnx_removal,
    zeroed,
)
from prunecli.blocks.stage import drop_removed_masks, scoring_data
from prunecli.model_io.onnx_external import model_source
from prunecli.model_io.onnx_file import graph_input
from prunecli.onnx_graph.prune import check_surgery
from prunecli.surgery.verify import Verification

if TYPE_CHECKING:
    from prunecli.config.schema import PruneBlocksStep
    from prunecli.pipeline.state import RunState

Batch = tuple[torch.Tensor, torch.Tensor]
LAYERS_NOTE = "candidates: layer has no ONNX form yet; only residual branches are considered"


class OnnxBlocks:
    """``prune_blocks`` on the current ONNX model of ``state`` (see the module docstring)."""

    def __init__(self, state: RunState, step: PruneBlocksStep) -> None:
        from prunecli.onnx_graph.pipeline import current_model

        self.state, self.step = state, step
        self.model = current_model(state)
        self.pruned: onnx.ModelProto | None = None

    def find(self) -> CandidateSearch:
        search = find_onnx_branches(self.model, input_shape=self.state.loaded.input_shape)
        if "residual" not in self.step.candidates:
            search.candidates = []
        if "layer" in self.step.candidates:
            search.notes.append(LAYERS_NOTE)
        return search

    def score(self, eligible: list[BlockCandidate]) -> list[float]:
        data = scoring_data(self.state, self.step)
        branches = [candidate for candidate in eligible if isinstance(candidate, OnnxBlockCandidate)]
        if self.step.criterion == "loss":
            return loss_increases(self.model, branches, data)
        return relative_norms(self.model, branches, data)

    def remove(self, chosen: list[BlockCandidate]) -> Verification:
        branches = [candidate for candidate in chosen if isinstance(candidate, OnnxBlockCandidate)]
        self.pruned = remove_onnx_branches(self.model, branches)
        check_surgery(self.pruned, what="the ONNX graph without the blocks")
        feeds = {graph_input(self.model).name: self.state.sample.detach().cpu().numpy()}
        return verify_onnx_removal(self.model, self.pruned, branches, feeds=feeds, tolerance=self.step.tolerance)

    def commit(self) -> None:
        from prunecli.onnx_graph.pipeline import replace_current_model

        replace_current_model(self.state, self.pruned)
        self.state.graph, self.state.scores = None, None
        drop_removed_masks(self.state, present={tensor.name for tensor in self.pruned.graph.initializer})


def loss_increases(model: onnx.ModelProto, candidates: Sequence[OnnxBlockCandidate], data: list[Batch]) -> list[float]:
    """Per candidate: mean cross-entropy of ``model`` with that branch zeroed, minus the model's own."""
    with _session(model) as run:
        base = _mean_loss(run, data)
    increases = []
    for candidate in candidates:
        with _session(zeroed(model, [candidate])) as run:
            increases.append(_mean_loss(run, data) - base)
    return increases


def _mean_loss(run: Callable[[np.ndarray], list[np.ndarray]], data: list[Batch]) -> float:
    total = 0.0
    for inputs, labels in data:
        logits = torch.from_numpy(np.asarray(run(inputs.cpu().numpy())[0], dtype=np.float32))
        total += float(F.cross_entropy(logits, labels.cpu(), reduction="sum"))
    return total / max(1, sum(len(labels) for _, labels in data))


def relative_norms(model: onnx.ModelProto, candidates: Sequence[OnnxBlockCandidate], data: list[Batch]) -> list[float]:
    """Per candidate: the mean per-sample ``||f(x)|| / ||x||``, read as extra graph outputs in one pass per batch."""
    extended = with_outputs(model, [name for candidate in candidates for name in candidate.sites])
    names = [value.name for value in extended.graph.output]
    with _session(extended) as run:
        sums, samples = np.zeros(len(candidates)), 0
        for inputs, _ in data:
            values = dict(zip(names, run(inputs.cpu().numpy())))
            for index, candidate in enumerate(candidates):
                skip, branch = (_per_sample_norm(values[name]) for name in candidate.sites)
                sums[index] += float((branch / np.maximum(skip, 1e-12)).sum())
            samples += len(inputs)
    return list(sums / max(1, samples))


def _per_sample_norm(array: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(array, dtype=np.float64).reshape(len(array), -1), axis=1)


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the tensors ``names`` not among its outputs yet (after its own)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    types = tensor_types(model)
    added = [name for name in dict.fromkeys(names) if name not in {value.name for value in model.graph.output}]
    copy.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None) for name in added
    )
    return copy


@contextmanager
def _session(model: onnx.ModelProto) -> Iterator[Callable[[np.ndarray], list[np.ndarray]]]:
    """A one-thread CPU ONNX Runtime session on ``model``, as a function of the first input's value."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.log_severity_level = 3
    with model_source(model) as source:
        session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        name = graph_input(model).name
        yield lambda inputs: session.run(None, {name: inputs})
