"""Graph patterns real exporters produce, each on a small graph built here, pruned and verified in ONNX Runtime.

Every ``_prune_half`` call checks the pruned graph with ``onnx.checker`` (full, with shape
inference) and verifies pruned == masked original in ONNX Runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from prunecli.onnx_graph import build_onnx_graph, initializer_arrays
from prunecli.onnx_graph.rules_norm import DECOMPOSED
from prunecli.onnx_graph.verify import masked_model, random_feeds, run_model
from tests.conftest import CONFIGS
from tests.test_end_to_end import FAST, cli
from tests.test_onnx_graph import _conv, _init, _ints, _prune_half, _shapes

BATCH = "batch"


def _model(nodes, x_shape, y_shape, initializers, *, opset: int = 17) -> onnx.ModelProto:
    """A checked model with a dynamic batch axis on its input and output."""
    graph = helper.make_graph(
        nodes, "patterns", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, *x_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, *y_shape])], initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _const(name: str, values, scalar: bool = False) -> onnx.NodeProto:
    array = np.asarray(values, dtype=np.int64).reshape(() if scalar else -1)
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name), name=f"/{name}")


def _batch_of(source: str, prefix: str) -> list[onnx.NodeProto]:
    """``source.size(0)`` as a 1-element vector ``<prefix>_b``: Shape -> Gather -> Unsqueeze (TorchScript)."""
    return [
        helper.make_node("Shape", [source], [f"{prefix}_shape"], name=f"/{prefix}/Shape"),
        _const(f"{prefix}_zero", 0, scalar=True),
        helper.make_node("Gather", [f"{prefix}_shape", f"{prefix}_zero"], [f"{prefix}_g"], axis=0),
        _const(f"{prefix}_axes", [0]),
        helper.make_node("Unsqueeze", [f"{prefix}_g", f"{prefix}_axes"], [f"{prefix}_b"]),
    ]


def _run(model: onnx.ModelProto, batch: int, *shape: int) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.ones((batch, *shape), np.float32)})[0]


def _constant_values(model: onnx.ModelProto) -> dict[str, list]:
    return {
        node.output[0]: numpy_helper.to_array(node.attribute[0].t).reshape(-1).tolist()
        for node in model.graph.node
        if node.op_type == "Constant"
    }


def test_shape_gather_concat_reshape_keeps_the_batch_dynamic_and_rewrites_constants():
    """``x.view(x.size(0), 8, -1)`` then ``view(x.size(0), -1)``: sizes computed at run time, the batch kept."""
    nodes = [
        _conv("/conv/Conv", "x", "c", "w1", "b1", pads=[1, 1, 1, 1]),
        *_batch_of("c", "s1"),
        _const("channels", [8]),
        _const("rest", [-1]),
        helper.make_node("Concat", ["s1_b", "channels", "rest"], ["target1"], axis=0, name="/Concat"),
        helper.make_node("Reshape", ["c", "target1"], ["r"], name="/Reshape"),
        helper.make_node("Relu", ["r"], ["a"]),
        *_batch_of("a", "s2"),
        _const("flat", [-1]),
        helper.make_node("Concat", ["s2_b", "flat"], ["target2"], axis=0, name="/Concat_1"),
        helper.make_node("Reshape", ["a", "target2"], ["f"], name="/Reshape_1"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="/fc/Gemm", transB=1),
    ]
    initializers = [_init("w1", 8, 3, 3, 3), _init("b1", 8), _init("w2", 5, 128), _init("b2", 5)]
    model = _model(nodes, [3, 4, 4], [5], initializers)
    graph, outcome = _prune_half(model)
    (group,) = graph.prunable_groups
    assert group.name == "conv" and not graph.fallbacks.records
    assert _shapes(outcome.model)["w2"] == (5, 64)
    assert _constant_values(outcome.model)["channels"] == [4]
    assert outcome.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == BATCH
    assert _run(outcome.model, 3, 3, 4, 4).shape == (3, 5)


def test_a_size_computed_from_a_channel_dimension_keeps_it_whole():
    """``view(b, c * h * w)`` with the product computed at run time: the channels stay whole, with the reason."""
    nodes = [
        _conv("/conv/Conv", "x", "c", "w1", pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["c"], ["shape"]),
        _const("dims", [1, 2, 3]),
        helper.make_node("Gather", ["shape", "dims"], ["chw"], axis=0),
        helper.make_node("ReduceProd", ["chw"], ["features"], keepdims=1),
        *_batch_of("c", "s"),
        helper.make_node("Concat", ["s_b", "features"], ["target"], axis=0),
        helper.make_node("Reshape", ["c", "target"], ["f"]),
        helper.make_node("Gemm", ["f", "w2"], ["y"], name="/fc/Gemm", transB=1),
    ]
    model = _model(nodes, [3, 2, 2], [5], [_init("w1", 8, 3, 3, 3), _init("w2", 5, 32)])
    graph = build_onnx_graph(model)
    conv = next(group for group in graph.groups if group.name == "conv")
    assert not conv.prunable and "a size read at run time by ReduceProd" in conv.reason


def _sequence_model(norm: list[onnx.NodeProto], extra: list[onnx.TensorProto]) -> onnx.ModelProto:
    """(B, 6, 8) tokens -> linear to 16 features -> ``norm`` (reads ``h``, writes ``n``) -> linear to 4."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m"], name="/fc1/MatMul"),
        helper.make_node("Add", ["m", "b1"], ["h"], name="/fc1/Add"),
        *norm,
        helper.make_node("MatMul", ["n", "w2"], ["y"], name="/fc2/MatMul"),
    ]
    return _model(nodes, [6, 8], [6, 4], [_init("w1", 8, 16), _init("b1", 16), _init("w2", 16, 4), *extra])


