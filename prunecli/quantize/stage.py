"""The quantize step: export the current model to ONNX, quantize it to int8, measure it as stage ``quantized``.

On an ONNX input there is nothing to export: the current ONNX file is quantized as it is.

The stage has the float model's ``params`` and ``macs``, the int8 file's ``size_bytes``, and
``accuracy``/``top5``/``loss`` from ONNX Runtime; its snapshot is the int8 file, so it is timed
with ONNX Runtime only (its torch latency is reported unavailable). ``state.quantization`` keeps
``{"mode", "path", "error"}``; the runner copies ``path`` into the output folder as
``model.int8.onnx``. When the model cannot be exported or quantized, there is no ``quantized``
stage: ``error`` gives the reason and the run writes everything else.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from prunecli.config.schema import QuantizeStep
from prunecli.errors import OnnxExportError
from prunecli.metrics.accuracy import evaluate_onnx
from prunecli.metrics.macs import count_macs, onnx_macs
from prunecli.metrics.size import count_params, onnx_params, size_bytes
from prunecli.model_io import export_onnx
from prunecli.pipeline.state import RunState
from prunecli.quantize.ort_int8 import NumpyBatchReader, QuantizationError, quantize_onnx

STAGE = "quantized"


def quantize_stage(state: RunState, step: QuantizeStep) -> None:
    """Quantize the current model to int8 and measure it as stage ``quantized`` (or record why it could not)."""
    scratch = tempfile.TemporaryDirectory(prefix="prunecli-int8-")  # lives as long as the state (see RunState)
    state.quantization = {"mode": step.mode, "path": None, "error": None, "scratch": scratch}
    with state.timed("quantize"):
        try:
            path = _quantized(state, step, folder=Path(scratch.name))
        except (OnnxExportError, QuantizationError) as error:
            state.quantization["error"] = f"not quantized: {str(error).splitlines()[0]}"
            return
    state.quantization["path"] = path
    with state.timed("measure"):
        state.stages[STAGE] = _measure(state, path)
    state.snapshots[STAGE] = path


def _quantized(state: RunState, step: QuantizeStep, *, folder: Path) -> Path:
    """The int8 file of the current model: its ONNX export, or on an ONNX input the current file itself."""
    input_name = "input"  # the name export_onnx gives the graph input
    if state.module is None:
        float_path, input_name = state.loaded.onnx_path, _onnx_input_name(state.loaded.onnx_path)
    else:
        try:
            float_path = export_onnx(state.module.cpu(), state.sample[:2].cpu(), folder / "model.onnx")
        finally:
            state.module.to(state.device)
    batches = _calibration_batches(state, step) if step.mode == "static" else None
    reader = NumpyBatchReader(batches, input_name=input_name) if batches is not None else None
    return quantize_onnx(float_path, folder / "model.int8.onnx", mode=step.mode, calibration=reader)


def _calibration_batches(state: RunState, step: QuantizeStep) -> list[np.ndarray]:
    """``step.batches`` batches (of data.batch_size) of the train split, the eval split if there is none."""
    split = state.data.train if state.data.train is not None else state.data.eval
    size = state.pipeline.data.batch_size
    inputs = np.asarray(split.inputs, dtype=np.float32)
    return [inputs[start : start + size] for start in range(0, min(len(inputs), step.batches * size), size)]


def _onnx_input_name(path: Path) -> str:
    import onnx

    from prunecli.model_io.onnx_file import graph_input

    return graph_input(onnx.load(str(path), load_external_data=False)).name


def _measure(state: RunState, path: Path) -> dict[str, Any]:
    """The float model's params and MACs (on an ONNX input, the current file's), the int8 file's size and accuracy."""
    example = state.sample[:1]
    if state.module is None:
        float_path = state.loaded.onnx_path
        stage: dict[str, Any] = {"params": onnx_params(float_path), "macs": onnx_macs(float_path, example.shape)}
    else:
        stage = {"params": count_params(state.module), "macs": count_macs(state.module, example)}
    stage["size_bytes"] = size_bytes(path)
    stage.update(accuracy=None, top5=None, loss=None)
    if state.data.eval is not None:
        evaluation = evaluate_onnx(
            path, state.data.eval, batch_size=state.pipeline.data.batch_size, threads=state.pipeline.threads
        )
        stage.update(accuracy=evaluation.accuracy, top5=evaluation.top5, loss=evaluation.loss)
    return stage


def quantization_report(state: RunState, *, written: dict[str, Path]) -> dict[str, Any] | None:
    """The report's ``quantization`` entry: mode, the written int8 file (None when not quantized), the error."""
    if state.quantization is None:
        return None
    path = written.get("onnx_int8")
    return {"mode": state.quantization["mode"], "path": str(path) if path else None,
            "error": state.quantization["error"]}  # fmt: skip
