"""Executor ops with weights or that compute across positions: Conv, Gemm, MatMul, norms, pooling, reductions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prunecli.onnx_torch.ops import OpNode, ints, onnx_op

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pads(node: OpNode, x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """ONNX pads ``[x1_begin, x2_begin, ..., x1_end, x2_end]``, with ``auto_pad`` SAME_* resolved."""
    spatial = len(kernel)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", "VALID"):
        return list(node.attr("pads", [0] * 2 * spatial)) if auto_pad == "NOTSET" else [0] * 2 * spatial
    begins, ends = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(large if auto_pad == "SAME_LOWER" else small)
        ends.append(small if auto_pad == "SAME_LOWER" else large)
    return begins + ends


def _symmetric(x: torch.Tensor, pads: list[int], value: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """``x`` padded explicitly where begin != end, and the symmetric padding left for the op."""
    spatial = len(pads) // 2
    begins, ends = pads[:spatial], pads[spatial:]
    if begins == ends:
        return x, begins
    flat = [amount for b, e in zip(reversed(begins), reversed(ends)) for amount in (b, e)]
    return F.pad(x, flat, value=value), [0] * spatial


def _window(node: OpNode, x: torch.Tensor, kernel: list[int]) -> tuple[list[int], list[int], list[int]]:
    spatial = len(kernel)
    strides = list(node.attr("strides", [1] * spatial))
    dilations = list(node.attr("dilations", [1] * spatial))
    return strides, dilations, _pads(node, x, kernel, strides, dilations)


@onnx_op("Conv")
def conv(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    kernel = list(node.attr("kernel_shape", weight.shape[2:]))
    strides, dilations, pads = _window(node, x, kernel)
    x, padding = _symmetric(x, pads)
    return _CONV[len(kernel)](x, weight, bias, strides, padding, dilations, node.attr("group", 1))


@onnx_op("ConvTranspose")
def conv_transpose(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    spatial = weight.dim() - 2
    if node.attr("output_shape") is not None or node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise node.refuse("output_shape or auto_pad")
    strides = list(node.attr("strides", [1] * spatial))
    dilations = list(node.attr("dilations", [1] * spatial))
    pads = list(node.attr("pads", [0] * 2 * spatial))
    if pads[:spatial] != pads[spatial:]:
        raise node.refuse("asymmetric pads")
    output_padding = list(node.attr("output_padding", [0] * spatial))
    return _CONV_TRANSPOSE[spatial](
        x, weight, bias, strides, pads[:spatial], output_padding, node.attr("group", 1), dilations
    )


@onnx_op("Gemm")
def gemm(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    a, b = inputs[0], inputs[1]
    a = a.t() if node.attr("transA", 0) else a
    b = b.t() if node.attr("transB", 0) else b
    result = node.attr("alpha", 1.0) * (a @ b)
    if len(inputs) > 2 and inputs[2] is not None:
        result = result + node.attr("beta", 1.0) * inputs[2]
    return result


@onnx_op("MatMul")
def matmul(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return torch.matmul(inputs[0], inputs[1])


@onnx_op("Einsum")
def einsum(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return torch.einsum(node.attr("equation"), *inputs)


# -- normalisation ----------------------------------------------------------------------
@onnx_op("BatchNormalization")
def batch_norm(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    """Eval: the running statistics; train (as torch BN): batch statistics, running ones updated in place."""
    x, scale, bias, mean, var = inputs[:5]
    momentum = 1.0 - node.attr("momentum", 0.9)  # ONNX: running = running * m + batch * (1 - m)
    return F.batch_norm(x, mean, var, scale, bias, training=training, momentum=momentum, eps=node.attr("epsilon", 1e-5))


@onnx_op("LayerNormalization")
def layer_norm(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x, scale = inputs[0], inputs[1]
    axis = node.attr("axis", -1) % x.dim()
    y = F.layer_norm(x, x.shape[axis:], eps=node.attr("epsilon", 1e-5)) * scale
    return y + inputs[2] if len(inputs) > 2 and inputs[2] is not None else y


@onnx_op("InstanceNormalization")
def instance_norm(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x, scale, bias = inputs
    return F.instance_norm(x, weight=scale, bias=bias, eps=node.attr("epsilon", 1e-5))


# -- pooling ----------------------------------------------------------------------------
@onnx_op("MaxPool")
def max_pool(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    if len(node.outputs) > 1 and node.outputs[1]:
        raise node.refuse("its Indices output")
    x, kernel = inputs[0], list(node.attr("kernel_shape"))
    strides, dilations, pads = _window(node, x, kernel)
    x, padding = _symmetric(x, pads, value=-math.inf)
    pool = _MAX_POOL[len(kernel)]
    return pool(x, kernel, strides, padding, dilations, ceil_mode=bool(node.attr("ceil_mode", 0)))


@onnx_op("AveragePool")
def average_pool(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x, kernel = inputs[0], list(node.attr("kernel_shape"))
    strides, dilations, pads = _window(node, x, kernel)
    count_pad = bool(node.attr("count_include_pad", 0))
    if any(d != 1 for d in dilations) or (pads[: len(kernel)] != pads[len(kernel) :] and not count_pad):
        raise node.refuse("dilations or asymmetric pads")
    x, padding = _symmetric(x, pads)
    pool = _AVG_POOL[len(kernel)]
    return pool(x, kernel, strides, padding, ceil_mode=bool(node.attr("ceil_mode", 0)), count_include_pad=count_pad)


@onnx_op("GlobalAveragePool")
def global_average_pool(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x = inputs[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@onnx_op("GlobalMaxPool")
def global_max_pool(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x = inputs[0]
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# -- reductions -------------------------------------------------------------------------
_REDUCE = {
    "ReduceMean": lambda x, dims, keep: x.mean(dims, keepdim=keep),
    "ReduceSum": lambda x, dims, keep: x.sum(dims, keepdim=keep),
    "ReduceMax": lambda x, dims, keep: x.amax(dims, keepdim=keep),
    "ReduceMin": lambda x, dims, keep: x.amin(dims, keepdim=keep),
    "ReduceProd": lambda x, dims, keep: _prod(x, dims, keep),
    "ReduceL2": lambda x, dims, keep: x.square().sum(dims, keepdim=keep).sqrt(),
    "ReduceSumSquare": lambda x, dims, keep: x.square().sum(dims, keepdim=keep),
}
_AXES_AS_INPUT = {"ReduceSum": 13}  # the opset from which axes is an input; 18 for the others


def _prod(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    for dim in sorted((d % x.dim() for d in dims), reverse=True):
        x = x.prod(dim, keepdim=keep)
    return x


def _reduce(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x = inputs[0]
    if node.opset >= _AXES_AS_INPUT.get(node.op_type, 18):
        axes = ints(inputs[1]) if len(inputs) > 1 else None
    else:
        axes = node.attr("axes")
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    return _REDUCE[node.op_type](x, tuple(axes), bool(node.attr("keepdims", 1)))


for _op_type in _REDUCE:
    onnx_op(_op_type)(_reduce)


@onnx_op("ArgMax", "ArgMin")
def arg_extreme(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    function = torch.argmax if node.op_type == "ArgMax" else torch.argmin
    return function(inputs[0], dim=node.attr("axis", 0), keepdim=bool(node.attr("keepdims", 1)))
