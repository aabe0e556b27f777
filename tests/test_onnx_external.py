"""ONNX models with external data (``.onnx`` + ``.data``) load, prune, verify, and are written the same way."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.external_data_helper import uses_external_data as tensor_is_external

import prunecli.model_io.onnx_external as onnx_external
import prunecli.onnx_graph.pipeline as onnx_pipeline
from prunecli.model_io import save_onnx_model
from prunecli.model_io.onnx_external import external_data_files, onnx_file_bytes, write_onnx
from tests.conftest import CONFIGS, SAMPLES
from tests.test_end_to_end import FAST, cli

SOURCE = SAMPLES / "digits_cnn.onnx"
INPUTS = np.load(SAMPLES / "digits_val.npz")["inputs"][:64]


def _outputs(model: str | bytes) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: INPUTS})[0]


def _digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def external_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, onnx.ModelProto, dict]:
    """The sample CNN saved with every tensor in ``weights.bin``, run through the ONNX config once."""
    source = tmp_path_factory.mktemp("source")
    onnx.save_model(
        onnx.load(str(SOURCE)), str(source / "cnn.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
        location="weights.bin", size_threshold=0,
    )  # fmt: skip
    before = _digests(source)
    out = tmp_path_factory.mktemp("external") / "out"
    captured = []
    original = onnx_pipeline.prune_onnx_model
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            onnx_pipeline, "prune_onnx_model", lambda *a, **k: captured.append(original(*a, **k)) or captured[-1]
        )
        result = cli("run", CONFIGS / "digits_cnn_onnx_l2_50.yaml", "--model", source / "cnn.onnx", "-o", out,
                     "--json", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    return source, out, json.loads(result.stdout), captured[0].model, before


def test_input_with_external_data_is_pruned_and_verified(external_run) -> None:
    source, _, report, _, _ = external_run
    assert report["verification"]["passed"] and report["verification"]["max_abs_diff"] < 1e-4
    assert report["pruned"]["macs"] < 0.3 * report["original"]["macs"]
    assert report["original"]["accuracy"] > 0.95
    assert report["original"]["size_bytes"] == (source / "cnn.onnx").stat().st_size + (
        source / "weights.bin"
    ).stat().st_size  # the graph and its data both count


def test_output_is_written_with_external_data_beside_it(external_run) -> None:
    _, out, report, in_run, _ = external_run
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    weights = [tensor for tensor in graph.graph.initializer if tensor.name.endswith("weight")]
    assert weights and all(tensor_is_external(tensor) for tensor in weights)
    assert external_data_files(out / "model.onnx") == [out / "model.onnx.data"]
    assert (out / "model.onnx").stat().st_size < 16_000 < (out / "model.onnx.data").stat().st_size
    assert report["outputs"]["onnx_data"] == str(out / "model.onnx.data")
    assert "model.onnx.data" in json.loads((out / ".prunecli-manifest.json").read_text())["files"]
    assert report["pruned"]["size_bytes"] < report["original"]["size_bytes"]
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    np.testing.assert_array_equal(_outputs(str(out / "model.onnx")), _outputs(in_run.SerializeToString()))


def test_input_files_are_untouched(external_run) -> None:
    source, _, _, _, before = external_run
    assert _digests(source) == before


def test_embedded_input_gives_an_embedded_output(tmp_path: Path) -> None:
    written = save_onnx_model(onnx.load(str(SOURCE)), out_dir=tmp_path)
    assert set(written) == {"model", "onnx"} and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert onnx_file_bytes(written["onnx"]) == written["onnx"].stat().st_size


def test_weights_over_the_protobuf_limit_go_to_external_data(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(onnx_external, "INLINE_LIMIT_BYTES", 100_000)  # the sample's 380 kB stand for > 2 GB
    model = onnx.load(str(SOURCE))
    files = write_onnx(model, tmp_path / "model.onnx", external_data=False)
    assert files == [tmp_path / "model.onnx.data", tmp_path / "model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]  # no scratch left
    assert all(not tensor_is_external(tensor) for tensor in model.graph.initializer)  # the caller's model is intact
    np.testing.assert_array_equal(_outputs(str(tmp_path / "model.onnx")), _outputs(str(SOURCE)))


def test_a_graph_over_the_protobuf_limit_is_pruned_through_files(external_run, tmp_path: Path, monkeypatch) -> None:
    """With the limit lowered under the sample's 380 kB, checker and ONNX Runtime read the graph from files.

    A graph over 2 GB always comes with external data (it cannot be one protobuf file), as the input here.
    """
    source = external_run[0]
    monkeypatch.setattr(onnx_external, "INLINE_LIMIT_BYTES", 100_000)
    serialise = onnx.ModelProto.SerializeToString

    def limited(model: onnx.ModelProto, **options) -> bytes:  # protobuf's limit, scaled down as above
        if sum(len(tensor.raw_data) for tensor in model.graph.initializer) > 100_000:
            raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB")
        return serialise(model, **options)

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", limited)
    result = cli("run", CONFIGS / "digits_cnn_onnx_l2_50.yaml", "--model", source / "cnn.onnx", "-o", tmp_path / "out",
                 "--json", *FAST)  # fmt: skip
    monkeypatch.undo()
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["verification"]["passed"] and report["pruned"]["macs"] < 0.3 * report["original"]["macs"]
    assert sorted(p.name for p in (tmp_path / "out").glob("model.onnx*")) == ["model.onnx", "model.onnx.data"]
    assert _outputs(str(tmp_path / "out" / "model.onnx")).shape == (64, 10)
