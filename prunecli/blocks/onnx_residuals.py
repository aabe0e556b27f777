"""Residual branches of an ONNX graph and their removal: every ``Add(x, f(x))`` whose ``f`` feeds nothing else.

A residual Add has two inputs, the skip ``x`` and the branch output ``f(x)``. The branch is every
node met walking back from the branch output's producer until the skip: the walk must reach the
skip and read nothing else from outside the branch but initializers; the branch's nodes must feed
nothing but the branch (the branch output nothing but the Add, and no graph output); and the Add's
output must have the skip's shape (no broadcast hides in it). A ResNet ``BasicBlock`` exported by
torch gives ``Conv, Relu, Conv`` (BatchNorm folded) as a branch; a downsampling block gives none
(its skip side is a Conv of the block's input, not an input of the branch).

Removing a branch rewires the Add's consumers to the skip (an ``Identity(skip)`` keeps the Add's
output name when it is a graph output) and drops the branch's nodes and the initializers nothing
reads any more; the other nodes keep their names and order, the opsets and metadata stay. The
invariant, checked in ONNX Runtime: the pruned graph's outputs equal the original's with each
removed branch's output multiplied by 0 (``zeroed``)::

    found = find_onnx_branches(model, input_shape=(2, 3, 32, 32))
    pruned = remove_onnx_branches(model, found.candidates[:2])
    verify_onnx_removal(model, pruned, found.candidates[:2], feeds=feeds, tolerance=1e-4).passed   # True
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from prunecli.blocks.candidates import BlockCandidate, CandidateSearch
from prunecli.blocks.surgery import ZERO, compare_outputs
from prunecli.onnx_graph.build import module_path
from prunecli.onnx_graph.shapes import static_shapes
from prunecli.onnx_graph.verify import run_model
from prunecli.surgery.verify import Verification

_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class OnnxBlockCandidate(BlockCandidate):
    """A residual branch of an ONNX graph as a ``prune_blocks`` candidate (kind ``branch``).

    The ``BlockCandidate`` fields are filled as for torch: ``replacements`` maps the module paths of
    the branch's nodes (their names' torch scopes, else the node names) to ``"zero"``, so the report's
    ``modules`` and the step's ``ignore`` globs work alike; ``sites`` is ``(skip, branch_output)``;
    ``params`` counts the float initializers only the branch reads; ``order`` is the Add's position.
    ``add_output`` names the Add's output tensor, ``nodes`` the first outputs of the branch's nodes.
    """

    add_output: str = ""
    skip: str = ""
    branch_output: str = ""
    nodes: frozenset[str] = field(default_factory=frozenset)

    def overlaps(self, other: BlockCandidate) -> bool:
        """Whether the two share a node, or one's Add lies inside the other's branch (nested residuals)."""
        if not isinstance(other, OnnxBlockCandidate):
            return super().overlaps(other)
        return bool(self.nodes & other.nodes) or self.add_output in other.nodes or other.add_output in self.nodes


@dataclass
class _Index:
    """Who produces and who reads each tensor of a graph's top level (subgraph reads count for their node)."""

    model: onnx.ModelProto
    producers: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    outputs: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        graph = self.model.graph
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.outputs = {value.name for value in graph.output}
        for index, node in enumerate(graph.node):
            self.producers.update({name: index for name in node.output if name})
            for name in reads(node):
                self.consumers[name].add(index)


def reads(node: onnx.NodeProto) -> Iterator[str]:
    """The tensors ``node`` reads: its inputs and the names its subgraphs use (an over-approximation)."""
    yield from (name for name in node.input if name)
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in graph.node:
                yield from reads(inner)


