"""Reconstruction of a pruned ONNX graph, in ONNX Runtime: refit each Conv / Gemm / MatMul(+Add) that lost inputs.

The ONNX twin of ``torch_layers``, on the same least-squares core (``NormalEquations``). For each
node of the pruned graph whose weight initializer lost input positions (``keep``, relative to the
original graph), its inputs are read from the pruned graph and its targets are the outputs of
the same node (same name, same output value) in the original graph, restricted to the output
channels it kept. Intermediate values are read by exposing them as extra graph outputs.

Layers are refit level by level: a layer's level is one more than the deepest refit layer
upstream of it, so the layers of one level never feed each other and one ONNX Runtime session of
the pruned graph (refit up to the previous level) gives all their inputs; earlier errors are
thus compensated. Sessions: one of the original graph, one of the pruned graph per level::

    model, result = reconstruct_onnx(original, pruned, keep, batches=[x1, x2], ridge=1e-2)
    result.layers[0].error_before, result.layers[0].error_after   # relative output error of that node
    result.skipped                                                 # {"node": "why it was not refit"}

A MatMul whose only consumer is an Add of a per-output initializer is refit with that bias (its
target is the Add's output). Grouped convolutions, non-2-D convolutions, ``transA`` Gemms,
Gemms with a broadcast ``C``, shared weights and ConvTranspose are left as they are, with why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from prunecli.onnx_graph.build import module_path
from prunecli.onnx_graph.context import attribute
from prunecli.reconstruct.least_squares import NormalEquations, conv_patches, conv_targets
from prunecli.reconstruct.torch_layers import LayerFit, Reconstruction

Keep = Mapping[str, Mapping[Any, Sequence[int]]]
REFIT_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class OnnxLayer:
    """A refittable node: what it reads, what it must reproduce, and how its initializers map to ``x W^T + b``.

    ``transposed``: the weight is stored (inputs, outputs) (MatMul, Gemm ``transB=0``); ``alpha`` and
    ``beta`` scale weight and bias (Gemm); ``conv`` holds a Conv's attributes, None for a linear map.
    """

    name: str
    node: str
    kind: str
    input: str
    target: str
    weight: str
    bias: str | None
    transposed: bool = False
    alpha: float = 1.0
    beta: float = 1.0
    conv: dict[str, Any] | None = None


def reconstruct_onnx(
    original: onnx.ModelProto, pruned: onnx.ModelProto, keep: Keep, *, batches: Sequence[np.ndarray], ridge: float,
    threads: int | None = None,
) -> tuple[onnx.ModelProto, Reconstruction]:  # fmt: skip
    """A copy of ``pruned`` with every layer that lost inputs refit toward ``original``'s outputs (see module doc)."""
    result = Reconstruction()
    model = onnx.ModelProto()
    model.CopyFrom(pruned)
    layers = _candidates(model, _normal_keep(keep), result.skipped)
    if not layers:
        return model, result
    feed = _input_name(model)
    widths = _original_widths(original, layers)
    targets = _session(_with_outputs(original, [layer.target for layer in layers]), threads)
    for level in _levels(model, layers):
        inputs = _session(_with_outputs(model, [layer.input for layer in level]), threads)
        equations = [_equations(model, layer) for layer in level]
        for batch in batches:
            xs = inputs.run([layer.input for layer in level], {feed: batch})
            ys = targets.run([layer.target for layer in level], {feed: batch})
            for layer, x, y, sums in zip(level, xs, ys, equations):
                kept = _kept_outputs(keep, layer, size=y.shape[_channel_axis(layer, y)])
                sums.add(*_rows(layer, x, np.take(y, kept, axis=_channel_axis(layer, y))))
        for layer, sums in zip(level, equations):
            fit = _solve_and_write(model, layer, sums, ridge=ridge, original_width=widths[layer.weight])
            result.layers.append(fit)
    return model, result


