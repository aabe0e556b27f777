"""ONNX ops that compute elementwise or move, merge, split and select dimensions."""

from __future__ import annotations

import numpy as np
import onnx

from prunecli.graph.layout import Product, concat_layouts
from prunecli.graph.reshape import reshape_layouts
from prunecli.onnx_graph.context import Layouts, OnnxContext, attribute, onnx_rule
from prunecli.onnx_graph.shape_values import read_value, size_by

_UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Gelu", "Mish", "ThresholdedRelu", "Clip", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal",
    "Erf", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Cast", "CastLike", "Not", "IsNaN",
    "IsInf", "Shrink", "Dropout",
)  # fmt: skip
_BROADCAST = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "PRelu", "Where", "Equal", "Less",
    "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "BitShift",
)  # fmt: skip


@onnx_rule(*_UNARY)
def unary(ctx: OnnxContext, node: onnx.NodeProto):
    """Elementwise ops of one tensor (extra inputs are scalars such as Clip's bounds): layouts pass through."""
    x = ctx.layouts(node.input[0])
    extra = [ctx.fresh(ctx.shape(name), "a mask") if name else None for name in node.output[1:]]
    return [list(x)] + extra


@onnx_rule("Identity")
def identity(ctx: OnnxContext, node: onnx.NodeProto):
    """Identity: the output is the input; of an initializer, it stands for that initializer.

    Exporters share equal initializers through Identity nodes; each reader past the first reads its
    own copy (``prunecli.onnx_graph.copies``), so that the sharing couples nothing.
    """
    if ctx.is_initializer(node.input[0]):
        ctx.aliases[node.output[0]] = ctx.resolve(node.input[0])
    return [list(ctx.layouts(node.input[0]))]


@onnx_rule(*_BROADCAST)
def broadcast(ctx: OnnxContext, node: onnx.NodeProto):
    """Numpy broadcasting, aligned from the right: equal non-1 sizes tie their channels.

    A per-channel divisor, exponent or multiplier initializer is remembered: masking it with
    zeros would divide by zero, or zero a channel that a later op divides by its own sum (the
    gated attention of ConViT, whose gates the dynamo exporter folds into initializers), so the
    masked original fills it with ones instead; the removed channel is ignored where it is read.
    """
    if node.op_type in ("Div", "Pow", "Mod") and ctx.is_initializer(node.input[1]):
        ctx.divisors.add(ctx.resolve(node.input[1]))
    if node.op_type == "Mul":
        ctx.divisors.update(ctx.resolve(name) for name in node.input if ctx.is_initializer(name))
    out_shape = ctx.shape(node.output[0])
    inputs = [(ctx.layouts(name), ctx.shape(name)) for name in node.input if name]
    outputs: Layouts = []
    for position, size in enumerate(out_shape):
        from_right = len(out_shape) - position
        matching = [
            layouts[len(shape) - from_right]
            for layouts, shape in inputs
            if len(shape) >= from_right and shape[len(shape) - from_right] == size
        ]
        if size == 1 or not matching:
            outputs.append(ctx.table.singleton() if size == 1 else ctx.table.new(size))
            continue
        for other in matching[1:]:
            ctx.table.unify(matching[0], other)
        outputs.append(matching[0])
    return [outputs]


@onnx_rule("Flatten", "Squeeze", "Unsqueeze")
def flatten(ctx: OnnxContext, node: onnx.NodeProto):
    """Changes of shape that keep the element order and need no size constants."""
    source = node.input[0]
    return [reshape_layouts(ctx.table, ctx.layouts(source), ctx.shape(source), ctx.shape(node.output[0]))]


@onnx_rule("Reshape")
def reshape(ctx: OnnxContext, node: onnx.NodeProto):
    """Reshape: layouts as for torch's view; the target's sizes are followed (``shape_values.size_by``).

    The target is a constant or a vector computed from shapes at run time (``Shape -> Gather ->
    Unsqueeze -> Concat``): explicit sizes are recorded for surgery, ``x.size(0)`` follows ``x``.
    """
    source, target = node.input[0], read_value(ctx, node, 1)
    if target is None or len(target.entries) != len(ctx.shape(node.output[0])):
        return ctx.unsupported(node, "a target shape computed at run time by ops prunecli does not follow")
    out = reshape_layouts(ctx.table, ctx.layouts(source), ctx.shape(source), ctx.shape(node.output[0]))
    size_by(ctx, target, out, "sized by a shape computed at run time")
    return [out]


@onnx_rule("Expand")
def expand(ctx: OnnxContext, node: onnx.NodeProto):
    """Broadcast copies: expanded dimensions are new spaces; the rest keep their layouts (target as Reshape)."""
    layouts, target = ctx.layouts(node.input[0]), read_value(ctx, node, 1)
    in_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    if target is None or len(target.entries) > len(out_shape):
        return ctx.unsupported(node, "a target shape computed at run time by ops prunecli does not follow")
    lead = len(out_shape) - len(in_shape)
    outputs = [ctx.table.new(size) for size in out_shape[:lead]]
    for layout, before, after in zip(layouts, in_shape, out_shape[lead:]):
        outputs.append(layout if before == after else ctx.table.new(after))
    size_by(ctx, target, outputs[len(out_shape) - len(target.entries) :], "sized by a shape computed at run time")
    return [outputs]


