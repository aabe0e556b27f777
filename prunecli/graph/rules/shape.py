"""Ops that move, merge, split or select dimensions without computing across channels."""

from __future__ import annotations

from typing import Any

import torch

from prunecli.graph.layout import Product, concat_layouts
from prunecli.graph.reshape import reshape_layouts
from prunecli.graph.rules.context import TraceContext, rule


def _dim(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


@rule("aten::view", "aten::reshape", "aten::_unsafe_view", "aten::flatten", "aten::unflatten",
      "aten::squeeze", "aten::unsqueeze", "aten::view_as", "aten::reshape_as")  # fmt: skip
def reshape(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Any change of shape that keeps the element order."""
    source = args["self"]
    return reshape_layouts(ctx.table, ctx.layouts(source), ctx.shape(source), ctx.shape(node))


@rule("aten::permute", "aten::transpose", "aten::t", "aten::swapaxes", "aten::movedim")
def permute(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """A reordering of dimensions; the order is read off the schema's arguments."""
    layouts = ctx.layouts(args["self"])
    rank = len(layouts)
    order = list(range(rank))
    if "dims" in args:
        order = [_dim(d, rank) for d in args["dims"]]
    elif "dim0" in args:
        a, b = _dim(args["dim0"], rank), _dim(args["dim1"], rank)
        order[a], order[b] = order[b], order[a]
    elif "source" in args:
        source, destination = _dim(args["source"], rank), _dim(args["destination"], rank)
        order.insert(destination, order.pop(source))
    elif rank == 2:
        order = [1, 0]
    return [layouts[d] for d in order]


@rule("aten::expand", "aten::expand_as")
def expand(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Broadcast copies: expanded dimensions are new index spaces; the rest keep their layouts."""
    layouts = ctx.layouts(args["self"])
    in_shape, out_shape = ctx.shape(args["self"]), ctx.shape(node)
    lead = len(out_shape) - len(in_shape)
    outputs = [ctx.table.new(size) for size in out_shape[:lead]]
    for layout, before, after in zip(layouts, in_shape, out_shape[lead:]):
        outputs.append(layout if before == after else ctx.table.new(after))
    return outputs


@rule("aten::repeat")
def repeat(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Tiling: each repeated dimension becomes Product(copies, original)."""
    layouts = ctx.layouts(args["self"])
    repeats = list(args["repeats"])
    lead = len(repeats) - len(layouts)
    outputs = [ctx.table.new(r) for r in repeats[:lead]]
    for layout, times in zip(layouts, repeats[lead:]):
        outputs.append(layout if times == 1 else Product((ctx.table.new(times, fixed="repeated"), layout)))
    return outputs


@rule("aten::cat", "aten::concat", "aten::concatenate")
def cat(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Concatenation: the joined dimension is a Concat; the others are tied across inputs."""
    tensors = [t for t in args["tensors"] if ctx.layouts(t) is not None and ctx.shape(t) != (0,)]
    rank = len(ctx.shape(node))
    dim = _dim(args.get("dim", 0), rank)
    return concat_layouts(ctx.table, [ctx.layouts(t) for t in tensors], dim)


@rule("aten::stack")
def stack(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Stacking: inputs are tied dimension by dimension; the new dimension is fixed."""
    tensors = args["tensors"]
    first = ctx.layouts(tensors[0])
    for other in tensors[1:]:
        for a, b in zip(first, ctx.layouts(other)):
            ctx.table.unify(a, b)
    dim = _dim(args.get("dim", 0), len(first) + 1)
    return first[:dim] + [ctx.table.new(len(tensors), fixed="stacked")] + first[dim:]


@rule("aten::split", "aten::split_with_sizes", "aten::chunk", "aten::tensor_split")
def split(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Splitting one dimension into consecutive pieces: a Concat of new atoms (or of existing parts)."""
    layouts = ctx.layouts(args["self"])
    pieces = [tuple(int(s) for s in v.shape) for v in node.meta["val"]]
    dim = _dim(args.get("dim", 0), len(layouts))
    sizes = [shape[dim] for shape in pieces]
    parts = iter(ctx.table.split(layouts[dim], [s for s in sizes if s], as_product=False))
    outputs = []
    for size in sizes:
        piece = list(layouts)
        piece[dim] = next(parts) if size else ctx.table.new(0)
        outputs.append(piece)
    return outputs


@rule("aten::slice", "aten::narrow")
def slice_(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """A contiguous slice keeps one piece of a Concat split; strided slices fix the dimension."""
    layouts = list(ctx.layouts(args["self"]))
    dim = _dim(args.get("dim", 0), len(layouts))
    before, after = ctx.shape(args["self"])[dim], ctx.shape(node)[dim]
    if before == after:
        return layouts
    start = args.get("start") or 0
    start = _dim(start, before) if start < 0 else min(start, before)
    if args.get("step", 1) != 1:
        ctx.table.mark_fixed(layouts[dim], "sliced with a step")
        layouts[dim] = ctx.table.new(after, fixed="sliced with a step")
        return layouts
    sizes = [start, after, before - start - after]
    pieces = ctx.table.split(layouts[dim], [s for s in sizes if s], as_product=False)
    layouts[dim] = pieces[1 if start else 0]
    return layouts


@rule("aten::select", "aten::unbind")
def select(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Picking single indices of a dimension: that dimension is fixed and dropped."""
    layouts = list(ctx.layouts(args["self"]))
    dim = _dim(args.get("dim", 0), len(layouts))
    ctx.table.mark_fixed(layouts[dim], "indexed by position")
    rest = layouts[:dim] + layouts[dim + 1 :]
    if isinstance(node.meta["val"], (list, tuple)):
        return [list(rest) for _ in node.meta["val"]]
    return rest


@rule("getitem")
def getitem(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """An element of a multi-output op's result."""
    container, index = node.args
    value = ctx.values.get(container)
    return value[index] if isinstance(value, list) and index < len(value) else None



@rule("aten::roll", "aten::flip")
def roll(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Rolled or flipped dimensions move positions around: they are fixed; the others pass through."""
    layouts = list(ctx.layouts(args["self"]))
    dims = args.get("dims") or list(range(len(layouts)))
    for dim in dims:
        ctx.table.mark_fixed(layouts[_dim(dim, len(layouts))], "positions reordered by roll or flip")
    return layouts


@rule("aten::index")
def index(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Advanced indexing by tensors on consecutive dimensions: those are fixed, the rest pass through."""
    layouts = ctx.layouts(args["self"])
    indexed = [i for i, index_tensor in enumerate(args["indices"]) if index_tensor is not None]
    if not indexed or indexed != list(range(indexed[0], indexed[-1] + 1)):
        return ctx.unsupported(node, detail="index tensors on non-consecutive dimensions")
    for dim in indexed:
        ctx.table.mark_fixed(layouts[dim], "indexed by a tensor")
    out_shape = ctx.shape(node)
    before, after = layouts[: indexed[0]], layouts[indexed[-1] + 1 :]
    middle = out_shape[len(before) : len(out_shape) - len(after)]
    return list(before) + ctx.fresh(middle, "indexed by a tensor") + list(after)


@rule("aten::pad", "aten::constant_pad_nd", "aten::reflection_pad2d", "aten::replication_pad2d")
def pad(ctx: TraceContext, node: torch.fx.Node, args: dict[str, Any]) -> Any:
    """Padding: padded dimensions become new fixed spaces; the others pass through."""
    layouts = list(ctx.layouts(args["self"]))
    before, after = ctx.shape(args["self"]), ctx.shape(node)
    for dim, (old, new) in enumerate(zip(before, after)):
        if old != new:
            ctx.table.mark_fixed(layouts[dim], "padded")
            layouts[dim] = ctx.table.new(new, fixed="padded")
    return layouts