def test_layer_normalization_over_the_pruned_channels_normalises_the_kept_ones():
    """Mirrors the torch front-end: scale and bias join the group; verification normalises over kept channels."""
    norm = [helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], axis=-1, name="/norm/LN")]
    model = _sequence_model(norm, [_init("gamma", 16, positive=True), _init("beta", 16)])
    graph, outcome = _prune_half(model)
    (group,) = graph.prunable_groups
    assert {("gamma", 0), ("beta", 0)} <= {(m.tensor, m.dim) for m in group.members}
    assert _shapes(outcome.model)["gamma"] == (8,) and outcome.verification.max_abs_diff < 1e-5
    assert len(outcome.model.graph.node) == len(model.graph.node)  # the Gather/MatMul rewrite is masking-only


def test_layer_normalization_over_another_axis_lets_the_channels_through():
    """A LayerNorm over the width of NCHW maps couples the width only: the conv's channels stay prunable."""
    model = _model(
        [
            _conv("/conv/Conv", "x", "c", "w1", "b1", pads=[1, 1, 1, 1]),
            helper.make_node("LayerNormalization", ["c", "gamma", "beta"], ["n"], axis=-1, name="/norm/LN"),
            _conv("/out/Conv", "n", "y", "w2"),
        ],
        [3, 4, 4], [2, 4, 4], [_init("w1", 8, 3, 3, 3), _init("b1", 8), _init("gamma", 4), _init("beta", 4),
                               _init("w2", 2, 8, 1, 1)],
    )  # fmt: skip
    graph, outcome = _prune_half(model)
    (group,) = graph.prunable_groups
    assert group.name == "conv" and _shapes(outcome.model)["gamma"] == (4,)


def test_layer_normalization_without_a_weight_keeps_the_channels_whole():
    norm = [
        helper.make_node("Constant", [], ["ones"], value=numpy_helper.from_array(np.ones(16, np.float32), "ones")),
        helper.make_node("LayerNormalization", ["h", "ones"], ["n"], axis=-1, name="/norm/LN"),
    ]
    graph = build_onnx_graph(_sequence_model(norm, []))
    assert not graph.prunable_groups
    assert "normalised together by LayerNormalization" in graph.groups[0].reason


