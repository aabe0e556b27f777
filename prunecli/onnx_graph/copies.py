"""Shared initializers: one copy per reading node, so that sharing never couples unrelated channels.

Exporters deduplicate equal initializers: torch's TorchScript exporter keeps one zero bias (or
one all-zero conv weight, after folding a zero-initialised BatchNorm) and lets every other
layer read it through an ``Identity`` node. Coupling those readers would merge unrelated groups
(timm resnet18: 4 groups instead of 12). So every node but the first that reads a float
initializer gets its own *copy*: a tensor name of its own in the channel graph
(``"<initializer>__<node>"``), with its own layouts. Surgery and masking write a copy out as a
real initializer, sliced or masked on its own, only when pruning touches it; the reading node is
repointed to it, and an initializer nobody reads any more is dropped::

    copies = reader_copies(model)      # {"b0__Identity_3": Copy(node=3, input=0, source="b0"), ...}
    model, keep = materialize(model, keep, copies)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx

FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
)


@dataclass(frozen=True)
class Copy:
    """Input ``input`` of node ``node`` reads its own copy of the initializer ``source``."""

    node: int
    input: int
    source: str


def reader_copies(model: onnx.ModelProto) -> dict[str, Copy]:
    """The copies of shared float initializers, by copy name, the first reader keeping the original."""
    floats = {tensor.name for tensor in model.graph.initializer if tensor.data_type in FLOAT_TYPES}
    first_reader: dict[str, int] = {}
    copies: dict[str, Copy] = {}
    for index, node in enumerate(model.graph.node):
        for position, name in enumerate(node.input):
            if name not in floats:
                continue
            owner = first_reader.setdefault(name, index)
            if owner != index:
                copies[f"{name}__{node.name or index}"] = Copy(index, position, name)
    return copies


def node_inputs(copies: Mapping[str, Copy]) -> dict[int, dict[int, str]]:
    """Copy names by node index and input position (what the graph builder reads instead)."""
    by_node: dict[int, dict[int, str]] = {}
    for name, copy in copies.items():
        by_node.setdefault(copy.node, {})[copy.input] = name
    return by_node


def materialize(
    model: onnx.ModelProto, names: Mapping[str, object], copies: Mapping[str, Copy]
) -> onnx.ModelProto:
    """``model`` (changed in place and returned) with the copies that ``names`` touch as real initializers.

    A copy is touched when it is named, or its source is (the source is about to change). Each
    becomes an initializer of that name holding the source's values, and its reading node reads
    it; a source initializer that no node reads any more is removed.
    """
    wanted = [name for name, copy in copies.items() if name in names or copy.source in names]
    if not wanted:
        return model
    graph = model.graph
    by_name = {tensor.name: tensor for tensor in graph.initializer}
    for name in wanted:
        copy = copies[name]
        tensor = onnx.TensorProto()
        tensor.CopyFrom(by_name[copy.source])
        tensor.name = name
        graph.initializer.append(tensor)
        graph.node[copy.node].input[copy.input] = name
    _drop_unread(graph, {copies[name].source for name in wanted})
    return model


def _drop_unread(graph: onnx.GraphProto, candidates: set[str]) -> None:
    from prunecli.onnx_graph.context import subgraph_reads

    read = {name for node in graph.node for name in (*node.input, *subgraph_reads(node))}
    read |= {value.name for value in graph.output}
    unread = candidates - read
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name in unread:
            del graph.initializer[index]
