"""How big a model is: parameter counts (torch module or ONNX file) and bytes on disk."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch


def count_params(module: torch.nn.Module) -> int:
    """Number of parameter elements (buffers such as BatchNorm running stats are not counted)."""
    return sum(parameter.numel() for parameter in module.parameters())


def serialized_size(module: torch.nn.Module) -> int:
    """Bytes ``torch.save(module.state_dict())`` would write: a torch model's size before it is saved."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def size_bytes(path: Path) -> int:
    """Size of the file at ``path`` in bytes."""
    return Path(path).stat().st_size


def onnx_params(path: Path) -> int:
    """Number of elements in an ONNX file's floating-point initializers (integer ones are shapes, not weights)."""
    import onnx

    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    model = onnx.load(str(path), load_external_data=False)
    return sum(math.prod(tensor.dims) for tensor in model.graph.initializer if tensor.data_type in floating)
