"""ONNX surgery: the input graph with pruned channels sliced out of its initializers and size constants.

Everything but sizes stays as it was: graph input and output names, node names and order,
opset imports, metadata. What changes:

- initializers named by ``keep`` (``ChannelGraph.keep_indices``) keep only the listed positions; a
  shared initializer's per-reader copy (``copies``) that loses positions becomes an initializer of its own;
- each ``SizeRef`` (a Reshape target, Split sizes, ...) gets the new sizes of its layouts;
  a constant shared by nodes that now need different values is copied per node;
- a depthwise Conv's ``group`` follows its channel count;
- ``value_info`` shapes follow the new sizes of the layouts they were inferred with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from prunecli.graph.layout import Layout
from prunecli.onnx_graph.build import OnnxChannelGraph
from prunecli.onnx_graph.context import attribute
from prunecli.onnx_graph.copies import Copy, materialize
from prunecli.onnx_graph.shapes import without_initializers

Keep = Mapping[str, Mapping[int, Sequence[int]]]


def prune_onnx(
    model: onnx.ModelProto, graph: OnnxChannelGraph, removed: Mapping[int, Sequence[int]]
) -> onnx.ModelProto:
    """A pruned copy of ``model``: ``removed[group_id]`` channels of each group taken out."""
    keep = graph.keep_indices(removed)
    masks = {group_id: _removed_mask(graph.group(group_id).channels, indices) for group_id, indices in removed.items()}
    hollow = set(keep)  # weights that lose positions: written once, sliced, never copied whole
    pruned = materialize(_copied(model, hollow=hollow), keep, graph.copies)
    old_depthwise = _depthwise_channels(pruned)
    _slice_initializers(pruned.graph, keep, source=model.graph, hollow=hollow, copies=graph.copies)
    _rewrite_size_refs(pruned.graph, graph, masks)
    _fix_depthwise_groups(pruned.graph, old_depthwise)
    _fix_value_info(pruned.graph, graph, masks)
    return pruned


def _copied(model: onnx.ModelProto, *, hollow: set[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers named in ``hollow`` hold only their name, type and dims.

    ``_slice_initializers`` writes their values, sliced, from the input model: copying those
    weights only to replace them would hold the model's size twice (a protobuf message keeps
    replaced bytes until it is freed).
    """
    copy = without_initializers(model)
    for tensor in model.graph.initializer:
        if tensor.name in hollow:
            copy.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        else:
            copy.graph.initializer.append(tensor)
    return copy


def kept_size(graph: OnnxChannelGraph, layout: Layout, masks: Mapping[int, np.ndarray]) -> int:
    """Positions of ``layout`` left once the ``masks`` (group id -> removed channels) are applied."""
    kept = np.ones(graph.table.size(layout), dtype=bool)
    for root, positions in graph.table.index_maps(layout).items():
        if root in masks:
            kept &= ~((positions >= 0) & masks[root][np.maximum(positions, 0)])
    return int(kept.sum())


def _removed_mask(channels: int, indices: Sequence[int]) -> np.ndarray:
    mask = np.zeros(channels, dtype=bool)
    mask[np.asarray(indices, dtype=np.int64)] = True
    return mask


def _slice_initializers(
    graph: onnx.GraphProto, keep: Keep, *, source: onnx.GraphProto, hollow: set[str], copies: Mapping[str, Copy]
) -> None:
    """Slice the initializers named in ``keep``; hollow ones (and copies made of them) read ``source``'s values."""
    originals = {tensor.name: tensor for tensor in source.initializer}
    for index, tensor in enumerate(graph.initializer):
        origin = copies[tensor.name].source if tensor.name in copies else tensor.name
        dims = keep.get(tensor.name, {})
        if origin not in hollow and not dims:
            continue
        array = numpy_helper.to_array(originals[origin] if origin in hollow else tensor)
        for dim, indices in sorted(dims.items()):
            array = np.take(array, np.asarray(indices, dtype=np.int64), axis=int(dim))
        graph.initializer[index].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), tensor.name))


