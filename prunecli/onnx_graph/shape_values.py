"""Shapes computed at run time: follow ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` chains.

TorchScript exports of ``x.view(x.size(0), -1)`` or ``qkv.reshape(B, N, 3, heads, head_dim)``
build their target shapes from ``Shape`` at run time, so that the batch stays dynamic. Each
entry of such an integer vector is followed back to where it comes from (a ``ShapeEntry``):

- a *constant*: an element of an initializer or Constant read by some node (the ``3``,
  ``heads`` and ``head_dim`` above): surgery rewrites it like a constant Reshape target;
- a *dimension* of a tensor (``x.size(0)``): at run time it follows that dimension, so the
  reshaped dimension is tied to it;
- *computed* (arithmetic, ``Where``, ``ConstantOfShape``): its value is known for the traced
  input, and stays right only if the dimensions it depends on keep their sizes, which are fixed.

A tensor dimension whose size escapes into anything else (a ``Cast`` to float, say) is fixed
too: pruning it would change a value the graph computes from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from prunecli.onnx_graph.context import OnnxContext, SizeRef, attribute

_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
_ARITHMETIC = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.floor_divide, "Mod": np.mod,
    "Max": np.maximum, "Min": np.minimum, "Equal": np.equal,
}  # fmt: skip
SHAPE_OPS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Identity", "Reshape",
                       "Transpose", "Where", "ConstantOfShape", *_ARITHMETIC})  # fmt: skip


@dataclass(frozen=True)
class ShapeEntry:
    """One integer of a shape vector: its value for the traced input and where it comes from.

    ``const`` is ``(node index, input position, element index)`` of the constant it was read
    from; ``dim`` is ``(tensor, dimension)`` it equals at run time; ``deps`` the tensor
    dimensions its value depends on. ``x.size(0)`` is ``ShapeEntry(1, dim=("x", 0), deps={("x", 0)})``.
    """

    value: int
    const: tuple[int, int, int] | None = None
    dim: tuple[str, int] | None = None
    deps: frozenset[tuple[str, int]] = frozenset()


@dataclass(frozen=True)
class ShapeValue:
    """A small integer tensor computed from shapes, entry by entry (row-major), and its shape."""

    entries: tuple[ShapeEntry, ...]
    shape: tuple[int, ...]

    def index(self) -> np.ndarray:
        """Entry positions laid out in the value's shape (what reshaping ops move around)."""
        return np.arange(len(self.entries)).reshape(self.shape)

    def ints(self) -> np.ndarray:
        """The values for the traced input."""
        return np.asarray([entry.value for entry in self.entries], dtype=np.int64).reshape(self.shape)

    @property
    def constant(self) -> bool:
        """Whether no entry depends on a tensor's size."""
        return not any(entry.deps for entry in self.entries)


def _picked(pool: tuple[ShapeEntry, ...], index: np.ndarray) -> ShapeValue:
    return ShapeValue(tuple(pool[i] for i in index.reshape(-1)), tuple(int(size) for size in index.shape))


def read_value(ctx: OnnxContext, node: onnx.NodeProto, position: int) -> ShapeValue | None:
    """Input ``position`` of the current ``node`` as a shape value (a constant or a followed value), or None."""
    name = node.input[position] if len(node.input) > position else ""
    if not name:
        return None
    if name in ctx.shape_values:
        return ctx.shape_values[name]
    shape = ctx.shape(name)
    if shape is None or len(shape) > 2 or int(np.prod(shape)) > 64:
        return None
    array = ctx.constant(name)
    if array is None or array.dtype.kind not in "iu":
        return None
    entries = [ShapeEntry(int(v), const=(ctx.node_index, position, i)) for i, v in enumerate(array.reshape(-1))]
    return ShapeValue(tuple(entries), tuple(array.shape))


def follow(ctx: OnnxContext, node: onnx.NodeProto) -> None:
    """Record the shape value ``node`` computes; fix the sizes a shape value carries anywhere else."""
    if node.op_type in SHAPE_OPS and node.output:
        out = computed(ctx, node)
        if out is not None:
            ctx.shape_values[node.output[0]] = out
            return
    read_by_rule = 1 if node.op_type in ("Reshape", "Expand") else len(node.input)  # targets: see ``size_by``
    for name in node.input[:read_by_rule]:
        if name in ctx.shape_values:
            fix_dependencies(ctx, ctx.shape_values[name], f"a size read at run time by {node.op_type}")


