"""``prunecli inspect model.onnx``: the groups of an ONNX graph, in the torch summary's shape."""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Any

import onnx

from prunecli.metrics.macs import onnx_macs
from prunecli.onnx_graph.build import build_onnx_graph

if TYPE_CHECKING:
    from prunecli.model_io import LoadedModel

_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def onnx_prunability(loaded: LoadedModel) -> dict[str, Any]:
    """Params, MACs (one sample), the unprunable params share and every group of an ONNX model.

    The keys are those of ``prunecli.graph.summary.prunability``; ``unprunable_macs_share`` is
    None (MACs are not broken down per node yet).
    """
    model = onnx.load(str(loaded.onnx_path))
    graph = build_onnx_graph(model, input_shape=loaded.input_shape)
    prunable_tensors = {member.tensor for group in graph.prunable_groups for member in group.members}
    sizes = {t.name: math.prod(t.dims) for t in model.graph.initializer if t.data_type in _FLOATS}
    params = sum(sizes.values())
    unprunable = sum(size for name, size in sizes.items() if name not in prunable_tensors)
    return {
        "params": params,
        "macs": onnx_macs(loaded.onnx_path, loaded.input_shape),
        "unprunable_params_share": unprunable / params if params else 0.0,
        "unprunable_macs_share": None,
        "groups": [
            {
                "name": group.name,
                "channels": group.channels,
                "prunable": group.prunable,
                "reason": group.reason,
                "members": [f"{member.tensor}:{member.dim}" for member in group.members],
            }
            for group in graph.groups
        ],
        "unprunable_reasons": dict(Counter(group.reason for group in graph.groups if not group.prunable)),
        "fallbacks": graph.fallbacks.counts(),
    }