def _rewrite_size_refs(graph: onnx.GraphProto, channels: OnnxChannelGraph, masks: Mapping[int, np.ndarray]) -> None:
    """Write the new sizes into each constant or attribute a SizeRef names."""
    places: dict[tuple[int, str], list] = defaultdict(list)  # (node, source) -> entries, refs merged
    for ref in channels.size_refs:
        places[(ref.node, ref.source)].extend(ref.entries)
    wanted: dict[str, dict[tuple[int, int], np.ndarray]] = defaultdict(dict)  # constant -> (node, input) -> value
    for (node_index, source), entries in places.items():
        node = graph.node[node_index]
        kind, _, key = source.partition(":")
        if kind == "attr":
            _set_attribute(node, key, _resized(np.asarray(attribute(node, key)), entries, channels, masks))
            continue
        name = _through_identity(graph, node.input[int(key)])
        wanted[name][(node_index, int(key))] = _resized(_constant(graph, name), entries, channels, masks)
    for name, by_use in wanted.items():
        values = list(by_use.values())
        readers = {node_index for node_index, _ in by_use}
        if all(np.array_equal(values[0], value) for value in values[1:]) and _consumers(graph, name) <= readers:
            _set_constant(graph, name, values[0])
            continue
        for (node_index, position), value in by_use.items():  # shared with other sizes: one copy per use
            copy_name = f"{name}__pruned_{node_index}" + (f"_{position}" if position != 1 else "")
            graph.initializer.append(numpy_helper.from_array(value, copy_name))
            graph.node[node_index].input[position] = copy_name


def _resized(value: np.ndarray, entries, channels: OnnxChannelGraph, masks) -> np.ndarray:
    new = value.copy()
    flat = new.reshape(-1)  # a view: scalars (an Unsqueeze input) and vectors alike
    for position, layout in entries:
        if flat[position] > 0:
            flat[position] = kept_size(channels, layout, masks)
    return new


def _through_identity(graph: onnx.GraphProto, name: str) -> str:
    """The initializer or Constant output behind a chain of Identity nodes (exporters share weights so)."""
    sources = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Identity"}
    while name in sources:
        name = sources[name]
    return name


def _consumers(graph: onnx.GraphProto, name: str) -> set[int]:
    return {index for index, node in enumerate(graph.node) if name in node.input}


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray:
    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(attribute(node, "value"))
    raise KeyError(f"no constant named '{name}'")


def _set_constant(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    for tensor in graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(numpy_helper.from_array(value, name))
            return
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            _set_attribute(node, "value", numpy_helper.from_array(value, name))
            return


def _set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind == "i":
        value = [int(item) for item in value]
    for index, item in enumerate(node.attribute):
        if item.name == name:
            node.attribute[index].CopyFrom(onnx.helper.make_attribute(name, value))
            return


def _depthwise_channels(model: onnx.ModelProto) -> dict[int, str]:
    """Depthwise Convs (one input channel per filter, ``group`` = filters), by node index -> weight name."""
    shapes = {tensor.name: list(tensor.dims) for tensor in model.graph.initializer}
    found = {}
    for index, node in enumerate(model.graph.node):
        name = _through_identity(model.graph, node.input[1]) if node.op_type == "Conv" else ""
        weight = shapes.get(name)
        group = int(attribute(node, "group", 1)) if weight else 1
        if weight and group > 1 and weight[1] == 1 and weight[0] == group:
            found[index] = name
    return found


def _fix_depthwise_groups(graph: onnx.GraphProto, depthwise: Mapping[int, str]) -> None:
    shapes = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    for index, weight in depthwise.items():
        _set_attribute(graph.node[index], "group", int(shapes[weight][0]))


def _fix_value_info(graph: onnx.GraphProto, channels: OnnxChannelGraph, masks) -> None:
    """Static dims of ``value_info`` entries follow the new sizes of their layouts; unknown ones are dropped."""
    stale = []
    for index, value in enumerate(graph.value_info):
        layouts = channels.value_layouts.get(value.name)
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else None
        if not dims:
            continue
        if layouts is None or len(layouts) != len(dims) or any(
            dim.HasField("dim_value") and dim.dim_value != channels.table.size(layout)
            for dim, layout in zip(dims, layouts)
        ):
            stale.append(index)
            continue
        for dim, layout in zip(dims, layouts):
            if dim.HasField("dim_value"):
                dim.dim_value = kept_size(channels, layout, masks)
    for index in reversed(stale):
        del graph.value_info[index]