def size_by(ctx: OnnxContext, value: ShapeValue, layouts: list, reason: str) -> None:
    """Tie the output ``layouts`` of a Reshape or Expand to the target ``value`` sizing them.

    Constant entries are recorded for surgery; an entry equal to a tensor dimension at run time
    ties that dimension to the output; a computed one fixes what it depends on, and the output
    dimension it sizes.
    """
    for entry, layout in zip(value.entries, layouts):
        size = ctx.table.size(layout)
        if entry.const is not None:  # chosen by a Where, it depends on what chose it
            fix_dependencies(ctx, entry, reason)
            if entry.value > 1:
                node, position, index = entry.const
                ctx.size_refs.append(SizeRef(node, f"input:{position}", ((index, layout),)))
            continue
        if entry.dim is not None and entry.value > 1 and size == entry.value:
            fix_dependencies(ctx, ShapeEntry(entry.value, deps=entry.deps - {entry.dim}), reason)
            ctx.table.unify(ctx.layouts(entry.dim[0])[entry.dim[1]], layout)
            continue
        fix_dependencies(ctx, entry, reason)
        if entry.value > 1:
            ctx.table.mark_fixed(layout, reason)


def fix_dependencies(ctx: OnnxContext, value: ShapeValue | ShapeEntry, reason: str) -> None:
    """Fix every tensor dimension the value (or entry) was computed from."""
    entries = value.entries if isinstance(value, ShapeValue) else (value,)
    for tensor, dim in {dep for entry in entries for dep in entry.deps}:
        layouts = ctx.layouts(tensor)
        if layouts is not None and dim < len(layouts):
            ctx.table.mark_fixed(layouts[dim], reason)


def computed(ctx: OnnxContext, node: onnx.NodeProto) -> ShapeValue | None:
    """The shape value ``node`` computes from its inputs, or None when it computes none prunecli follows."""
    try:
        return _compute(ctx, node, [read_value(ctx, node, i) for i in range(len(node.input))])
    except (ValueError, IndexError):  # numpy's answer to shapes that do not fit (a malformed graph): not followed
        return None


def _compute(ctx: OnnxContext, node: onnx.NodeProto, values: list[ShapeValue | None]) -> ShapeValue | None:
    op = node.op_type
    if op == "Shape":
        return _shape(ctx, node)
    data = values[0] if values else None
    if op == "ConstantOfShape":
        return _constant_of_shape(node, data)
    if data is None or (op == "Cast" and attribute(node, "to") not in _INT_TYPES):
        return None
    if op in ("Unsqueeze", "Squeeze", "Identity", "Cast", "Reshape"):
        return _reshaped(ctx, node, data, values[1] if len(values) > 1 else None)
    if op == "Transpose":
        perm = attribute(node, "perm")
        return _picked(data.entries, data.index().transpose(perm if perm else None))
    if op == "Concat":
        return _concat(values, int(attribute(node, "axis", 0)))
    if op == "Gather":
        return _gather(data, values[1] if len(values) > 1 else None, int(attribute(node, "axis", 0)))
    if op == "Slice":
        return _slice(data, values[1:5])
    if op == "Where":
        return _where(values)
    return _arithmetic(op, values)


def _shape(ctx: OnnxContext, node: onnx.NodeProto) -> ShapeValue | None:
    shape = ctx.shape(node.input[0])
    if shape is None:
        return None
    dims = list(range(len(shape)))[attribute(node, "start", 0) : attribute(node, "end", len(shape))]
    name = node.input[0]
    entries = tuple(ShapeEntry(shape[d], dim=(name, d), deps=frozenset({(name, d)})) for d in dims)
    return ShapeValue(entries, (len(entries),))


def _constant_of_shape(node: onnx.NodeProto, shape: ShapeValue | None) -> ShapeValue | None:
    fill = attribute(node, "value")
    fill_value = onnx.numpy_helper.to_array(fill).reshape(-1) if fill is not None else np.zeros(1)
    if shape is None or len(shape.shape) != 1 or fill_value.dtype.kind not in "iu":
        return None
    sizes = tuple(int(size) for size in shape.ints())
    if any(size < 0 for size in sizes) or int(np.prod(sizes)) > 64:
        return None
    deps = frozenset().union(*(entry.deps for entry in shape.entries))
    return ShapeValue(tuple(ShapeEntry(int(fill_value[0]), deps=deps) for _ in range(int(np.prod(sizes)))), sizes)


