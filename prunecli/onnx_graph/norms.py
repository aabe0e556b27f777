"""LayerNormalization over pruned channels in the masked original: normalise over the kept channels only.

Zeroing a removed channel is not enough for a LayerNorm: the zeros would still count in its
mean and variance, which the pruned graph no longer sees. In the masked original each such
node (``OnnxChannelGraph.norms``) becomes ``Gather`` of the kept channels, the same
LayerNormalization over them (scale and bias gathered alike), and a ``MatMul`` by a 0/1
placement matrix that puts them back with zeros elsewhere: exactly what the pruned graph
computes, so pruned == masked stays an exact check. The torch twin is ``prunecli.surgery.norms``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

Keep = Mapping[str, Mapping[int, Sequence[int]]]


def normalise_over_kept(model: onnx.ModelProto, keep: Keep, norms: Sequence[tuple[int, str]]) -> onnx.ModelProto:
    """``model`` (changed in place and returned) with each LayerNorm of ``norms`` that lost channels rewritten.

    ``norms`` pairs a node index with its scale's tensor name (an initializer, or a copy of one
    that masking wrote out; the node may read it through an Identity).
    """
    shapes = {t.name: (int(t.dims[0]), t.data_type) for t in model.graph.initializer if len(t.dims) == 1}
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for index, scale in norms:
        kept = keep.get(scale, {}).get(0)
        if kept is None or scale not in shapes:
            continue
        channels, dtype = shapes[scale]
        replaced[index] = _over_kept(model.graph, model.graph.node[index], np.asarray(kept, np.int64), channels, dtype)
    if replaced:
        nodes = [new for index, node in enumerate(model.graph.node) for new in replaced.get(index, [node])]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return model


def _over_kept(
    graph: onnx.GraphProto, node: onnx.NodeProto, kept: np.ndarray, channels: int, dtype: int
) -> list[onnx.NodeProto]:
    prefix = f"{node.output[0]}__kept"
    placement = np.zeros((len(kept), channels), dtype=helper.tensor_dtype_to_np_dtype(dtype))
    placement[np.arange(len(kept)), kept] = 1
    graph.initializer.extend(
        [numpy_helper.from_array(kept, f"{prefix}_index"), numpy_helper.from_array(placement, f"{prefix}_place")]
    )
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
    place = helper.make_node("MatMul", [f"{prefix}_y", f"{prefix}_place"], [node.output[0]])
    return gathered + [norm, place]
