"""Static tensor shapes of an ONNX graph for one input batch, from onnx shape inference."""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from prunecli.errors import InputError, UnsupportedModelError


def static_shapes(model: onnx.ModelProto, *, input_shape: Sequence[int] | None = None) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor onnx shape inference can size, the graph inputs fixed to static sizes.

    Symbolic input dimensions (``batch``) become 1, or the sizes of ``input_shape`` when given
    (the graph must then have one data input of that rank). Tensors left unsized are absent.
    """
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    graph = skeleton.graph
    del graph.initializer[:]
    graph.initializer.extend(_shape_only(tensor) for tensor in model.graph.initializer)
    initializers = {tensor.name for tensor in model.graph.initializer}
    data_inputs = [value for value in graph.input if value.name not in initializers]
    for value in data_inputs:
        _fix_dims(value, input_shape if input_shape is not None and len(data_inputs) == 1 else None)
    del graph.value_info[:]
    for output in graph.output:
        output.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True).graph
    except Exception as error:  # onnx raises InferenceError, ValidationError, ... for invalid graphs
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UnsupportedModelError(f"onnx shape inference fails on the model ({first_line}); re-export it") from error
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
