"""The quantize step: int8 ONNX through ONNX Runtime, measured beside the float model (issue 8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from prunecli.config.loading import load_pipeline
from prunecli.errors import InputError, OnnxExportError
from prunecli.model_io import export_onnx
from prunecli.pipeline.options import RunOptions
from prunecli.pipeline.runner import run_pipeline
from prunecli.quantize.ort_int8 import NumpyBatchReader, QuantizationError, quantize_onnx
from tests.conftest import SAMPLES, load_sample_cnn

PIPELINE = """
version: 1
model: {path: SAMPLES/digits_cnn.pt, arch: SAMPLES/archs.py:DigitsCNN, input_shape: [1, 1, 8, 8]}
data: {format: npz, train: SAMPLES/digits_train.npz, eval: SAMPLES/digits_val.npz}
steps:
  - {kind: quantize, mode: MODE, batches: 4}
latency: {repeats: 6, warmup: 1}
gates: {max_accuracy_drop: 0.01, min_speedup: 0.01}
"""


def _run(folder: Path, mode: str) -> tuple[dict, Path]:
    path = folder / "pipeline.yaml"
    path.write_text(PIPELINE.replace("SAMPLES", str(SAMPLES)).replace("MODE", mode))
    out = folder / "out"
    result = run_pipeline(load_pipeline(path), options=RunOptions(output_dir=out, base_dir=folder))
    return result.report, out


@pytest.fixture(scope="module", params=["dynamic", "static"])
def quantized_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    return _run(tmp_path_factory.mktemp(request.param), request.param)


def test_int8_is_3x_smaller_and_within_a_point(quantized_run: tuple[dict, Path]) -> None:
    report, out = quantized_run
    float_bytes, int8_bytes = (out / "model.onnx").stat().st_size, (out / "model.int8.onnx").stat().st_size
    assert float_bytes >= 3 * int8_bytes
    quantized = report["quantized"]
    assert quantized["size_bytes"] == int8_bytes
    assert quantized["params"] == report["original"]["params"] and quantized["macs"] == report["original"]["macs"]
    assert abs(quantized["accuracy"] - report["original"]["accuracy"]) <= 0.01
    assert report["gates"]["max_accuracy_drop"]["passed"]
    assert report["stages"][-1] == "quantized" and report["quantization"]["error"] is None


def test_int8_latency_is_measured_on_onnxruntime_only(quantized_run: tuple[dict, Path]) -> None:
    report, out = quantized_run
    torch_record, ort_record = report["quantized"]["latency"]
    assert torch_record["backend"] == "torch" and torch_record["unavailable"]
    assert ort_record["backend"] == "onnxruntime" and ort_record["p50"] > 0 and ort_record["speedup"]
    assert report["quantized"]["latency_ms"] == ort_record  # the first backend measured for this stage
    assert report["gates"]["min_speedup"]["value"] == ort_record["speedup"]["median"]
    assert "quantized" in (out / "report.md").read_text()


def test_int8_file_runs_in_onnxruntime(quantized_run: tuple[dict, Path]) -> None:
    _, out = quantized_run
    session = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    batch = np.load(SAMPLES / "digits_val.npz")["inputs"][:5].astype(np.float32)
    (logits,) = session.run(None, {session.get_inputs()[0].name: batch})
    assert logits.shape == (5, 10)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_quantize_onnx_writes_a_loadable_int8_model(mode: str, tmp_path: Path) -> None:
    float_path = export_onnx(load_sample_cnn(), torch.zeros(2, 1, 8, 8), tmp_path / "model.onnx")
    batches = [np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32) for _ in range(2)]
    out = quantize_onnx(float_path, tmp_path / "model.int8.onnx", mode=mode, calibration=NumpyBatchReader(batches))
    assert out.stat().st_size * 3 <= float_path.stat().st_size
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert not list(tmp_path.glob(".*tmp*"))


def test_static_without_calibration_and_a_broken_file_are_one_line_errors(tmp_path: Path) -> None:
    float_path = export_onnx(load_sample_cnn(), torch.zeros(2, 1, 8, 8), tmp_path / "model.onnx")
    with pytest.raises(QuantizationError, match="calibration batches"):
        quantize_onnx(float_path, tmp_path / "q.onnx", mode="static", calibration=None)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(QuantizationError, match="could not quantize") as caught:
        quantize_onnx(broken, tmp_path / "q.onnx", mode="dynamic")
    assert "\n" not in str(caught.value) and not (tmp_path / "q.onnx").exists()


def test_failed_export_reports_the_int8_model_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> Path:
        raise OnnxExportError("cannot export the model to ONNX (test)")

    monkeypatch.setattr("prunecli.quantize.stage.export_onnx", fail)
    report, out = _run(tmp_path, "static")
    assert report["quantization"]["error"].startswith("not quantized: cannot export")
    assert report["quantization"]["path"] is None and "quantized" not in report["stages"]
    assert not (out / "model.int8.onnx").exists() and (out / "model.onnx").is_file() and (out / "report.md").is_file()


def test_quantize_must_be_last(tmp_path: Path) -> None:
    quantize = "  - {kind: quantize, mode: MODE, batches: 4}\n"
    text = PIPELINE.replace(quantize, quantize + "  - {kind: evaluate}\n").replace("SAMPLES", str(SAMPLES))
    path = tmp_path / "pipeline.yaml"
    path.write_text(text.replace("MODE", "dynamic"))
    with pytest.raises(InputError, match="'quantize' must be the last step"):
        load_pipeline(path)


def test_quantize_on_an_onnx_model_quantizes_the_file_itself(tmp_path: Path) -> None:
    export_onnx(load_sample_cnn(), torch.zeros(2, 1, 8, 8), tmp_path / "model.onnx")
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "version: 1\nmodel: {path: model.onnx, input_shape: [1, 1, 8, 8]}\n"
        f"data: {{format: npz, eval: {SAMPLES}/digits_val.npz}}\nsteps: [{{kind: quantize, mode: dynamic}}]\n"
        "latency: {repeats: 3, warmup: 1}\n"
    )
    options = RunOptions(output_dir=tmp_path / "out", base_dir=tmp_path)
    report = run_pipeline(load_pipeline(path), options=options).report
    assert report["stages"] == ["original", "quantized"] and report["quantization"]["error"] is None
    assert report["quantized"]["params"] == report["original"]["params"]  # the float graph's, no export
    assert report["quantized"]["size_bytes"] < 0.5 * report["original"]["size_bytes"]
    assert report["quantized"]["accuracy"] > report["original"]["accuracy"] - 0.02
    assert (tmp_path / "out" / "model.int8.onnx").is_file()