def _normal_keep(keep: Keep) -> dict[str, dict[int, Sequence[int]]]:
    return {name: {int(dim): indices for dim, indices in dims.items()} for name, dims in keep.items()}


def _candidates(model: onnx.ModelProto, keep: Mapping[str, Mapping[int, Sequence[int]]], skipped: dict[str, str]):
    """The refittable layers whose weight lost input positions, in graph order; the others go to ``skipped``."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    sources = _identity_sources(graph)
    reads = (sources.get(name, name) for node in graph.node if node.op_type != "Identity" for name in node.input)
    readers = Counter(reads)  # through Identity chains: a weight shared so counts once per real reader
    layers = []
    for node in graph.node:
        weight = sources.get(node.input[1], node.input[1]) if len(node.input) > 1 else ""
        if node.op_type not in (*REFIT_OPS, "ConvTranspose") or weight not in initializers:
            continue
        if (0 if _transposed(node) else 1) not in keep.get(weight, {}):  # its inputs did not lose positions
            continue
        name = module_path(node.name) if node.name else weight
        reason = _unsupported(node, initializers[weight], readers[weight])
        if reason:
            skipped[name] = reason
            continue
        layer = _layer(graph, node, name=name, weight=weight, sources=sources, initializers=initializers)
        if isinstance(layer, str):
            skipped[name] = layer
            continue
        layers.append(layer)
    return layers


def _unsupported(node: onnx.NodeProto, weight: onnx.TensorProto, readers: int) -> str | None:
    """Why ``node`` cannot be refit, or None."""
    if node.op_type not in REFIT_OPS:
        return f"{node.op_type} is not refit (only Conv, Gemm and MatMul)"
    if readers > 1:
        return f"its weight is read by {readers} nodes; only unshared weights are refit"
    if node.op_type == "Conv" and int(attribute(node, "group", 1)) > 1:
        return "a grouped convolution (group > 1) is not refit"
    if node.op_type == "Conv" and len(weight.dims) != 4:
        return f"a {len(weight.dims) - 2}-D convolution is not refit (only 2-D)"
    if node.op_type == "Gemm" and attribute(node, "transA", 0):
        return "a Gemm with transA is not refit"
    if node.op_type == "MatMul" and len(weight.dims) != 2:
        return "a MatMul with a batched weight is not refit"
    return None


def _transposed(node: onnx.NodeProto) -> bool:
    """Whether the node's weight is stored (inputs, outputs): MatMul, and Gemm with ``transB=0``."""
    return node.op_type == "MatMul" or (node.op_type == "Gemm" and not attribute(node, "transB", 0))


def _layer(graph, node, *, name, weight, sources, initializers) -> OnnxLayer | str:
    """The layer view of a supported node, or why its bias cannot be refit."""
    transposed = _transposed(node)
    outputs = int(initializers[weight].dims[1 if transposed else 0])
    bias = sources.get(node.input[2], node.input[2]) if len(node.input) > 2 and node.input[2] else None
    target = node.output[0]
    if node.op_type == "MatMul":
        bias, target = _matmul_bias(graph, node, initializers, outputs=outputs)
    beta = float(attribute(node, "beta", 1.0)) if node.op_type == "Gemm" else 1.0
    if bias is not None and (bias not in initializers or _numel(initializers[bias]) != outputs or beta == 0):
        return "its bias is not a per-output initializer; only per-output biases are refit"
    conv = None
    if node.op_type == "Conv":
        conv = {key: attribute(node, key, None) for key in ("strides", "pads", "dilations", "auto_pad")}
        conv["kernel"] = [int(dim) for dim in initializers[weight].dims[2:]]
    alpha = float(attribute(node, "alpha", 1.0)) if node.op_type == "Gemm" else 1.0
    return OnnxLayer(name=name, node=node.name, kind=node.op_type, input=node.input[0], target=target, weight=weight,
                     bias=bias, transposed=transposed, alpha=alpha, beta=beta, conv=conv)  # fmt: skip


