"""ONNX ops with weights or that compute across channels: Conv, Gemm, MatMul, norms, pooling, reductions."""

from __future__ import annotations

import onnx

from prunecli.graph.layout import Layout, broadcast_layouts, couple_conv
from prunecli.onnx_graph.context import OnnxContext, attribute, onnx_rule
from prunecli.onnx_graph.rules_norm import reduction_reason


def _tie_optional(ctx: OnnxContext, name: str | None, layout: Layout, dim: int = 0) -> None:
    layouts = ctx.layouts(name) if name else None
    if layouts is not None and ctx.table.size(layouts[dim]) == ctx.table.size(layout):
        ctx.table.unify(layouts[dim], layout)


def _input(node: onnx.NodeProto, index: int) -> str | None:
    return node.input[index] if len(node.input) > index and node.input[index] else None


@onnx_rule("Conv")
def conv(ctx: OnnxContext, node: onnx.NodeProto):
    """Conv: input channels meet weight dim 1; weight dim 0 produces the output channels.

    Depthwise (``group`` = input channels, one input channel per filter) ties the output to
    the input channels, and surgery rewrites ``group``; other grouped convs split the
    channels into (groups, channels per group) and keep the group count fixed.
    """
    x, w = ctx.layouts(node.input[0]), ctx.layouts(node.input[1])
    w_shape, groups = ctx.shape(node.input[1]), int(attribute(node, "group", 1))
    if not ctx.is_initializer(node.input[1]):
        return ctx.unsupported(node, "a weight computed at run time")
    couple_conv(ctx.table, x, w, w_shape, groups)
    ctx.produce(node.input[1], 0, node)
    _tie_optional(ctx, _input(node, 2), w[0])
    return [[x[0], w[0]] + ctx.fresh(ctx.shape(node.output[0])[2:], "spatial dimension")]


@onnx_rule("ConvTranspose")
def conv_transpose(ctx: OnnxContext, node: onnx.NodeProto):
    """ConvTranspose with one group: weight is (in, out, kernel...)."""
    if int(attribute(node, "group", 1)) != 1 or not ctx.is_initializer(node.input[1]):
        return ctx.unsupported(node, "a grouped transposed convolution or a run-time weight")
    if attribute(node, "output_shape") is not None:
        return ctx.unsupported(node, "an explicit output_shape")
    x, w = ctx.layouts(node.input[0]), ctx.layouts(node.input[1])
    for kernel in w[2:]:
        ctx.table.mark_fixed(kernel, "kernel dimension")
    ctx.table.unify(x[1], w[0])
    ctx.produce(node.input[1], 1, node)
    _tie_optional(ctx, _input(node, 2), w[1])
    return [[x[0], w[1]] + ctx.fresh(ctx.shape(node.output[0])[2:], "spatial dimension")]


@onnx_rule("Gemm")
def gemm(ctx: OnnxContext, node: onnx.NodeProto):
    """Gemm ``alpha * A' B' + beta * C``: A's K meets B's K; B's N produces the output features.

    ``transB=1`` stores B as (N, K) (torch's Linear), ``transB=0`` as (K, N). C broadcasts onto
    (M, N): a vector bias of N entries is tied to the features.
    """
    a, b = ctx.layouts(node.input[0]), ctx.layouts(node.input[1])
    a = a[::-1] if attribute(node, "transA", 0) else a
    b_dims = (1, 0) if attribute(node, "transB", 0) else (0, 1)  # (K dim, N dim) of the stored B
    ctx.table.unify(a[1], b[b_dims[0]])
    if ctx.is_initializer(node.input[1]):
        ctx.produce(node.input[1], b_dims[1], node)
    else:
        ctx.table.mark_fixed(a[1], "contracted between two activations")
    out = [a[0], b[b_dims[1]]]
    bias = _input(node, 2)
    bias_layouts = ctx.layouts(bias) if bias else None
    if bias_layouts is not None:
        for layout, target in zip(bias_layouts[::-1], out[::-1]):
            if ctx.table.size(layout) == ctx.table.size(target) and ctx.table.size(layout) > 1:
                ctx.table.unify(layout, target)
    return [out]


@onnx_rule("MatMul")
def matmul(ctx: OnnxContext, node: onnx.NodeProto):
    """MatMul: contracted dimensions are tied; an initializer on the right produces the output features."""
    a, b = ctx.layouts(node.input[0]), ctx.layouts(node.input[1])
    a_shape, b_shape = ctx.shape(node.input[0]), ctx.shape(node.input[1])
    if len(a) < 2 or len(b) < 2:
        return ctx.unsupported(node, "a product with a vector")
    ctx.table.unify(a[-1], b[-2])
    if ctx.is_initializer(node.input[1]):
        ctx.produce(node.input[1], len(b) - 1, node)
    elif not ctx.is_initializer(node.input[0]):
        ctx.table.mark_fixed(a[-1], "contracted between two activations (an attention's head size)")
    batch = broadcast_layouts(ctx.table, a[:-2], a_shape[:-2], b[:-2], b_shape[:-2])
    return [batch + [a[-2], b[-1]]]


