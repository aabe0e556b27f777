"""The torch front-end: trace a module with torch.export and walk its ATen graph through the rules."""

from __future__ import annotations

import operator

import torch

from prunecli.capture import captured_output
from prunecli.errors import UnsupportedModelError
from prunecli.graph.channel_graph import ChannelGraph, SizeUse, build_groups
from prunecli.graph.layout import SpaceTable
from prunecli.graph.rules import RULES, TraceContext
from prunecli.graph.rules.context import Rule, Value, bind_arguments, node_label, op_name


def export_program(module: torch.nn.Module, example_input: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export of ``module`` in eval mode; a model that cannot be traced is a one-line error."""
    was_training = module.training
    module.eval()
    try:
        with captured_output() as printed:  # torch prints the partial graph to stderr when it fails
            return torch.export.export(module, (example_input,), strict=False)
    except Exception as error:  # torch raises many types here; all mean "cannot trace"
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        failure = UnsupportedModelError(
            f"cannot trace the model on an input of shape {tuple(example_input.shape)} with torch.export "
            f"({type(error).__name__}: {first_line[:200]}); check model.input_shape, and that the forward "
            "has no Python control flow on tensor values"
        )
        if hasattr(failure, "add_note"):  # Python >= 3.11: --debug shows what torch printed
            failure.add_note(printed.text)
        raise failure from error
    finally:
        module.train(was_training)


def build_channel_graph(module: torch.nn.Module, example_input: torch.Tensor) -> ChannelGraph:
    """Trace ``module`` on ``example_input`` and derive its pruning groups."""
    program = export_program(module, example_input)
    signature = program.graph_signature
    tensor_names = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    table = SpaceTable()
    ctx = TraceContext(table)
    size_uses: list[SizeUse] = []
    for node in program.graph.nodes:
        ctx.values[node] = _visit(ctx, node, tensor_names)
        size_uses.extend(_size_uses(ctx, node))
    tensor_layouts = {
        ctx.tensor_of_placeholder[node]: ctx.values[node]
        for node in ctx.tensor_of_placeholder
        if isinstance(ctx.values.get(node), list)
    }
    groups = build_groups(
        table, tensor_layouts, parameters=set(signature.inputs_to_parameters.values()), producers=ctx.producers
    )
    return ChannelGraph(table=table, groups=groups, size_uses=size_uses, fallbacks=ctx.fallbacks)


def _visit(ctx: TraceContext, node: torch.fx.Node, tensor_names: dict[str, str]):
    if node.op == "placeholder":
        return _placeholder(ctx, node, tensor_names)
    if node.op == "output":
        _fix_outputs(ctx, node)
        return None
    name = "getitem" if node.target is operator.getitem else op_name(node)
    if not _has_tensor_output(node) and name != "getitem":
        return None  # sizes, submodules of higher-order ops, ...
    if node.op != "call_function":
        return ctx.unsupported(node, detail=f"a {node.op} node")
    opaque = _opaque_module(node)
    if opaque is not None:
        return ctx.opaque(node, opaque)
    handler = RULES.get(name)
    if handler is None:
        return ctx.unsupported(node)
    return _apply_rule(ctx, node, handler)


def _apply_rule(ctx: TraceContext, node: torch.fx.Node, handler: Rule) -> Value:
    """The rule's output layouts; a rule that raises or mis-sizes them is a bug (raises when strict)."""
    conflicts = len(ctx.table.size_conflicts)
    try:
        value = handler(ctx, node, bind_arguments(node))
    except Exception as error:  # a rule declines patterns explicitly (ctx.unsupported); raising is a bug
        detail = f"{type(error).__name__}: {str(error)[:120]}"
        ctx.fallbacks.record("rule_error", node_label(node), f"the rule raised {detail}")
        return ctx.keep_whole(node, detail=detail)
    for conflict in ctx.table.size_conflicts[conflicts:]:  # the table fixed both dimensions already
        ctx.fallbacks.record("size_conflict", node_label(node), f"the rule tied dimensions of {conflict}")
    mismatch = layout_mismatch(ctx.table, value, node.meta.get("val"))
    if mismatch is not None:
        ctx.fallbacks.record("layout_mismatch", node_label(node), mismatch)
        return ctx.keep_whole(node, detail=mismatch)
    return value


def layout_mismatch(table: SpaceTable, value: Value, traced: object) -> str | None:
    """How a rule's output ``value`` disagrees with the traced output (``node.meta["val"]``), or None.

    A tensor needs one layout per dimension, each of that dimension's size; a tuple of outputs
    needs one entry per element (None allowed for an output no rule follows).
    """
    if isinstance(traced, (tuple, list)):
        if not isinstance(value, list) or len(value) != len(traced):
            return f"{_count(value)} outputs for a tuple of {len(traced)}"
        for index, (item, traced_item) in enumerate(zip(value, traced)):
            mismatch = layout_mismatch(table, item, traced_item) if item is not None else None
            if mismatch is not None:
                return f"output {index}: {mismatch}"
        return None
    if not isinstance(traced, torch.Tensor):
        return None
    shape = tuple(int(size) for size in traced.shape)
    if not isinstance(value, list) or any(isinstance(layout, list) or layout is None for layout in value):
        return f"no layouts for a tensor of shape {shape}"
    sizes = tuple(table.size(layout) for layout in value)
    return None if sizes == shape else f"layouts of sizes {sizes} for a tensor of shape {shape}"


def _count(value: Value) -> int:
    return len(value) if isinstance(value, list) else 0


def _fix_outputs(ctx: TraceContext, node: torch.fx.Node) -> None:
    """Whatever reaches a model output keeps all its positions."""
    for value in node.all_input_nodes:
        for layout in ctx.layouts(value) or []:
            ctx.table.mark_fixed(layout, "reaches a model output")
        for item in ctx.values.get(value) or []:
            if isinstance(item, list):
                for layout in item:
                    ctx.table.mark_fixed(layout, "reaches a model output")


# Modules whose forward derives sizes from its input in ways the graph cannot follow:
# nn.MultiheadAttention computes head_dim = embed_dim // num_heads from the query's width.
OPAQUE_MODULES = ("torch.nn.modules.activation.MultiheadAttention",)


def _opaque_module(node: torch.fx.Node) -> str | None:
    for _, module_type in (node.meta.get("nn_module_stack") or {}).values():
        if not isinstance(module_type, str):
            module_type = f"{module_type.__module__}.{module_type.__qualname__}"
        if module_type in OPAQUE_MODULES:
            return module_type.rpartition(".")[2]
    return None


_SIZED_BY_CODE = {
    "aten::view", "aten::reshape", "aten::_unsafe_view", "aten::unflatten", "aten::expand", "aten::repeat",
    "aten::split", "aten::split_with_sizes", "aten::narrow", "aten::slice",
}  # fmt: skip


def _size_uses(ctx: TraceContext, node: torch.fx.Node) -> list[SizeUse]:
    """Sizes the model's code passes to shape ops (see SizeUse), with the layouts they size."""
    if node.op != "call_function" or op_name(node) not in _SIZED_BY_CODE:
        return []
    stack = node.meta.get("nn_module_stack") or {}
    module = list(stack.values())[-1][0] if stack else ""
    value = ctx.values.get(node)
    outputs = value if value and isinstance(value[0], list) else [value or []]
    layouts = [layout for output in outputs if output for layout in output]
    source = ctx.layouts(node.args[0]) if node.args else None
    layouts += source or []
    return [SizeUse(module, ctx.table.size(layout), layout) for layout in layouts if ctx.table.size(layout) > 1]


def _placeholder(ctx: TraceContext, node: torch.fx.Node, tensor_names: dict[str, str]):
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        return None
    if node.name in tensor_names:
        ctx.tensor_of_placeholder[node] = tensor_names[node.name]
        return [ctx.table.singleton() if s == 1 else ctx.table.new(int(s)) for s in value.shape]
    return ctx.fresh(value.shape, "reaches a model input")


def _has_tensor_output(node: torch.fx.Node) -> bool:
    value = node.meta.get("val")
    if isinstance(value, (tuple, list)):
        return any(isinstance(v, torch.Tensor) for v in value)
    return isinstance(value, torch.Tensor)
