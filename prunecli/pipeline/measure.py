"""Measure the stages of a run: size, MACs and accuracy when a stage ends, latency of all stages at the end.

Latency is not measured stage by stage: a snapshot of each stage's model is kept, and
``measure_latencies`` times them all interleaved in one session per backend, each against the
original (see ``prunecli.metrics.interleave``), so a machine that gets busier halfway through a
run cannot make a model look faster.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch

from prunecli.distributed import is_main_process
from prunecli.errors import OnnxExportError
from prunecli.metrics.accuracy import evaluate_onnx, evaluate_torch
from prunecli.metrics.latency import measure_onnx_latencies, measure_torch_latencies, unavailable
from prunecli.metrics.macs import count_macs, onnx_macs
from prunecli.metrics.size import count_params, onnx_params, serialized_size
from prunecli.model_io import export_onnx
from prunecli.model_io.onnx_external import onnx_file_bytes
from prunecli.pipeline.state import RunState

BASELINE = "original"


def measure_stage(state: RunState, name: str) -> dict[str, Any]:
    """Measure the current model's size, MACs and accuracy as stage ``name``; keep it for timing.

    Inside a repeat's round (``state.stage_prefix``, e.g. ``round2``) the stage is ``round2.<name>``.
    """
    if state.stage_prefix:
        name = f"{state.stage_prefix}.{name}"
    with state.timed("measure"):
        if state.module is not None:
            stage = _measure_torch(state)
            if is_main_process():  # under torchrun only rank 0 times the stages
                state.snapshots[name] = copy.deepcopy(state.module).cpu()
        else:
            stage = _measure_onnx(state, state.loaded.onnx_path)
            state.snapshots[name] = state.loaded.onnx_path
    state.stages[name] = stage
    return stage


def measure_latencies(state: RunState) -> None:
    """Time every stage's snapshot, interleaved, on each backend; fills each stage's ``latency``."""
    with state.timed("latency"):
        backends = state.pipeline.latency.backends if state.module is not None else ["onnxruntime"]
        for name in state.stages:
            state.stages[name]["latency"] = []
        for backend in backends:
            measured = _torch_latencies(state) if backend == "torch" else _onnx_latencies(state)
            for name, record in measured.items():
                state.stages[name]["latency"].append(record)
        for stage in state.stages.values():
            stage["latency_ms"] = _first_measured(stage["latency"])


def _first_measured(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first backend's record that was measured (an int8 stage: onnxruntime), else the first one."""
    return next((record for record in records if not record.get("unavailable")), records[0] if records else None)


def latency_input(state: RunState) -> torch.Tensor:
    """A batch of the latency batch size, shaped like the model's input."""
    shape = (state.pipeline.latency.batch_size, *state.loaded.input_shape[1:])
    return torch.randn(shape, generator=torch.Generator().manual_seed(state.seed))


def _torch_latencies(state: RunState) -> dict[str, dict[str, Any]]:
    modules = {name: snapshot for name, snapshot in state.snapshots.items() if not isinstance(snapshot, Path)}
    measured = measure_torch_latencies(
        modules, latency_input(state), spec=state.pipeline.latency, device=state.device,
        threads=state.latency_threads, baseline=BASELINE,
    )  # fmt: skip
    for snapshot in modules.values():
        snapshot.cpu()
    reason = "an ONNX-only stage (int8) runs in ONNX Runtime only"
    return {
        name: measured[name].to_dict() if name in measured
        else unavailable(backend="torch", device=state.device, reason=reason)
        for name in state.snapshots
    }  # fmt: skip


def _onnx_latencies(state: RunState) -> dict[str, dict[str, Any]]:
    example = latency_input(state)
    with tempfile.TemporaryDirectory(prefix="prunecli-") as folder:
        paths, records = {}, {}
        for name, snapshot in state.snapshots.items():
            if isinstance(snapshot, Path):
                paths[name] = snapshot
                continue
            try:
                paths[name] = export_onnx(snapshot, example, Path(folder) / f"{name}.onnx")
            except OnnxExportError as error:
                records[name] = unavailable(backend="onnxruntime", device=state.device, reason=str(error))
        measured = measure_onnx_latencies(
            paths, example.numpy(), spec=state.pipeline.latency, device=state.device,
            threads=state.latency_threads, baseline=BASELINE,
        )  # fmt: skip
    records.update({name: latency.to_dict() for name, latency in measured.items()})
    return {name: records[name] for name in state.snapshots}


def _measure_torch(state: RunState) -> dict[str, Any]:
    module = state.module
    example = latency_input(state)
    stage = {
        "params": count_params(module),
        "macs": count_macs(module, example[:1].to(state.device)),
        "size_bytes": serialized_size(module),
    }
    evaluation = None
    if state.data.eval is not None and is_main_process():  # under torchrun rank 0 evaluates, for the report
        batch_size = state.pipeline.data.batch_size
        evaluation = evaluate_torch(module, state.data.eval, batch_size=batch_size, device=state.device)
    stage.update(_evaluation_fields(evaluation))
    return stage


def _measure_onnx(state: RunState, path: Path) -> dict[str, Any]:
    example = latency_input(state).numpy()
    stage = {"params": onnx_params(path), "macs": onnx_macs(path, example[:1].shape)}
    stage["size_bytes"] = onnx_file_bytes(path)  # the graph file and its external data files
    evaluation = None
    if state.data.eval is not None and is_main_process():
        evaluation = evaluate_onnx(
            path, state.data.eval, batch_size=state.pipeline.data.batch_size, threads=state.pipeline.threads
        )
    stage.update(_evaluation_fields(evaluation))
    return stage


def _evaluation_fields(evaluation) -> dict[str, Any]:
    if evaluation is None:
        return {"accuracy": None, "top5": None, "loss": None}
    return {"accuracy": evaluation.accuracy, "top5": evaluation.top5, "loss": evaluation.loss}
