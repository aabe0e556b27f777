"""The ONNX channel graph, surgery and verification on small hand-built graphs and the sample models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from prunecli.metrics.macs import onnx_macs
from prunecli.criteria.inputs import ScoringInputs
from prunecli.criteria.registry import get_criterion
from prunecli.graph.trace import build_channel_graph
from prunecli.onnx_graph import build_onnx_graph, initializer_arrays, prune_onnx_model, random_feeds
from prunecli.onnx_graph.build import module_path
from tests.conftest import SAMPLES, load_sample

RNG = np.random.default_rng(0)


def _init(name: str, *shape: int, positive: bool = False) -> onnx.TensorProto:
    values = RNG.standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(np.abs(values) + 0.5 if positive else values, name)


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _model(nodes, x_shape, y_shape, initializers, *, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _conv(name: str, x: str, out: str, weight: str, bias: str | None = None, **attrs) -> onnx.NodeProto:
    inputs = [x, weight] + ([bias] if bias else [])
    return helper.make_node("Conv", inputs, [out], name=name, **attrs)


def _prune_half(model: onnx.ModelProto, *, input_shape=None):
    """Prune half the channels of every prunable group; the outcome passed the checker and verifies."""
    graph = build_onnx_graph(model)
    rng = np.random.default_rng(1)
    removed = {g.id: np.sort(rng.choice(g.channels, g.channels // 2, replace=False)) for g in graph.prunable_groups}
    outcome = prune_onnx_model(
        model, graph, removed, feeds=random_feeds(model, input_shape=input_shape), tolerance=1e-4
    )
    assert outcome.verification.passed, outcome.verification
    return graph, outcome


def _members(group) -> set[tuple[str, int, bool]]:
    return {(member.tensor, member.dim, member.produces) for member in group.members}


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {tensor.name: tuple(tensor.dims) for tensor in model.graph.initializer}


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_both_layouts_of_b(trans_b):
    w2 = _init("w2", 4, 16) if trans_b else _init("w2", 16, 4)
    model = _model(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="/fc1/Gemm", transB=1),
            helper.make_node("Relu", ["h"], ["r"], name="/Relu"),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="/fc2/Gemm", transB=trans_b),
        ],
        [2, 8], [2, 4], [_init("w1", 16, 8), _init("b1", 16), w2, _init("b2", 4)],
    )  # fmt: skip
    graph, outcome = _prune_half(model)
    (group,) = graph.prunable_groups
    assert group.name == "fc1" and group.channels == 16
    assert _members(group) == {("w1", 0, True), ("b1", 0, False), ("w2", 1 if trans_b else 0, False)}
    assert _shapes(outcome.model)["w2"] == ((4, 8) if trans_b else (8, 4))
    fc2 = next(g for g in graph.groups if g.name == "fc2")
    assert not fc2.prunable and fc2.reason == "reaches a model output"


def test_matmul_add_and_transpose():
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["m"], name="/fc1/MatMul"),
            helper.make_node("Add", ["m", "b1"], ["h"], name="/fc1/Add"),
            helper.make_node("Transpose", ["h"], ["t"], perm=[1, 0], name="/T1"),
            helper.make_node("Sigmoid", ["t"], ["s"], name="/Sigmoid"),
            helper.make_node("Transpose", ["s"], ["u"], perm=[1, 0], name="/T2"),
            helper.make_node("MatMul", ["u", "w2"], ["y"], name="/fc2/MatMul"),
        ],
        [2, 8], [2, 4], [_init("w1", 8, 16), _init("b1", 16), _init("w2", 16, 4)],
    )  # fmt: skip
    graph, outcome = _prune_half(model)
    (group,) = graph.prunable_groups
    assert _members(group) == {("w1", 1, True), ("b1", 0, False), ("w2", 0, False)}
    assert _shapes(outcome.model) == {"w1": (8, 8), "b1": (8,), "w2": (8, 4)}


def test_conv_with_unfused_batchnorm_and_per_channel_divisor():
    bn = [_init("scale", 8), _init("beta", 8), _init("mean", 8), _init("var", 8, positive=True)]
    model = _model(
        [
            _conv("/conv1/Conv", "x", "c", "w1", pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "scale", "beta", "mean", "var"], ["b"], name="/bn/BN"),
            helper.make_node("Div", ["b", "divisor"], ["d"], name="/Div"),
            helper.make_node("Relu", ["d"], ["r"], name="/Relu"),
            _conv("/conv2/Conv", "r", "y", "w2", "b2"),
        ],
        [1, 3, 6, 6], [1, 4, 6, 6],
        [_init("w1", 8, 3, 3, 3), *bn, _init("divisor", 8, 1, 1, positive=True), _init("w2", 4, 8, 1, 1),
         _init("b2", 4)],
    )  # fmt: skip
    graph, outcome = _prune_half(model)
    (group,) = graph.prunable_groups
    expected = {("w1", 0, True), ("w2", 1, False), ("divisor", 0, False)}
    assert _members(group) == expected | {(name, 0, False) for name in ("scale", "beta", "mean", "var")}
    assert _shapes(outcome.model)["var"] == (4,) and _shapes(outcome.model)["divisor"] == (4, 1, 1)


@pytest.mark.parametrize("to_2d", ["flatten", "reshape_minus_one", "reshape_constant_node"])
def test_flatten_and_reshape_to_2d_before_a_classifier(to_2d):
    nodes = [_conv("/conv/Conv", "x", "c", "w1", "b1", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"])]
    extra = []
    if to_2d == "flatten":
        nodes.append(helper.make_node("Flatten", ["r"], ["f"], axis=1, name="/Flatten"))
    elif to_2d == "reshape_minus_one":
        nodes.append(helper.make_node("Reshape", ["r", "target"], ["f"], name="/Reshape"))
        extra.append(_ints("target", [-1, 96]))
    else:
        value = _ints("target_value", [1, 96])
        nodes.append(helper.make_node("Constant", [], ["target"], value=value, name="/Constant"))
        nodes.append(helper.make_node("Reshape", ["r", "target"], ["f"], name="/Reshape"))
    nodes.append(helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="/fc/Gemm", transB=1))
    model = _model(nodes, [1, 3, 4, 4], [1, 5], [_init("w1", 6, 3, 3, 3), _init("b1", 6), _init("w2", 5, 96),
                                                  _init("b2", 5), *extra])  # fmt: skip
    graph, outcome = _prune_half(model)
    (group,) = graph.prunable_groups
    consumer = next(m for m in group.members if m.tensor == "w2")
    assert consumer.dim == 1 and consumer.positions.tolist() == np.repeat(np.arange(6), 16).tolist()
    assert _shapes(outcome.model)["w2"] == (5, 48)
    if to_2d != "flatten":
        target = next(
            (numpy_helper.to_array(t) for t in outcome.model.graph.initializer if t.name == "target"), None
        ) if to_2d == "reshape_minus_one" else numpy_helper.to_array(outcome.model.graph.node[2].attribute[0].t)
        assert target.tolist()[-1] == 48


def test_global_average_pool_and_concat_offsets():
    model = _model(
        [
            _conv("/a/Conv", "x", "a", "wa", "ba", pads=[1, 1, 1, 1]),
            _conv("/b/Conv", "x", "b", "wb", "bb"),
            helper.make_node("Concat", ["a", "b"], ["c"], axis=1, name="/Concat"),
            helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="/MaxPool"),
            helper.make_node("GlobalAveragePool", ["p"], ["g"], name="/GAP"),
            helper.make_node("Flatten", ["g"], ["f"], axis=1, name="/Flatten"),
            helper.make_node("Gemm", ["f", "w", "bias"], ["y"], name="/fc/Gemm", transB=1),
        ],
        [1, 2, 4, 4], [1, 3],
        [_init("wa", 6, 2, 3, 3), _init("ba", 6), _init("wb", 4, 2, 1, 1), _init("bb", 4), _init("w", 3, 10),
         _init("bias", 3)],
    )  # fmt: skip
    graph, outcome = _prune_half(model)
    by_name = {group.name: group for group in graph.prunable_groups}
    assert set(by_name) == {"a", "b"}
    columns = {g: next(m for m in by_name[g].members if m.tensor == "w").positions.tolist() for g in by_name}
    assert columns == {"a": list(range(6)) + [-1] * 4, "b": [-1] * 6 + list(range(4))}
    assert _shapes(outcome.model)["w"] == (3, 5)


def test_residual_add_ties_both_producers_and_depthwise_group_follows():
    model = _model(
        [
            _conv("/stem/Conv", "x", "s", "ws", "bs", pads=[1, 1, 1, 1]),
            _conv("/dw/Conv", "s", "d", "wd", "bd", pads=[1, 1, 1, 1], group=8),
            _conv("/branch/Conv", "d", "b", "wb", "bb"),
            _conv("/shortcut/Conv", "x", "c", "wc"),
            helper.make_node("Add", ["b", "c"], ["a"], name="/Add"),
            helper.make_node("Relu", ["a"], ["r"], name="/Relu"),
            _conv("/head/Conv", "r", "y", "wh"),
        ],
        [1, 3, 5, 5], [1, 2, 5, 5],
        [_init("ws", 8, 3, 3, 3), _init("bs", 8), _init("wd", 8, 1, 3, 3), _init("bd", 8), _init("wb", 6, 8, 1, 1),
         _init("bb", 6), _init("wc", 6, 3, 1, 1), _init("wh", 2, 6, 1, 1)],
    )  # fmt: skip
    graph, outcome = _prune_half(model)
    names = sorted(group.name for group in graph.prunable_groups)
    assert names == ["branch (+1 tied)", "stem (+1 tied)"]
    residual = next(g for g in graph.prunable_groups if g.name.startswith("branch"))
    assert {m.tensor for m in residual.producers} == {"wb", "wc"}
    depthwise = next(node for node in outcome.model.graph.node if node.name == "/dw/Conv")
    assert helper.get_attribute_value(next(a for a in depthwise.attribute if a.name == "group")) == 4
    assert _shapes(outcome.model)["wd"] == (4, 1, 3, 3)


def test_split_with_sizes_as_input_and_as_attribute():
    for opset, split_input in ((17, True), (11, False)):
        split = helper.make_node("Split", ["c", "sizes"] if split_input else ["c"], ["p", "q"], axis=1,
                                 name="/Split", **({} if split_input else {"split": [2, 6]}))  # fmt: skip
        model = _model(
            [
                _conv("/conv/Conv", "x", "c", "w1", "b1"),
                split,
                helper.make_node("Relu", ["p"], ["rp"]),
                helper.make_node("Sigmoid", ["q"], ["rq"]),
                helper.make_node("Concat", ["rq", "rp"], ["c2"], axis=1),
                _conv("/out/Conv", "c2", "y", "w2"),
            ],
            [1, 3, 3, 3], [1, 2, 3, 3],
            [_init("w1", 8, 3, 1, 1), _init("b1", 8), _init("w2", 2, 8, 1, 1)]
            + ([_ints("sizes", [2, 6])] if split_input else []),
            opset=opset,
        )  # fmt: skip
        graph, outcome = _prune_half(model)
        assert sorted(g.channels for g in graph.prunable_groups) == [2, 6]
        assert _shapes(outcome.model)["w1"] == (4, 3, 1, 1)


def test_unknown_ops_and_custom_domains_keep_their_groups_whole():
    model = _model(
        [
            _conv("/a/Conv", "x", "a", "wa", "ba"),
            helper.make_node("CumSum", ["a", "axis"], ["s"], name="/CumSum"),
            _conv("/b/Conv", "s", "b", "wb", "bb"),
            helper.make_node("Relu", ["b"], ["r"]),
            _conv("/c/Conv", "r", "y", "wc"),
        ],
        [1, 3, 3, 3], [1, 2, 3, 3],
        [_init("wa", 4, 3, 1, 1), _init("ba", 4), numpy_helper.from_array(np.asarray(1, np.int64), "axis"),
         _init("wb", 6, 4, 1, 1), _init("bb", 6), _init("wc", 2, 6, 1, 1)],
    )  # fmt: skip
    graph, outcome = _prune_half(model)
    by_name = {group.name: group for group in graph.groups}
    assert not by_name["a"].prunable and "CumSum" in by_name["a"].reason
    assert by_name["b"].prunable and graph.fallbacks.counts() == {"unsupported_op": 1}
    custom = onnx.ModelProto()
    custom.CopyFrom(model)
    custom.graph.node[1].domain = "com.example"
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    graph = build_onnx_graph(custom)
    reason = {group.name: group.reason for group in graph.groups}["a"]
    assert "custom domain 'com.example'" in graph.fallbacks.records[0].detail and "CumSum" in reason


def test_module_path_from_torch_onnx_node_names():
    assert module_path("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert module_path("/features/fc1/Gemm") == "features.fc1"
    assert module_path("Conv_3") == "Conv_3"


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp"])
def test_sample_models_prune_nothing_then_half(name, tmp_path):
    model = onnx.load(str(SAMPLES / f"{name}.onnx"))
    graph = build_onnx_graph(model)
    assert graph.prunable_groups and not graph.fallbacks.records
    unchanged = prune_onnx_model(model, graph, {}, feeds=random_feeds(model, input_shape=None), tolerance=0.0)
    assert unchanged.model.SerializeToString() == model.SerializeToString()
    assert unchanged.verification.max_abs_diff == 0.0
    _, outcome = _prune_half(model)
    import onnxruntime

    session = onnxruntime.InferenceSession(outcome.model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((3, 1, 8, 8), np.float32)})[0].shape == (3, 10)
    assert [v.name for v in outcome.model.graph.input] == ["input"]
    assert [n.name for n in outcome.model.graph.node] == [n.name for n in model.graph.node]
    assert outcome.model.opset_import == model.opset_import
    onnx.save(outcome.model, str(tmp_path / "pruned.onnx"))
    before = onnx_macs(SAMPLES / f"{name}.onnx", (1, 1, 8, 8))
    after = onnx_macs(tmp_path / "pruned.onnx", (1, 1, 8, 8))
    assert after < 0.5 * before


@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm"])
def test_static_criteria_score_onnx_groups_as_the_torch_ones(criterion):
    """The MLP exports without folding anything, so its ONNX groups hold the very same weights."""
    model = onnx.load(str(SAMPLES / "digits_mlp.onnx"))
    graph = build_onnx_graph(model)
    onnx_scores = get_criterion(criterion)(ScoringInputs(graph=graph, module=None, tensors=initializer_arrays(model)))
    module = _sample_mlp()
    torch_graph = build_channel_graph(module, torch.zeros(2, 1, 8, 8))
    torch_scores = get_criterion(criterion)(ScoringInputs(graph=torch_graph, module=module))
    by_name = {g.name: torch_scores[g.id] for g in torch_graph.prunable_groups}
    assert len(onnx_scores) == len(by_name) == 2
    for group in graph.prunable_groups:
        np.testing.assert_allclose(onnx_scores[group.id], by_name[group.name], rtol=1e-5)


def _sample_mlp() -> torch.nn.Module:
    return load_sample("mlp")


def test_timm_resnet18_export_prunes_at_half(timm_module, tmp_path):
    from prunecli.model_io import export_onnx

    torch.manual_seed(0)
    module = timm_module.create_model("resnet18", pretrained=False, num_classes=10).eval()
    path = export_onnx(module, torch.randn(1, 3, 32, 32), Path(tmp_path) / "resnet18.onnx")
    model = onnx.load(str(path))
    graph, outcome = _prune_half(model, input_shape=[2, 3, 32, 32])
    assert len(graph.prunable_groups) >= 4 and not graph.fallbacks.records
    onnx.save(outcome.model, str(tmp_path / "pruned.onnx"))
    assert onnx_macs(tmp_path / "pruned.onnx", (1, 3, 32, 32)) < 0.5 * onnx_macs(path, (1, 3, 32, 32))
