"""Hook sites of data-driven criteria on an ONNX graph run in torch: graph values instead of layers.

The torch front-end hooks a conv/linear module's input or output (``criteria.hooks``). On an
ONNX graph the same place is a graph value: the data input of the node that reads a consumer
member's weight (``Conv`` input 0, channels on axis 1; ``Gemm``/``MatMul`` input 0, features on
the last axis), or the output of the node whose weight produces the group's channels::

    /Relu_2_output_0 --Conv(W = onnx::Conv_67, dim 1 = the group's channels)--> ...
    Site(group_id, module="", axis=1, positions=..., on="input", value="/Relu_2_output_0", tensor="onnx::Conv_67")

``OnnxModule.observe(value, callback)`` delivers those values to ``criteria.hooks.Recorder``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prunecli.criteria.hooks import Site
from prunecli.graph.channel_graph import ChannelGraph, Member
from prunecli.onnx_torch.ops import OpNode


def value_sites(
    graph: ChannelGraph, nodes: Sequence[OpNode], shapes: Mapping[str, tuple[int, ...]], *, produces: bool
) -> list[Site]:
    """A site per producer (``produces``) or consumer weight member of every prunable group that a node reads.

    ``shapes`` gives the weights' shapes by initializer name; ``Identity`` outputs of a weight
    (exporters share tied weights so) count as the weight.
    """
    readers = _weight_readers(nodes)
    sites = []
    for group in graph.prunable_groups:
        for member in group.members:
            if member.produces != produces or not member.is_parameter or member.tensor not in shapes:
                continue
            for node in readers.get(member.tensor, []):
                site = _site(node, member, shapes[member.tensor], group_id=group.id)
                if site is not None:
                    sites.append(site)
    return sites


def _weight_readers(nodes: Sequence[OpNode]) -> dict[str, list[OpNode]]:
    """Conv/Gemm/MatMul nodes by the initializer they read as their weight (input 1), through Identity."""
    aliases: dict[str, str] = {}
    readers: dict[str, list[OpNode]] = {}
    for node in nodes:
        if node.op_type == "Identity" and node.inputs:
            aliases[node.outputs[0]] = aliases.get(node.inputs[0], node.inputs[0])
        elif node.op_type in ("Conv", "Gemm", "MatMul") and len(node.inputs) > 1:
            weight = aliases.get(node.inputs[1], node.inputs[1])
            readers.setdefault(weight, []).append(node)
    return readers


def _site(node: OpNode, member: Member, shape: tuple[int, ...], *, group_id: int) -> Site | None:
    """Where ``node`` shows ``member``'s channels: (value, axis), or None when it does not in a plain way."""
    located = _located(node, member.dim, len(shape), produces=member.produces)
    if located is None or shape[member.dim] != len(member.positions):
        return None
    value, axis = located
    on = "output" if member.produces else "input"
    return Site(group_id, "", axis, member.positions, on, value=value, tensor=member.tensor)


def _located(node: OpNode, dim: int, rank: int, *, produces: bool) -> tuple[str, int] | None:
    if node.op_type == "Conv":
        if produces:
            return (node.outputs[0], 1) if dim == 0 else None
        return (node.inputs[0], 1) if dim == 1 and node.attr("group", 1) == 1 else None
    if rank != 2 or node.attr("transA", 0):
        return None
    transposed = node.op_type == "Gemm" and bool(node.attr("transB", 0))
    features, contracted = (0, 1) if transposed else (1, 0)  # stored (N, K) when transposed, else (K, N)
    if produces:
        return (node.outputs[0], -1) if dim == features else None
    return (node.inputs[0], -1) if dim == contracted else None