def _decomposed_norm(*, square: str = "pow", divide: str = "div", opset: int = 13, weight: bool = True):
    """``h`` -> LayerNorm written out over its 16 features (as exporters before opset 17 do) -> ``n``.

    ``square``: ``Pow(d, 2)`` or ``Mul(d, d)``; ``divide``: ``Div(d, std)`` or ``Mul(d, Reciprocal(std))``;
    from opset 18 ReduceMean reads its axes as an input. Returns the nodes and the initializers.
    """
    scalar = lambda name, value: numpy_helper.from_array(np.asarray(value, np.float32), name)  # noqa: E731
    axes = {"axes": [-1]} if opset < 18 else {}
    mean_inputs = [] if opset < 18 else ["axes"]
    nodes = [
        helper.make_node("ReduceMean", ["h", *mean_inputs], ["mean"], name="/norm/ReduceMean", **axes),
        helper.make_node("Sub", ["h", "mean"], ["centred"]),
        helper.make_node("Pow", ["centred", "two"], ["squared"]) if square == "pow"
        else helper.make_node("Mul", ["centred", "centred"], ["squared"]),
        helper.make_node("ReduceMean", ["squared", *mean_inputs], ["var"], **axes),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
    ]
    if divide == "div":
        nodes.append(helper.make_node("Div", ["centred", "std"], ["normed"]))
    else:
        nodes.append(helper.make_node("Reciprocal", ["std"], ["inv"]))
        nodes.append(helper.make_node("Mul", ["inv", "centred"], ["normed"]))
    nodes += [
        helper.make_node("Mul", ["normed", "gamma"] if weight else ["normed", "half"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["n"]),
    ]
    extra = [scalar("eps", 1e-5), _init("gamma", 16, positive=True) if weight else scalar("half", 0.5),
             _init("beta", 16)]  # fmt: skip
    extra += ([scalar("two", 2.0)] if square == "pow" else []) + ([_ints("axes", [-1])] if opset >= 18 else [])
    return nodes, extra


@pytest.mark.parametrize(("square", "divide", "opset"), [("pow", "div", 13), ("mul", "reciprocal", 18)])
def test_decomposed_layer_norm_over_the_pruned_channels_normalises_the_kept_ones(square, divide, opset):
    """MatMul+Add -> decomposed LayerNorm -> Gemm, a residual around both: one group, gamma and beta in it."""
    norm, extra = _decomposed_norm(square=square, divide=divide, opset=opset)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m"], name="/fc1/MatMul"),
        helper.make_node("Add", ["m", "b1"], ["h"], name="/fc1/Add"),
        *norm,
        helper.make_node("Reshape", ["n", "flat"], ["n2d"]),
        helper.make_node("Gemm", ["n2d", "w2", "b2"], ["r2d"], name="/fc2/Gemm", transB=1),
        helper.make_node("Reshape", ["r2d", "tokens"], ["r"]),
        helper.make_node("Add", ["h", "r"], ["s"], name="/residual/Add"),
        helper.make_node("MatMul", ["s", "w3"], ["y"], name="/head/MatMul"),
    ]
    initializers = [_init("w1", 8, 16), _init("b1", 16), _init("w2", 16, 16), _init("b2", 16), _init("w3", 16, 4),
                    _ints("flat", [-1, 16]), _ints("tokens", [-1, 6, 16]), *extra]  # fmt: skip
    model = _model(nodes, [6, 8], [6, 4], initializers, opset=opset)
    graph, outcome = _prune_half(model, input_shape=[3, 6, 8])
    (group,) = graph.prunable_groups
    assert {("gamma", 0), ("beta", 0), ("w2", 0), ("w2", 1), ("w3", 0)} <= {(m.tensor, m.dim) for m in group.members}
    assert _shapes(outcome.model)["gamma"] == (8,) and outcome.verification.max_abs_diff < 1e-5
    assert [type(norm).__name__ for norm in graph.norms] == ["DecomposedNorm"] and not graph.fallbacks.records
    assert len(outcome.model.graph.node) == len(model.graph.node)  # the Gather/MatMul rewrite is masking-only
    assert _run(outcome.model, 2, 6, 8).shape == (2, 6, 4)
    feeds = random_feeds(model, input_shape=[3, 6, 8])  # zeroing alone would count the removed channels' zeros
    zeroed = run_model(masked_model(model, outcome.keep, divisors=graph.divisors, copies=graph.copies), feeds)[0]
    assert np.abs(zeroed - run_model(outcome.model, feeds)[0]).max() > 1e-2