def find_onnx_branches(model: onnx.ModelProto, *, input_shape: Sequence[int] | None) -> CandidateSearch:
    """Every removable residual branch of ``model``, in graph order, and notes on residual-looking Adds that are not."""
    index = _Index(model)
    shapes = static_shapes(model, input_shape=input_shape)
    search = CandidateSearch()
    for position, node in enumerate(model.graph.node):
        if node.op_type != "Add" or len(node.input) != 2 or any(name in index.initializers for name in node.input):
            continue
        found = _residual(index, position, shapes)
        if isinstance(found, OnnxBlockCandidate):
            search.candidates.append(found)
        elif found:
            search.notes.append(found)
    if not search.candidates and not search.notes:
        search.notes.append("no Add of two computed tensors in the graph")
    return search


def _residual(index: _Index, position: int, shapes: Mapping[str, tuple[int, ...]]) -> OnnxBlockCandidate | str:
    """The Add at ``position`` as a candidate (either input may be the skip), or why it is none ("": not residual)."""
    add = index.model.graph.node[position]
    label = add.name or add.output[0]
    reasons = []
    for skip, output in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        if skip == output or output not in index.producers:
            continue
        branch = _branch(index, skip=skip, output=output, add=position)
        if isinstance(branch, str):
            reasons.append(branch)
            continue
        if shapes.get(skip) is None or shapes.get(skip) != shapes.get(add.output[0]):
            reasons.append(f"the skip has shape {shapes.get(skip)}, the sum {shapes.get(add.output[0])}")
            continue
        return _candidate(index, position, skip=skip, output=output, branch=branch)
    telling = [reason for reason in reasons if not reason.startswith("reads ")]
    # none: two independent paths (a downsampling shortcut, a sum of features), no residual
    return f"Add {label}: {telling[0]}" if telling else ""


def _branch(index: _Index, *, skip: str, output: str, add: int) -> list[int] | str:
    """The nodes from ``skip`` to ``output`` (graph order), or why they are no removable branch."""
    nodes: set[int] = set()
    stack, reached = [output], False
    while stack:
        tensor = stack.pop()
        if tensor == skip:
            reached = True
        elif tensor not in index.initializers:
            producer = index.producers.get(tensor)
            if producer is None:
                return f"reads graph input {tensor}"
            if producer not in nodes:
                nodes.add(producer)
                stack.extend(reads(index.model.graph.node[producer]))
    if not reached:
        return "reads no input of the other"
    for position in nodes:
        for name in index.model.graph.node[position].output:
            users = index.consumers.get(name, set())
            allowed = {add} if name == output else nodes
            if name in index.outputs or not users <= allowed:
                return f"its tensor {name} also feeds other nodes"
    return sorted(nodes)


def _candidate(index: _Index, position: int, *, skip: str, output: str, branch: list[int]) -> OnnxBlockCandidate:
    graph = index.model.graph
    add = graph.node[position]
    read = {name for node in branch for name in reads(graph.node[node]) if name in index.initializers}
    private = [index.initializers[name] for name in read if index.consumers[name] <= set(branch)]
    paths = [path for path in dict.fromkeys(_path(graph.node[node]) for node in branch) if path]
    paths = paths or [graph.node[node].name or graph.node[node].output[0] for node in branch]
    owner = _path(add) if add.name else ""
    name = f"{owner + ' ' if owner else ''}({_relative(paths[0], owner)}..{_relative(paths[-1], owner)})"
    return OnnxBlockCandidate(
        name=name, kind="branch", replacements={path: ZERO for path in paths}, reference={}, sites=(skip, output),
        params=sum(math.prod(tensor.dims) for tensor in private if tensor.data_type in _FLOATS),
        order=position, add_output=add.output[0], skip=skip, branch_output=output,
        nodes=frozenset(graph.node[node].output[0] for node in branch),
    )  # fmt: skip


def _path(node: onnx.NodeProto) -> str:
    """The node's torch module path; "" for an op of the root's forward (``/Relu_1``) or an unscoped helper
    (``Identity_3``, a copy of a shared initializer); its output if unnamed."""
    if not node.name:
        return node.output[0]
    return "" if not node.name.startswith("/") or re.fullmatch(r"/[^/]+", node.name) else module_path(node.name)


