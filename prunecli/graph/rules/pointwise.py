"""Elementwise ops: unary ones keep their input's layouts; n-ary ones broadcast and tie channels."""

from __future__ import annotations

from typing import Any

import torch

from prunecli.graph.layout import Layout
from prunecli.graph.rules.context import TraceContext, rule

_UNARY = [
    "relu", "relu_", "relu6", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "leaky_relu",
    "leaky_relu_", "elu", "elu_", "mish", "mish_", "softplus", "dropout", "dropout_", "feature_dropout",
    "alpha_dropout", "clone", "contiguous", "detach", "alias", "lift_fresh_copy", "_to_copy", "to", "type_as",
    "abs", "neg", "clamp", "clamp_", "clamp_min", "clamp_max", "exp", "sqrt", "rsqrt", "erf", "sin", "cos",
    "reciprocal", "square", "log", "log1p", "floor", "ceil", "round", "sign", "selu", "celu", "log_sigmoid",
    "zeros_like", "ones_like", "full_like", "empty_like",
]  # fmt: skip

_BROADCAST = [
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "maximum", "minimum", "pow",
    "where", "masked_fill", "masked_fill_", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or",
    "bitwise_and", "fmod", "remainder", "addcmul", "addcdiv", "lerp",
]  # fmt: skip


def _tensor_args(ctx: TraceContext, node: torch.fx.Node) -> list[tuple[list[Layout], tuple[int, ...]]]:
    found = []
    for arg in node.all_input_nodes:
        layouts = ctx.layouts(arg)
        if layouts is not None:
            found.append((layouts, ctx.shape(arg)))
    return found


@rule(*[f"aten::{name}" for name in _UNARY])
def unary(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Shape-preserving ops of one tensor: output dimension i shares input dimension i's channels."""
    source = args.get("self", args.get("input"))
    layouts = ctx.layouts(source)
    if layouts is None or ctx.shape(node) != ctx.shape(source):
        return broadcast(ctx, node, args)
    return list(layouts)


@rule(*[f"aten::{name}" for name in _BROADCAST])
def broadcast(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Numpy broadcasting, aligned from the right: equal non-1 sizes tie their channels."""
    out_shape = ctx.shape(node)
    inputs = _tensor_args(ctx, node)
    outputs: list[Layout] = []
    for position in range(len(out_shape)):
        from_right = len(out_shape) - position
        matching = [
            layouts[len(shape) - from_right]
            for layouts, shape in inputs
            if len(shape) >= from_right and shape[len(shape) - from_right] == out_shape[position]
        ]
        if out_shape[position] == 1 or not matching:
            outputs.append(ctx.table.singleton() if out_shape[position] == 1 else ctx.table.new(out_shape[position]))
            continue
        for other in matching[1:]:
            ctx.table.unify(matching[0], other)
        outputs.append(matching[0])
    return outputs
