"""The ONNX front-end: walk an ``onnx.ModelProto`` through the ONNX coupling rules into a ChannelGraph.

The result is the same ``ChannelGraph`` the torch front-end builds (groups of ``Member``s),
with initializer names as tensor names, so criteria and selection work unchanged::

    graph = build_onnx_graph(onnx.load("digits_cnn.onnx"))
    [group.name for group in graph.prunable_groups]   # ['stem_conv (+1 tied)', 'res_conv1', ...]
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from prunecli.graph.channel_graph import ChannelGraph, PruningGroup, build_groups
from prunecli.graph.layout import Layout
from prunecli.onnx_graph import (  # noqa: F401 - registers the rules
    rules_einsum, rules_layers, rules_norm, rules_shape, shape_values,
)
from prunecli.onnx_graph.copies import Copy, reader_copies
from prunecli.onnx_graph.norms import Norm
from prunecli.onnx_graph.shape_completion import unsized_outputs
from prunecli.onnx_graph.context import ONNX_RULES, OnnxContext, SizeRef, node_label, subgraph_reads
from prunecli.onnx_graph.shapes import static_shapes

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
_CONTROL_FLOW = {"If", "Loop", "Scan", "SequenceMap"}


class OnnxChannelGraph(ChannelGraph):
    """A ChannelGraph of an ONNX model, with what ONNX surgery needs beyond the groups.

    ``size_refs`` are the shape constants and attributes that size pruned dimensions;
    ``value_layouts`` the layouts of every activation (to rewrite ``value_info`` shapes);
    ``divisors`` the initializers used as divisors, exponents or multipliers (masked with ones, not zeros);
    ``copies`` the per-reader copies of shared initializers (tensor names of their own, see
    ``prunecli.onnx_graph.copies``) that surgery and masking write out when pruning touches them;
    ``norms`` the LayerNorms over prunable channels, LayerNormalization nodes with their scale's tensor
    name or decomposed ones (the masked original normalises over the kept channels, ``onnx_graph.norms``).
    """

    def __init__(
        self,
        *,
        base: ChannelGraph,
        size_refs: Sequence[SizeRef],
        value_layouts: dict[str, list[Layout]],
        divisors: set[str],
        copies: Mapping[str, Copy],
        norms: Sequence[Norm] = (),
    ) -> None:
        super().__init__(table=base.table, groups=base.groups, fallbacks=base.fallbacks)
        self.size_refs = list(size_refs)
        self.value_layouts = value_layouts
        self.divisors = divisors
        self.copies = dict(copies)
        self.norms = list(norms)


def build_onnx_graph(model: onnx.ModelProto, *, input_shape: Sequence[int] | None = None) -> OnnxChannelGraph:
    """Derive the pruning groups of ``model`` (shapes from onnx shape inference on ``input_shape``)."""
    ctx = OnnxContext(model, static_shapes(model, input_shape=input_shape, complete=unsized_outputs))
    initializers = set(ctx.initializers)
    for value in model.graph.input:
        if value.name not in initializers and ctx.shape(value.name) is not None:
            ctx.values[value.name] = ctx.fresh(ctx.shape(value.name), "reaches a model input")
    for index, node in enumerate(model.graph.node):
        ctx.node_index = index
        own = ctx.own_inputs(node)
        for name, layouts in zip(node.output, _visit(ctx, own)):
            if name and layouts is not None:
                ctx.values[name] = layouts
        shape_values.follow(ctx, own)
    for value in model.graph.output:
        for layout in ctx.layouts(value.name) or []:
            ctx.table.mark_fixed(layout, "reaches a model output")
    parameters = {name for name in ctx.initializer_layouts if ctx.initializers[name].data_type in _FLOAT_TYPES}
    base = ChannelGraph(
        table=ctx.table,
        groups=_named(
            build_groups(ctx.table, ctx.initializer_layouts, parameters=parameters, producers=ctx.producers),
            ctx,
            model,
        ),
        fallbacks=ctx.fallbacks,
    )
    return OnnxChannelGraph(
        base=base, size_refs=ctx.size_refs, value_layouts=ctx.values, divisors=ctx.divisors, copies=ctx.copies,
        norms=ctx.norms,
    )


def initializer_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The floating-point initializers of ``model`` as numpy arrays, by name (what static criteria read).

    The per-reader copies of shared initializers (``prunecli.onnx_graph.copies``) are listed too,
    under their own names, as the channel graph's members name them.
    """
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type in _FLOAT_TYPES}
    arrays.update({name: arrays[copy.source] for name, copy in reader_copies(model).items()})
    return arrays


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


def _named(groups: list[PruningGroup], ctx: OnnxContext, model: onnx.ModelProto) -> list[PruningGroup]:
    """Groups named after the modules producing them, in model order.

    A producer's module is its weight's parameter path (``layer1.0.conv1.weight``) where the
    exporter kept it, else its node's (``/features/fc1/Gemm`` -> ``features.fc1``, see
    ``node_module``). A group's ``modules`` are what ``select.ignore`` globs match; groups come
    in the order of their first producing node.
    """
    named = []
    for group in groups:
        producers = sorted(
            ((ctx.producer_nodes[m.tensor], m) for m in group.producers if m.tensor in ctx.producer_nodes),
            key=lambda pair: pair[0],
        )
        if not producers:
            named.append((len(model.graph.node), group))
            continue
        modules = tuple(dict.fromkeys(_module(ctx, model, index, member.tensor) for index, member in producers))
        base = modules[0] + (f" (+{len(modules) - 1} tied)" if len(modules) > 1 else "")
        part = group.name[group.name.rfind("[") :] if group.name.endswith("]") else ""
        named.append((producers[0][0], dataclasses.replace(group, name=base + part, modules=modules)))
    return [group for _, group in sorted(named, key=lambda pair: pair[0])]


def _module(ctx: OnnxContext, model: onnx.ModelProto, node_index: int, tensor: str) -> str:
    path, _, leaf = tensor.rpartition(".")
    if path and leaf in ("weight", "bias") and ":" not in tensor and tensor not in ctx.copies:
        return path
    return node_module(model.graph.node[node_index])


def group_modules(graph: ChannelGraph) -> list[str]:
    """The module paths that produce the graph's groups, with their parents (what ``select.ignore`` matches)."""
    names: dict[str, None] = {}
    for group in graph.groups:
        for module in group.modules:
            parts = module.split(".")
            names.update({".".join(parts[: i + 1]): None for i in range(len(parts))})
    return list(names)


def node_module(node: onnx.NodeProto) -> str:
    """The torch module a node comes from: the dynamo exporter's innermost name scope, else ``module_path``."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = [scope.strip(" '\"") for scope in prop.value.strip("[]").split(",")]
            if len(scopes) > 2 and scopes[-2]:
                return scopes[-2]
    return module_path(node.name or node.output[0])


def module_path(node_name: str) -> str:
    """The torch module path in a torch.onnx node name (``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``)."""
    match = re.fullmatch(r"/(.+)/[^/]+", node_name)
    if match is None:
        return node_name
    path = ""
    for part in match.group(1).split("/"):  # each scope repeats its parent's path: "layer1", "layer1.0"
        parent, _, last = path.rpartition(".")
        if not path or part.startswith(f"{path}."):
            path = part
        elif "." in part and part.split(".")[0] == last:  # a Sequential's child: "downsample", "downsample.0"
            path = f"{parent}.{part}" if parent else part
        else:
            path = f"{path}.{part}"
    return path
