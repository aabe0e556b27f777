"""LayerNorms over pruned channels in the masked original: normalise over the kept channels only.

Zeroing a removed channel is not enough for a LayerNorm: the zeros would still count in its
mean and variance, which the pruned graph no longer sees. In the masked original each such
node (``OnnxChannelGraph.norms``) becomes ``Gather`` of the kept channels, the same
LayerNormalization over them (scale and bias gathered alike), and a ``MatMul`` by a 0/1
placement matrix that puts them back with zeros elsewhere: exactly what the pruned graph
computes, so pruned == masked stays an exact check. The torch twin is ``prunecli.surgery.norms``.

A decomposed LayerNorm (``DecomposedNorm``, opsets before 17) is rewritten the same way: its
nodes from the two ReduceMeans to the division read the gathered channels (ReduceMean then
divides by the number of kept channels, as in the pruned graph), and the division's result is
placed back; its Mul by gamma and Add of beta are masked like any other weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

Keep = Mapping[str, Mapping[int, Sequence[int]]]


@dataclass(frozen=True)
class DecomposedNorm:
    """A LayerNorm written out over the last axis (``rules_norm.decomposed_layer_norm``).

    ``source`` is the normalised tensor; ``nodes`` the first output of each node of the pattern
    (the mean's and the variance's ReduceMean first, the division last), whose outputs only the
    pattern reads; ``output`` the division's result; ``scaled`` the output of its Mul by gamma,
    the 1-D weight that names the kept channels (read directly, through an Identity, or as a copy).
    """

    source: str
    nodes: tuple[str, ...]
    output: str
    scaled: str


Norm = tuple[int, str] | DecomposedNorm  # a LayerNormalization (node index, scale tensor), or a decomposed one


def normalise_over_kept(model: onnx.ModelProto, keep: Keep, norms: Sequence[Norm]) -> onnx.ModelProto:
    """``model`` (changed in place and returned) with each LayerNorm of ``norms`` that lost channels rewritten.

    A LayerNormalization is given by its node index and its scale's tensor name (an initializer,
    or a copy of one that masking wrote out; the node may read it through an Identity).
    """
    graph = model.graph
    shapes = {t.name: (int(t.dims[0]), t.data_type) for t in graph.initializer if len(t.dims) == 1}
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for norm in norms:
        if isinstance(norm, DecomposedNorm):
            replaced.update(_decomposed_over_kept(graph, norm, keep, shapes))
            continue
        index, scale = norm
        kept = keep.get(scale, {}).get(0)
        if kept is None or scale not in shapes:
            continue
        channels, dtype = shapes[scale]
        replaced[index] = _over_kept(graph, graph.node[index], np.asarray(kept, np.int64), channels, dtype)
    if replaced:
        nodes = [new for index, node in enumerate(graph.node) for new in replaced.get(index, [node])]
        del graph.node[:]
        graph.node.extend(nodes)
    return model


def _decomposed_over_kept(
    graph: onnx.GraphProto, norm: DecomposedNorm, keep: Keep, shapes: Mapping[str, tuple[int, int]]
) -> dict[int, list[onnx.NodeProto]]:
    """Node index -> replacement: the pattern's nodes over the kept channels, at the division's place."""
    positions = {node.output[0]: index for index, node in enumerate(graph.node) if node.output}
    gamma = _initializer_read(graph, positions, norm)
    kept = keep.get(gamma, {}).get(0)
    if kept is None or gamma not in shapes or len(kept) == shapes[gamma][0]:
        return {}
    prefix = f"{norm.output}__kept"
    placed = _placement(graph, prefix, np.asarray(kept, np.int64), *shapes[gamma])
    rename = {norm.source: f"{prefix}_x", **{name: f"{prefix}_{name}" for name in norm.nodes}}
    rename[norm.output] = f"{prefix}_y"
    indices = sorted(positions[name] for name in norm.nodes)
    rewritten = [_renamed(graph.node[index], rename) for index in indices]
    gather = helper.make_node("Gather", [norm.source, f"{prefix}_index"], [f"{prefix}_x"], axis=-1)
    place = helper.make_node("MatMul", [f"{prefix}_y", placed], [norm.output])
    return {**{index: [] for index in indices[:-1]}, indices[-1]: [gather, *rewritten, place]}


def _initializer_read(graph: onnx.GraphProto, positions: Mapping[str, int], norm: DecomposedNorm) -> str:
    """The gamma initializer that the Mul writing ``norm.scaled`` reads, through any Identity nodes."""
    mul = graph.node[positions[norm.scaled]]
    name = next(name for name in mul.input if name != norm.output)
    while name in positions and graph.node[positions[name]].op_type == "Identity":
        name = graph.node[positions[name]].input[0]
    return name


def _renamed(node: onnx.NodeProto, rename: Mapping[str, str]) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for names in (copy.input, copy.output):
        names[:] = [rename.get(name, name) for name in names]
    copy.name = f"{node.name}__kept" if node.name else ""
    return copy


def _placement(graph: onnx.GraphProto, prefix: str, kept: np.ndarray, channels: int, dtype: int) -> str:
    """Add the kept indices (``<prefix>_index``) and the 0/1 placement matrix; the matrix's name."""
    placement = np.zeros((len(kept), channels), dtype=helper.tensor_dtype_to_np_dtype(dtype))
    placement[np.arange(len(kept)), kept] = 1
    graph.initializer.extend(
        [numpy_helper.from_array(kept, f"{prefix}_index"), numpy_helper.from_array(placement, f"{prefix}_place")]
    )
    return f"{prefix}_place"


def _over_kept(
    graph: onnx.GraphProto, node: onnx.NodeProto, kept: np.ndarray, channels: int, dtype: int
) -> list[onnx.NodeProto]:
    prefix = f"{node.output[0]}__kept"
    placed = _placement(graph, prefix, kept, channels, dtype)
    gathered = [helper.make_node("Gather", [node.input[0], f"{prefix}_index"], [f"{prefix}_x"], axis=-1)]
    inputs = [f"{prefix}_x"]
    for position, name in enumerate(node.input[1:3], start=1):
        gathered.append(helper.make_node("Gather", [name, f"{prefix}_index"], [f"{prefix}_{position}"], axis=0))
        inputs.append(f"{prefix}_{position}")
    norm = onnx.NodeProto()
    norm.CopyFrom(node)
    del norm.input[:], norm.output[:]
    norm.input.extend(inputs)
    norm.output.append(f"{prefix}_y")
    place = helper.make_node("MatMul", [f"{prefix}_y", placed], [node.output[0]])
    return gathered + [norm, place]
