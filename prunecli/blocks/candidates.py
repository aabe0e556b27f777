"""What ``prune_blocks`` can remove from a model: residual blocks and branches, and identity-shaped layers.

Candidates are found from the model's structure, never from class names: residual branches from
the ``torch.export`` graph (``prunecli.blocks.residuals``), shapes and calls from forward hooks on
one example batch. See ``BlockCandidate`` for the three kinds.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from prunecli.blocks.residuals import (
    ResidualBranch,
    find_residual_branches,
    inside,
    live_calls,
    nodes_under,
    private_to,
)
from prunecli.blocks.surgery import BYPASS, IDENTITY, ZERO, trial_failure
from prunecli.graph.trace import export_program

TRIAL_TOLERANCE = 1e-4  # a branch candidate must match its zeroed reference this well on the example


@dataclass(frozen=True)
class BlockCandidate:
    """One unit ``prune_blocks`` can remove, what surgery puts in its place, and how hooks imitate that.

    ``kind`` is one of:

    - ``block``: a module whose forward is residual branches only, ``M(x) = x + f(x) (+ g(...))``,
      e.g. a timm ViT ``Block``: ``replacements = {"blocks.3": "identity"}`` (a pass-through);
    - ``branch``: the ``f`` of ``x + f(x)`` in a module that also does other things, e.g. a timm
      ``BasicBlock`` (a ReLU after the add): its children become pass-throughs and its zero point
      returns zeros, ``{"layer1.1.conv1": "identity", ..., "layer1.1.bn2": "zero"}``, so the block
      computes ``relu(x + 0)`` and its convolutions are gone;
    - ``layer``: a module called once on one tensor whose output has the input's shape (a 3x3 conv
      with as many outputs as inputs, a LayerNorm, a whole stage): replaced by a pass-through.

    ``reference`` imitates the removal on the unmodified model with forward hooks, for scoring and
    for verification: ``"zero"`` zeroes a module's output (the end of a branch), ``"bypass"`` makes
    it return its input (a layer). ``sites`` names the modules whose first input is ``x`` and whose
    output is ``f(x)`` (a branch) or ``M(x)`` (a block or layer), for the ``relative_norm``
    criterion; ``params`` counts the parameters removed; ``order`` is the position in the forward.
    """

    name: str
    kind: str
    replacements: dict[str, str]
    reference: dict[str, str]
    sites: tuple[str, str]
    params: int
    order: int

    @property
    def modules(self) -> list[str]:
        """The module paths surgery replaces."""
        return list(self.replacements)

    def overlaps(self, other: BlockCandidate) -> bool:
        """Whether the two touch the same module (one path equal to, or inside, the other)."""
        mine = set(self.replacements) | set(self.reference)
        theirs = set(other.replacements) | set(other.reference)
        return any(_nested(a, b) or _nested(b, a) for a in mine for b in theirs)


@dataclass
class CandidateSearch:
    """The candidates of a model, in forward order, and notes on what could not be a candidate."""

    candidates: list[BlockCandidate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ModuleCall:
    """One call of a module: the first input's shape, the output's shape (None: not one tensor)."""

    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    single_input: bool
    order: int


def find_candidates(module: nn.Module, example: torch.Tensor, *, kinds: Sequence[str]) -> CandidateSearch:
    """Every removable unit of ``module`` of the given ``kinds`` (``residual``, ``layer``), traced on ``example``."""
    calls = observe_calls(module, example)
    search = CandidateSearch()
    if "residual" in kinds:
        _add_residuals(search, module, example, calls)
    if "layer" in kinds:
        _add_layers(search, module, calls)
    search.candidates.sort(key=lambda candidate: candidate.order)
    return search


def observe_calls(module: nn.Module, example: torch.Tensor) -> dict[str, list[ModuleCall]]:
    """Module path -> its calls on ``example`` (the root excluded), from forward hooks."""
    calls: dict[str, list[ModuleCall]] = defaultdict(list)
    counter = itertools.count()

    def recorder(path: str):
        def hook(_module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            calls[path].append(ModuleCall(
                input_shape=tuple(first.shape) if first is not None else None,
                output_shape=tuple(output.shape) if isinstance(output, torch.Tensor) else None,
                single_input=first is not None and len(args) == 1 and not kwargs, order=next(counter),
            ))  # fmt: skip

        return hook

    handles = [
        child.register_forward_hook(recorder(path), with_kwargs=True) for path, child in module.named_modules() if path
    ]
    try:
        with torch.no_grad():
            module.eval()(example)
    finally:
        for handle in handles:
            handle.remove()
    return dict(calls)


def _shape_preserving(calls: list[ModuleCall]) -> bool:
    return bool(calls) and all(c.input_shape is not None and c.input_shape == c.output_shape for c in calls)


def _add_residuals(search: CandidateSearch, module: nn.Module, example: torch.Tensor, calls: dict) -> None:
    graph = export_program(module, example).graph
    stateful = {path for path, child in module.named_modules() if _owns_state(child)}
    found = find_residual_branches(graph, stateful=stateful)
    search.notes += found.rejected
    by_owner: dict[str, list[ResidualBranch]] = defaultdict(list)
    for branch in found.branches:
        by_owner[branch.owner].append(branch)
    under = nodes_under(live_calls(graph))
    for owner, branches in by_owner.items():
        if _is_residual_block(owner, branches, under=under, calls=calls):
            found_here = [_block(module, owner, branches, calls, example=example)]
        else:
            found_here = [_branch_candidate(module, branch, calls, example=example) for branch in branches]
        search.notes += [candidate for candidate in found_here if isinstance(candidate, str)]
        search.candidates += [candidate for candidate in found_here if not isinstance(candidate, str)]
    if not found.branches and not found.rejected:
        search.notes.append("no residual add x + f(x) in the traced graph")


def _owns_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _is_residual_block(owner: str, branches: list[ResidualBranch], *, under: dict, calls: dict) -> bool:
    """Whether module ``owner`` computes nothing but its residual adds in a chain: ``M(x) = x + f(x) + ...``."""
    if owner == "" or len(calls.get(owner, [])) != 1 or not _shape_preserving(calls[owner]):
        return False
    chain = sorted(branches, key=lambda branch: _position(branch.add))
    covered = set().union(*(branch.nodes | {branch.add} for branch in chain))
    if not private_to(under.get(owner, set()), covered) or inside(chain[0].skip, owner):
        return False
    linked = all(later.skip is earlier.add for earlier, later in zip(chain, chain[1:]))
    return linked and not any(inside(user, owner) for user in chain[-1].add.users)


def _position(node: fx.Node) -> int:
    return next(index for index, candidate in enumerate(node.graph.nodes) if candidate is node)


def _block(
    module: nn.Module, owner: str, branches: list[ResidualBranch], calls: dict, *, example: torch.Tensor
) -> BlockCandidate | str:
    """A ``block`` candidate, or why its pass-through would not match (its input is not its first argument)."""
    candidate = BlockCandidate(
        name=owner, kind="block", replacements={owner: IDENTITY},
        reference={branch.zero_point: ZERO for branch in branches}, sites=(owner, owner),
        params=_params(module, [owner]), order=calls[owner][0].order,
    )  # fmt: skip
    failure = trial_failure(module, candidate, inputs=example, tolerance=TRIAL_TOLERANCE, zero_shapes={})
    return f"block {owner}: {failure}" if failure else candidate


def _branch_candidate(
    module: nn.Module, branch: ResidualBranch, calls: dict, *, example: torch.Tensor
) -> BlockCandidate | str:
    """A ``branch`` candidate, or why this branch cannot be cut out of its owner.

    Its children become pass-throughs and its zero point returns zeros shaped like its input. When
    a child changes its input's shape (a bottleneck's 1x1 convs) that is only right if nothing
    between them depends on the shapes, so every branch candidate is tried once on ``example``:
    one whose outputs differ from the zeroed reference is no candidate.
    """
    replaced = [child for child in branch.children if child not in branch.shared]
    name = f"{branch.owner + ' ' if branch.owner else ''}({_relative(branch.children[0], branch.owner)}.."
    name += f"{_relative(branch.zero_point, branch.owner)})"
    if branch.zero_point not in calls:
        return f"branch {name}: module {branch.zero_point} is not called as a module"
    candidate = BlockCandidate(
        name=name, kind="branch", replacements={c: ZERO if c == branch.zero_point else IDENTITY for c in replaced},
        reference={branch.zero_point: ZERO}, sites=(branch.children[0], branch.zero_point),
        params=_params(module, replaced), order=calls[branch.zero_point][-1].order,
    )  # fmt: skip
    zero_shapes = {branch.zero_point: calls[branch.zero_point][-1].output_shape}
    failure = trial_failure(module, candidate, inputs=example, tolerance=TRIAL_TOLERANCE, zero_shapes=zero_shapes)
    return f"branch {name}: {failure}" if failure else candidate


def _relative(path: str, owner: str) -> str:
    return path[len(owner) + 1 :] if owner and path.startswith(owner + ".") else path


def _add_layers(search: CandidateSearch, module: nn.Module, calls: dict) -> None:
    taken = {path for candidate in search.candidates if candidate.kind == "block" for path in candidate.replacements}
    before = len(search.candidates)
    for path, child in module.named_modules():
        seen = calls.get(path, [])
        if not path or path in taken or not any(True for _ in child.parameters()):
            continue
        if len(seen) == 1 and seen[0].single_input and _shape_preserving(seen):
            search.candidates.append(BlockCandidate(
                name=path, kind="layer", replacements={path: IDENTITY}, reference={path: BYPASS},
                sites=(path, path), params=_params(module, [path]), order=seen[0].order,
            ))  # fmt: skip
    if len(search.candidates) == before:
        search.notes.append("no layer with parameters, called once on one tensor, returns its input's shape")


def _params(module: nn.Module, paths: list[str]) -> int:
    unique = {id(p): p for path in paths for p in module.get_submodule(path).parameters()}
    return sum(p.numel() for p in unique.values())


def _nested(path: str, outer: str) -> bool:
    return path == outer or path.startswith(outer + ".")