@pytest.mark.parametrize("variant", ["no weight", "centred read elsewhere"])
def test_decomposed_layer_norm_off_the_pattern_stays_whole_with_the_reason(variant):
    norm, extra = _decomposed_norm(weight=variant != "no weight")
    if variant == "centred read elsewhere":
        norm[-1] = helper.make_node("Add", ["scaled", "centred"], ["n"])
    graph, _ = _prune_half(_sequence_model(norm, extra), input_shape=None)
    (group,) = graph.groups[:1]
    assert not graph.prunable_groups and group.reason == DECOMPOSED and not graph.norms


def test_group_norm_exported_as_instance_normalization_keeps_its_channels_whole():
    """torch's GroupNorm(1): Reshape to (N, 1, C*H*W), InstanceNormalization, Reshape back, per-channel affine."""
    model = _model(
        [
            _conv("/a/Conv", "x", "a", "wa", "ba"),
            helper.make_node("Reshape", ["a", "grouped"], ["g"]),
            helper.make_node("InstanceNormalization", ["g", "one", "zero"], ["gn"], name="/norm/IN"),
            helper.make_node("Reshape", ["gn", "back"], ["n"]),
            helper.make_node("Mul", ["n", "gamma"], ["scaled"]),
            helper.make_node("Add", ["scaled", "beta"], ["shifted"]),
            _conv("/b/Conv", "shifted", "b", "wb", "bb"),
            helper.make_node("InstanceNormalization", ["b", "gamma_b", "beta_b"], ["bn"], name="/norm_b/IN"),
            _conv("/out/Conv", "bn", "y", "wo"),
        ],
        [3, 3, 3], [2, 3, 3],
        [_init("wa", 4, 3, 1, 1), _init("ba", 4), _ints("grouped", [0, 1, -1]), _ints("back", [0, 4, 3, 3]),
         numpy_helper.from_array(np.ones(1, np.float32), "one"),
         numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
         _init("gamma", 4, 1, 1), _init("beta", 4, 1, 1), _init("wb", 6, 4, 1, 1), _init("bb", 6),
         _init("gamma_b", 6), _init("beta_b", 6), _init("wo", 2, 6, 1, 1)],
    )  # fmt: skip
    graph, outcome = _prune_half(model)
    by_name = {group.name: group for group in graph.groups}
    assert by_name["a"].reason == "normalised together by InstanceNormalization"
    assert [group.name for group in graph.prunable_groups] == ["b"] and _shapes(outcome.model)["gamma_b"] == (3,)


@pytest.mark.parametrize(
    ("equation", "weight_shape", "produced_dim"), [("bij,jk->bik", (8, 16), 1), ("bij,kj->bik", (16, 8), 0)]
)
def test_einsum_with_a_weight_is_a_linear_layer(equation, weight_shape, produced_dim):
    model = _model(
        [
            helper.make_node("Einsum", ["x", "w1"], ["h"], equation=equation, name="/fc1/Einsum"),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Einsum", ["r", "w2"], ["y"], equation="bik,kl->bil", name="/fc2/Einsum"),
        ],
        [6, 8], [6, 4], [_init("w1", *weight_shape), _init("w2", 16, 4)],
    )  # fmt: skip
    graph, outcome = _prune_half(model)
    (group,) = graph.prunable_groups
    assert {(m.tensor, m.dim, m.produces) for m in group.members} == {("w1", produced_dim, True), ("w2", 0, False)}
    assert _shapes(outcome.model)["w2"] == (8, 4)


@pytest.mark.parametrize("equation", ["...ij,jk->...ik", "bij,jk", "bii,ik->bik"])
def test_unknown_einsum_equations_keep_their_groups_whole(equation):
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="/fc1/MatMul"),
            helper.make_node("Einsum", ["h", "w2"], ["y"], equation=equation, name="/fc2/Einsum"),
        ],
        [8, 8], [8, 4], [_init("w1", 8, 8), _init("w2", 8, 4)],
    )  # fmt: skip
    graph = build_onnx_graph(model)
    fc1 = next(group for group in graph.groups if group.name == "fc1")
    assert not fc1.prunable and f"the Einsum equation '{equation}'" in fc1.reason


