"""Ops with weights or that compute across channels: conv, linear, matmul, attention, norms, pooling."""

from __future__ import annotations

from typing import Any

import torch

from prunecli.graph.layout import Layout, broadcast_layouts, couple_conv, unify_letters
from prunecli.graph.rules.context import TraceContext, rule


def _tie_optional(ctx: TraceContext, tensor: Any, layout: Layout, dim: int = 0) -> None:
    layouts = ctx.layouts(tensor)
    if layouts is not None:
        ctx.table.unify(layouts[dim], layout)


@rule("aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::convolution", "aten::_convolution")
def conv(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Convolution: input channels meet weight dim 1, weight dim 0 produces the output channels.

    Depthwise convs tie output to input channels; other grouped convs split both into
    (groups, channels per group) and keep the group count fixed.
    """
    if args.get("transposed"):
        return conv_transpose(ctx, node, args)
    x, w = ctx.layouts(args["input"]), ctx.layouts(args["weight"])
    w_shape, groups = ctx.shape(args["weight"]), int(args.get("groups", 1))
    if len(ctx.shape(args["input"])) != len(w_shape):
        return ctx.unsupported(node, detail="unbatched input")
    couple_conv(ctx.table, x, w, w_shape, groups)
    ctx.produce(args["weight"], 0)
    _tie_optional(ctx, args.get("bias"), w[0])
    return [x[0], w[0]] + ctx.fresh(ctx.shape(node)[2:], "spatial dimension")


@rule("aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d")
def conv_transpose(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Transposed convolution: weight is (in, out / groups, kernel...)."""
    x, w = ctx.layouts(args["input"]), ctx.layouts(args["weight"])
    if int(args.get("groups", 1)) != 1 or len(ctx.shape(args["input"])) != len(w):
        return ctx.unsupported(node, detail="grouped or unbatched transposed convolution")
    for kernel in w[2:]:
        ctx.table.mark_fixed(kernel, "kernel dimension")
    ctx.table.unify(x[1], w[0])
    ctx.produce(args["weight"], 1)
    _tie_optional(ctx, args.get("bias"), w[1])
    return [x[0], w[1]] + ctx.fresh(ctx.shape(node)[2:], "spatial dimension")


@rule("aten::linear")
def linear(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Linear: the last input dimension meets weight dim 1; weight dim 0 produces the output features."""
    x, w = ctx.layouts(args["input"]), ctx.layouts(args["weight"])
    ctx.table.unify(x[-1], w[1])
    ctx.produce(args["weight"], 0)
    _tie_optional(ctx, args.get("bias"), w[0])
    return list(x[:-1]) + [w[0]]


@rule("aten::embedding")
def embedding(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Embedding lookup: weight dim 1 produces the embedding channels; the vocabulary is fixed."""
    w, indices = ctx.layouts(args["weight"]), ctx.layouts(args["indices"])
    ctx.table.mark_fixed(w[0], "vocabulary of an embedding")
    ctx.produce(args["weight"], 1)
    return list(indices) + [w[1]]


@rule("aten::batch_norm", "aten::instance_norm", "aten::_native_batch_norm_legit_no_training")
def batch_norm(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Per-channel normalisation over dim 1: its parameters and statistics share the input's channels."""
    x = ctx.layouts(args["input"])
    for name in ("weight", "bias", "running_mean", "running_var"):
        _tie_optional(ctx, args.get(name), x[1])
    if (args.get("training") or args.get("use_input_stats")) and not _standardizes_a_weight(ctx, args["input"]):
        for layout in x[:1] + x[2:]:  # statistics over every other dimension
            ctx.table.mark_fixed(layout, f"statistics of {node.target._schema.name} are taken over it")
    if isinstance(node.meta.get("val"), (tuple, list)):
        return [list(x)] + [None] * (len(node.meta["val"]) - 1)
    return list(x)


def _standardizes_a_weight(ctx: TraceContext, source: Any) -> bool:
    """``batch_norm(conv.weight.reshape(1, out, -1), training=True)``: weight standardisation (StdConv2d).

    Its statistics run over the weight's input channels; verification computes them over the
    kept ones only (``surgery.norms``), so those channels stay prunable.
    """
    return (
        isinstance(source, torch.fx.Node)
        and source.op == "call_function"
        and getattr(source.target, "_schema", None) is not None
        and source.target._schema.name in ("aten::view", "aten::reshape", "aten::_unsafe_view")
        and ctx.is_state(source.args[0])
        and len(ctx.shape(source)) == 3
        and ctx.shape(source)[0] == 1
    )


@rule("aten::layer_norm", "aten::rms_norm")
def layer_norm(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """LayerNorm/RMSNorm over the last dimension: its weight and bias share that dimension's channels.

    Removing channels changes the statistics; verification accounts for it by normalising the
    masked original over the kept channels only (see ``surgery.verify``). Without a weight the
    norm cannot be told apart in the masked model, and several normalised dimensions are not
    supported: those dimensions stay fixed.
    """
    x = ctx.layouts(args["input"])
    normalized = x[-len(args["normalized_shape"]) :]
    weight = ctx.layouts(args.get("weight"))
    if weight is None or len(normalized) != 1:
        for layout in normalized:
            ctx.table.mark_fixed(layout, f"normalised together by {node.target._schema.name}")
        ctx.fix_inputs(node, f"normalised together by {node.target._schema.name}")
        return list(x)
    ctx.table.unify(weight[0], normalized[0])
    _tie_optional(ctx, args.get("bias"), normalized[0])
    return list(x)


@rule("aten::group_norm")
def group_norm(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """GroupNorm: channels split into (groups, channels per group); the group count stays fixed."""
    x = ctx.layouts(args["input"])
    weight = ctx.layouts(args.get("weight"))
    if weight is None:
        ctx.fix_inputs(node, "normalised together by aten::group_norm without weight")
        return list(x)
    groups = int(args["num_groups"])
    channels = ctx.table.size(x[1])
    group_factor, _ = ctx.table.split(x[1], [groups, channels // groups], as_product=True)
    ctx.table.mark_fixed(group_factor, "group count of a GroupNorm")
    ctx.table.unify(weight[0], x[1])
    _tie_optional(ctx, args.get("bias"), x[1])
    return list(x)


_POOLS = {
    "aten::max_pool1d": 1, "aten::max_pool2d": 2, "aten::max_pool3d": 3, "aten::avg_pool1d": 1,
    "aten::avg_pool2d": 2, "aten::avg_pool3d": 3, "aten::adaptive_avg_pool1d": 1, "aten::adaptive_avg_pool2d": 2,
    "aten::adaptive_avg_pool3d": 3, "aten::adaptive_max_pool1d": 1, "aten::adaptive_max_pool2d": 2,
    "aten::adaptive_max_pool3d": 3, "aten::max_pool2d_with_indices": 2, "aten::max_pool3d_with_indices": 3,
    "aten::upsample_nearest2d": 2, "aten::upsample_bilinear2d": 2, "aten::upsample_nearest1d": 1,
    "aten::upsample_nearest3d": 3, "aten::upsample_bicubic2d": 2, "aten::upsample_linear1d": 1,
    "aten::upsample_trilinear3d": 3,
}  # fmt: skip


@rule(*_POOLS)
def pool(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Pooling and resizing: channel dimensions pass through, spatial ones become new fixed spaces."""
    x = ctx.layouts(args.get("self", args.get("input")))
    spatial = _POOLS[node.target._schema.name]
    val = node.meta["val"]
    first = val[0] if isinstance(val, (tuple, list)) else val
    out = list(x[:-spatial]) + ctx.fresh(first.shape[-spatial:], "spatial dimension")
    if isinstance(val, (tuple, list)):
        return [out] + [ctx.fresh(v.shape, "pooling indices") for v in val[1:]]
    return out


@rule("aten::mean", "aten::sum", "aten::amax", "aten::amin", "aten::var", "aten::std", "aten::max", "aten::min")
def reduce(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Reductions: kept dimensions pass through; reduced ones are fixed (sums excepted: zeros add nothing)."""
    x = ctx.layouts(args["self"])
    dims = args.get("dim")
    if dims is None or dims == []:
        dims = list(range(len(x)))
    dims = {d % len(x) for d in ([dims] if isinstance(dims, int) else dims)}
    if node.target._schema.name != "aten::sum":
        for d in dims:
            ctx.table.mark_fixed(x[d], f"reduced by {node.target._schema.name}")
    keep = bool(args.get("keepdim", False))
    out = [ctx.table.singleton() if d in dims else x[d] for d in range(len(x)) if keep or d not in dims]
    if isinstance(node.meta.get("val"), (tuple, list)):
        return [out, ctx.fresh(node.meta["val"][1].shape, "reduction indices")]
    return out


@rule("aten::softmax", "aten::_softmax", "aten::log_softmax", "aten::_log_softmax")
def softmax(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Softmax: shape kept; the normalised dimension is fixed."""
    x = ctx.layouts(args["self"])
    ctx.table.mark_fixed(x[args["dim"] % len(x)], "normalised by softmax")
    return list(x)


@rule("aten::matmul", "aten::mm", "aten::bmm")
def matmul(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Matrix products: batch dimensions broadcast, the contracted ones are tied."""
    a, b = ctx.layouts(args["self"]), ctx.layouts(args.get("mat2", args.get("other")))
    a_shape, b_shape = ctx.shape(args["self"]), ctx.shape(args.get("mat2", args.get("other")))
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        return ctx.unsupported(node, detail="a product with a vector")
    ctx.table.unify(a[-1], b[-2])
    if not ctx.is_state(args["self"]) and not ctx.is_state(args.get("mat2", args.get("other"))):
        # q @ kᵀ: the head size sets the attention scale, a constant the graph cannot see
        ctx.table.mark_fixed(a[-1], "contracted between two activations (an attention's head size)")
    batch = broadcast_layouts(ctx.table, a[:-2], a_shape[:-2], b[:-2], b_shape[:-2])
    return batch + [a[-2], b[-1]]


@rule("aten::scaled_dot_product_attention")
def attention(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """softmax(q kᵀ · scale) v: q and k share their last dimension, k and v their sequence."""
    q, k, v = (ctx.layouts(args[name]) for name in ("query", "key", "value"))
    shapes = [ctx.shape(args[name]) for name in ("query", "key", "value")]
    ctx.table.unify(q[-1], k[-1])
    if args.get("scale") is None:
        ctx.table.mark_fixed(q[-1], "attention scale depends on the head size")
    ctx.table.unify(k[-2], v[-2])
    batch = broadcast_layouts(ctx.table, q[:-2], shapes[0][:-2], k[:-2], shapes[1][:-2])
    batch = broadcast_layouts(ctx.table, batch, shapes[0][:-2], v[:-2], shapes[2][:-2])
    mask = ctx.layouts(args.get("attn_mask"))
    if mask is not None:
        logits = batch + [q[-2], k[-2]]
        logits_shape = [ctx.table.size(layout) for layout in logits]
        broadcast_layouts(ctx.table, logits, tuple(logits_shape), mask, ctx.shape(args["attn_mask"]))
    return batch + [q[-2], v[-1]]


@rule("aten::prelu", "aten::_prelu_kernel")
def prelu(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """PReLU: one slope per channel (dim 1) ties the slope to the channels; a single slope ties nothing."""
    x, weight = ctx.layouts(args["self"]), ctx.layouts(args["weight"])
    if weight and ctx.table.size(weight[0]) > 1:
        ctx.table.unify(weight[0], x[1] if len(x) > 1 else x[0])
    return list(x)


@rule("aten::einsum")
def einsum(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Einstein sums: the same letter ties dimensions; output letters come from the operands.

    A letter summed away between two activations is fixed, like the head size of ``q @ kᵀ``.
    """
    equation = args["equation"].replace(" ", "")
    inputs, _, output = equation.partition("->")
    operands = list(args["tensors"])
    terms = inputs.split(",")
    if not output or "..." in equation or len(terms) != len(operands):
        return ctx.unsupported(node, detail=f"equation '{equation}'")
    by_letter = unify_letters(ctx.table, terms, [ctx.layouts(operand) for operand in operands])
    activation_letters = {letter for term, op in zip(terms, operands) if not ctx.is_state(op) for letter in term}
    for term, operand in zip(terms, operands):
        if ctx.is_state(operand):
            for dim, letter in enumerate(term):
                if letter in output and letter not in activation_letters:
                    ctx.produce(operand, dim)  # a weight's output dimension, as in a linear layer
    summed = {letter for letter in by_letter if letter not in output}
    if len(operands) > 1 and not any(ctx.is_state(operand) for operand in operands):
        for letter in summed:
            ctx.table.mark_fixed(by_letter[letter], "contracted between two activations (an attention's head size)")
    return [by_letter.get(letter, ctx.table.singleton()) for letter in output]
