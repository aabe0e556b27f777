"""prune_blocks on an ONNX input: residual branches of the graph found, scored in ONNX Runtime, cut out, verified.

Graphs: a small helper-built one (a removable branch, a nested one, a branch whose tensor feeds
another node, an Add that is a graph output), the sample CNN's export (one residual branch in its
root forward) and timm resnet18 exported by torch's TorchScript exporter at 32x32 (BatchNorms
randomised, so that no branch is trivially zero).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from prunecli.blocks.onnx_residuals import (
    find_onnx_branches,
    remove_onnx_branches,
    verify_onnx_removal,
    zeroed,
)
from prunecli.blocks.onnx_stage import relative_norms
from prunecli.blocks.scoring import choose
from tests.conftest import SAMPLES
from tests.models import randomize_batchnorm
from tests.test_blocks import random_data, run, sample_model

FEEDS = {"x": np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)}


def _conv(name: str, source: str, seed: int) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    weight = np.random.default_rng(seed).standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.3
    node = helper.make_node("Conv", [source, f"{name}.w"], [name], name=f"/{name}/Conv", pads=[1, 1, 1, 1])
    return node, numpy_helper.from_array(weight, f"{name}.w")


def _graph() -> onnx.ModelProto:
    """x -> c0 -> r0 ; s1 = r0 + c2(relu(c1(r0))) ; outer: s3 = s1 + c4(s2), s2 = s1' + c3(s1') nested (s1' = relu s1);
    leak: s5 = s3 + c5(s3) where c5's output also feeds the graph output ``side``; y = s5 (an Add that is an output)."""
    convs = {name: _conv(name, source, seed) for seed, (name, source) in enumerate(
        [("c0", "x"), ("c1", "r0"), ("c2", "r1"), ("c3", "r2"), ("c4", "s2"), ("c5", "s3"), ("c6", "s5")])}
    nodes = [convs["c0"][0], helper.make_node("Relu", ["c0"], ["r0"], name="/Relu"),
             convs["c1"][0], helper.make_node("Relu", ["c1"], ["r1"], name="/b1/Relu"), convs["c2"][0],
             helper.make_node("Add", ["r0", "c2"], ["s1"], name="/Add"),
             helper.make_node("Relu", ["s1"], ["r2"], name="/b2/relu/Relu"), convs["c3"][0],
             helper.make_node("Add", ["r2", "c3"], ["s2"], name="/b2/Add"), convs["c4"][0],
             helper.make_node("Add", ["s1", "c4"], ["s3"], name="/Add_1"), convs["c5"][0],
             helper.make_node("Add", ["s3", "c5"], ["s5"], name="/Add_2"), convs["c6"][0],
             helper.make_node("Add", ["s5", "c6"], ["y"], name="/Add_3"),
             helper.make_node("Neg", ["c5"], ["side"], name="/Neg")]  # fmt: skip
    shape = [2, 4, 6, 6]
    graph = helper.make_graph(
        nodes, "residuals", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape),
         helper.make_tensor_value_info("side", TensorProto.FLOAT, shape)],
        [tensor for _, tensor in convs.values()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="origin", value="test")
    return model


def test_helper_graph_branches_are_found_removed_and_verified() -> None:
    model = _graph()
    search = find_onnx_branches(model, input_shape=None)
    by_name = {candidate.name: candidate for candidate in search.candidates}
    assert list(by_name) == ["(c1..c2)", "b2 (c3..c3)", "(b2.relu..c4)", "(c6..c6)"]
    assert by_name["(b2.relu..c4)"].params == 2 * 144  # c3 and c4, the nested branch inside it
    assert any("Add_2" in note and "also feeds other nodes" in note for note in search.notes)  # c5 feeds `side`
    nested, outer = by_name["b2 (c3..c3)"], by_name["(b2.relu..c4)"]
    assert nested.overlaps(outer) and outer.overlaps(nested) and not outer.overlaps(by_name["(c1..c2)"])
    assert choose(search.candidates, [0.0, 1.0, 0.5, 3.0], count=3, ratio=None) == [0, 2, 3]  # nested overlaps outer
    chosen = [by_name["(c1..c2)"], outer, by_name["(c6..c6)"]]
    pruned = remove_onnx_branches(model, chosen)
    onnx.checker.check_model(pruned, full_check=True)
    kept = [node.name for node in model.graph.node if node.output[0] not in {"r1", "c1", "c2", "s1", "r2", "c3",
                                                                             "s2", "c4", "s3", "c6"}]  # fmt: skip
    assert [node.name for node in pruned.graph.node] == kept[:-2] + ["/Add_3", "/Neg"]  # y: an Identity now
    assert pruned.graph.node[-2].op_type == "Identity" and list(pruned.graph.node[-2].input) == ["s5"]
    assert list(pruned.graph.node[1].output) == ["r0"] and list(pruned.graph.node[3].input) == ["r0", "c5"]
    assert sorted(t.name for t in pruned.graph.initializer) == ["c0.w", "c5.w"]
    assert pruned.metadata_props[0].value == "test" and pruned.opset_import == model.opset_import
    verification = verify_onnx_removal(model, pruned, chosen, feeds=FEEDS, tolerance=1e-6)
    assert verification.passed and verification.max_abs_diff == 0.0
    wrong = verify_onnx_removal(model, pruned, chosen[:1], feeds=FEEDS, tolerance=1e-4)  # reference keeps 2 branches
    assert not wrong.passed
    session = ort.InferenceSession(zeroed(model, chosen).SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, FEEDS)[0]).max() > 0  # the reference computes something