def _attention(products: str, *, tokens: int = 5, width: int = 16, heads: int = 4) -> onnx.ModelProto:
    """timm's Attention as the TorchScript exporter writes it: qkv, Reshape (B, N, 3, H, D) built at run time, ..."""
    head = width // heads
    if products == "einsum":
        logits = [helper.make_node("Einsum", ["q", "k"], ["logits"], equation="bhid,bhjd->bhij")]
        mixed = [helper.make_node("Einsum", ["attn", "v"], ["o"], equation="bhij,bhjd->bhid")]
    else:
        logits = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                  helper.make_node("MatMul", ["q", "kt"], ["logits"])]  # fmt: skip
        mixed = [helper.make_node("MatMul", ["attn", "v"], ["o"])]
    nodes = [
        helper.make_node("MatMul", ["x", "w_qkv"], ["qkv_m"], name="/attn/qkv/MatMul"),
        helper.make_node("Add", ["b_qkv", "qkv_m"], ["qkv"], name="/attn/qkv/Add"),
        *_batch_of("x", "sb"),
        helper.make_node("Shape", ["x"], ["sn_shape"]),
        _const("one", 1, scalar=True),
        helper.make_node("Gather", ["sn_shape", "one"], ["sn_g"], axis=0),
        _const("sn_axes", [0]),
        helper.make_node("Unsqueeze", ["sn_g", "sn_axes"], ["sn_n"]),
        _const("three", [3]), _const("heads", [heads]), _const("head_dim", [head]),
        helper.make_node("Concat", ["sb_b", "sn_n", "three", "heads", "head_dim"], ["split_shape"], axis=0),
        helper.make_node("Reshape", ["qkv", "split_shape"], ["qkv5"], name="/attn/Reshape"),
        helper.make_node("Transpose", ["qkv5"], ["qkvt"], perm=[2, 0, 3, 1, 4]),
        helper.make_node("Split", ["qkvt", "ones3"], ["q1", "k1", "v1"], axis=0),
        *[helper.make_node("Squeeze", [f"{n}1", "axis0"], [n]) for n in ("q", "k", "v")],
        *logits,
        helper.make_node("Mul", ["logits", "scale"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["attn"], axis=-1),
        *mixed,
        helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
        _const("width", [width]),
        helper.make_node("Concat", ["sb_b", "sn_n", "width"], ["merge_shape"], axis=0),
        helper.make_node("Reshape", ["ot", "merge_shape"], ["merged"], name="/attn/Reshape_1"),
        helper.make_node("MatMul", ["merged", "w_proj"], ["y"], name="/attn/proj/MatMul"),
    ]
    initializers = [_init("w_qkv", width, 3 * width), _init("b_qkv", 3 * width), _init("w_proj", width, width),
                    _ints("ones3", [1, 1, 1]), _ints("axis0", [0]),
                    numpy_helper.from_array(np.asarray(head**-0.5, np.float32), "scale")]  # fmt: skip
    return _model(nodes, [tokens, width], [tokens, width], initializers)


@pytest.mark.parametrize("products", ["matmul", "einsum"])
def test_multi_head_attention_prunes_whole_heads(products):
    model = _attention(products)
    graph, outcome = _prune_half(model)
    (heads,) = graph.prunable_groups
    assert heads.name == "attn.qkv[3x4x4: 2]" and heads.channels == 4
    assert _shapes(outcome.model)["w_qkv"] == (16, 24) and _shapes(outcome.model)["w_proj"] == (8, 16)
    constants = _constant_values(outcome.model)
    assert constants["heads"] == [2] and constants["head_dim"] == [4] and constants["width"] == [8]
    head_dim = next(group for group in graph.groups if group.name == "attn.qkv[3x4x4: 3]")
    assert head_dim.reason == "contracted between two activations (an attention's head size)"
    assert _run(outcome.model, 3, 5, 16).shape == (3, 5, 16)


def test_shared_initializers_do_not_couple_their_readers():
    """A zero bias shared through Identity nodes and read directly by two convs: four groups, not one."""
    zeros = numpy_helper.from_array(np.zeros(8, np.float32), "zeros")
    model = _model(
        [
            _conv("/a/Conv", "x", "a", "wa", "zeros"),
            helper.make_node("Relu", ["a"], ["ra"]),
            helper.make_node("Identity", ["zeros"], ["zeros_b"], name="Identity_0"),
            _conv("/b/Conv", "ra", "b", "wb", "zeros_b"),
            helper.make_node("Relu", ["b"], ["rb"]),
            helper.make_node("Identity", ["zeros"], ["zeros_c"], name="Identity_1"),
            _conv("/c/Conv", "rb", "c", "wc", "zeros_c"),
            helper.make_node("Relu", ["c"], ["rc"]),
            _conv("/d/Conv", "rc", "d", "wd", "zeros"),
            helper.make_node("Relu", ["d"], ["rd"]),
            _conv("/out/Conv", "rd", "y", "wo"),
        ],
        [3, 3, 3], [2, 3, 3],
        [zeros, _init("wa", 8, 3, 1, 1), _init("wb", 8, 8, 1, 1), _init("wc", 8, 8, 1, 1), _init("wd", 8, 8, 1, 1),
         _init("wo", 2, 8, 1, 1)],
    )  # fmt: skip
    graph, outcome = _prune_half(model)
    assert [group.name for group in graph.prunable_groups] == ["a", "b", "c", "d"]
    assert set(graph.copies) == {"zeros__Identity_0", "zeros__Identity_1", "zeros__/d/Conv"}
    assert set(initializer_arrays(model)) >= set(graph.copies)
    sizes = _shapes(outcome.model)
    assert sizes["zeros"] == (4,) and all(sizes[name] == (4,) for name in graph.copies)


def test_a_folded_gate_normalised_by_its_own_sum_is_masked_with_ones():
    """ConViT's gates (folded into initializers by dynamo) before ``attn / attn.sum()``: zeros would give 0/0."""
    model = _model(
        [
            _conv("/a/Conv", "x", "a", "wa", "ba"),
            helper.make_node("Sigmoid", ["a"], ["s"]),  # a removed channel is sigmoid(0) = 0.5, not 0
            helper.make_node("Mul", ["s", "gate"], ["gated"]),
            helper.make_node("ReduceSum", ["gated", "spatial"], ["total"], keepdims=1),
            helper.make_node("Div", ["gated", "total"], ["normed"]),
            _conv("/b/Conv", "normed", "y", "wb"),
        ],
        [3, 3, 3], [2, 3, 3],
        [_init("wa", 4, 3, 1, 1), _init("ba", 4), _init("gate", 4, 1, 1, positive=True), _ints("spatial", [2, 3]),
         _init("wb", 2, 4, 1, 1)],
    )  # fmt: skip
    graph, outcome = _prune_half(model)
    assert "gate" in graph.divisors and np.isfinite(outcome.verification.max_abs_diff)


def test_control_flow_keeps_what_its_branches_read_whole():
    """An If whose branches read a conv's output: that conv's channels stay whole, the next conv's do not."""
    branch = lambda name, op: helper.make_graph(  # noqa: E731
        [helper.make_node(op, ["a"], [f"{name}_out"])], name, [],
        [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    model = _model(
        [
            _conv("/a/Conv", "x", "a", "wa", "ba"),
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0, name="/ReduceSum"),
            helper.make_node("Greater", ["total", "zero"], ["positive"]),
            helper.make_node("If", ["positive"], ["chosen"], then_branch=branch("then", "Relu"),
                             else_branch=branch("else", "Sigmoid"), name="/If"),  # fmt: skip
            _conv("/b/Conv", "chosen", "b", "wb", "bb"),
            helper.make_node("Relu", ["b"], ["rb"]),
            _conv("/out/Conv", "rb", "y", "wo"),
        ],
        [3, 3, 3], [2, 3, 3],
        [_init("wa", 4, 3, 1, 1), _init("ba", 4), numpy_helper.from_array(np.asarray(0, np.float32), "zero"),
         _init("wb", 6, 4, 1, 1), _init("bb", 6), _init("wo", 2, 6, 1, 1)],
    )  # fmt: skip
    graph, outcome = _prune_half(model)
    by_name = {group.name: group for group in graph.groups}
    assert not by_name["a"].prunable and "control flow" in by_name["a"].reason
    assert [group.name for group in graph.prunable_groups] == ["b"] and _shapes(outcome.model)["wb"] == (3, 4, 1, 1)


def test_run_time_pads_and_crops_are_sized_from_the_followed_shapes():
    """torch's pad to a multiple of a window (Swin): pads built by a reversed Slice and a Transpose of a shape."""
    import io

    import torch
    import torch.nn.functional as F

    class Windowed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.conv1(x))
            pad = (4 - h.shape[-1] % 4) % 4
            return self.conv2(F.pad(h, (0, pad, 0, pad)))[..., : x.shape[-2], : x.shape[-1]]

    buffer = io.BytesIO()
    torch.onnx.export(Windowed().eval(), (torch.randn(1, 3, 6, 6),), buffer, dynamo=False, opset_version=17,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})  # fmt: skip
    model = onnx.load_from_string(buffer.getvalue())
    assert {"Pad", "Slice", "Transpose"} <= {node.op_type for node in model.graph.node}
    graph, outcome = _prune_half(model, input_shape=[2, 3, 6, 6])
    assert [group.name for group in graph.prunable_groups] == ["conv1"] and not graph.fallbacks.records
    assert _shapes(outcome.model)["conv2.weight"] == (2, 4, 1, 1)


