"""The whole tool on the bundled sample models, through the CLI and the runner API."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from prunecli.cli.app import app
from prunecli.config.loading import load_pipeline
from prunecli.pipeline.options import RunOptions
from prunecli.pipeline.runner import run_pipeline
from tests.conftest import CONFIGS, REPO, SAMPLES, save_sample_cnn_program

FAST = ["--set", "latency.repeats=3", "--set", "latency.warmup=1"]


def cli(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def write_pipeline(folder: Path, text: str) -> Path:
    path = folder / "pipeline.yaml"
    path.write_text(text.replace("SAMPLES", str(SAMPLES)))
    return path


CNN_PIPELINE = """
version: 1
model: {path: SAMPLES/digits_cnn.pt, arch: SAMPLES/archs.py:DigitsCNN, input_shape: [1, 1, 8, 8]}
data: {format: npz, train: SAMPLES/digits_train.npz, eval: SAMPLES/digits_val.npz}
steps:
  - {kind: score, criterion: l2}
  - {kind: select, ratio: 0.5}
  - {kind: prune}
latency: {repeats: 3, warmup: 1}
"""


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_runs(config: str, tmp_path: Path) -> None:
    result = cli("run", CONFIGS / config, "-o", tmp_path, "--json", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"original"} <= set(report["stages"])
    if report["verification"] is not None:
        assert report["verification"]["passed"]
    assert (tmp_path / "report.json").is_file() and (tmp_path / "report.md").is_file()
    assert (tmp_path / "pipeline.resolved.yaml").is_file() and (tmp_path / "model.onnx").is_file()


def test_demo_config_meets_its_promise(tmp_path: Path) -> None:
    result = cli("run", CONFIGS / "digits_cnn_l2_50.yaml", "-o", tmp_path, "--json", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    original, finetuned = report["original"], report["finetuned"]
    assert finetuned["macs"] <= 0.5 * original["macs"]
    assert finetuned["accuracy"] >= original["accuracy"] - 0.01
    for stage in ("original", "pruned", "finetuned"):
        assert set(report[stage]) >= {"params", "macs", "size_bytes", "latency_ms", "accuracy", "loss", "top5"}
        assert set(report[stage]["latency_ms"]) >= {"p50", "p90", "backend", "device", "threads", "batch_size"}
    assert {g["name"] for g in report["groups"]} >= {"stem_conv (+1 tied)", "hidden_fc", "fc"}


def test_ratio_zero_changes_no_output(tmp_path: Path) -> None:
    pipeline = load_pipeline(write_pipeline(tmp_path, CNN_PIPELINE), overrides=["steps.1.ratio=0"])
    result = run_pipeline(pipeline, options=RunOptions(output_dir=tmp_path / "out", base_dir=tmp_path))
    report = result.report
    assert report["pruned"]["params"] == report["original"]["params"]
    assert report["verification"]["max_abs_diff"] == 0.0
    assert report["pruned"]["accuracy"] == report["original"]["accuracy"]


def test_outputs_reload_in_a_fresh_process_and_agree(tmp_path: Path) -> None:
    pipeline = load_pipeline(write_pipeline(tmp_path, CNN_PIPELINE))
    out = tmp_path / "out"
    result = run_pipeline(pipeline, options=RunOptions(output_dir=out, base_dir=tmp_path))
    inputs = np.load(SAMPLES / "digits_val.npz")["inputs"][:16]
    with torch.inference_mode():
        expected = result.module(torch.from_numpy(inputs)).numpy()
    np.save(tmp_path / "inputs.npy", inputs)
    script = f"""
import numpy as np, torch, onnxruntime as ort
from pathlib import Path
from prunecli.config.schema import ModelSpec
from prunecli.model_io import load_model
x = np.load({str(tmp_path / 'inputs.npy')!r})
spec = ModelSpec(path={str(out / 'model.pt')!r}, arch={str(SAMPLES / 'archs.py:DigitsCNN')!r}, input_shape=[1, 1, 8, 8])
module = load_model(spec, base_dir=Path('.'), trust_pickle=False).module
with torch.inference_mode():
    np.save({str(tmp_path / 'torch.npy')!r}, module(torch.from_numpy(x)).numpy())
session = ort.InferenceSession({str(out / 'model.onnx')!r})
np.save({str(tmp_path / 'onnx.npy')!r}, session.run(None, {{session.get_inputs()[0].name: x}})[0])
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO)
    np.testing.assert_allclose(np.load(tmp_path / "torch.npy"), expected, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "onnx.npy"), expected, atol=1e-4)


