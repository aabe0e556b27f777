"""reconstruct, sensitivity, sparsify, quantize and repeat on an ONNX input, computed with ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from prunecli.reconstruct.onnx_layers import reconstruct_onnx
from tests.conftest import CONFIGS, SAMPLES
from tests.test_end_to_end import FAST, cli

CONFIG = CONFIGS / "digits_cnn_onnx_demo.yaml"  # prune, reconstruct, finetune, evaluate
VAL = np.load(SAMPLES / "digits_val.npz")
TRAIN = np.load(SAMPLES / "digits_train.npz")["inputs"]


def _outputs(model: onnx.ModelProto | Path, inputs: np.ndarray) -> np.ndarray:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def _accuracy(path: Path) -> float:
    return float((_outputs(path, VAL["inputs"]).argmax(1) == VAL["labels"]).mean())


def _run(config: Path, out: Path, *extra: str) -> dict:
    result = cli("run", config, "-o", out, "--json", *FAST, *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def reconstructed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("onnx_reconstruct")
    return out, _run(CONFIG, out)


def test_reconstruct_alone_recovers_at_least_half_of_the_accuracy_lost_on_the_onnx_cnn(reconstructed) -> None:
    out, report = reconstructed
    assert report["stages"] == ["original", "pruned", "reconstructed", "finetuned", "evaluated"]
    original, pruned, rebuilt = (report[stage]["accuracy"] for stage in ("original", "pruned", "reconstructed"))
    assert original - pruned > 0.1  # pruning at 0.5 costs a lot without recovery
    assert rebuilt - pruned >= 0.5 * (original - pruned), (original, pruned, rebuilt)
    assert report["reconstructed"]["params"] == report["pruned"]["params"]
    assert _accuracy(out / "model.onnx") == pytest.approx(report["evaluated"]["accuracy"])  # the written graph
    onnx.checker.check_model(onnx.load(str(out / "model.onnx")), full_check=True)


def test_onnx_demo_lands_within_a_point_of_the_same_pipeline_on_the_torch_model(reconstructed, tmp_path) -> None:
    _, onnx_report = reconstructed
    pipeline = yaml.safe_load(CONFIG.read_text())
    pipeline["model"] = {"path": str(SAMPLES / "digits_cnn.pt"), "arch": f"{SAMPLES / 'archs.py'}:DigitsCNN",
                         "input_shape": [1, 1, 8, 8]}
    pipeline["data"] = {**pipeline["data"], "train": str(SAMPLES / "digits_train.npz"),
                        "eval": str(SAMPLES / "digits_val.npz")}
    (tmp_path / "torch.yaml").write_text(yaml.safe_dump(pipeline))
    torch_report = _run(tmp_path / "torch.yaml", tmp_path / "out")
    assert onnx_report["finetuned"]["accuracy"] >= onnx_report["original"]["accuracy"] - 0.01
    assert abs(onnx_report["finetuned"]["accuracy"] - torch_report["finetuned"]["accuracy"]) <= 0.01
    assert onnx_report["finetuned"]["macs"] == torch_report["finetuned"]["macs"]


def test_onnx_reconstruction_reports_the_error_of_each_layer_before_and_after(reconstructed) -> None:
    out, report = reconstructed
    (step,) = report["reconstruction"]["steps"]
    layers = {layer["name"]: layer for layer in step["layers"]}
    assert list(layers) == ["res_conv1", "res_conv2", "branch1_conv", "branch3_conv", "hidden_fc", "fc"]
    assert layers["res_conv1"]["kind"] == "Conv" and layers["res_conv1"]["inputs"] == "16/32"
    assert layers["hidden_fc"]["kind"] == "Gemm" and layers["hidden_fc"]["inputs"] == "512/1024"
    assert all(layer["error_after"] < layer["error_before"] for layer in step["layers"])
    assert step["samples"] == 512 and step["skipped"] == {}
    assert "| res_conv1 | Conv | 16/32 |" in (out / "report.md").read_text()


def _full_keep(model: onnx.ModelProto) -> dict[str, dict[int, list[int]]]:
    """Every Conv / Gemm weight marked as having lost input positions, all of them kept."""
    shapes = {tensor.name: list(tensor.dims) for tensor in model.graph.initializer}
    keep = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            dim = 0 if node.op_type == "MatMul" or (node.op_type == "Gemm" and not trans_b) else 1
            keep[node.input[1]] = {dim: list(range(shapes[node.input[1]][dim]))}
    return keep


def test_pruning_nothing_then_reconstructing_leaves_the_outputs_equal() -> None:
    model = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    batches = [TRAIN[:64], TRAIN[64:128]]
    refit, result = reconstruct_onnx(model, model, _full_keep(model), batches=batches, ridge=1e-2)
    assert len(result.layers) == 7 and result.skipped == {}  # every Conv and Gemm, stem_conv included
    assert all(layer.error_before < 1e-9 for layer in result.layers)  # rows and columns line up with the graph
    np.testing.assert_allclose(_outputs(refit, VAL["inputs"]), _outputs(model, VAL["inputs"]), atol=1e-4)


def _attribute_forms_graph(auto_pad: str) -> onnx.ModelProto:
    """Conv (``auto_pad``, stride 2 on 8x8: one row and column of padding, on one side) -> Flatten ->
    Gemm (transB=0, alpha, beta) -> MatMul + Add."""
    rng = np.random.default_rng(0)
    weights = {"w_conv": (6, 4, 3, 3), "b_conv": (6,), "w_gemm": (96, 5), "c_gemm": (5,), "w_mm": (5, 3), "b_mm": (3,)}
    initializers = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in weights.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w_conv", "b_conv"], ["c"], name="/conv/Conv", auto_pad=auto_pad,
                         strides=[2, 2]),  # fmt: skip
        helper.make_node("Relu", ["c"], ["r"], name="/relu/Relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="/Flatten"),
        helper.make_node("Gemm", ["f", "w_gemm", "c_gemm"], ["g"], name="/gemm/Gemm", alpha=0.5, beta=2.0),
        helper.make_node("MatMul", ["g", "w_mm"], ["m"], name="/head/MatMul"),
        helper.make_node("Add", ["m", "b_mm"], ["y"], name="/head/Add"),
    ]
    graph = helper.make_graph(
        nodes, "forms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], initializers,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_conv_auto_pad_gemm_trans_b_alpha_beta_and_matmul_add_are_refit_exactly(auto_pad: str) -> None:
    model = _attribute_forms_graph(auto_pad)
    batches = [np.random.default_rng(seed).standard_normal((64, 4, 8, 8)).astype(np.float32) for seed in (1, 2)]
    refit, result = reconstruct_onnx(model, model, _full_keep(model), batches=batches, ridge=1e-6)
    assert [(layer.name, layer.kind) for layer in result.layers] == [("conv", "Conv"), ("gemm", "Gemm"),
                                                                     ("head", "MatMul")]  # fmt: skip
    assert all(layer.error_before < 1e-9 and layer.error_after < 1e-9 for layer in result.layers)
    fresh = np.random.default_rng(3).standard_normal((16, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_outputs(refit, fresh), _outputs(model, fresh), rtol=1e-4, atol=1e-4)


def _sweep(config: Path, out: Path, ratios: str) -> dict:
    result = cli("sensitivity", config, "--ratios", ratios, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _most_sensitive(sweep: dict, count: int) -> set[str]:
    base = sweep["baseline"]["accuracy"]
    drops = {group["name"]: np.mean([base - p["accuracy"] for p in group["curve"]]) for group in sweep["groups"]}
    return set(sorted(drops, key=drops.get, reverse=True)[:count])


def test_sensitivity_on_onnx_sweeps_every_group_and_ranks_them_like_torch(tmp_path: Path) -> None:
    sweep = _sweep(CONFIG, tmp_path / "onnx", "0.25,0.5,0.75")
    assert sweep["baseline"]["accuracy"] == pytest.approx(_accuracy(SAMPLES / "digits_cnn.onnx"))
    names = {group["name"] for group in sweep["groups"]}
    assert names == {"stem_conv (+1 tied)", "res_conv1", "branch1_conv", "branch3_conv", "hidden_fc"}
    for group in sweep["groups"]:
        assert [p["removed"] for p in group["curve"]] == [group["channels"] * k // 4 for k in (1, 2, 3)]
        assert all(0 <= p["accuracy"] <= 1 and p["loss"] > 0 for p in group["curve"])
    assert (tmp_path / "onnx" / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    torch_sweep = _sweep(CONFIGS / "digits_cnn_l2_50.yaml", tmp_path / "torch", "0.25,0.5,0.75")
    assert _most_sensitive(sweep, 2) == _most_sensitive(torch_sweep, 2) == {"stem_conv (+1 tied)", "res_conv1"}


def test_select_by_sensitivity_then_sparsify_on_onnx_zeroes_the_written_initializers(tmp_path: Path) -> None:
    steps = (
        "steps=[{kind: score, criterion: l2}, {kind: select, by: sensitivity, max_drop: 0.01, "
        "sensitivity_ratios: [0.5]}, {kind: prune}, {kind: sparsify, ratio: 0.5}]"
    )
    report = _run(CONFIG, tmp_path, "--set", steps)
    assert report["stages"] == ["original", "pruned", "sparsified"]
    kept = {row["name"]: row["kept"] for row in report["groups"]}
    assert kept["stem_conv (+1 tied)"] == 32 and kept["hidden_fc"] == 32  # the sensitive group stays whole
    written = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "model.onnx")).graph.initializer}
    assert set(report["sparsity"]["layers"]) == {"onnx::Conv_58", "onnx::Conv_61", "onnx::Conv_64", "onnx::Conv_67",
                                                 "onnx::Conv_70", "hidden_fc.weight"}  # fmt: skip
    for name in report["sparsity"]["layers"]:
        assert (written[name] == 0).mean() == pytest.approx(0.5, abs=0.01)
    assert (written["fc.weight"] != 0).all()  # the output layer stays dense
    assert report["sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)


def test_repeat_then_reconstruct_then_static_int8_on_onnx(tmp_path: Path) -> None:
    steps = (
        "steps=[{kind: repeat, rounds: 2, schedule: linear, steps: [{kind: score, criterion: l2}, "
        "{kind: select, ratio: 0.5}, {kind: prune}]}, {kind: reconstruct, batches: 4}, "
        "{kind: quantize, mode: static, batches: 2}]"
    )
    report = _run(CONFIG, tmp_path, "--set", steps)
    assert report["stages"] == ["original", "round1.pruned", "round2.pruned", "reconstructed", "quantized"]
    assert [r["scheduled"]["steps.1.ratio"] for r in report["rounds"]] == [0.25, 0.5]
    assert all(r["verification"]["passed"] for r in report["rounds"])
    assert {row["name"]: row["kept"] for row in report["groups"]}["res_conv1"] == 16  # both rounds, in all
    layer = report["reconstruction"]["steps"][0]["layers"][0]
    assert (layer["name"], layer["inputs"]) == ("res_conv1", "16/32")  # composed keep: against the input graph
    assert report["reconstructed"]["accuracy"] > report["round2.pruned"]["accuracy"] + 0.1
    int8 = onnx.load(str(tmp_path / "model.int8.onnx"))
    assert any(node.op_type == "QuantizeLinear" for node in int8.graph.node)
    assert report["quantized"]["accuracy"] > 0.9 and report["quantized"]["size_bytes"] < report["reconstructed"][
        "size_bytes"]  # fmt: skip
