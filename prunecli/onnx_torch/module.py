"""``OnnxModule``: an ONNX graph run with torch ops, trainable, and ``write_back`` into the graph.

    module = OnnxModule(onnx.load("digits_cnn.onnx"))
    dict(module.named_parameters())["onnx::Conv_58"].shape     # torch.Size([32, 1, 3, 3])
    logits = module(torch.randn(4, 1, 8, 8))                    # the graph's output, as ONNX Runtime gives it
    finetune(module, ...)                                       # any torch training loop
    trained = write_back(onnx.load("digits_cnn.onnx"), module)  # the same graph, trained initializers

Parameter and buffer names equal the initializer names, so a ``Member.tensor`` of the ONNX
channel graph names the module's parameter: ``layer1.0.conv1.weight`` is parameter ``weight``
of a holder submodule ``layer1`` -> ``0`` -> ``conv1`` (nn.Module forbids dots in one name).
Float initializers of more than one element become parameters; the mean and variance inputs of
BatchNormalization become buffers (train mode updates them as torch's BatchNorm does); scalars,
integer initializers and the values of shape inputs stay constants. ``observe(value, callback)``
calls ``callback(tensor)`` each time the graph value ``value`` is computed (for data-driven
criteria, see ``onnx_torch.sites``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.utils.hooks import RemovableHandle

from prunecli.errors import InputError
from prunecli.onnx_torch import ops_nn, ops_shape  # noqa: F401 - registers their ops
from prunecli.onnx_torch.ops import OPS, OpFunction, OpNode, from_numpy

if TYPE_CHECKING:
    from prunecli.criteria.hooks import Site
    from prunecli.graph.channel_graph import ChannelGraph

_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
NORM_OPS = ("BatchNormalization", "InstanceNormalization", "LayerNormalization")  # input 1: the scale
_STATISTICS = {"BatchNormalization": (3, 4)}  # inputs that are running statistics: buffers
_NOT_TRAINED = {"Resize": (1, 2, 3), "Pad": (1, 2, 3), "Clip": (1, 2), "Dropout": (1, 2)}  # value inputs, not weights


@dataclass(frozen=True)
class _Program:
    """What forward runs: nodes in order with their op functions and the values each one reads last
    (dropped after it), graph input and output names, constants (initializers, Constant nodes) by name."""

    nodes: tuple[OpNode, ...]
    functions: tuple[OpFunction, ...]
    released: tuple[tuple[str, ...], ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    constants: dict[str, torch.Tensor]

    @classmethod
    def of(cls, model: onnx.ModelProto, constants: dict[str, torch.Tensor], inputs: tuple[str, ...]) -> _Program:
        """The program of ``model``; Constant nodes are evaluated once into ``constants``."""
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        nodes = []
        for proto in model.graph.node:
            node = OpNode.of(proto, opset=opset)
            if node.op_type == "Constant":
                constants[node.outputs[0]] = OPS.lookup("Constant")(node, [], False)
            else:
                nodes.append(node)
        outputs = tuple(v.name for v in model.graph.output)
        last_reader = {name: index for index, node in enumerate(nodes) for name in node.inputs if name}
        released = [[] for _ in nodes]
        for name, index in last_reader.items():
            if name not in outputs and name not in constants:
                released[index].append(name)
        functions = tuple(OPS.lookup(node.op_type) for node in nodes)
        return cls(tuple(nodes), functions, tuple(map(tuple, released)), inputs, outputs, constants)


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """The op types of ``model`` the executor cannot run (custom domains as ``domain::Op``), in graph order."""
    missing = []
    for node in model.graph.node:
        label = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        if (node.domain not in ("", "ai.onnx") or node.op_type not in OPS) and label not in missing:
            missing.append(label)
    return missing


def check_runnable(model: onnx.ModelProto, *, purpose: str) -> None:
    """Raise an InputError naming the first op the executor cannot run, and why ``purpose`` needs it."""
    missing = unsupported_ops(model)
    if missing:
        raise InputError(
            f"{purpose} on ONNX runs the graph in torch; op {missing[0]} is not supported yet"
            f"{f' (nor {len(missing) - 1} more)' if len(missing) > 1 else ''}: use static criteria (l1, l2, fpgm), "
            "select, prune and evaluate on this model, or pass the PyTorch checkpoint"
        )


class OnnxModule(nn.Module):
    """An ONNX graph as a torch module (see the module docstring); ``purpose`` words the unsupported-op error."""

    def __init__(self, model: onnx.ModelProto, *, purpose: str = "running the graph") -> None:
        super().__init__()
        check_runnable(model, purpose=purpose)
        statistics, untrained = _input_roles(model)
        initializers = {t.name: t for t in model.graph.initializer}
        constants: dict[str, torch.Tensor] = {}
        self._slots: dict[str, tuple[nn.Module, str]] = {}
        for name, tensor in initializers.items():
            value = from_numpy(numpy_helper.to_array(tensor))
            if name in statistics:
                self._slots[name] = _register(self, name, value, parameter=False)
            elif tensor.data_type in _FLOATS and value.numel() > 1 and name not in untrained:
                self._slots[name] = _register(self, name, nn.Parameter(value), parameter=True)
            else:
                constants[name] = value
        inputs = tuple(v.name for v in model.graph.input if v.name not in initializers)
        self._program = _Program.of(model, constants, inputs)
        self._observers: dict[str, OrderedDict[int, Callable[[torch.Tensor], None]]] = {}
        self._constants_by_device: dict[torch.device, dict[str, torch.Tensor]] = {}

    def observe(self, value: str, callback: Callable[[torch.Tensor], None]) -> RemovableHandle:
        """Call ``callback(tensor)`` whenever the graph value ``value`` is computed; ``.remove()`` the handle."""
        callbacks = self._observers.setdefault(value, OrderedDict())  # (a plain dict takes no weak reference)
        handle = RemovableHandle(callbacks)
        callbacks[handle.id] = callback
        return handle

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the graph on its inputs (in graph input order); one output is returned bare."""
        program = self._program
        if len(inputs) != len(program.inputs):
            raise InputError(f"the ONNX graph takes {len(program.inputs)} inputs and got {len(inputs)}")
        values = dict(self._constants_on(inputs[0].device))
        values.update((name, getattr(holder, leaf)) for name, (holder, leaf) in self._slots.items())
        for name, tensor in zip(program.inputs, inputs):
            self._store(values, name, tensor)
        for node, function, released in zip(program.nodes, program.functions, program.released):
            result = function(node, [values[name] if name else None for name in node.inputs], self.training)
            for name, tensor in zip(node.outputs, result if isinstance(result, tuple) else (result,)):
                if name:
                    self._store(values, name, tensor)
            for name in released:  # autograd keeps what backward needs; the rest can go
                values.pop(name, None)
        outputs = tuple(values[name] for name in program.outputs)
        return outputs[0] if len(outputs) == 1 else outputs

    def norm_scales(self) -> dict[str, nn.Parameter]:
        """The scale parameters of the graph's normalisation nodes (input 1 of BatchNormalization and the like)."""
        parameters = dict(self.named_parameters())
        names = [node.inputs[1] for node in self._program.nodes if node.op_type in NORM_OPS and len(node.inputs) > 1]
        return {name: parameters[name] for name in names if name in parameters}

    def value_sites(self, graph: ChannelGraph, *, produces: bool) -> list[Site]:
        """Hook sites of ``graph``'s producer (or consumer) members on this graph's values (``onnx_torch.sites``)."""
        from prunecli.onnx_torch.sites import value_sites

        shapes = {name: tuple(tensor.shape) for name, tensor in self.state_tensors()}
        return value_sites(graph, self._program.nodes, shapes, produces=produces)

    def _store(self, values: dict[str, torch.Tensor], name: str, tensor: torch.Tensor) -> None:
        values[name] = tensor
        for callback in list(self._observers.get(name, {}).values()):
            callback(tensor)

    def _constants_on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The constants with float ones on ``device`` (integer ones, shapes and indices, stay on the CPU)."""
        if device not in self._constants_by_device:
            self._constants_by_device[device] = {
                name: value.to(device) if value.is_floating_point() else value
                for name, value in self._program.constants.items()
            }
        return self._constants_by_device[device]

    def state_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every parameter and buffer, by initializer name (what ``write_back`` writes)."""
        for name, (holder, leaf) in self._slots.items():
            yield name, getattr(holder, leaf)