def test_relative_norm_reads_each_branch_against_its_skip() -> None:
    model = _graph()
    candidates = find_onnx_branches(model, input_shape=None).candidates
    batch = (torch.from_numpy(FEEDS["x"]), torch.zeros(2, dtype=torch.long))
    norms = relative_norms(model, candidates, [batch])
    skip, branch = _tensors(model, list(candidates[0].sites))  # by hand: mean per-sample ||c2|| / ||r0||
    expected = np.mean([np.linalg.norm(branch[i]) / np.linalg.norm(skip[i]) for i in range(2)])
    assert norms[0] == pytest.approx(expected, rel=1e-5) and all(norm > 0 for norm in norms)
    assert [value.name for value in model.graph.output] == ["y", "side"]  # the model itself is unchanged


def _tensors(model: onnx.ModelProto, names: list[str]) -> list[np.ndarray]:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names)
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(names, FEEDS)


def test_sample_cnn_onnx_loses_its_residual_branch_then_prunes_channels(tmp_path: Path) -> None:
    model = {"path": str(SAMPLES / "digits_cnn.onnx"), "input_shape": [1, 1, 8, 8]}
    steps = [{"kind": "prune_blocks", "count": 1, "criterion": "relative_norm", "batches": 2},
             {"kind": "score", "criterion": "l2"}, {"kind": "select", "ratio": 0.25}, {"kind": "prune"}]
    report = run(tmp_path, model=model, steps=steps).report
    blocks = report["blocks"]
    assert blocks["removed"] == ["(res_conv1..res_conv2)"] and blocks["verification"]["passed"]
    assert blocks["candidates"][0]["modules"] == ["res_conv1", "res_conv2"] and blocks["candidates"][0]["score"] > 0
    assert report["stages"][:2] == ["original", "blocks_pruned"]
    assert report["original"]["params"] - report["blocks_pruned"]["params"] == blocks["candidates"][0]["params"]
    assert report["pruned"]["params"] < report["blocks_pruned"]["params"] and report["verification"]["passed"]
    written = onnx.load(str(tmp_path / "out" / "model.onnx"))
    onnx.checker.check_model(written, full_check=True)
    assert not any(node.name.startswith("/res_conv") for node in written.graph.node)


def test_timm_resnet18_onnx_loses_two_branches(tmp_path: Path, timm_module) -> None:
    torch.manual_seed(0)
    net = randomize_batchnorm(timm_module.create_model("resnet18", pretrained=False, num_classes=10))
    buffer = io.BytesIO()
    torch.onnx.export(net.eval(), (torch.randn(1, 3, 32, 32),), buffer, dynamo=False, opset_version=17,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})  # fmt: skip
    (tmp_path / "resnet18.onnx").write_bytes(buffer.getvalue())
    model = {"path": "resnet18.onnx", "input_shape": [1, 3, 32, 32]}
    steps = [{"kind": "prune_blocks", "count": 2, "batches": 1, "ignore": ["layer4.*"]}]
    report = run(tmp_path, model=model, steps=steps, data=random_data(tmp_path)).report
    blocks = report["blocks"]
    rows = {row["name"]: row for row in blocks["candidates"]}
    assert list(rows) == [f"{block} (conv1..conv2)" for block in ("layer1.0", "layer1.1", "layer2.1", "layer3.1",
                                                                  "layer4.1")]  # fmt: skip
    assert rows["layer4.1 (conv1..conv2)"]["ignored"] and rows["layer4.1 (conv1..conv2)"]["score"] is None
    assert len(blocks["removed"]) == 2 and blocks["verification"]["passed"]
    removed_params = sum(row["params"] for row in blocks["candidates"] if row["removed"])
    assert report["original"]["params"] - report["blocks_pruned"]["params"] == removed_params > 0
    assert report["blocks_pruned"]["macs"] < report["original"]["macs"]
    written = onnx.load(str(tmp_path / "out" / "model.onnx"))
    onnx.checker.check_model(written, full_check=True)
    inputs = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": inputs})[0].shape == (2, 10)