def _reshaped(ctx: OnnxContext, node: onnx.NodeProto, data: ShapeValue, second: ShapeValue | None) -> ShapeValue | None:
    """Unsqueeze, Squeeze, Identity, Cast and Reshape of a shape value: the entries in a new shape."""
    shape = ctx.shape(node.output[0])
    if shape is None and node.op_type in ("Identity", "Cast"):
        shape = data.shape
    if shape is None and node.op_type == "Reshape" and second is not None and second.constant:
        target = [size if size != 0 else data.shape[i] for i, size in enumerate(second.ints().reshape(-1).tolist())]
        if target.count(-1) > 1 or any(size < -1 for size in target):
            return None
        shape = np.empty(len(data.entries)).reshape(target).shape if fits(len(data.entries), target) else None
    if shape is None or int(np.prod(shape)) != len(data.entries):
        return None
    return ShapeValue(data.entries, tuple(int(size) for size in shape))


def fits(count: int, target: list[int]) -> bool:
    known = int(np.prod([size for size in target if size != -1]))
    return count == known if -1 not in target else known > 0 and count % known == 0


def _concat(values: list[ShapeValue | None], axis: int) -> ShapeValue | None:
    if any(value is None for value in values) or len({len(value.shape) for value in values}) != 1:
        return None
    rank = len(values[0].shape)
    if rank == 0 or any(v.shape[:axis % rank] + v.shape[axis % rank + 1 :] != values[0].shape[:axis % rank]
                        + values[0].shape[axis % rank + 1 :] for v in values):  # fmt: skip
        return None
    offsets = np.cumsum([0] + [len(value.entries) for value in values])
    pool = sum((value.entries for value in values), ())
    return _picked(pool, np.concatenate([v.index() + o for v, o in zip(values, offsets)], axis=axis % rank))


def _gather(data: ShapeValue, indices: ShapeValue | None, axis: int) -> ShapeValue | None:
    if indices is None or not indices.constant or not data.shape:
        return None
    size = data.shape[axis % len(data.shape)]
    chosen = indices.ints()
    if ((chosen < -size) | (chosen >= size)).any():
        return None
    return _picked(data.entries, np.take(data.index(), chosen, axis=axis % len(data.shape)))


def _slice(data: ShapeValue, bounds: list[ShapeValue | None]) -> ShapeValue | None:
    chosen = selector(bounds, len(data.shape))
    return _picked(data.entries, data.index()[chosen]) if chosen is not None else None


def selector(bounds: list[ShapeValue | None], rank: int, *, sizing: bool = False) -> tuple[slice, ...] | None:
    """Slice's starts, ends, axes and steps inputs as a numpy selector over ``rank`` dimensions.

    Following a value takes constant bounds only; ``sizing`` an output (``unsized_outputs``)
    takes any, with their values for the traced input.
    """
    given = [bound for bound in bounds if bound is not None]
    if len(bounds) < 2 or bounds[0] is None or bounds[1] is None or not (sizing or all(b.constant for b in given)):
        return None
    starts, ends = bounds[0].ints().reshape(-1).tolist(), bounds[1].ints().reshape(-1).tolist()
    axes = bounds[2].ints().reshape(-1).tolist() if len(bounds) > 2 and bounds[2] is not None else range(len(starts))
    steps = bounds[3].ints().reshape(-1).tolist() if len(bounds) > 3 and bounds[3] is not None else [1] * len(starts)
    if not rank or 0 in steps:
        return None
    parts = [slice(None)] * rank
    for start, end, axis, step in zip(starts, ends, axes, steps):
        parts[axis % rank] = slice(start, end, step)
    return tuple(parts)


def _where(values: list[ShapeValue | None]) -> ShapeValue | None:
    if len(values) != 3 or any(value is None for value in values):
        return None
    condition, first, second = values
    chosen, a, b = np.broadcast_arrays(condition.index(), first.index(), second.index())
    picked = []
    for c, i, j in zip(chosen.reshape(-1), a.reshape(-1), b.reshape(-1)):
        choice = condition.entries[c]
        entry = first.entries[i] if choice.value else second.entries[j]
        picked.append(ShapeEntry(entry.value, entry.const, entry.dim, entry.deps | choice.deps))
    return ShapeValue(tuple(picked), tuple(int(size) for size in chosen.shape))


def _arithmetic(op: str, values: list[ShapeValue | None]) -> ShapeValue | None:
    if op not in _ARITHMETIC or len(values) != 2 or any(value is None for value in values):
        return None
    first, second = values
    if op in ("Div", "Mod") and (second.ints() == 0).any():
        return None
    result = np.asarray(_ARITHMETIC[op](first.ints(), second.ints()))
    deps = frozenset().union(*(entry.deps for value in values for entry in value.entries))
    entries = tuple(ShapeEntry(int(v), deps=deps) for v in result.reshape(-1))
    return ShapeValue(entries, tuple(int(size) for size in result.shape))
