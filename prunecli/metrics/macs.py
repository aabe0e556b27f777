"""Multiply-accumulates of one forward pass on one sample, for a torch module or an ONNX file.

Both count the same ops the same way, so a model and its ONNX export agree:

- conv: ``N * C_out * prod(out_spatial) * C_in / groups * prod(kernel)`` (transposed: input spatial);
- linear / Gemm / MatMul: ``batch * M * K * N``;
- everything else (activations, norms, pooling, bias adds) counts 0.

Example: ``Conv2d(3, 8, 3, padding=1)`` on ``(1, 3, 16, 16)`` is ``8 * 16 * 16 * 3 * 9 = 55296`` MACs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prunecli.errors import InputError, UnsupportedModelError
from prunecli.model_io.onnx_file import graph_input

if TYPE_CHECKING:
    import onnx

ShapeOf = Callable[[str], tuple[int, ...]]


def count_macs(module: torch.nn.Module, example_input: torch.Tensor) -> int:
    """MACs of ``module`` on the first sample of ``example_input`` (torch's FlopCounterMode, flops / 2)."""
    return macs_by_module(module, example_input)[0]


def macs_by_module(module: torch.nn.Module, example_input: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Total MACs on the first sample, and the MACs counted inside each module, by qualified name.

    Runs with autograd on: FlopCounterMode's module tracker fails under no_grad for some models
    (a parameter expanded into a submodule's input, as in CaiT's class token).
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    was_training = module.training
    module.eval()
    try:
        with torch.enable_grad(), counter:
            module(example_input[:1])
    finally:
        module.train(was_training)
    prefix = f"{type(module).__name__}."  # keys: "Global", then "<RootClass>.<module name>"
    by_module = {
        key[len(prefix) :]: sum(counts.values()) // 2
        for key, counts in counter.get_flop_counts().items()
        if key.startswith(prefix)
    }
    return counter.get_total_flops() // 2, by_module


def onnx_macs(path: Path, input_shape: Sequence[int]) -> int:
    """MACs of the ONNX model at ``path`` on one sample of ``input_shape`` (batch dimension first)."""
    graph = _inferred_graph(Path(path), (1, *input_shape[1:]))
    shapes = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        shapes[value.name] = _static_shape(value)
    counted = [node for node in graph.node if node.op_type in _NODE_MACS]
    if any(shapes.get(name) is None for node in counted for name in [*node.input[:2], node.output[0]] if name):
        shapes.update(_completed_shapes(Path(path), (1, *input_shape[1:])))
    total = 0
    for node in graph.node:
        if node.op_type in _NODE_MACS:
            total += _NODE_MACS[node.op_type](node, _shape_lookup(shapes, node))
    return total


def _inferred_graph(path: Path, input_shape: tuple[int, ...]) -> onnx.GraphProto:
    """The graph with its input fixed to ``input_shape`` and every shape ONNX inference can find filled in."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    _fix_input_shape(graph_input(model), input_shape, path=path)
    del model.graph.value_info[:]  # drop stale shapes (symbolic batch) so inference fills concrete ones
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(model, data_prop=True).graph


def _completed_shapes(path: Path, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Shapes as the ONNX front-end sizes them: also the tensors after shape targets computed at run time
    (``Shape -> Gather -> Concat -> Reshape`` chains, ``expand(-1, ...)``) that onnx inference leaves unsized."""
    import onnx

    from prunecli.onnx_graph.shape_completion import unsized_outputs
    from prunecli.onnx_graph.shapes import static_shapes

    model = onnx.load(str(path), load_external_data=False)
    return static_shapes(model, input_shape=input_shape, complete=unsized_outputs)


def _fix_input_shape(value: onnx.ValueInfoProto, shape: tuple[int, ...], *, path: Path) -> None:
    dims = value.type.tensor_type.shape.dim
    if len(dims) and len(dims) != len(shape):
        raise InputError(
            f"model.input_shape has {len(shape)} dims but {path.name}'s input '{value.name}' has {len(dims)}; "
            "fix model.input_shape"
        )
    del dims[:]
    for size in shape:
        dims.add().dim_value = size


def _static_shape(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape") or not all(dim.HasField("dim_value") for dim in tensor_type.shape.dim):
        return None
    return tuple(dim.dim_value for dim in tensor_type.shape.dim)


def _shape_lookup(shapes: dict[str, tuple[int, ...] | None], node: onnx.NodeProto) -> ShapeOf:
    def shape_of(name: str) -> tuple[int, ...]:
        shape = shapes.get(name)
        if shape is None:
            raise UnsupportedModelError(
                f"cannot infer the shape of '{name}' at {node.op_type} node '{node.name}'; "
                "set model.input_shape to the model's real input shape"
            )
        return shape

    return shape_of


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((attribute.i for attribute in node.attribute if attribute.name == name), default)


def _conv_macs(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    # out (N, C_out, *spatial) times weight (C_out, C_in / groups, *kernel) without its first dim
    return math.prod(shape_of(node.output[0])) * math.prod(shape_of(node.input[1])[1:])


def _conv_transpose_macs(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    # in (N, C_in, *spatial) times weight (C_in, C_out / groups, *kernel) without its first dim
    return math.prod(shape_of(node.input[0])) * math.prod(shape_of(node.input[1])[1:])


def _gemm_macs(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    left, right = shape_of(node.input[0]), shape_of(node.input[1])
    rows, inner = reversed(left) if _attribute(node, "transA", 0) else left
    columns = right[0] if _attribute(node, "transB", 0) else right[1]
    return rows * inner * columns


def _matmul_macs(node: onnx.NodeProto, shape_of: ShapeOf) -> int:
    # numpy semantics: a 1-D operand is a row (left) or a column (right); leading dims broadcast
    left, right = shape_of(node.input[0]), shape_of(node.input[1])
    rows = left[-2] if len(left) > 1 else 1
    columns = right[-1] if len(right) > 1 else 1
    batch = torch.broadcast_shapes(torch.Size(left[:-2]), torch.Size(right[:-2]))
    return math.prod(batch) * rows * left[-1] * columns


_NODE_MACS: dict[str, Callable[[onnx.NodeProto, ShapeOf], int]] = {
    "Conv": _conv_macs,
    "ConvTranspose": _conv_transpose_macs,
    "Gemm": _gemm_macs,
    "MatMul": _matmul_macs,
}
