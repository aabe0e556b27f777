"""Residual branches in a ``torch.export`` graph: every ``add(x, f(x))`` whose ``f`` can be cut out.

A residual add is an ``aten.add`` of two tensors of the output's shape where one input (the skip,
``x``) is an ancestor of the other (the branch output, ``f(x)``). The branch is every node on a
path from the skip to the branch output. It can be removed when:

- its nodes feed nothing but the branch (and the branch output nothing but the add);
- it runs inside the module whose forward does the add (its *owner*), in child modules of the
  owner (its *children*) and plain ops of the owner's forward;
- it ends in a child module (the *zero point*), possibly followed by ops that keep a zero a zero
  (a multiply by a LayerScale, a dropout, a reshape) of the owner itself or of a parameter-free
  child shared with other code (one dropout module for two branches): replacing the zero point by a
  module returning zeros then zeroes the whole branch, and its other children can become
  pass-throughs.

Example: timm's ``BasicBlock`` with an identity shortcut does ``x += shortcut`` after
``conv1, bn1, act1, conv2, bn2``; its branch has owner ``layer1.0``, children ``conv1 .. bn2`` and
zero point ``layer1.0.bn2``. A timm ViT ``Block`` has two branches, zero points ``blocks.0.attn``
and ``blocks.0.mlp``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import fx

_ADDS = {torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor}
# Ops of the owner's forward that map a zero branch to zero (their first tensor argument being zero).
_KEEP_ZERO = {
    "aten::mul", "aten::mul_", "aten::div", "aten::div_", "aten::dropout", "aten::clone", "aten::contiguous",
    "aten::view", "aten::reshape", "aten::_unsafe_view", "aten::permute", "aten::transpose", "aten::flatten",
    "aten::alias", "aten::detach", "aten::neg", "aten::expand", "aten::squeeze", "aten::unsqueeze",
}  # fmt: skip
_EITHER_ZERO = {"aten::mul", "aten::mul_"}


@dataclass(frozen=True)
class ResidualBranch:
    """The ``f`` of one residual add ``x + f(x)``, placed in the module tree.

    ``owner`` is the module path whose forward does the add (``""``: the root); ``children`` the
    owner's child modules that run branch ops, in execution order; ``zero_point`` the child whose
    output ends the branch; ``shared`` the children that also run outside the branch (parameter-free
    ones only: they stay in place). ``nodes`` are the branch's ops and ``add`` the add itself.
    """

    owner: str
    add: fx.Node
    skip: fx.Node
    nodes: frozenset[fx.Node]
    children: tuple[str, ...]
    zero_point: str
    shared: frozenset[str]


@dataclass
class ResidualSearch:
    """What ``find_residual_branches`` found: the removable branches, and why other residual adds are not."""

    branches: list[ResidualBranch]
    rejected: list[str]


def module_paths(node: fx.Node) -> list[str]:
    """The module paths a node ran in, outermost first (the root is ``""``)."""
    return [str(path) for path, _ in (node.meta.get("nn_module_stack") or {}).values()]


def owner_of(node: fx.Node) -> str:
    """The innermost module path a node ran in (``""``: the root or no module)."""
    paths = module_paths(node)
    return paths[-1] if paths else ""


def child_of(node: fx.Node, owner: str) -> str | None:
    """The child module of ``owner`` (in the call stack) that ``node`` ran in; None for an op of the owner itself."""
    paths = module_paths(node)
    if owner not in paths:
        return paths[0] if owner == "" and paths and paths[0] != "" else None
    index = paths.index(owner)
    return paths[index + 1] if index + 1 < len(paths) else None


def inside(node: fx.Node, owner: str) -> bool:
    """Whether ``node`` ran inside module ``owner`` (every node is inside the root)."""
    return owner == "" or owner in module_paths(node)


def find_residual_branches(graph: fx.Graph, *, stateful: set[str]) -> ResidualSearch:
    """Every removable residual branch of ``graph``; ``stateful``: module paths owning parameters or buffers."""
    calls = live_calls(graph)
    under = nodes_under(calls)
    search = ResidualSearch(branches=[], rejected=[])
    for node in calls:
        if node.target not in _ADDS:
            continue
        pair = _skip_and_branch(node)
        if pair is None:
            continue
        branch_or_reason = _branch(node, *pair, under=under, stateful=stateful)
        if isinstance(branch_or_reason, str):
            search.rejected.append(f"{node.name} in '{owner_of(node) or '<root>'}': {branch_or_reason}")
        else:
            search.branches.append(branch_or_reason)
    return search


def live_calls(graph: fx.Graph) -> list[fx.Node]:
    """The ops whose values reach the graph's output (a model computes some it never uses), in graph order."""
    output = next(node for node in reversed(graph.nodes) if node.op == "output")
    live = _ancestors(output)
    return [node for node in graph.nodes if node.op == "call_function" and node in live]


