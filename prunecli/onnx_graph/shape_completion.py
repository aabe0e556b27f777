"""Sizes onnx shape inference leaves unknown, found from the shape values that ``shape_values`` follows.

onnx's data propagation evaluates ``Shape -> Gather -> Concat`` but not ``Where``, ``Equal``,
a reversed ``Slice`` or a ``Transpose`` of a shape: torch's ``expand(-1, ...)`` and ``pad``
export so, and every tensor after them loses its shape (timm ViTs exported by TorchScript
after the class token, Swin after its window padding). ``unsized_outputs`` sizes them in one
walk; ``static_shapes(..., complete=unsized_outputs)`` then runs inference again with them.
"""

from __future__ import annotations

import numpy as np
import onnx

from prunecli.onnx_graph.context import OnnxContext, attribute
from prunecli.onnx_graph.shape_values import SHAPE_OPS, ShapeValue, computed, fits, read_value, selector


def unsized_outputs(
    model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], types: dict[str, int]
) -> dict[str, tuple[int, ...]]:
    """Shapes of tensors that onnx inference left unsized, sized in one walk from the followed shape values.

    torch's ``expand(-1, ...)`` exports as ``Where(Equal(target, -1), 1, target)`` and its ``pad``
    builds the pads with a reversed ``Slice`` and a ``Transpose``: onnx's data propagation
    evaluates neither, and the tensor and all that follows lose their shapes. Expand, Pad,
    Reshape and Slice outputs are sized here from their followed inputs; the nodes after them
    by onnx's per-node inference (``types``: element types by name, completed as it goes).
    """
    ctx = OnnxContext(model, dict(shapes))
    found: dict[str, tuple[int, ...]] = {}
    for index, node in enumerate(model.graph.node):
        ctx.node_index = index
        if node.op_type == "Constant" and isinstance(attribute(node, "value"), onnx.TensorProto):
            ctx.constants[node.output[0]] = attribute(node, "value")
        if any(name and ctx.shape(name) is None for name in node.output):
            sized = _followed_size(ctx, node)
            if sized is not None and node.input[0] in types:
                types[node.output[0]] = types[node.input[0]]
            for name, shape in ({node.output[0]: sized} if sized else _node_inferred(ctx, node, types, model)).items():
                ctx.shapes[name] = found[name] = shape
        if node.op_type in SHAPE_OPS and node.output:
            value = computed(ctx, node)
            if value is not None:
                ctx.shape_values[node.output[0]] = value
    return found


def _followed_size(ctx: OnnxContext, node: onnx.NodeProto) -> tuple[int, ...] | None:
    source = ctx.shape(node.input[0]) if node.input else None
    if source is None or node.op_type not in ("Expand", "Pad", "Reshape", "Slice"):
        return None
    if node.op_type == "Slice":
        return _sliced(source, [read_value(ctx, node, i) for i in range(1, 5)])
    return _sized(node.op_type, source, read_value(ctx, node, 1), len(node.input) > 3 and bool(node.input[3]))


def _node_inferred(
    ctx: OnnxContext, node: onnx.NodeProto, types: dict[str, int], model: onnx.ModelProto
) -> dict[str, tuple[int, ...]]:
    """Output shapes of one node by onnx's own inference, given its inputs' shapes and followed values."""
    names = [name for name in node.input if name]
    if node.domain not in ("", "ai.onnx") or any(ctx.shape(n) is None or n not in types for n in names):
        return {}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    inputs = {n: onnx.helper.make_tensor_type_proto(types[n], ctx.shape(n)) for n in names}
    values = {name: read_value(ctx, node, position) for position, name in enumerate(node.input) if name}
    data = {name: onnx.numpy_helper.from_array(value.ints(), name) for name, value in values.items() if value}
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
        outputs = onnx.shape_inference.infer_node_outputs(schema, node, inputs, data, opset_imports=model.opset_import)
    except Exception:  # onnx raises SchemaError, InferenceError, ...: that node stays unsized
        return {}
    sized = {}
    for name, proto in outputs.items():
        dims = proto.tensor_type.shape.dim
        if proto.tensor_type.HasField("shape") and all(dim.HasField("dim_value") for dim in dims):
            sized[name] = tuple(int(dim.dim_value) for dim in dims)
            types[name] = proto.tensor_type.elem_type
    return sized


def _sliced(source: tuple[int, ...], bounds: list[ShapeValue | None]) -> tuple[int, ...] | None:
    """The output shape of a Slice of a tensor of shape ``source`` by followed starts, ends, axes and steps."""
    chosen = selector(bounds, len(source), sizing=True)
    if chosen is None:
        return None
    return tuple(len(range(*part.indices(size))) for part, size in zip(chosen, source))


def _sized(op: str, source: tuple[int, ...], value: ShapeValue | None, axes: bool) -> tuple[int, ...] | None:
    """The output shape of a Reshape or Expand to ``value``, or of a Pad by ``value`` (pads over every axis)."""
    if value is None or len(value.shape) != 1:
        return None
    sizes = value.ints().tolist()
    if op == "Reshape":
        target = [size if size != 0 else source[i] for i, size in enumerate(sizes)]
        count = int(np.prod(source))
        return tuple(np.empty(count).reshape(target).shape) if target.count(-1) <= 1 and fits(count, target) else None
    if op == "Expand":
        if any(size < 1 for size in sizes):
            return None
        return tuple(int(size) for size in np.broadcast_shapes(source, tuple(sizes)))
    if axes or len(sizes) != 2 * len(source):
        return None
    padded = tuple(size + sizes[d] + sizes[d + len(source)] for d, size in enumerate(source))
    return padded if all(size > 0 for size in padded) else None