@pytest.mark.parametrize("opset", [16, 17])
def test_timm_vit_torchscript_export_prunes_heads_and_features_as_torch_does(timm_module, opset):
    """Run-time reshape targets, the class token's expand(-1, -1, -1), LayerNorms and heads of a real export.

    Opset 16 has no LayerNormalization: TorchScript writes its three LayerNorms out (ReduceMean/Sub/Pow/...).
    """
    import io

    import torch

    from prunecli.graph.trace import build_channel_graph

    module = timm_module.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=16, patch_size=8, depth=1
    ).eval()
    buffer = io.BytesIO()
    torch.onnx.export(module, (torch.randn(1, 3, 16, 16),), buffer, dynamo=False, opset_version=opset,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})  # fmt: skip
    model = onnx.load_from_string(buffer.getvalue())
    assert ("LayerNormalization" in {node.op_type for node in model.graph.node}) == (opset == 17)
    graph, outcome = _prune_half(model, input_shape=[2, 3, 16, 16])
    assert len(graph.norms) == 3 and outcome.verification.max_abs_diff < 1e-5
    torch_graph = build_channel_graph(module, torch.zeros(1, 3, 16, 16))
    assert sorted(g.channels for g in graph.prunable_groups) == sorted(g.channels for g in torch_graph.prunable_groups)
    assert {g.name for g in graph.prunable_groups} >= {"blocks.0.attn.qkv[3x3x64: 2]", "blocks.0.mlp.fc1"}
    assert not graph.fallbacks.records


