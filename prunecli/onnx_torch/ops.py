"""The op table of the ONNX-in-torch executor, and the elementwise, activation and logic ops.

Every ONNX op is one small function ``(node, inputs, training) -> tensor | tuple of tensors``
registered under its op type::

    @onnx_op("Relu")
    def relu(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
        return F.relu(inputs[0])

``node`` carries the op's attributes and the model's default-domain opset, so one function
handles the forms of every opset (``node.opset >= 13``: axes as an input, not an attribute).
``inputs`` holds the input tensors in order (None for an omitted optional input). Integer
tensors that compute shapes stay on the CPU; their values are read with ``ints``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from prunecli.errors import InputError
from prunecli.registry import Registry

OpFunction = Callable[["OpNode", list, bool], Any]
OPS: Registry[str, OpFunction] = Registry("ONNX op")
onnx_op = OPS.register


@dataclass(frozen=True)
class OpNode:
    """One graph node as the executor runs it: op type, attributes (decoded), opset, value names."""

    op_type: str
    name: str
    opset: int
    attributes: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    @classmethod
    def of(cls, node: onnx.NodeProto, *, opset: int) -> OpNode:
        """The executor's view of ``node`` (string attributes decoded, tensor attributes as numpy)."""
        attributes = {item.name: _attribute_value(item) for item in node.attribute}
        return cls(node.op_type, node.name or node.output[0], opset, attributes, tuple(node.input), tuple(node.output))

    def attr(self, name: str, default: Any = None) -> Any:
        """The attribute ``name``, or ``default``."""
        return self.attributes.get(name, default)

    def refuse(self, detail: str) -> InputError:
        """An InputError saying that this node's form is not supported by the executor."""
        return InputError(
            f"running the ONNX graph in torch: {self.op_type} node '{self.name}' uses {detail}, which is not "
            "supported yet; use only static criteria, select, prune and evaluate on this model"
        )


def _attribute_value(item: onnx.AttributeProto) -> Any:
    value = onnx.helper.get_attribute_value(item)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return value


