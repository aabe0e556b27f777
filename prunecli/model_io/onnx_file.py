"""ONNX files: validity check and the graph's one input (name and static shape)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prunecli.errors import InputError, UnsupportedModelError

if TYPE_CHECKING:
    import onnx


def check_onnx_file(path: Path) -> None:
    """Run ``onnx.checker`` on ``path``; an invalid file is an InputError."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{path} is not a valid ONNX model: {reason}; re-export it") from exc


def graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The graph's single data input (initializers listed as inputs by old exporters are skipped)."""
    initializers = {initializer.name for initializer in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs) or "none"
        raise UnsupportedModelError(f"the ONNX model has {len(inputs)} inputs ({names}); prunecli needs exactly one")
    return inputs[0]


def onnx_input_shape(path: Path) -> tuple[int, ...]:
    """The input shape declared in the graph; symbolic dims (e.g. ``batch``) become 1."""
    import onnx

    value = graph_input(onnx.load(str(path), load_external_data=False))
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        raise InputError(f"model.input_shape is required: the input of {path} declares no shape; set model.input_shape")
    dims = tensor_type.shape.dim
    return tuple(dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else 1 for dim in dims)