def _matmul_bias(graph, node, initializers, *, outputs: int) -> tuple[str | None, str]:
    """The bias of ``MatMul -> Add(initializer)`` and the Add's output, else (None, the MatMul's output)."""
    consumers = [other for other in graph.node if node.output[0] in other.input]
    graph_outputs = {value.name for value in graph.output}
    if len(consumers) != 1 or consumers[0].op_type != "Add" or node.output[0] in graph_outputs:
        return None, node.output[0]
    add = consumers[0]
    other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
    if other in initializers and _numel(initializers[other]) == outputs and initializers[other].dims[-1] == outputs:
        return other, add.output[0]
    return None, node.output[0]


def _identity_sources(graph: onnx.GraphProto) -> dict[str, str]:
    """Value name -> the initializer behind a chain of Identity nodes (exporters share weights so)."""
    direct = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Identity"}
    sources = {}
    for name in direct:
        source = name
        while source in direct:
            source = direct[source]
        sources[name] = source
    return sources


def _levels(model: onnx.ModelProto, layers: Sequence[OnnxLayer]) -> list[list[OnnxLayer]]:
    """``layers`` grouped by level: 1 + the deepest refit layer upstream (graph order is topological)."""
    by_weight = {layer.weight: layer for layer in layers}
    sources = _identity_sources(model.graph)
    depth: dict[str, int] = {}
    level_of: dict[str, int] = {}  # weight name -> level
    for node in model.graph.node:
        here = max((depth.get(name, 0) for name in node.input), default=0)
        weight = sources.get(node.input[1], node.input[1]) if len(node.input) > 1 else ""
        layer = by_weight.get(weight) if node.op_type in REFIT_OPS else None
        if layer is not None:
            here = level_of[layer.weight] = here + 1
        for name in node.output:
            depth[name] = here
    count = max(level_of.values())
    return [[layer for layer in layers if level_of[layer.weight] == level] for level in range(1, count + 1)]


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the values ``names`` (typed like the graph's input)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {value.name for value in exposed.graph.output}
    elem_type = exposed.graph.input[0].type.tensor_type.elem_type
    for name in dict.fromkeys(names):
        if name not in present:
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
    return exposed


def _session(model: onnx.ModelProto, threads: int | None):
    """An ONNX Runtime CPU session, fully optimised (fusions never swallow a value that is a graph output)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _input_name(model: onnx.ModelProto) -> str:
    from prunecli.model_io.onnx_file import graph_input

    return graph_input(model).name


def _equations(model: onnx.ModelProto, layer: OnnxLayer) -> NormalEquations:
    weight = _weight_matrix(model, layer)
    return NormalEquations(groups=1, inputs=weight.shape[1], outputs=weight.shape[0], bias=layer.bias is not None)


def _channel_axis(layer: OnnxLayer, y: np.ndarray) -> int:
    return 1 if layer.kind == "Conv" else y.ndim - 1


def _kept_outputs(keep: Keep, layer: OnnxLayer, *, size: int) -> np.ndarray:
    """Kept output positions of the layer's weight, relative to the original graph (all when not pruned)."""
    dims = {int(dim): indices for dim, indices in keep.get(layer.weight, {}).items()}
    indices = dims.get(1 if layer.transposed else 0)
    return np.arange(size) if indices is None else np.asarray(list(indices), dtype=np.int64)


def _rows(layer: OnnxLayer, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's inputs and kept target outputs as least-squares rows."""
    x, y = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
    if layer.conv is None:
        return x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    kernel = layer.conv["kernel"]
    patches = conv_patches(
        x, kernel_size=kernel, stride=layer.conv["strides"] or [1, 1],
        padding=_conv_padding(layer.conv, size=x.shape[2:], kernel=kernel), dilation=layer.conv["dilations"] or [1, 1],
        groups=1,
    )  # fmt: skip
    return patches, conv_targets(y, groups=1)


def _conv_padding(conv: Mapping[str, Any], *, size: Sequence[int], kernel: Sequence[int]) -> tuple[int, ...]:
    """(top, bottom, left, right) zeros of an ONNX Conv: ``pads``, or ``auto_pad`` worked out for ``size``."""
    strides, dilations = conv["strides"] or [1, 1], conv["dilations"] or [1, 1]
    auto_pad = conv["auto_pad"].decode() if isinstance(conv["auto_pad"], bytes) else (conv["auto_pad"] or "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
                  for n, s, k, d in zip(size, strides, kernel, dilations)]  # fmt: skip
        small = [total // 2 for total in totals]
        begin = small if auto_pad == "SAME_UPPER" else [t - s for t, s in zip(totals, small)]
        end = [t - b for t, b in zip(totals, begin)]
        return begin[0], end[0], begin[1], end[1]
    pads = conv["pads"] or [0, 0, 0, 0]
    return (0, 0, 0, 0) if auto_pad == "VALID" else (pads[0], pads[2], pads[1], pads[3])


def _weight_matrix(model: onnx.ModelProto, layer: OnnxLayer) -> np.ndarray:
    """The layer's effective weight as (outputs, inputs): ``alpha`` applied, transposed storage undone."""
    weight = _array(model, layer.weight)
    if layer.conv is not None:
        matrix = weight.reshape(weight.shape[0], -1)
    else:
        matrix = weight.T if layer.transposed else weight
    return matrix.astype(np.float64) * layer.alpha


def _bias_vector(model: onnx.ModelProto, layer: OnnxLayer) -> np.ndarray | None:
    return None if layer.bias is None else _array(model, layer.bias).reshape(-1).astype(np.float64) * layer.beta


def _solve_and_write(
    model: onnx.ModelProto, layer: OnnxLayer, equations: NormalEquations, *, ridge: float, original_width: str
) -> LayerFit:
    """Solve the layer's equations, write its new weight (and bias) into ``model``, and describe the fit."""
    prior = (_weight_matrix(model, layer)[None], _bias_vector(model, layer))
    before = equations.relative_error(*prior)
    fit = equations.solve(ridge=ridge, prior=prior)
    weight = _array(model, layer.weight)
    matrix = fit.weight[0].numpy() / layer.alpha
    stored = matrix.reshape(weight.shape) if layer.conv is not None else (matrix.T if layer.transposed else matrix)
    _set_array(model, layer.weight, stored.astype(weight.dtype))
    if layer.bias is not None:
        bias = _array(model, layer.bias)
        _set_array(model, layer.bias, (fit.bias[0].numpy() / layer.beta).reshape(bias.shape).astype(bias.dtype))
    width = weight.shape[0 if layer.transposed else 1]
    return LayerFit(layer.name, layer.kind, f"{width}/{original_width}", equations.rows, before, fit.error_after)


def _original_widths(original: onnx.ModelProto, layers: Sequence[OnnxLayer]) -> dict[str, str]:
    """Per layer weight, its input width in the original graph (that of the node of the same name; "?" if none).

    By node name, as surgery keeps names: the pruned node may read a per-reader copy of a weight the
    original shares (``onnx_graph.copies``), under another tensor name.
    """
    sources = _identity_sources(original.graph)
    dims = {tensor.name: list(tensor.dims) for tensor in original.graph.initializer}
    weights = {node.name: sources.get(node.input[1], node.input[1]) for node in original.graph.node
               if node.name and len(node.input) > 1}  # fmt: skip
    widths = {}
    for layer in layers:
        shape = dims.get(weights.get(layer.node, layer.weight))
        widths[layer.weight] = "?" if shape is None else str(shape[0 if layer.transposed else 1])
    return widths


def _array(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(tensor for tensor in model.graph.initializer if tensor.name == name))


def _set_array(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for tensor in model.graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))
            return


def _numel(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims)) if tensor.dims else 1
