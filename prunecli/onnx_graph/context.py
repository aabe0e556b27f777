"""The state ONNX coupling rules work with while a graph is walked, and their registry.

Every tensor name of the graph gets a list of layouts (one per dimension, see
``prunecli.graph.layout``), exactly as the torch front-end gives them to fx nodes.
Initializers get fresh, unfixed atoms the first time a rule reads them as data; shape
inputs (a Reshape target, Split sizes) are read as values instead, and every entry that
sizes a channel dimension is recorded as a ``SizeRef`` so that surgery can rewrite it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from prunecli.graph.fallbacks import FallbackLog
from prunecli.graph.layout import Layout, SpaceTable
from prunecli.onnx_graph.copies import node_inputs, reader_copies
from prunecli.onnx_graph.norms import Norm
from prunecli.registry import Registry

Layouts = list[Layout]
OnnxRule = Callable[["OnnxContext", onnx.NodeProto], Any]  # returns one Layouts per output (None: not followed)

ONNX_RULES: Registry[str, OnnxRule] = Registry("ONNX coupling rule")
onnx_rule = ONNX_RULES.register  # @onnx_rule("Relu", "Sigmoid"): one rule for one or more op types


@dataclass(frozen=True)
class SizeRef:
    """Sizes written in a graph constant or attribute that surgery must shrink with the channels.

    ``source`` is ``"input:<i>"`` (the node's i-th input, an initializer or Constant output) or
    ``"attr:<name>"``; ``entries`` pairs an index into that 1-D value with the layout it sizes.
    Example: ``Reshape(x, [1, 64, 49])`` after a conv of 64 channels records
    ``SizeRef(node, "input:1", ((1, <the conv's channel atom>),))``; pruning half the channels
    rewrites the constant to ``[1, 32, 49]``. Entries of -1 or 0 follow the input by themselves.
    """

    node: int
    source: str
    entries: tuple[tuple[int, Layout], ...]


class OnnxContext:
    """Layouts of tensors seen so far, constants, shapes, producers, size references, fallbacks."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
        self.table = SpaceTable()
        self.fallbacks = FallbackLog()
        self.shapes = shapes
        self.initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        self.constants: dict[str, onnx.TensorProto] = {}
        self.values: dict[str, Layouts] = {}
        self.initializer_layouts: dict[str, Layouts] = {}
        self.producers: dict[str, set[int]] = {}
        self.producer_nodes: dict[str, int] = {}  # weight -> index of the first node producing along it
        self.size_refs: list[SizeRef] = []
        self.divisors: set[str] = set()
        self.norms: list[Norm] = []  # LayerNorms (fused or decomposed) over prunable channels (onnx_graph.norms)
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.shape_values: dict[str, Any] = {}  # integer tensors computed from shapes (see shape_values)
        self.aliases: dict[str, str] = {}
        self.copies = reader_copies(model)
        self._copy_inputs = node_inputs(self.copies)
        for name, copy in self.copies.items():
            self.initializers[name] = self.initializers[copy.source]
        self.node_index = -1

    def own_inputs(self, node: onnx.NodeProto) -> onnx.NodeProto:
        """``node`` with each shared initializer it reads renamed to its own copy (see ``copies``)."""
        renamed = self._copy_inputs.get(self.node_index)
        if not renamed:
            return node
        own = onnx.NodeProto()
        own.CopyFrom(node)
        for position, name in renamed.items():
            own.input[position] = name
        return own

    def resolve(self, name: str) -> str:
        """The initializer an ``Identity`` output stands for (exporters share equal weights so), else ``name``."""
        return self.aliases.get(name, name)

    # -- reading ---------------------------------------------------------------------
    def layouts(self, name: str) -> Layouts | None:
        """Layouts of a tensor (an initializer gets fresh atoms on first use); None if unknown."""
        if not name:
            return None
        name = self.resolve(name)
        if name in self.initializers:
            if name not in self.initializer_layouts:
                dims = self.initializers[name].dims
                self.initializer_layouts[name] = [self._atom(size) for size in dims]
            return self.initializer_layouts[name]
        return self.values.get(name)

    def shape(self, name: str) -> tuple[int, ...] | None:
        """The static shape of a tensor, from the initializer or shape inference; None if unknown."""
        name = self.resolve(name)
        if name in self.initializers:
            return tuple(int(size) for size in self.initializers[name].dims)
        return self.shapes.get(name)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant output, or None when it is computed at run time."""
        name = self.resolve(name)
        tensor = self.initializers.get(name) or self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def is_initializer(self, name: str) -> bool:
        """Whether ``name`` is a weight of the graph (an initializer)."""
        return self.resolve(name) in self.initializers

    # -- recording -------------------------------------------------------------------
    def fresh(self, shape: Sequence[int], reason: str) -> Layouts:
        """New fixed atoms for a tensor whose dimensions carry no channels of the model."""
        return [self.table.singleton() if s == 1 else self.table.new(s, fixed=reason) for s in shape]

    def produce(self, weight: str, dim: int, node: onnx.NodeProto) -> None:
        """Record that ``node`` produces channels along ``dim`` of the initializer ``weight``."""
        layouts, weight = self.layouts(weight), self.resolve(weight)
        if layouts is None or not self.is_initializer(weight):
            return
        self.table.mark_channel(layouts[dim])
        self.producers.setdefault(weight, set()).add(dim)
        self.producer_nodes.setdefault(weight, self.node_index)

    def size_ref(self, source: str, entries: Sequence[tuple[int, Layout]]) -> None:
        """Record sizes that the current node reads from ``source`` (see ``SizeRef``)."""
        if entries:
            self.size_refs.append(SizeRef(self.node_index, source, tuple(entries)))

    def fix(self, names: Sequence[str], reason: str) -> None:
        """Fix every dimension of the tensors ``names`` that already have layouts."""
        for name in map(self.resolve, names):
            known = self.initializer_layouts.get(name) if name in self.initializers else self.values.get(name)
            for layout in known or []:
                self.table.mark_fixed(layout, reason)

    def unsupported(self, node: onnx.NodeProto, detail: str) -> list[Layouts | None]:
        """An op or pattern without a rule: keep every tensor it touches whole, and record it."""
        self.fallbacks.record("unsupported_op", node_label(node), detail)
        return self.keep_whole(node, detail)

    def keep_whole(self, node: onnx.NodeProto, detail: str) -> list[Layouts | None]:
        """Fix the inputs of ``node`` (and tensors its subgraphs read) and give its outputs fixed atoms."""
        reason = f"used by {node.op_type}, which prunecli cannot prune through ({detail})"
        self.fix(list(node.input) + sorted(subgraph_reads(node)), reason)
        return [self.fresh(shape, reason) if shape is not None else None for shape in map(self.shape, node.output)]

    def _atom(self, size: int) -> Layout:
        return self.table.singleton() if size == 1 else self.table.new(int(size))


def node_label(node: onnx.NodeProto) -> str:
    """An op and its node, for messages: ``Conv (/stem_conv/Conv)``."""
    domain = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
    return f"{domain}{node.op_type} ({node.name or node.output[0]})"


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of a node attribute, or ``default``."""
    for item in node.attribute:
        if item.name == name:
            return onnx.helper.get_attribute_value(item)
    return default


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names that the subgraphs of a control-flow node (If/Loop/Scan) read from the outer scope."""
    reads: set[str] = set()
    for item in node.attribute:
        graphs = list(item.graphs) + ([item.g] if item.HasField("g") else [])
        for graph in graphs:
            defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
            for inner in graph.node:
                defined.update(inner.output)
            for inner in graph.node:
                reads.update(name for name in inner.input if name and name not in defined)
                reads.update(subgraph_reads(inner) - defined)
    return reads
