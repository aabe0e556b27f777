"""The pipeline steps on an ONNX input: score (static criteria), select and prune on the ONNX channel graph.

On an ONNX input the run state holds no torch module (``state.module`` is None); the current
model is the file ``state.loaded.onnx_path``. ``score`` builds the ``OnnxChannelGraph`` of that
file into ``state.graph``; ``select`` works on its groups unchanged (a MACs or params target
counts the pruned candidate graph); ``prune`` slices the graph, verifies it in ONNX Runtime,
writes it to a run-scoped temporary folder and makes it the current model, so ``measure_stage``
measures it as stage ``pruned`` and the runner writes it as ``model.onnx``.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from prunecli.errors import InputError, VerificationError
from prunecli.model_io.onnx_external import uses_external_data, write_onnx
from prunecli.model_io.plan_file import compose_keep
from prunecli.onnx_graph.build import build_onnx_graph
from prunecli.onnx_graph.prune import prune_onnx_model
from prunecli.onnx_graph.surgery import prune_onnx

if TYPE_CHECKING:
    from prunecli.config.schema import Pipeline, PruneStep, ScoreStep
    from prunecli.pipeline.state import RunState

# static criteria read initializers; data-driven ones and bn_scale run the graph in torch (prunecli.onnx_torch)
ONNX_CRITERIA = (
    "activation", "apoz", "bn_scale", "fpgm", "gradient", "l1", "l2", "random", "taylor", "weight_activation"
)  # fmt: skip
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def check_onnx_pipeline(pipeline: Pipeline) -> None:
    """Refuse, in one line, the steps, criteria and selection modes an ONNX input cannot run yet."""
    for where, step in pipeline.steps_with_paths():
        if step.kind == "score":
            _check_criterion(step, where=where)
        if step.kind == "select" and step.target is not None and step.target.metric[0] == "latency_ms":
            raise InputError(f"{where}: select.target latency_ms is torch-only for now; on ONNX target macs or params")


def _check_criterion(step: ScoreStep, *, where: str) -> None:
    spec = step.criterion_spec
    names = [spec] if isinstance(spec, str) else list(spec)
    refused = [name for name in names if name not in ONNX_CRITERIA]
    if refused:
        raise InputError(
            f"{where}: criterion {refused[0]} needs a PyTorch model and the model is ONNX; on ONNX use "
            f"{', '.join(ONNX_CRITERIA)}, or pass the PyTorch checkpoint"
        )


def current_model(state: RunState) -> onnx.ModelProto:
    """The current ONNX model (the input, or the pruned graph after a prune step)."""
    return onnx.load(str(state.loaded.onnx_path))


def ensure_onnx_graph(state: RunState) -> onnx.ModelProto:
    """Build the channel graph of the current ONNX model into ``state.graph`` (once per model); return the model."""
    model = current_model(state)
    if state.graph is None or state.onnx_graph_of != state.loaded.onnx_path:
        with state.timed("trace"):
            state.graph = build_onnx_graph(model, input_shape=state.loaded.input_shape)
        state.onnx_graph_of = state.loaded.onnx_path
        if state.original_channels is None:
            state.original_channels = {group.name: group.channels for group in state.graph.groups}
    return model


def onnx_target_measure(state: RunState, metric: str) -> Callable[[Mapping[int, np.ndarray]], float]:
    """The fraction of the input model's MACs or params that a candidate plan of the current graph keeps."""
    from prunecli.metrics.macs import onnx_macs

    model = current_model(state)
    shape = (1, *state.loaded.input_shape[1:])
    folder = _work_folder(state)

    def count(candidate: onnx.ModelProto) -> float:
        if metric == "params":
            return float(_float_params(candidate))
        path = folder / "candidate.onnx"
        write_onnx(candidate, path, external_data=False)
        return float(onnx_macs(path, shape))

    reference = count(onnx.load(str(state.snapshots.get("original", state.loaded.onnx_path))))
    current = count(model) / reference

    def measure(removed: Mapping[int, np.ndarray]) -> float:
        if not removed:
            return current
        return count(prune_onnx(model, state.graph, removed)) / reference

    return measure


def prune_onnx_stage(state: RunState, step: PruneStep) -> None:
    """Prune the current ONNX graph by ``state.plan``, verify it in ONNX Runtime and make it the current model."""
    model = current_model(state)
    feeds = {_input_name(model): state.sample.detach().cpu().numpy()}
    with state.timed("prune"):
        outcome = prune_onnx_model(model, state.graph, state.plan.removed, feeds=feeds, tolerance=step.tolerance)
    state.verification = outcome.verification
    if not outcome.verification.passed:
        raise VerificationError(
            f"pruned ONNX outputs differ from the masked original by {outcome.verification.max_abs_diff:.3g} "
            f"(tolerance {step.tolerance:g}); this is a prunecli bug: please report it with --debug output"
        )
    state.keep = compose_keep(state.keep, outcome.keep)  # relative to the input graph (reconstruct, repeat)
    replace_current_model(state, outcome.model)


def replace_current_model(state: RunState, model: onnx.ModelProto) -> Path:
    """Save ``model`` as a new file of the run's work folder and make it the current model; return its path.

    A new file per call: the stages measured so far keep theirs (their latency snapshots).
    """
    path = _work_folder(state) / f"model{len(state.stages)}.onnx"
    write_onnx(model, path, external_data=uses_external_data(state.loaded.source))  # as the input was written
    state.loaded = dataclasses.replace(state.loaded, onnx_path=path)  # the source stays the input file
    return path


def onnx_prunability(state: RunState) -> dict[str, Any]:
    """The report's ``prunability`` entry for an ONNX run: params share out of reach, and why."""
    model = onnx.load(str(state.onnx_graph_of))
    left_intact = state.plan.skipped if state.plan else {}
    groups = [group for group in state.graph.prunable_groups if group.id not in left_intact]
    prunable_tensors = {member.tensor for group in groups for member in group.members}
    sizes = {t.name: math.prod(t.dims) for t in model.graph.initializer if t.data_type in _FLOATS}
    params = sum(sizes.values())
    unprunable = sum(size for name, size in sizes.items() if name not in prunable_tensors)
    reasons: dict[str, int] = {}
    for group in state.graph.groups:
        reason = group.reason if not group.prunable else left_intact.get(group.id)
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "unprunable_params_share": unprunable / params if params else 0.0,
        "unprunable_macs_share": None,  # MACs are not broken down per node for ONNX yet
        "unprunable_reasons": reasons,
        "fallbacks": state.graph.fallbacks.counts(),
    }


def _float_params(model: onnx.ModelProto) -> int:
    return sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type in _FLOATS)


def _input_name(model: onnx.ModelProto) -> str:
    from prunecli.model_io.onnx_file import graph_input

    return graph_input(model).name


def _work_folder(state: RunState) -> Path:
    """A temporary folder for this run's ONNX files, removed when the state is garbage-collected."""
    if state.onnx_workdir is None:
        folder = tempfile.mkdtemp(prefix="prunecli-onnx-")
        weakref.finalize(state, shutil.rmtree, folder, True)
        state.onnx_workdir = Path(folder)
    return state.onnx_workdir
