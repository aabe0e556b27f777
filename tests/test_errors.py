"""One line per error: third-party dumps, logs and warnings never reach the terminal (unless --debug)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests import awkward_models
from tests.conftest import REPO, SAMPLES, save_sample_cnn_program
from tests.test_end_to_end import CNN_PIPELINE, write_pipeline

AWKWARD = Path(awkward_models.__file__)


def prunecli(*args: object) -> subprocess.CompletedProcess:
    """The real CLI in a fresh process: what a user's terminal gets, file descriptors included."""
    command = [sys.executable, "-m", "prunecli", *(str(a) for a in args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO)


def awkward_pipeline(folder: Path, arch: str) -> Path:
    torch.manual_seed(0)
    torch.save(getattr(awkward_models, arch)().state_dict(), folder / "model.pt")
    text = CNN_PIPELINE.replace("SAMPLES/digits_cnn.pt", str(folder / "model.pt"))
    return write_pipeline(folder, text.replace("SAMPLES/archs.py:DigitsCNN", f"{AWKWARD}:{arch}"))


def assert_one_line(completed: subprocess.CompletedProcess, *, exit_code: int, contains: str) -> None:
    assert completed.returncode == exit_code, completed.stderr
    assert completed.stdout == ""
    lines = completed.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], completed.stderr


def test_an_untraceable_model_is_one_line_without_graph_dumps(tmp_path: Path) -> None:
    completed = prunecli("run", awkward_pipeline(tmp_path, "UntraceableBranch"), "-o", tmp_path / "out")
    assert_one_line(completed, exit_code=2, contains="cannot trace the model")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    completed = prunecli("run", awkward_pipeline(tmp_path, "UntraceableBranch"), "-o", tmp_path / "out", "--debug")
    assert completed.returncode == 2 and "Traceback" in completed.stderr


def test_a_corrupt_pt2_is_one_line(tmp_path: Path) -> None:
    corrupt = tmp_path / "model.pt2"
    corrupt.write_bytes((SAMPLES / "digits_cnn.pt").read_bytes()[:300])
    completed = prunecli("run", write_pipeline(tmp_path, CNN_PIPELINE), "--model", corrupt, "-o", tmp_path / "out")
    assert_one_line(completed, exit_code=2, contains="cannot read exported program")


def test_a_pt2_run_prints_no_warnings(tmp_path: Path) -> None:
    save_sample_cnn_program(tmp_path / "cnn.pt2")
    pipeline = write_pipeline(tmp_path, CNN_PIPELINE)
    completed = prunecli("run", pipeline, "--model", tmp_path / "cnn.pt2", "-o", tmp_path / "out", "--json")
    assert completed.returncode == 0 and completed.stderr == "", completed.stderr
    json.loads(completed.stdout)


@pytest.mark.parametrize(
    "args",
    [
        ["run", "missing.yaml"],
        ["run", "PIPELINE", "--set", "steps.1.ratio=2"],
        ["run", "PIPELINE", "--model", str(SAMPLES / "digits_val.npz")],
        ["run", "PIPELINE", "--data", str(SAMPLES / "digits_cnn.pt")],
        ["validate", "PIPELINE", "--set", "steps.9.kind=prune"],
        ["inspect", str(SAMPLES / "digits_cnn.pt")],
    ],
    ids=["no-pipeline", "bad-value", "model-is-data", "data-is-model", "bad-override", "inspect-without-arch"],
)
def test_exit_2_output_is_at_most_3_lines(args: list[str], tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, CNN_PIPELINE)
    arguments = [str(pipeline) if arg == "PIPELINE" else arg for arg in args]
    completed = prunecli(*arguments, *(["-o", tmp_path / "out"] if args[0] == "run" else []))
    assert completed.returncode == 2, completed.stderr
    assert len((completed.stdout + completed.stderr).splitlines()) <= 3, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr


# --- ONNX export: best effort ------------------------------------------------------------------


def test_a_model_the_torchscript_exporter_refuses_is_exported_by_dynamo(tmp_path: Path) -> None:
    completed = prunecli("run", awkward_pipeline(tmp_path, "ErfcxNet"), "-o", tmp_path / "out", "--json")
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["onnx_export_error"] is None
    assert [latency["backend"] for latency in report["pruned"]["latency"]] == ["torch", "onnxruntime"]
    assert all(latency["p50"] > 0 for latency in report["pruned"]["latency"])
    _assert_onnx_agrees_with_torch(tmp_path / "out")


def test_a_model_no_exporter_handles_still_gets_its_outputs_and_report(tmp_path: Path) -> None:
    completed = prunecli("run", awkward_pipeline(tmp_path, "BesselNet"), "-o", tmp_path / "out", "--json")
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert "bessel_j0" in report["onnx_export_error"]
    onnx_latency = report["pruned"]["latency"][1]
    assert onnx_latency["p50"] is None and "bessel_j0" in onnx_latency["unavailable"]
    written = {path.name for path in (tmp_path / "out").iterdir()}
    assert {"model.pt", "model.plan.json", "report.json", "report.md"} <= written and "model.onnx" not in written


def _assert_onnx_agrees_with_torch(out: Path) -> None:
    import prunecli

    module = prunecli.load(out)
    inputs = np.load(SAMPLES / "digits_val.npz")["inputs"][:8]
    with torch.inference_mode():
        expected = module(torch.from_numpy(inputs)).numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": inputs})[0], expected, atol=1e-4)