@onnx_rule("BatchNormalization", "InstanceNormalization")
def batch_norm(ctx: OnnxContext, node: onnx.NodeProto):
    """Per-channel normalisation over dim 1: scale, bias, mean and variance share the input's channels.

    InstanceNormalization computes its statistics over the other dimensions at run time: those
    stay whole (torch's GroupNorm exports as a Reshape of its groups' channels into them).
    """
    x = ctx.layouts(node.input[0])
    for name in node.input[1:]:
        _tie_optional(ctx, name or None, x[1])
    if node.op_type == "BatchNormalization" and attribute(node, "training_mode", 0):
        return ctx.unsupported(node, "training mode")
    if node.op_type == "InstanceNormalization":
        for layout in x[2:]:
            ctx.table.mark_fixed(layout, "normalised together by InstanceNormalization")
    return [list(x)] + [None] * (len(node.output) - 1)


@onnx_rule("GroupNormalization", "LpNormalization", "MeanVarianceNormalization")
def normalized_together(ctx: OnnxContext, node: onnx.NodeProto):
    """Norms whose statistics run across channels: the normalised dimensions stay whole (for now)."""
    x = ctx.layouts(node.input[0])
    reason = f"normalised together by {node.op_type}"
    ctx.fix(list(node.input), reason)
    outputs = [list(x)]
    for name in node.output[1:]:
        shape = ctx.shape(name)
        outputs.append(ctx.fresh(shape, reason) if shape is not None else None)
    return outputs


_POOLS = (
    "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxRoiPool",
)  # fmt: skip


@onnx_rule(*_POOLS)
def pool(ctx: OnnxContext, node: onnx.NodeProto):
    """Pooling: batch and channels pass through; spatial dimensions become new fixed spaces."""
    x = ctx.layouts(node.input[0])
    out = list(x[:2]) + ctx.fresh(ctx.shape(node.output[0])[2:], "spatial dimension")
    indices = [ctx.fresh(ctx.shape(name), "pooling indices") if name else None for name in node.output[1:]]
    return [out] + indices


@onnx_rule("Resize", "Upsample")
def resize(ctx: OnnxContext, node: onnx.NodeProto):
    """Resizing the spatial dimensions: batch and channels pass through when their sizes stay."""
    x, in_shape, out_shape = ctx.layouts(node.input[0]), ctx.shape(node.input[0]), ctx.shape(node.output[0])
    if len(in_shape) < 2 or in_shape[:2] != out_shape[:2] or _input(node, 3):
        return ctx.unsupported(node, "resizing channels, or sizes given explicitly")
    return [list(x[:2]) + ctx.fresh(out_shape[2:], "spatial dimension")]


_REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")  # fmt: skip


@onnx_rule(*_REDUCE)
def reduce(ctx: OnnxContext, node: onnx.NodeProto):
    """Reductions: kept dimensions pass through; reduced ones are fixed (ReduceSum and the means of a
    decomposed LayerNorm, ``rules_norm.reduction_reason``, excepted)."""
    x = ctx.layouts(node.input[0])
    axes = [attribute(node, "axis", 0)] if node.op_type.startswith("Arg") else attribute(node, "axes")
    if axes is None and _input(node, 1):
        axes = ctx.constant(node.input[1])
        if axes is None:
            return ctx.unsupported(node, "axes computed at run time")
        axes = axes.tolist()
    if axes is None or len(axes) == 0:
        axes = [] if attribute(node, "noop_with_empty_axes", 0) else list(range(len(x)))
    dims = {int(d) % len(x) for d in axes}
    reason = reduction_reason(ctx, node)
    if node.op_type != "ReduceSum" and reason is not None:
        for d in dims:
            ctx.table.mark_fixed(x[d], reason)
    keep = bool(attribute(node, "keepdims", 1))
    return [[ctx.table.singleton() if d in dims else x[d] for d in range(len(x)) if keep or d not in dims]]


@onnx_rule("Softmax", "LogSoftmax", "Hardmax")
def softmax(ctx: OnnxContext, node: onnx.NodeProto):
    """Softmax: shape kept; the normalised dimensions (from ``axis`` on, as opsets below 13 define it) are fixed."""
    x = ctx.layouts(node.input[0])
    for layout in x[int(attribute(node, "axis", -1)) % len(x) :]:
        ctx.table.mark_fixed(layout, f"normalised by {node.op_type}")
    return [list(x)]
