"""The ONNX front-end: walk an ``onnx.ModelProto`` through the ONNX coupling rules into a ChannelGraph.

The result is the same ``ChannelGraph`` the torch front-end builds (groups of ``Member``s),
with initializer names as tensor names, so criteria and selection work unchanged::

    graph = build_onnx_graph(onnx.load("digits_cnn.onnx"))
    [group.name for group in graph.prunable_groups]   # ['stem_conv (+1 tied)', 'res_conv1', ...]
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from prunecli.graph.channel_graph import ChannelGraph, PruningGroup, build_groups
from prunecli.graph.layout import Layout
from prunecli.onnx_graph import rules_layers, rules_shape  # noqa: F401 - registers the rules
from prunecli.onnx_graph.context import ONNX_RULES, OnnxContext, SizeRef, node_label, subgraph_reads
from prunecli.onnx_graph.shapes import static_shapes

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
_CONTROL_FLOW = {"If", "Loop", "Scan", "SequenceMap"}


class OnnxChannelGraph(ChannelGraph):
    """A ChannelGraph of an ONNX model, with what ONNX surgery needs beyond the groups.

    ``size_refs`` are the shape constants and attributes that size pruned dimensions;
    ``value_layouts`` the layouts of every activation (to rewrite ``value_info`` shapes);
    ``divisors`` the initializers used as divisors or exponents (masked with ones, not zeros).
    """

    def __init__(
        self,
        *,
        base: ChannelGraph,
        size_refs: Sequence[SizeRef],
        value_layouts: dict[str, list[Layout]],
        divisors: set[str],
    ) -> None:
        super().__init__(table=base.table, groups=base.groups, fallbacks=base.fallbacks)
        self.size_refs = list(size_refs)
        self.value_layouts = value_layouts
        self.divisors = divisors


def build_onnx_graph(model: onnx.ModelProto, *, input_shape: Sequence[int] | None = None) -> OnnxChannelGraph:
    """Derive the pruning groups of ``model`` (shapes from onnx shape inference on ``input_shape``)."""
    ctx = OnnxContext(model, static_shapes(model, input_shape=input_shape))
    initializers = set(ctx.initializers)
    for value in model.graph.input:
        if value.name not in initializers and ctx.shape(value.name) is not None:
            ctx.values[value.name] = ctx.fresh(ctx.shape(value.name), "reaches a model input")
    for index, node in enumerate(model.graph.node):
        ctx.node_index = index
        for name, layouts in zip(node.output, _visit(ctx, node)):
            if name and layouts is not None:
                ctx.values[name] = layouts
    for value in model.graph.output:
        for layout in ctx.layouts(value.name) or []:
            ctx.table.mark_fixed(layout, "reaches a model output")
    parameters = {name for name in ctx.initializer_layouts if ctx.initializers[name].data_type in _FLOAT_TYPES}
    base = ChannelGraph(
        table=ctx.table,
        groups=_named(
            build_groups(ctx.table, ctx.initializer_layouts, parameters=parameters, producers=ctx.producers),
            ctx.producer_nodes,
        ),
        fallbacks=ctx.fallbacks,
    )
    return OnnxChannelGraph(base=base, size_refs=ctx.size_refs, value_layouts=ctx.values, divisors=ctx.divisors)


def initializer_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The floating-point initializers of ``model`` as numpy arrays, by name (what static criteria read)."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type in _FLOAT_TYPES}


def _visit(ctx: OnnxContext, node: onnx.NodeProto) -> list:
    """The output layouts of one node; ops the rules cannot follow keep what they touch whole."""
    if node.domain not in ("", "ai.onnx"):
        return ctx.unsupported(node, f"an op of the custom domain '{node.domain}'")
    if node.op_type in _CONTROL_FLOW or subgraph_reads(node):
        return ctx.unsupported(node, "control flow")
    missing = [name for name in node.input if name and ctx.layouts(name) is None and ctx.constant(name) is None]
    unknown = [name for name in node.output if name and ctx.shape(name) is None]
    if missing or unknown:
        return ctx.keep_whole(node, f"tensor '{(missing or unknown)[0]}' has no static shape")
    rule = ONNX_RULES.get(node.op_type)
    if rule is None:
        return ctx.unsupported(node, "no coupling rule")
    conflicts = len(ctx.table.size_conflicts)
    try:
        outputs = rule(ctx, node)
    except Exception as error:  # rules decline patterns explicitly (ctx.unsupported); raising is a bug
        detail = f"{type(error).__name__}: {str(error)[:120]}"
        ctx.fallbacks.record("rule_error", node_label(node), f"the rule raised {detail}")
        return ctx.keep_whole(node, detail)
    for conflict in ctx.table.size_conflicts[conflicts:]:
        ctx.fallbacks.record("size_conflict", node_label(node), f"the rule tied dimensions of {conflict}")
    mismatch = _mismatch(ctx, node, outputs)
    if mismatch is not None:
        ctx.fallbacks.record("layout_mismatch", node_label(node), mismatch)
        return ctx.keep_whole(node, mismatch)
    return outputs


def _mismatch(ctx: OnnxContext, node: onnx.NodeProto, outputs: list) -> str | None:
    """How a rule's output layouts disagree with the inferred output shapes, or None."""
    if len(outputs) != len(node.output):
        return f"{len(outputs)} outputs for {len(node.output)}"
    for name, layouts in zip(node.output, outputs):
        if not name or layouts is None:
            continue
        sizes = tuple(ctx.table.size(layout) for layout in layouts)
        if sizes != ctx.shape(name):
            return f"layouts of sizes {sizes} for '{name}' of shape {ctx.shape(name)}"
    return None


def _named(groups: list[PruningGroup], producer_nodes: dict[str, str]) -> list[PruningGroup]:
    """Groups named after the nodes producing them (``/features/fc1/Gemm`` -> ``features.fc1``)."""
    named = []
    for group in groups:
        nodes = list(dict.fromkeys(producer_nodes[m.tensor] for m in group.producers if m.tensor in producer_nodes))
        if not nodes:
            named.append(group)
            continue
        base = module_path(nodes[0]) + (f" (+{len(nodes) - 1} tied)" if len(nodes) > 1 else "")
        part = group.name[group.name.rfind("[") :] if group.name.endswith("]") else ""
        named.append(dataclasses.replace(group, name=base + part))
    return named


def module_path(node_name: str) -> str:
    """The torch module path in a torch.onnx node name (``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``)."""
    match = re.fullmatch(r"/(.+)/[^/]+", node_name)
    if match is None:
        return node_name
    path = ""
    for part in match.group(1).split("/"):  # each scope repeats its parent's path: "layer1", "layer1.0"
        path = part if not path or part.startswith(f"{path}.") else f"{path}.{part}"
    return path
