"""The state a rule works with while the graph is walked, and the rule registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from prunecli.graph.fallbacks import FallbackLog
from prunecli.graph.layout import Layout, SpaceTable
from prunecli.registry import Registry

Value = Any  # list[Layout] for a tensor, a list of those for a tuple of tensors, None otherwise
Rule = Callable[["TraceContext", torch.fx.Node, dict[str, Any]], Value]

RULES: Registry[str, Rule] = Registry("coupling rule")
rule = RULES.register  # @rule("aten::relu", "aten::relu_"): one rule for one or more ATen schema names


class TraceContext:
    """Layouts of the values seen so far, who produces which channels, and the fallbacks taken."""

    def __init__(self, table: SpaceTable) -> None:
        self.table = table
        self.fallbacks = FallbackLog()
        self.values: dict[torch.fx.Node, Value] = {}
        self.tensor_of_placeholder: dict[torch.fx.Node, str] = {}
        self.producers: dict[str, set[int]] = {}

    def layouts(self, node: Any) -> list[Layout] | None:
        """The layouts of a tensor argument, or None for anything else."""
        value = self.values.get(node) if isinstance(node, torch.fx.Node) else None
        return value if isinstance(value, list) and (not value or not isinstance(value[0], list)) else None

    def is_state(self, node: Any) -> bool:
        """Whether ``node`` is a parameter or buffer of the model (not an activation)."""
        return node in self.tensor_of_placeholder

    @staticmethod
    def shape(node: torch.fx.Node) -> tuple[int, ...]:
        """The static shape recorded for a node's tensor output."""
        return tuple(int(size) for size in node.meta["val"].shape)

    def fresh(self, shape: Sequence[int], reason: str) -> list[Layout]:
        """New fixed atoms for a tensor whose dimensions carry no channels of the model."""
        return [self.table.singleton() if s == 1 else self.table.new(s, fixed=reason) for s in shape]

    def produce(self, weight: torch.fx.Node, dim: int) -> None:
        """Record that a layer produces channels along ``dim`` of the parameter ``weight``."""
        layouts = self.layouts(weight)
        if layouts is None:
            return
        self.table.mark_channel(layouts[dim])
        name = self.tensor_of_placeholder.get(weight)
        if name is not None:
            self.producers.setdefault(name, set()).add(dim)

    def fix_inputs(self, node: torch.fx.Node, reason: str) -> None:
        """Fix every dimension of every tensor argument of ``node``."""
        for arg in node.all_input_nodes:
            for layout in self.layouts(arg) or []:
                self.table.mark_fixed(layout, reason)

    def unsupported(self, node: torch.fx.Node, *, detail: str | None = None) -> Value:
        """What an op without a rule (or a pattern its rule declines) does: keep what it touches whole."""
        self.fallbacks.record("unsupported_op", node_label(node), detail or "no coupling rule")
        return self.keep_whole(node, detail=detail)

    def keep_whole(self, node: torch.fx.Node, *, detail: str | None = None) -> Value:
        """Fix the inputs of ``node`` and give its outputs fresh fixed atoms (records nothing)."""
        reason = f"used by {_op_name(node)}, which prunecli cannot prune through yet"
        if detail:
            reason += f" ({detail})"
        self.fix_inputs(node, reason)
        return self.fresh_value(node, reason)

    def opaque(self, node: torch.fx.Node, module_type: str) -> Value:
        """An op inside a module prunecli treats as a black box: like an unsupported op."""
        self.fallbacks.record("opaque_module", node_label(node), f"inside {module_type}")
        reason = f"inside {module_type}, which prunecli keeps whole"
        self.fix_inputs(node, reason)
        return self.fresh_value(node, reason)

    def fresh_value(self, node: torch.fx.Node, reason: str) -> Value:
        """Fresh fixed layouts for whatever tensors ``node`` outputs."""
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return self.fresh(val.shape, reason)
        if isinstance(val, (tuple, list)):
            return [self.fresh(v.shape, reason) if isinstance(v, torch.Tensor) else None for v in val]
        return None


def _op_name(node: torch.fx.Node) -> str:
    schema = getattr(node.target, "_schema", None)
    return schema.name if schema is not None else str(node.target)


def node_label(node: torch.fx.Node) -> str:
    """An op and its node, for messages: ``aten::cat (cat_3 in blocks.0.attn)``."""
    stack = node.meta.get("nn_module_stack") or {}
    module = list(stack.values())[-1][0] if stack else ""
    return f"{_op_name(node)} ({node.name}{f' in {module}' if module else ''})"


def op_name(node: torch.fx.Node) -> str:
    """The ATen schema name of a call_function node (``aten::conv2d``), or its target's name."""
    return _op_name(node)


def bind_arguments(node: torch.fx.Node) -> dict[str, Any]:
    """A node's arguments by schema name, defaults filled in."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return {str(i): arg for i, arg in enumerate(node.args)}
    bound: dict[str, Any] = {}
    for index, argument in enumerate(schema.arguments):
        if index < len(node.args):
            bound[argument.name] = node.args[index]
        elif argument.name in node.kwargs:
            bound[argument.name] = node.kwargs[argument.name]
        elif argument.has_default_value():
            bound[argument.name] = argument.default_value
    return bound
