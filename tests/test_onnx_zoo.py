"""The ONNX zoo: the torch zoo's architectures exported to ONNX twice and pruned natively on the graph.

Markers: every test here is marked ``zoo``, like ``tests/test_zoo.py`` (``pytest -m zoo`` runs both zoos,
``pytest -m "not zoo"`` skips them), and ``onnx_zoo``: the 78 cases take ~7 min on two cores (the
dynamo exporter alone needs 5-30 s per model), too long for ``make test``, which skips them; CI runs them
as its second step (``make onnx-zoo``, ``.ci/run``).

Each architecture of ``tests.test_zoo.ZOO`` (timm, random weights, the same smallest input side) is
exported by torch's TorchScript exporter (opset 17) and by its dynamo exporter (opset 18), both with
a dynamic batch axis, and each export is pruned through the CLI's code path (``run_pipeline`` on an
ONNX ``model.path``: score l2, select ratio 0.5, prune). Each case checks: the runner's verification
in ONNX Runtime passed (pruned == masked original), the pruned graph has fewer MACs, and the written
``model.onnx`` reloads in ONNX Runtime with outputs equal to the in-run pruned graph's on a batch of 2
(through the dynamic batch axis), keeping the export's graph input and output names, its symbolic batch
dimension and its opset imports.

Cases the ONNX front-end cannot prune yet are listed in ``KNOWN_FAILURES`` (exporter, architecture)
with the reason, as strict xfails: CI stays green, and a fixed case (an XPASS) fails until its entry
is removed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml

import prunecli.onnx_graph.pipeline as onnx_pipeline
from prunecli.capture import captured_output
from prunecli.config.loading import load_pipeline
from prunecli.pipeline.options import RunOptions
from prunecli.pipeline.runner import run_pipeline
from tests.conftest import REPO
from tests.test_zoo import NUM_CLASSES, ZOO, ZooCase

pytestmark = [pytest.mark.zoo, pytest.mark.onnx_zoo]

EXPORTERS = {"torchscript": 17, "dynamo": 18}  # exporter -> opset
RELOAD_BATCH = 2  # the reload runs a batch the export never saw: the dynamic axis must hold

_STANDARDISED_WEIGHTS = (
    "ScaledStdConv2d standardises every conv weight inside the graph (Reshape -> BatchNormalization -> Reshape "
    "of the initializer): no Conv reads a weight initializer, so no prunable group is found and MACs cannot drop"
)
KNOWN_FAILURES: dict[tuple[str, str], str] = {
    ("torchscript", "nf_resnet26"): _STANDARDISED_WEIGHTS,
    ("dynamo", "nf_resnet26"): _STANDARDISED_WEIGHTS,
}


def _params() -> list:
    params = []
    for exporter in EXPORTERS:
        for zoo_case in ZOO:
            reason = KNOWN_FAILURES.get((exporter, zoo_case.name))
            marks = pytest.mark.xfail(strict=True, reason=reason) if reason else ()
            params.append(pytest.param(exporter, zoo_case, id=f"{exporter}-{zoo_case.name}", marks=marks))
    return params


def test_known_failures_are_onnx_zoo_cases() -> None:
    names = {zoo_case.name for zoo_case in ZOO}
    assert all(exporter in EXPORTERS and name in names for exporter, name in KNOWN_FAILURES)


@pytest.mark.parametrize("exporter", sorted(EXPORTERS))
def test_at_least_90_percent_of_each_exporters_cases_are_expected_to_pass(exporter: str) -> None:
    failing = sum(1 for known_exporter, _ in KNOWN_FAILURES if known_exporter == exporter)
    assert failing <= 0.1 * len(ZOO), f"{failing} of {len(ZOO)} {exporter} cases are known failures"


@pytest.mark.parametrize(("exporter", "zoo_case"), _params())
def test_onnx_export_prunes_verifies_and_reloads(
    exporter: str, zoo_case: ZooCase, timm_module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = _write_case(zoo_case, exporter=exporter, timm=timm_module, folder=tmp_path)
    captured = []
    original = onnx_pipeline.prune_onnx_model
    monkeypatch.setattr(
        onnx_pipeline, "prune_onnx_model", lambda *a, **k: captured.append(original(*a, **k)) or captured[-1]
    )
    result = run_pipeline(load_pipeline(pipeline), options=RunOptions(output_dir=tmp_path / "out", base_dir=tmp_path))
    report = result.report
    assert report["verification"]["passed"], report["verification"]
    assert report["pruned"]["macs"] < report["original"]["macs"]
    inputs = np.random.default_rng(1).standard_normal((RELOAD_BATCH, 3, zoo_case.input_size, zoo_case.input_size))
    inputs = inputs.astype(np.float32)
    expected = _outputs(captured[-1].model.SerializeToString(), inputs)
    actual = _outputs(str(result.written["model"]), inputs)
    assert actual.shape[0] == RELOAD_BATCH
    np.testing.assert_array_equal(actual, expected)
    source = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    written = onnx.load(str(result.written["model"]), load_external_data=False)
    assert [(v.name, v.type.tensor_type.shape.dim[0].dim_param) for v in written.graph.input] == [
        (v.name, v.type.tensor_type.shape.dim[0].dim_param) for v in source.graph.input
    ]  # names and the dynamic batch axis kept
    assert [v.name for v in written.graph.output] == [v.name for v in source.graph.output]
    assert list(written.opset_import) == list(source.opset_import)


def _write_case(zoo_case: ZooCase, *, exporter: str, timm: Any, folder: Path) -> Path:
    """Export the architecture into ``folder/model.onnx`` and write an eval split and the pipeline beside it."""
    kwargs = {"model_name": zoo_case.name, "pretrained": False, "num_classes": NUM_CLASSES, **dict(zoo_case.kwargs)}
    torch.manual_seed(0)
    model = timm.create_model(**kwargs).eval()
    shape = [1, 3, zoo_case.input_size, zoo_case.input_size]
    _export(model, torch.randn(RELOAD_BATCH, *shape[1:]), folder / "model.onnx", exporter=exporter)
    generator = np.random.default_rng(0)
    inputs = generator.standard_normal((RELOAD_BATCH, *shape[1:]), dtype=np.float32)
    np.savez(folder / "eval.npz", inputs=inputs, labels=generator.integers(0, NUM_CLASSES, RELOAD_BATCH))
    pipeline = {
        "version": 1,
        "model": {"path": "model.onnx", "input_shape": shape},
        "data": {"format": "npz", "eval": "eval.npz"},
        "steps": [{"kind": "score", "criterion": "l2"}, {"kind": "select", "ratio": 0.5}, {"kind": "prune"}],
        "latency": {"repeats": 1, "warmup": 0, "backends": ["onnxruntime"]},
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path, *, exporter: str) -> None:
    """``torch.onnx.export`` by ``exporter`` at its opset, batch axis dynamic, weights inside the file."""
    options: dict[str, Any] = {"input_names": ["input"], "output_names": ["output"]}
    if exporter == "dynamo":
        options.update(dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},), external_data=False)
    else:
        options.update(dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    with torch.no_grad(), warnings.catch_warnings(), captured_output():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), dynamo=exporter == "dynamo", opset_version=EXPORTERS[exporter], **options
        )
    onnx.checker.check_model(str(path), full_check=True)
    batch = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param, f"the {exporter} exporter fixed the batch axis to {batch.dim_value}"


def _outputs(model: str | bytes, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def test_resnet50_bench_prints_one_json_row_per_mode(timm_module, capsys, monkeypatch) -> None:
    """bench/onnx_resnet50.py on a small stand-in (resnet18 at 32x32, one run per mode)."""
    spec = importlib.util.spec_from_file_location("onnx_resnet50", REPO / "bench" / "onnx_resnet50.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "onnx_resnet50", bench)
    spec.loader.exec_module(bench)
    bench.main(["--model", "resnet18", "--input-size", "32", "--repeats", "1", "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["mode"] for row in rows] == ["surgery", "verified"]
    for row in rows:
        assert 0 < row["median_s"] and row["baseline_rss_mb"] < row["loaded_rss_mb"] <= row["peak_rss_mb"]
        assert row["file_mb"] > 10 and row["tracemalloc_peak_mb"] > 0
    assert rows[1]["max_abs_diff"] < 1e-3