def _input_roles(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """Initializer names read as running statistics, and those read only as values (pads, scales, ratios)."""
    statistics, untrained, weights = set(), set(), set()
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if index in _STATISTICS.get(node.op_type, ()):
                statistics.add(name)
            elif index in _NOT_TRAINED.get(node.op_type, ()):
                untrained.add(name)
            else:
                weights.add(name)
    return statistics, untrained - weights


def _register(root: nn.Module, name: str, value: torch.Tensor, *, parameter: bool) -> tuple[nn.Module, str]:
    """Register ``value`` at the dotted path ``name`` under ``root``, creating holder submodules; (holder, leaf)."""
    *path, leaf = name.split(".")
    holder = root
    try:
        for part in path:
            child = holder._modules.get(part)
            if child is None:
                child = nn.Module()
                holder.add_module(part, child)
            holder = child
        if parameter:
            holder.register_parameter(leaf, value)
        else:
            holder.register_buffer(leaf, value)
    except (KeyError, TypeError) as error:
        raise InputError(
            f"the ONNX initializer '{name}' cannot be a torch parameter name ({error.args[0]}); rename it in the "
            "graph (onnx.compose or onnx-graphsurgeon) to run this step"
        ) from None
    return holder, leaf


def write_back(model: onnx.ModelProto, module: OnnxModule) -> onnx.ModelProto:
    """A copy of ``model`` with ``module``'s parameter and buffer values in its initializers.

    Names, order and dtypes of the initializers stay; an initializer whose value did not change
    is left byte for byte as it was; everything else in the graph is untouched.
    """
    written = onnx.ModelProto()
    written.CopyFrom(model)
    values = {name: tensor.detach().cpu().numpy() for name, tensor in module.state_tensors()}
    for initializer in written.graph.initializer:
        if initializer.name not in values:
            continue
        original = numpy_helper.to_array(initializer)
        value = values[initializer.name].astype(original.dtype).reshape(original.shape)
        if not np.array_equal(value, original):
            initializer.CopyFrom(numpy_helper.from_array(value, initializer.name))
    return written