def test_timm_resnet18_torchscript_export_has_the_torch_front_ends_groups(timm_module, tmp_path):
    """The TorchScript exporter shares the folded zero biases (and zero-init convs) between layers."""
    import torch

    from prunecli.graph.trace import build_channel_graph

    module = timm_module.create_model("resnet18", pretrained=False, num_classes=10).eval()
    path = tmp_path / "resnet18.onnx"
    torch.onnx.export(module, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})  # fmt: skip
    model = onnx.load(str(path))
    assert any(node.op_type == "Identity" for node in model.graph.node)
    graph = build_onnx_graph(model, input_shape=[1, 3, 32, 32])
    torch_graph = build_channel_graph(module, torch.zeros(1, 3, 32, 32))
    assert len(graph.prunable_groups) == len(torch_graph.prunable_groups) == 12
    assert [g.name for g in graph.groups][:3] == ["conv1 (+2 tied)", "layer1.0.conv1", "layer1.1.conv1"]


def test_select_ignore_is_checked_against_the_onnx_groups_and_rows_come_in_model_order(tmp_path: Path):
    config = CONFIGS / "digits_cnn_onnx_l2_50.yaml"
    refused = cli("validate", config, "--set", "steps.1.ignore=[res_conv9]")
    assert refused.exit_code == 2 and "'res_conv9' matches no module of the model" in refused.stderr
    assert "did you mean 'res_conv" in refused.stderr
    result = cli("run", config, "-o", tmp_path, "--json", *FAST, "--set", "steps.1.ignore=[res_conv1]")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)["groups"]}
    assert list(rows) == ["stem_conv (+1 tied)", "res_conv1", "branch1_conv", "branch3_conv", "hidden_fc", "fc"]
    assert rows["res_conv1"]["kept"] == rows["res_conv1"]["channels"]
    assert rows["branch1_conv"]["kept"] < rows["branch1_conv"]["channels"]