def ints(value: torch.Tensor | Sequence[int] | None) -> list[int] | None:
    """The values of a 0-d or 1-d integer tensor (a shape, axes, pads) as Python ints."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value]


def torch_dtype(onnx_type: int) -> torch.dtype:
    """The torch dtype of an ONNX ``TensorProto`` element type."""
    return torch.from_numpy(np.zeros(0, dtype=onnx.helper.tensor_dtype_to_np_dtype(onnx_type))).dtype


def from_numpy(array: np.ndarray) -> torch.Tensor:
    """A torch tensor owning a copy of ``array`` (0-d arrays stay 0-d)."""
    return torch.from_numpy(np.array(array, copy=True))


# -- elementwise arithmetic -------------------------------------------------------------
def _integer(tensor: torch.Tensor) -> bool:
    return not (tensor.is_floating_point() or tensor.is_complex())


@onnx_op("Add")
def add(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return inputs[0] + inputs[1]


@onnx_op("Sub")
def sub(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return inputs[0] - inputs[1]


@onnx_op("Mul")
def mul(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return inputs[0] * inputs[1]


@onnx_op("Div")
def div(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    a, b = inputs
    return torch.div(a, b, rounding_mode="trunc") if _integer(a) and _integer(b) else a / b


@onnx_op("Pow")
def power(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return torch.pow(inputs[0], inputs[1]).to(inputs[0].dtype)


@onnx_op("Mod")
def mod(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    a, b = inputs
    return torch.fmod(a, b) if node.attr("fmod", 0) else torch.remainder(a, b)


@onnx_op("Max", "Min", "Sum", "Mean")
def variadic(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    combine = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add, "Mean": torch.add}[node.op_type]
    result = inputs[0]
    for other in inputs[1:]:
        result = combine(result, other)
    return result / len(inputs) if node.op_type == "Mean" else result


_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Exp": torch.exp, "Log": torch.log, "Erf": torch.erf,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
    "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos, "Not": torch.logical_not, "Relu": F.relu,
    "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Softsign": F.softsign, "IsNaN": torch.isnan,
}  # fmt: skip


def _unary(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return _UNARY[node.op_type](inputs[0])


for _op_type in _UNARY:
    OPS.add(_op_type, _unary)


# -- activations ------------------------------------------------------------------------
@onnx_op("LeakyRelu")
def leaky_relu(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return F.leaky_relu(inputs[0], node.attr("alpha", 0.01))


@onnx_op("Elu")
def elu(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return F.elu(inputs[0], node.attr("alpha", 1.0))


@onnx_op("Softplus")
def softplus(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return F.softplus(inputs[0])


@onnx_op("HardSigmoid")
def hard_sigmoid(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return torch.clamp(node.attr("alpha", 0.2) * inputs[0] + node.attr("beta", 0.5), 0.0, 1.0)


@onnx_op("HardSwish")
def hard_swish(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return F.hardswish(inputs[0])


@onnx_op("Gelu")
def gelu(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return F.gelu(inputs[0], approximate=node.attr("approximate", "none"))


@onnx_op("Clip")
def clip(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x = inputs[0]
    if node.opset < 11:
        low, high = node.attr("min"), node.attr("max")
    else:
        low, high = (_scalar(inputs[i]) if len(inputs) > i else None for i in (1, 2))
    return torch.clamp(x, low, high)


def _scalar(value: torch.Tensor | None) -> float | int | None:
    return None if value is None else value.reshape(-1)[0].item()


@onnx_op("Softmax", "LogSoftmax")
def softmax(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x = inputs[0]
    function = F.softmax if node.op_type == "Softmax" else F.log_softmax
    if node.opset >= 13:
        return function(x, dim=node.attr("axis", -1))
    axis = node.attr("axis", 1) % max(x.dim(), 1)  # opset < 13: over the dims from axis on, flattened
    return function(x.reshape(*x.shape[:axis], -1), dim=-1).reshape(x.shape)


@onnx_op("Dropout")
def dropout(node: OpNode, inputs: list, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = inputs[0]
    ratio = _scalar(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else node.attr("ratio", 0.5)
    active = training and ratio > 0 and (node.opset < 12 or (len(inputs) > 2 and bool(_scalar(inputs[2]))))
    y = F.dropout(x, ratio, training=True) if active else x
    return y, (y != 0) if active else torch.ones_like(x, dtype=torch.bool)


# -- comparison and logic ---------------------------------------------------------------
_BINARY_LOGIC: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge,
    "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
}  # fmt: skip


def _binary_logic(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return _BINARY_LOGIC[node.op_type](inputs[0], inputs[1])


for _op_type in _BINARY_LOGIC:
    OPS.add(_op_type, _binary_logic)


@onnx_op("Where")
def where(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return torch.where(inputs[0], inputs[1], inputs[2])


# -- values and types -------------------------------------------------------------------
@onnx_op("Identity")
def identity(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return inputs[0]


@onnx_op("Cast")
def cast(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return inputs[0].to(torch_dtype(node.attr("to")))


@onnx_op("CastLike")
def cast_like(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return inputs[0].to(inputs[1].dtype)


@onnx_op("Constant")
def constant(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    for name, dtype in (("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                        ("value_int", np.int64), ("value_ints", np.int64)):  # fmt: skip
        if name in node.attributes:
            return from_numpy(np.asarray(node.attributes[name], dtype=dtype))
    raise node.refuse(f"the attribute {sorted(node.attributes)}")


@onnx_op("ConstantOfShape")
def constant_of_shape(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    value = node.attr("value")
    fill = from_numpy(np.asarray(value).reshape(-1)) if value is not None else torch.zeros(1)
    return fill.expand(ints(inputs[0])).clone() if ints(inputs[0]) else fill.reshape(()).clone()