def _relative(path: str, owner: str) -> str:
    return path[len(owner) + 1 :] if owner and path.startswith(owner + ".") else path


def remove_onnx_branches(model: onnx.ModelProto, chosen: Sequence[OnnxBlockCandidate]) -> onnx.ModelProto:
    """A copy of ``model`` without the ``chosen`` branches and their Adds, the Adds' readers reading the skips."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    graph = pruned.graph
    dropped = {name for candidate in chosen for name in candidate.nodes}
    adds = {candidate.add_output: candidate.skip for candidate in chosen}
    implicit = {name for node in graph.node for name in reads(node) if name not in node.input}
    kept_outputs = {value.name for value in graph.output} | implicit
    renamed = {add: _resolved(skip, adds, kept_outputs) for add, skip in adds.items() if add not in kept_outputs}
    nodes = []
    for node in graph.node:
        first = node.output[0] if node.output else ""
        if first in dropped or first in renamed:
            continue
        if first in adds:  # a graph output or a subgraph's read: an Identity keeps the name
            node = onnx.helper.make_node("Identity", [renamed.get(adds[first], adds[first])], [first], name=node.name)
        for slot, name in enumerate(node.input):
            node.input[slot] = renamed.get(name, name)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unread(graph)
    return pruned


def _resolved(skip: str, adds: Mapping[str, str], kept: set[str]) -> str:
    """The tensor a removed Add's readers read: its skip, or, when that is a removed Add too, that one's."""
    while skip in adds and skip not in kept:
        skip = adds[skip]
    return skip


def _drop_unread(graph: onnx.GraphProto) -> None:
    """Remove initializers (and their graph inputs) no node reads, and value_info of tensors no node produces."""
    read = {name for node in graph.node for name in reads(node)} | {value.name for value in graph.output}
    produced = {name for node in graph.node for name in node.output}
    unread = {tensor.name for tensor in graph.initializer if tensor.name not in read}
    kept = [tensor for tensor in graph.initializer if tensor.name not in unread]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [value for value in graph.input if value.name not in unread]
    del graph.input[:]
    graph.input.extend(inputs)
    infos = [value for value in graph.value_info if value.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def zeroed(model: onnx.ModelProto, candidates: Sequence[OnnxBlockCandidate]) -> onnx.ModelProto:
    """A copy of ``model`` whose candidates' branch outputs are multiplied by 0 before their Adds."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    types = tensor_types(model)
    by_add = {candidate.add_output: candidate for candidate in candidates}
    nodes = []
    for node in graph.node:
        candidate = by_add.get(node.output[0] if node.output else "")
        if candidate is not None:
            zero, scaled = f"{candidate.branch_output}__prunecli_zero", f"{candidate.branch_output}__prunecli_zeroed"
            dtype = onnx.helper.tensor_dtype_to_np_dtype(types.get(candidate.branch_output, onnx.TensorProto.FLOAT))
            graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((), dtype=dtype), zero))
            nodes.append(onnx.helper.make_node("Mul", [candidate.branch_output, zero], [scaled]))
            node.input[list(node.input).index(candidate.branch_output)] = scaled
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return copy


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor onnx shape inference can type (empty if inference fails)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # onnx raises several types (and none for a graph over 2 GB): then no types are known
        return {}
    values = [*inferred.input, *inferred.value_info, *inferred.output]
    return {value.name: value.type.tensor_type.elem_type for value in values if value.type.tensor_type.elem_type}


def verify_onnx_removal(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    chosen: Sequence[OnnxBlockCandidate],
    *,
    feeds: Mapping[str, np.ndarray],
    tolerance: float,
) -> Verification:
    """Compare ``pruned``'s outputs with ``original``'s with the chosen branches zeroed, in ONNX Runtime."""
    expected = [torch.from_numpy(np.asarray(out)) for out in run_model(zeroed(original, chosen), feeds)]
    actual = [torch.from_numpy(np.asarray(out)) for out in run_model(pruned, feeds)]
    return compare_outputs(expected, actual, tolerance=tolerance)
