"""Static tensor shapes of an ONNX graph for one input batch, from onnx shape inference."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import onnx

from prunecli.errors import InputError, UnsupportedModelError


_COMPLETION_ROUNDS = 3
_Proto = TypeVar("_Proto", onnx.ModelProto, onnx.GraphProto)


def static_shapes(
    model: onnx.ModelProto,
    *,
    input_shape: Sequence[int] | None = None,
    complete: Callable[[onnx.ModelProto, dict, dict[str, int]], dict[str, tuple[int, ...]]] | None = None,
) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor onnx shape inference can size, the graph inputs fixed to static sizes.

    Symbolic input dimensions (``batch``) become 1, or the sizes of ``input_shape`` when given
    (the graph must then have one data input of that rank). Tensors left unsized are absent.
    ``complete`` may size some of those from the shapes and element types found (targets onnx's
    data propagation cannot evaluate, see ``shape_values.unsized_outputs``); inference then runs
    again with them.
    """
    skeleton = without_initializers(model)
    graph = skeleton.graph
    graph.initializer.extend(_shape_only(tensor) for tensor in model.graph.initializer)
    initializers = {tensor.name for tensor in model.graph.initializer}
    data_inputs = [value for value in graph.input if value.name not in initializers]
    for value in data_inputs:
        _fix_dims(value, input_shape if input_shape is not None and len(data_inputs) == 1 else None)
    del graph.value_info[:]
    for output in graph.output:
        output.type.tensor_type.ClearField("shape")
    inferred = _inferred(skeleton)
    shapes = _collected(model, inferred)
    for _ in range(_COMPLETION_ROUNDS if complete is not None else 0):  # a round may unlock the next
        types = {tensor.name: tensor.data_type for tensor in model.graph.initializer}
        for value in [*inferred.input, *inferred.value_info, *inferred.output]:
            if value.type.tensor_type.elem_type:
                types[value.name] = value.type.tensor_type.elem_type
        extra = complete(model, shapes, types)
        if not extra:
            break
        graph.value_info.extend(
            onnx.helper.make_tensor_value_info(name, types.get(name) or onnx.TensorProto.FLOAT, shape)
            for name, shape in extra.items()
        )
        inferred = _inferred(skeleton)
        shapes = _collected(model, inferred)
    return shapes


def without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with no initializers, made without copying their bytes (the weights are most of a model)."""
    copy = _fields_but(model, "graph")
    copy.graph.CopyFrom(_fields_but(model.graph, "initializer"))
    return copy


def _fields_but(message: _Proto, skipped: str) -> _Proto:
    """A copy of the protobuf ``message`` without its field ``skipped``."""
    copy = type(message)()
    for field, value in message.ListFields():
        if field.name == skipped:
            continue
        target = getattr(copy, field.name)
        if hasattr(target, "extend"):  # a repeated field
            target.extend(value)
        elif hasattr(target, "CopyFrom"):  # a message
            target.CopyFrom(value)
        else:
            setattr(copy, field.name, value)
    return copy


def _inferred(skeleton: onnx.ModelProto) -> onnx.GraphProto:
    try:
        return onnx.shape_inference.infer_shapes(skeleton, data_prop=True).graph
    except Exception as error:  # onnx raises InferenceError, ValidationError, ... for invalid graphs
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UnsupportedModelError(f"onnx shape inference fails on the model ({first_line}); re-export it") from error


def _collected(model: onnx.ModelProto, inferred: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
    shapes = {tensor.name: tuple(int(d) for d in tensor.dims) for tensor in model.graph.initializer}
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        shape = _static(value)
        if shape is not None:
            shapes.setdefault(value.name, shape)
    return shapes


def _shape_only(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """The initializer with its values kept only when small (shape constants); weights become empty-sized.

    Shape inference reads initializer values only for shape inputs, which are small: copying a
    large weight's bytes would cost memory for nothing, so those keep only their dims and type.
    """
    if _numel(tensor) <= 64 or tensor.data_type == onnx.TensorProto.INT64:
        return tensor
    return _declared(tensor)


def _declared(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """A tensor with the same name, type and dims and no data (an external-data stub)."""
    stub = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    stub.data_location = onnx.TensorProto.EXTERNAL
    entry = stub.external_data.add()
    entry.key, entry.value = "location", "prunecli-shape-only"
    return stub


def _numel(tensor: onnx.TensorProto) -> int:
    count = 1
    for size in tensor.dims:
        count *= int(size)
    return count


def _fix_dims(value: onnx.ValueInfoProto, shape: Sequence[int] | None) -> None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        if shape is None:
            return
        tensor_type.shape.SetInParent()
    dims = tensor_type.shape.dim
    if shape is not None and len(dims) and len(dims) != len(shape):
        raise InputError(
            f"model.input_shape has {len(shape)} dims but the ONNX input '{value.name}' has {len(dims)}; "
            "fix model.input_shape"
        )
    sizes = list(shape) if shape is not None else [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    del dims[:]
    for size in sizes:
        dims.add().dim_value = int(size)


def _static(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tensor_type = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
        return None
    dims = tensor_type.shape.dim
    if not all(dim.HasField("dim_value") for dim in dims):
        return None
    return tuple(int(dim.dim_value) for dim in dims)