@onnx_rule("Tile")
def tile(ctx: OnnxContext, node: onnx.NodeProto):
    """Tiling: each repeated dimension becomes Product(copies, original)."""
    layouts, repeats = ctx.layouts(node.input[0]), ctx.constant(node.input[1])
    if repeats is None:
        return ctx.unsupported(node, "repeats computed at run time")
    return [[lay if int(r) == 1 else Product((ctx.table.new(int(r), fixed="repeated"), lay))
             for lay, r in zip(layouts, repeats.tolist())]]  # fmt: skip


@onnx_rule("Transpose")
def transpose(ctx: OnnxContext, node: onnx.NodeProto):
    """A reordering of dimensions by ``perm`` (reversed when absent)."""
    layouts = ctx.layouts(node.input[0])
    perm = attribute(node, "perm") or list(range(len(layouts)))[::-1]
    return [[layouts[int(d)] for d in perm]]


@onnx_rule("Concat")
def concat(ctx: OnnxContext, node: onnx.NodeProto):
    """Concatenation: the joined dimension is a Concat; the others are tied across inputs."""
    names = [name for name in node.input if name and ctx.shape(name) and 0 not in ctx.shape(name)]
    rank = len(ctx.shape(node.output[0]))
    axis = int(attribute(node, "axis")) % rank
    return [concat_layouts(ctx.table, [ctx.layouts(name) for name in names], axis)]


@onnx_rule("Split")
def split(ctx: OnnxContext, node: onnx.NodeProto):
    """Split into consecutive pieces; explicit sizes (input or attribute) are recorded for surgery.

    Without explicit sizes the pieces are equal at run time, which pruning cannot keep: fixed;
    pieces of one entry each (an unbind) leave that dimension whole too.
    """
    layouts = ctx.layouts(node.input[0])
    axis = int(attribute(node, "axis", 0)) % len(layouts)
    sizes = [ctx.shape(name)[axis] for name in node.output]
    if len(node.input) > 1 and node.input[1]:
        source, explicit = "input:1", ctx.constant(node.input[1])
        if explicit is None:
            return ctx.unsupported(node, "split sizes computed at run time")
    else:
        source, explicit = "attr:split", attribute(node, "split")
    if all(size == 1 for size in sizes):  # unbind (q, k, v = qkv.unbind(0)): each entry is a piece of its own
        ctx.table.mark_fixed(layouts[axis], "split into single entries")
        return [layouts[:axis] + [ctx.table.singleton()] + layouts[axis + 1 :] for _ in sizes]
    if explicit is None:
        reason = "split into equal pieces by count"
        ctx.table.mark_fixed(layouts[axis], reason)
        return [layouts[:axis] + [ctx.table.new(size, fixed=reason)] + layouts[axis + 1 :] for size in sizes]
    parts = iter(ctx.table.split(layouts[axis], [s for s in sizes if s], as_product=False))
    outputs, entries = [], []
    for index, size in enumerate(sizes):
        piece = next(parts) if size else ctx.table.new(0)
        entries.append((index, piece))
        outputs.append(layouts[:axis] + [piece] + layouts[axis + 1 :])
    ctx.size_ref(source, entries)
    return outputs


@onnx_rule("Slice")
def slice_(ctx: OnnxContext, node: onnx.NodeProto):
    """Slices: dimensions whose size changes (or whose order flips) are fixed; the others pass through."""
    layouts = list(ctx.layouts(node.input[0]))
    before, after = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    steps = ctx.constant(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    flips = steps is not None and bool((np.asarray(steps) < 0).any())
    for dim, (old, new) in enumerate(zip(before, after)):
        if old != new or (flips and old > 1):
            ctx.table.mark_fixed(layouts[dim], "sliced")
            layouts[dim] = ctx.table.new(new, fixed="sliced") if new != 1 else ctx.table.singleton()
    return [layouts]


@onnx_rule("Gather")
def gather(ctx: OnnxContext, node: onnx.NodeProto):
    """Gather along ``axis``: that dimension is fixed and replaced by the indices' dimensions."""
    layouts = ctx.layouts(node.input[0])
    axis = int(attribute(node, "axis", 0)) % len(layouts)
    ctx.table.mark_fixed(layouts[axis], "indexed by position")
    middle = ctx.fresh(ctx.shape(node.input[1]), "indexed by a tensor")
    return [layouts[:axis] + middle + layouts[axis + 1 :]]


@onnx_rule("Pad")
def pad(ctx: OnnxContext, node: onnx.NodeProto):
    """Padding: padded dimensions become new fixed spaces; the others pass through."""
    layouts = list(ctx.layouts(node.input[0]))
    for dim, (old, new) in enumerate(zip(ctx.shape(node.input[0]), ctx.shape(node.output[0]))):
        if old != new:
            ctx.table.mark_fixed(layouts[dim], "padded")
            layouts[dim] = ctx.table.new(new, fixed="padded")
    return [layouts]


@onnx_rule("Constant")
def constant(ctx: OnnxContext, node: onnx.NodeProto):
    """A constant tensor: its value is kept for rules that read sizes; it carries no channels."""
    value = attribute(node, "value")
    if isinstance(value, onnx.TensorProto):
        ctx.constants[node.output[0]] = value
    shape = ctx.shape(node.output[0])
    return [ctx.fresh(shape, "a constant") if shape is not None else None]


@onnx_rule("Shape", "Size", "ConstantOfShape", "Range", "EyeLike", "RandomNormalLike", "RandomUniformLike")
def sizes_only(ctx: OnnxContext, node: onnx.NodeProto):
    """Ops that read only sizes (or nothing) of their inputs: outputs carry no channels."""
    return [ctx.fresh(ctx.shape(name), f"computed by {node.op_type}") for name in node.output]