def nodes_under(calls: Iterable[fx.Node]) -> dict[str, set[fx.Node]]:
    """Module path -> the ops that ran inside it (in any call)."""
    under: dict[str, set[fx.Node]] = {}
    for node in calls:
        for path in module_paths(node):
            under.setdefault(path, set()).add(node)
    return under


def _skip_and_branch(add: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(skip, branch output) when ``add`` is ``x + f(x)`` on equal shapes, else None."""
    if len(add.args) != 2 or add.kwargs.get("alpha", 1) != 1:
        return None
    first, second = add.args
    if not (isinstance(first, fx.Node) and isinstance(second, fx.Node)):
        return None
    shapes = {_shape(first), _shape(second), _shape(add)}
    if len(shapes) != 1 or None in shapes:
        return None
    if first in _ancestors(second):
        return first, second
    if second in _ancestors(first):
        return second, first
    return None


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    value = node.meta.get("val")
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = list(node.all_input_nodes)
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(current.all_input_nodes)
    return seen


def _branch_nodes(skip: fx.Node, out: fx.Node) -> set[fx.Node]:
    """The ops on a path from ``skip`` to ``out`` (``out`` included, ``skip`` not)."""
    allowed = _ancestors(out) | {out}
    nodes: set[fx.Node] = set()
    stack = [user for user in skip.users if user in allowed]
    while stack:
        current = stack.pop()
        if current not in nodes:
            nodes.add(current)
            stack.extend(user for user in current.users if user in allowed)
    return nodes


def _branch(
    add: fx.Node, skip: fx.Node, out: fx.Node, *, under: dict[str, set[fx.Node]], stateful: set[str]
) -> ResidualBranch | str:
    """The branch of ``add``, or why it cannot be removed."""
    owner = owner_of(add)
    nodes = _branch_nodes(skip, out)
    leaks = [node.name for node in nodes - {out} if not users(node) <= nodes]
    if leaks or users(out) != {add}:
        return f"the branch's value {(leaks or [out.name])[0]} is also used outside it"
    if not all(inside(node, owner) for node in nodes):
        return "the branch runs outside the module that adds it"
    children = list(dict.fromkeys(child for node in _in_order(nodes) if (child := child_of(node, owner))))
    shared = {child for child in children if not private_to(under.get(child, set()), nodes)}
    if shared & stateful:
        return f"module {sorted(shared & stateful)[0]} also runs outside the branch"
    zero_point = _zero_point(out, owner, nodes, shared=shared)
    if zero_point is None:
        return f"the branch ends in {out.name}, an op that does not keep a zero branch zero"
    return ResidualBranch(owner, add, skip, frozenset(nodes), tuple(children), zero_point, frozenset(shared))


def private_to(region: set[fx.Node], nodes: set[fx.Node]) -> bool:
    """Whether the ops of a module (``region``) serve ``nodes`` only: each is one of them or feeds only the two.

    A module's own constants (a causal mask built inside an attention module) count as its own.
    """
    allowed = region | nodes
    return all(node in nodes or users(node) <= allowed for node in region)


def users(node: fx.Node) -> set[fx.Node]:
    """The ops that use ``node``'s value, without the checks torch.export inserts (``_assert_tensor_metadata``)."""
    return {user for user in node.users if not str(getattr(user.target, "__name__", "")).startswith("_assert")}


def _in_order(nodes: set[fx.Node]) -> list[fx.Node]:
    graph_order = {node: index for index, node in enumerate(next(iter(nodes)).graph.nodes)} if nodes else {}
    return sorted(nodes, key=graph_order.__getitem__)


def _zero_point(out: fx.Node, owner: str, nodes: set[fx.Node], *, shared: set[str]) -> str | None:
    """The child module whose output, zeroed, zeroes ``out``.

    Walks back from ``out`` through zero-keeping ops of the owner itself or of shared children
    (a dropout module both branches of a transformer layer go through), which stay in place.
    """
    current = out
    while (child := child_of(current, owner)) is None or child in shared:
        name = getattr(current.target, "_schema", None)
        if name is None or name.name not in _KEEP_ZERO:
            return None
        inputs = [arg for arg in current.args if isinstance(arg, fx.Node) and arg in nodes]
        either = name.name in _EITHER_ZERO  # x * gamma and gamma * x both stay zero
        if not inputs or not (either or current.args[0] is inputs[0]):
            return None
        current = inputs[0]
    return child
