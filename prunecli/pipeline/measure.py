"""Measure one stage of the model: size, MACs, latency per backend, accuracy and loss."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from prunecli.metrics.accuracy import evaluate_onnx, evaluate_torch
from prunecli.metrics.latency import measure_onnx_latency, measure_torch_latency
from prunecli.metrics.macs import count_macs, onnx_macs
from prunecli.metrics.size import count_params, onnx_params, serialized_size, size_bytes
from prunecli.model_io import export_onnx
from prunecli.pipeline.state import RunState


def measure_stage(state: RunState, name: str) -> dict[str, Any]:
    """Measure the current model and record it as stage ``name``."""
    if state.module is not None:
        stage = _measure_torch(state)
    else:
        stage = _measure_onnx(state, state.loaded.onnx_path)
    state.stages[name] = stage
    return stage


def latency_input(state: RunState) -> torch.Tensor:
    """A batch of the latency batch size, shaped like the model's input."""
    shape = (state.pipeline.latency.batch_size, *state.loaded.input_shape[1:])
    return torch.randn(shape, generator=torch.Generator().manual_seed(state.seed))


def _measure_torch(state: RunState) -> dict[str, Any]:
    module, spec = state.module, state.pipeline.latency
    example = latency_input(state)
    stage = {
        "params": count_params(module),
        "macs": count_macs(module, example[:1].to(state.device)),
        "size_bytes": serialized_size(module),
    }
    latencies = []
    with tempfile.TemporaryDirectory(prefix="prunecli-") as folder:
        if "onnxruntime" in spec.backends:
            onnx_path = Path(folder) / "model.onnx"
            export_onnx(module.cpu(), example, onnx_path)
            module.to(state.device)
        for backend in spec.backends:
            if backend == "torch":
                on_device = example.to(state.device)
                latencies.append(measure_torch_latency(module, on_device, spec=spec, device=state.device))
            else:
                latencies.append(measure_onnx_latency(onnx_path, example.numpy(), spec=spec, device=state.device))
    stage.update(_latency_fields(latencies))
    evaluation = None
    if state.data.eval is not None:
        batch_size = state.pipeline.data.batch_size
        evaluation = evaluate_torch(module, state.data.eval, batch_size=batch_size, device=state.device)
    stage.update(_evaluation_fields(evaluation))
    return stage


def _measure_onnx(state: RunState, path: Path) -> dict[str, Any]:
    spec = state.pipeline.latency
    example = latency_input(state).numpy()
    stage = {"params": onnx_params(path), "macs": onnx_macs(path, example[:1].shape), "size_bytes": size_bytes(path)}
    stage.update(_latency_fields([measure_onnx_latency(path, example, spec=spec, device=state.device)]))
    evaluation = None
    if state.data.eval is not None:
        evaluation = evaluate_onnx(path, state.data.eval, batch_size=state.pipeline.data.batch_size)
    stage.update(_evaluation_fields(evaluation))
    return stage


def _latency_fields(latencies: list) -> dict[str, Any]:
    records = [latency.to_dict() for latency in latencies]
    return {"latency_ms": records[0] if records else None, "latency": records}


def _evaluation_fields(evaluation) -> dict[str, Any]:
    if evaluation is None:
        return {"accuracy": None, "top5": None, "loss": None}
    return {"accuracy": evaluation.accuracy, "top5": evaluation.top5, "loss": evaluation.loss}