def test_input_model_file_is_byte_identical_after_a_run(tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    shutil.copy(SAMPLES / "digits_cnn.pt", model)
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    result = cli("run", CONFIGS / "digits_cnn_l2_50.yaml", "--model", model, "-o", tmp_path / "out", "--json",
                 "--set", "steps.3.epochs=1", "--set", "gates.max_accuracy_drop=0.5", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before


def test_failed_gate_exits_1_after_writing_the_report(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, CNN_PIPELINE + "gates: {min_macs_reduction: 0.99}\n")
    result = cli("run", pipeline, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["gates"]["min_macs_reduction"]["passed"] is False


def test_torch_export_program_in_and_out(tmp_path: Path) -> None:
    save_sample_cnn_program(tmp_path / "cnn.pt2")
    result = cli("run", CONFIGS / "digits_cnn_l2_50.yaml", "--model", tmp_path / "cnn.pt2", "-o", tmp_path / "out",
                 "--json", "--set", "steps.3.epochs=1", "--set", "gates.max_accuracy_drop=0.5", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    reloaded = torch.export.load(tmp_path / "out" / "model.pt2").module()
    x = torch.from_numpy(np.load(SAMPLES / "digits_val.npz")["inputs"][:4])
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], reloaded(x).detach().numpy(), atol=1e-4)


def _error_line(result: object) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("criterion: l2", "critrion: l2"), "did you mean 'criterion'"),
        (lambda t: t.replace("ratio: 0.5", "ratio: half"), "steps.1.ratio"),
        (lambda t: t.replace("digits_cnn.pt", "missing.pt"), "does not exist"),
        (lambda t: t.replace("[1, 1, 8, 8]", "[1, 3, 32, 32]"), "shape"),
        (lambda t: t.replace("digits_cnn.pt", "digits_cnn.onnx").replace(", arch: SAMPLES/archs.py:DigitsCNN", "")
         .replace("criterion: l2", "criterion: bn_scale"), "ONNX"),
    ],
    ids=["unknown-key", "wrong-type", "missing-file", "shape-mismatch", "onnx-bn-scale-criterion"],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, edit, expected: str) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(edit(CNN_PIPELINE.replace("SAMPLES", str(SAMPLES))))
    result = cli("run", pipeline, "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert expected in _error_line(result)


def test_corrupt_checkpoint_exits_2(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((SAMPLES / "digits_cnn.pt").read_bytes()[:5000])
    result = cli("run", write_pipeline(tmp_path, CNN_PIPELINE), "--model", corrupt, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "corrupt.pt" in _error_line(result)


def test_pickled_module_needs_trust_pickle(tmp_path: Path) -> None:
    sys.path.insert(0, str(SAMPLES))
    try:
        from archs import DigitsMLP
    finally:
        sys.path.remove(str(SAMPLES))
    pickled = tmp_path / "whole.pt"
    torch.save(DigitsMLP(), pickled)
    pipeline = write_pipeline(tmp_path, CNN_PIPELINE.replace(", arch: SAMPLES/archs.py:DigitsCNN", ""))
    refused = cli("run", pipeline, "--model", pickled, "-o", tmp_path / "out")
    assert refused.exit_code == 2 and "--trust-pickle" in _error_line(refused)
    accepted = cli("run", pipeline, "--model", pickled, "-o", tmp_path / "out", "--trust-pickle", "--json")
    assert accepted.exit_code == 0, accepted.output
    assert json.loads(accepted.stdout)["verification"]["passed"]


def test_data_whose_shape_does_not_fit_exits_2(tmp_path: Path) -> None:
    data = tmp_path / "wrong.npz"
    np.savez(data, inputs=np.zeros((8, 3, 5, 5), np.float32), labels=np.zeros(8, np.int64))
    result = cli("run", write_pipeline(tmp_path, CNN_PIPELINE), "--data", data, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "shape" in _error_line(result)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_run(tmp_path: Path) -> None:
    result = cli("run", CONFIGS / "digits_cnn_l2_50.yaml", "-o", tmp_path, "--json", "--device", "cuda",
                 "--set", "steps.3.epochs=1", "--set", "gates.max_accuracy_drop=0.5",
                 "--set", "latency.backends=[torch]", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["device"] == "cuda" and report["pruned"]["latency_ms"]["device"] == "cuda"
    assert report["verification"]["passed"]


def test_a_surgery_that_breaks_the_invariant_is_an_internal_error(tmp_path: Path, monkeypatch) -> None:
    import prunecli.surgery.verify as verify

    monkeypatch.setattr(verify, "zero_removed", lambda module, keep: None)  # the reference is left unmasked
    result = cli("run", write_pipeline(tmp_path, CNN_PIPELINE), "-o", tmp_path / "out")
    assert result.exit_code == 3
    assert "differ from the masked original" in _error_line(result)
    assert not (tmp_path / "out" / "model.pt").exists()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verification"]["passed"] is False and report["verification"]["max_abs_diff"] > 1e-3