MLP = {"path": str(SAMPLES / "digits_mlp.onnx"), "input_shape": [1, 1, 8, 8]}


def _written(folder: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(folder / "out" / "model.onnx")).graph.initializer}


def test_dynamic_sparsify_on_onnx_recomputes_masks_each_round(tmp_path: Path) -> None:
    steps = [{"kind": "repeat", "rounds": 2, "schedule": "linear", "start": 0.3, "steps": [
        {"kind": "sparsify", "ratio": 0.6, "scope": "global", "dynamic": True},
        {"kind": "finetune", "epochs": 1, "lr": 5.0e-3}]}]  # fmt: skip
    report = run(tmp_path, model=MLP, steps=steps).report
    assert [row["weights_zero"] for row in report["rounds"]] == [pytest.approx(0.3, abs=1e-3),
                                                                 pytest.approx(0.6, abs=1e-3)]  # fmt: skip
    written = _written(tmp_path)
    layers = report["sparsity"]["layers"]
    zeros = sum(int((written[name] == 0).sum()) for name in layers)
    assert zeros / sum(written[name].size for name in layers) == pytest.approx(0.6, abs=1e-3)  # fine-tuning held them


def test_dynamic_masks_on_onnx_revive_a_weight_with_its_remembered_value() -> None:
    from prunecli.config.schema import SparsifyStep
    from prunecli.sparsity.onnx_weights import dynamic_onnx_masks
    from prunecli.sparsity.state import SparsityState

    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [helper.make_tensor_value_info("x", 1, [1, 2])],
        [helper.make_tensor_value_info("y", 1, [1, 2])],
        [numpy_helper.from_array(np.array([[0.9, 0.0], [0.2, 0.6]], np.float32), "w")]))  # fmt: skip
    sparsity = SparsityState(masks={"w": torch.tensor([[True, False], [True, True]])},
                             remembered={"w": torch.tensor([[0.0, 0.5], [0.0, 0.0]])})  # fmt: skip
    step = SparsifyStep(kind="sparsify", ratio=0.25, dynamic=True)
    masks = dynamic_onnx_masks(sparsity, model, step, names=["w"])
    assert masks["w"].tolist() == [[True, True], [False, True]]  # 0.5 came back, 0.2 goes
    np.testing.assert_allclose(numpy_helper.to_array(model.graph.initializer[0]), [[0.9, 0.5], [0.2, 0.6]])
    np.testing.assert_allclose(sparsity.remembered["w"].numpy(), [[0.0, 0.0], [0.2, 0.0]])


def test_movement_sparsify_on_onnx_trains_the_graph_then_masks_it(tmp_path: Path) -> None:
    from prunecli.sparsity.masks import magnitude_masks

    steps = [{"kind": "sparsify", "method": "movement", "ratio": 0.5, "epochs": 1, "lr": 5.0e-3}]
    report = run(tmp_path, model=MLP, steps=steps).report
    layers = report["sparsity"]["layers"]
    assert layers and all(share == pytest.approx(0.5, abs=1e-3) for share in layers.values())
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(SAMPLES / "digits_mlp.onnx")).graph.initializer}
    written = _written(tmp_path)
    assert any(not np.array_equal(written[name], original[name]) for name in original)  # trained
    by_size = magnitude_masks({name: torch.tensor(original[name]) for name in layers}, ratio=0.5, scope="local")
    assert any(not np.array_equal(written[name] != 0, by_size[name].numpy()) for name in layers)  # not |w| order
    (tmp_path / "torch").mkdir()
    torch_report = run(tmp_path / "torch", model=sample_model("mlp"), steps=steps).report  # the same on torch
    assert abs(report["sparsified"]["accuracy"] - torch_report["sparsified"]["accuracy"]) <= 0.03
