"""LayerNormalization and its decomposed form: what normalising over channels couples.

As in the torch front-end (``aten::layer_norm``), a LayerNormalization over one dimension with
a weight ties its scale and bias to that dimension's channels, which may then be pruned: the
pruned graph normalises over the kept channels, and so does the masked original in
verification (``prunecli.onnx_graph.norms``). Without a weight, or over several dimensions,
the normalised dimensions stay whole; the other dimensions pass through either way.

The decomposed form that exporters write before opset 17 is recognised from its first
ReduceMean (``decomposed_layer_norm``)::

    mean = ReduceMean(x, axes=[-1]); d = Sub(x, mean)
    var = ReduceMean(Pow(d, 2) | Mul(d, d), axes=[-1])
    n = Div(d, Sqrt(Add(var, eps))) | Mul(d, Reciprocal(Sqrt(Add(var, eps))))
    y = Mul(n, gamma) [-> Add(., beta)]

Its two ReduceMeans then leave the channels prunable (gamma and beta join their group through
the elementwise rules): the pruned graph averages over the kept channels by itself, and the
masked original does so too (``DecomposedNorm``). Anything else that averages over the channels
leaves them whole, with its reason.
"""

from __future__ import annotations

import numpy as np
import onnx

from prunecli.onnx_graph.context import OnnxContext, attribute, onnx_rule
from prunecli.onnx_graph.norms import DecomposedNorm

DECOMPOSED = (
    "normalised together by a decomposed LayerNorm (ReduceMean/Sub/Pow/Sqrt/Div over these channels) "
    "that is not the recognised pattern with a weight"
)


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


def reduction_reason(ctx: OnnxContext, node: onnx.NodeProto) -> str | None:
    """Why a reduction fixes the dimensions it reduces; None for the statistics of a recognised decomposed LayerNorm.

    The first ReduceMean of a recognised pattern records it in ``ctx.norms`` (for verification);
    the pattern's second ReduceMean (the variance) is then known by its output.
    """
    if node.op_type != "ReduceMean":
        return f"reduced by {node.op_type}"
    if any(isinstance(norm, DecomposedNorm) and node.output[0] in norm.nodes[:2] for norm in ctx.norms):
        return None
    found = decomposed_layer_norm(ctx, node)
    if found is not None:
        ctx.norms.append(found)
        return None
    if any(reader.op_type == "Sub" and node.input[0] in reader.input for reader in _readers(ctx, node.output[0])):
        return DECOMPOSED
    return f"reduced by {node.op_type}"


def decomposed_layer_norm(ctx: OnnxContext, mean: onnx.NodeProto) -> DecomposedNorm | None:
    """The decomposed LayerNorm whose first ReduceMean is ``mean``, or None when the pattern does not match.

    Every intermediate tensor must be read by the pattern only, the means be over the last axis
    only (dimensions kept), the exponent and eps scalars, gamma a 1-D weight of the channels. Their
    values are not read (a Constant node may come after the mean): the pruned graph and the masked
    original compute the same pattern over the kept channels whatever they are.
    """
    source = mean.input[0]
    shape = ctx.shape(source)
    if not shape or shape[-1] < 2 or not _over_last_axis(ctx, mean, len(shape)):
        return None
    sub = _only_reader(ctx, mean.output[0], "Sub")
    if sub is None or list(sub.input) != [source, mean.output[0]]:
        return None
    centred = sub.output[0]
    readers = _readers(ctx, centred)
    squares = [node for node in readers if _squares(ctx, node, centred)]
    if len(readers) != 2 or len(squares) != 1:
        return None
    variance = _only_reader(ctx, squares[0].output[0], "ReduceMean")
    if variance is None or not _over_last_axis(ctx, variance, len(shape)):
        return None
    chain = _std_chain(ctx, variance.output[0])
    if chain is None:
        return None
    divider = next(node for node in readers if node is not squares[0])
    std_readers = _readers(ctx, chain[-1].output[0])
    if not _divides(divider, centred, chain[-1].output[0]) or len(std_readers) != 1:
        return None
    scaled = _only_reader(ctx, divider.output[0], "Mul")
    if scaled is None or not _is_gamma(ctx, scaled, divider.output[0], shape[-1]):
        return None
    nodes = (mean, variance, sub, squares[0], *chain, divider)
    return DecomposedNorm(
        source=source, nodes=tuple(node.output[0] for node in nodes), output=divider.output[0], scaled=scaled.output[0]
    )


def _readers(ctx: OnnxContext, name: str) -> list[onnx.NodeProto]:
    """The nodes reading ``name``, each once (``Mul(d, d)`` reads it twice)."""
    unique: dict[int, onnx.NodeProto] = {}
    for node in ctx.readers.get(name, ()):
        unique.setdefault(id(node), node)
    return list(unique.values())


def _only_reader(ctx: OnnxContext, name: str, op_type: str) -> onnx.NodeProto | None:
    readers = _readers(ctx, name)
    return readers[0] if len(readers) == 1 and readers[0].op_type == op_type else None


def _over_last_axis(ctx: OnnxContext, node: onnx.NodeProto, rank: int) -> bool:
    """A ReduceMean over the last axis only, keeping it (axes as attribute, or as input from opset 18)."""
    axes = attribute(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = ctx.constant(node.input[1])
    if axes is None or not attribute(node, "keepdims", 1):
        return False
    return [int(axis) % rank for axis in np.asarray(axes).reshape(-1)] == [rank - 1]


def _scalar(ctx: OnnxContext, name: str) -> bool:
    """A one-element tensor (its value may come from a Constant node not visited yet)."""
    shape = ctx.shape(name) if name else None
    return shape is not None and int(np.prod(shape, dtype=np.int64)) == 1


def _squares(ctx: OnnxContext, node: onnx.NodeProto, centred: str) -> bool:
    """``Pow(d, p)`` with a scalar ``p`` (2 in a LayerNorm), or ``Mul(d, d)``."""
    if node.op_type == "Pow":
        return node.input[0] == centred and _scalar(ctx, node.input[1])
    return node.op_type == "Mul" and list(node.input) == [centred, centred]


def _std_chain(ctx: OnnxContext, variance: str) -> list[onnx.NodeProto] | None:
    """``Add(var, eps) -> Sqrt`` (then ``Reciprocal`` when it has one), or None."""
    add = _only_reader(ctx, variance, "Add")
    if add is None or not _scalar(ctx, next((name for name in add.input if name != variance), "")):
        return None
    sqrt = _only_reader(ctx, add.output[0], "Sqrt")
    if sqrt is None:
        return None
    reciprocal = _only_reader(ctx, sqrt.output[0], "Reciprocal")
    return [add, sqrt, reciprocal] if reciprocal is not None else [add, sqrt]


def _divides(node: onnx.NodeProto, centred: str, std: str) -> bool:
    """``Div(d, std)``, or ``Mul`` of ``d`` by the reciprocal of the std in either order."""
    if node.op_type == "Div":
        return list(node.input) == [centred, std]
    return node.op_type == "Mul" and sorted(node.input) == sorted([centred, std])


def _is_gamma(ctx: OnnxContext, node: onnx.NodeProto, normed: str, channels: int) -> bool:
    """``Mul(n, gamma)`` (either order) with gamma a weight of shape (channels,)."""
    others = [name for name in node.input if name != normed]
    return len(others) == 1 and ctx.is_initializer(others[0]) and ctx.shape(others[0]) == (channels,)
