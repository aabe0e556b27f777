"""`prunecli run` on an ONNX model: score (static criteria), select, prune and evaluate on the ONNX graph."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import prunecli.onnx_graph.pipeline as onnx_pipeline
from prunecli.surgery.verify import Verification
from tests.conftest import CONFIGS, SAMPLES
from tests.test_end_to_end import FAST, cli

CONFIG = CONFIGS / "digits_cnn_onnx_l2_50.yaml"
INPUTS = np.load(SAMPLES / "digits_val.npz")["inputs"][:64]


def _outputs(model: onnx.ModelProto | Path) -> np.ndarray:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: INPUTS})[0]


def _run(out: Path, *extra: str) -> object:
    return cli("run", CONFIG, "-o", out, "--json", *FAST, *extra)


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, onnx.ModelProto]:
    """The config run once, with the in-run pruned graph captured from the prune step."""
    out = tmp_path_factory.mktemp("onnx_run")
    captured = []
    original = onnx_pipeline.prune_onnx_model
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            onnx_pipeline, "prune_onnx_model", lambda *a, **k: captured.append(original(*a, **k)) or captured[-1]
        )
        result = _run(out)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout), captured[0].model


def test_onnx_pipeline_reports_pruned_stage_and_verification(onnx_run) -> None:
    _, report, _ = onnx_run
    assert report["stages"] == ["original", "pruned", "evaluated"]
    original, pruned = report["original"], report["pruned"]
    assert pruned["macs"] < 0.3 * original["macs"]  # half the channels on both sides of most convs: ~1/4 left
    assert pruned["params"] < 0.3 * original["params"]
    assert original["accuracy"] > 0.95 and 0.5 < pruned["accuracy"] <= original["accuracy"]
    assert report["verification"]["passed"] and report["verification"]["max_abs_diff"] < 1e-4
    assert report["scoring"][0]["criterion"] == "l2" and report["scoring"][0]["groups_scored"] == 5
    kept = {row["name"]: (row["channels"], row["kept"]) for row in report["groups"]}
    assert kept["hidden_fc"] == (64, 32) and kept["fc"] == (10, 10)
    assert report["prunability"]["unprunable_reasons"] == {"reaches a model output": 1}
    assert report["pruned"]["latency_ms"]["backend"] == "onnxruntime"


def test_written_model_is_the_in_run_pruned_graph(onnx_run) -> None:
    out, report, in_run = onnx_run
    written = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(written, full_check=True)
    np.testing.assert_array_equal(_outputs(out / "model.onnx"), _outputs(in_run))
    source = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    assert [v.name for v in written.graph.input] == [v.name for v in source.graph.input]
    assert [v.name for v in written.graph.output] == [v.name for v in source.graph.output]
    assert list(written.opset_import) == list(source.opset_import)
    assert [n.name for n in written.graph.node] == [n.name for n in source.graph.node]
    assert report["model"] == {"path": str(SAMPLES / "digits_cnn.onnx"), "format": "onnx"}
    labels = np.load(SAMPLES / "digits_val.npz")["labels"][:64]
    assert float((_outputs(out / "model.onnx").argmax(1) == labels).mean()) > 0.5


def test_ratio_zero_writes_a_graph_with_the_inputs_outputs(tmp_path: Path) -> None:
    result = _run(tmp_path, "--set", "steps.1.ratio=0")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pruned"]["macs"] == report["original"]["macs"]
    np.testing.assert_allclose(_outputs(tmp_path / "model.onnx"), _outputs(SAMPLES / "digits_cnn.onnx"), atol=1e-6)


def test_target_macs_counts_the_candidate_graph(tmp_path: Path) -> None:
    result = _run(tmp_path, "--set", "steps.1={kind: select, target: {macs: 0.5}}")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pruned"]["macs"] / report["original"]["macs"] == pytest.approx(0.5, abs=0.05)
    assert report["verification"]["passed"]


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("steps.0.criterion={hybrid: {taylor: 0.5, bn_scale: 0.5}}",
         "steps.0: criterion bn_scale reads the scales of normalisation nodes and this ONNX graph has none"),
        ("steps.0.criterion=bn_scale", "criterion bn_scale reads the scales of normalisation nodes"),
    ],
    ids=["hybrid-with-bn-scale", "bn-scale"],
)
def test_torch_only_parts_are_refused_on_onnx(tmp_path: Path, setting: str, expected: str) -> None:
    result = _run(tmp_path / "out", "--set", setting)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_verification_mismatch_exits_3_with_the_report_and_no_model(tmp_path: Path, monkeypatch) -> None:
    original = onnx_pipeline.prune_onnx_model

    def mismatching(*args, **kwargs):
        outcome = original(*args, **kwargs)
        return dataclasses.replace(outcome, verification=Verification(0.5, outcome.verification.tolerance, False))

    monkeypatch.setattr(onnx_pipeline, "prune_onnx_model", mismatching)
    result = _run(tmp_path)
    assert result.exit_code == 3, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verification"] == {"max_abs_diff": 0.5, "tolerance": 1e-4, "passed": False}
    assert not (tmp_path / "model.onnx").exists()
