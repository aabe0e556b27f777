"""LayerNormalization and its decomposed form: what normalising over channels couples.

As in the torch front-end (``aten::layer_norm``), a LayerNormalization over one dimension with
a weight ties its scale and bias to that dimension's channels, which may then be pruned: the
pruned graph normalises over the kept channels, and so does the masked original in
verification (``prunecli.onnx_graph.norms``). Without a weight, or over several dimensions,
the normalised dimensions stay whole; the other dimensions pass through either way.

The decomposed form (``ReduceMean -> Sub -> Pow -> ReduceMean -> Add -> Sqrt -> Div``, opsets
before 17) computes a mean over the channels that removing channels would change, and no
weight tells its kept channels apart: its reduced dimension stays whole, with that reason.
"""

from __future__ import annotations

import onnx

from prunecli.onnx_graph.context import OnnxContext, attribute, onnx_rule

DECOMPOSED = "normalised together by a decomposed LayerNorm (ReduceMean/Sub/Pow/Sqrt/Div over these channels)"


@onnx_rule("LayerNormalization")
def layer_norm(ctx: OnnxContext, node: onnx.NodeProto):
    """LayerNormalization from ``axis`` on: one normalised dimension with a scale is prunable."""
    x = ctx.layouts(node.input[0])
    axis = int(attribute(node, "axis", -1)) % len(x)
    normalized = x[axis:]
    scale, bias = (node.input[i] if len(node.input) > i and node.input[i] else None for i in (1, 2))
    extra = [ctx.fresh(ctx.shape(name), "normalisation statistics") if name else None for name in node.output[1:]]
    if len(normalized) != 1 or scale is None or not ctx.is_initializer(scale) or len(ctx.shape(scale)) != 1:
        reason = "normalised together by LayerNormalization (several dimensions, or no weight)"
        for layout in normalized:
            ctx.table.mark_fixed(layout, reason)
        ctx.fix([name for name in (scale, bias) if name], reason)
        return [list(x)] + extra
    for name in (scale, bias):
        layouts = ctx.layouts(name) if name else None
        if layouts is not None and len(layouts) == 1 and ctx.table.size(layouts[0]) == ctx.table.size(x[axis]):
            ctx.table.unify(layouts[0], x[axis])
    ctx.norms.append((ctx.node_index, ctx.resolve(scale)))
    return [list(x)] + extra


def decomposed_norm(ctx: OnnxContext, node: onnx.NodeProto) -> bool:
    """Whether a ReduceMean is the mean of a decomposed LayerNorm (a Sub of its own input reads it)."""
    if node.op_type != "ReduceMean":
        return False
    return any(
        reader.op_type == "Sub" and node.input[0] in reader.input for reader in ctx.readers.get(node.output[0], ())
    )
