"""ChannelGraph and PruningGroup: the coupled channels of a model, as data any backend can act on."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from prunecli.graph.fallbacks import FallbackLog
from prunecli.graph.layout import Atom, Layout, Product, SpaceTable


@dataclass(frozen=True)
class Member:
    """One tensor dimension that loses positions when its group loses channels.

    ``positions[i]`` is the group's channel index at position ``i`` of that dimension, or -1
    where the position belongs to something else (another concat part, say).
    """

    tensor: str
    dim: int
    positions: np.ndarray = field(repr=False, compare=False)
    is_parameter: bool = True
    produces: bool = False

    @property
    def module(self) -> str:
        """The qualified name of the module owning the tensor ('' for the root module)."""
        return self.tensor.rpartition(".")[0]


@dataclass(frozen=True)
class PruningGroup:
    """Channels that must be removed together, everywhere they appear.

    Worked example: in ``relu(bn(conv1(x))) + shortcut`` feeding ``conv2``, channel 5 of the
    group is row 5 of ``conv1.weight`` (dim 0) and ``conv1.bias``, entry 5 of ``bn.weight``,
    ``bn.bias``, ``bn.running_mean``, ``bn.running_var``, row 5 of the shortcut conv's weight,
    and column 5 of ``conv2.weight`` (dim 1). Removing it removes all of these at once, so the
    model stays well-formed. After a ``flatten`` into a Linear, channel 5 is a whole block of
    the Linear's input columns; ``Member.positions`` says which.

    ``prunable`` is False, with ``reason``, when the channels reach the model's inputs or
    outputs, an op prunecli cannot prune through, or a dimension used in another way.
    ``modules`` names the producing modules where tensor names do not (ONNX initializers such
    as ``onnx::Conv_239``: the module scopes of the producing nodes).
    """

    id: int
    name: str
    channels: int
    members: tuple[Member, ...]
    prunable: bool
    reason: str | None = None
    modules: tuple[str, ...] = ()

    @property
    def producers(self) -> tuple[Member, ...]:
        """Members along which a layer produces these channels (conv/linear output dimensions)."""
        return tuple(member for member in self.members if member.produces)


@dataclass(frozen=True)
class SizeUse:
    """A dimension size that the model's Python code builds from module attributes.

    ``x.reshape(B, N, 3, self.num_heads, self.head_dim)`` inside ``blocks.0.attn`` records one
    use per reshaped dimension; ``x.split(self.expand_chs // 2)`` records the pieces and the
    whole. After pruning, an int attribute of ``module`` equal to ``size`` follows that
    dimension's new size, so the pruned model's forward builds the new shapes.
    """

    module: str
    size: int
    layout: Layout


class ChannelGraph:
    """All pruning groups of a model, with the layouts they were derived from.

    ``fallbacks`` lists what building the graph gave up on (ops without a rule, opaque
    modules; see ``prunecli.graph.fallbacks``): ``graph.fallbacks.counts()`` for a report.
    """

    def __init__(
        self,
        *,
        table: SpaceTable,
        groups: Sequence[PruningGroup],
        size_uses: Sequence[SizeUse] = (),
        fallbacks: FallbackLog | None = None,
    ) -> None:
        self.table = table
        self.groups = list(groups)
        self.size_uses = list(size_uses)
        self.fallbacks = fallbacks if fallbacks is not None else FallbackLog()
        self._by_id = {group.id: group for group in self.groups}

    def group(self, group_id: int) -> PruningGroup:
        """The group with this id."""
        return self._by_id[group_id]

    @property
    def prunable_groups(self) -> list[PruningGroup]:
        """Groups whose channels may be removed."""
        return [group for group in self.groups if group.prunable]

    def keep_indices(self, removed: Mapping[int, Sequence[int]]) -> dict[str, dict[int, np.ndarray]]:
        """Positions kept along each affected tensor dimension when ``removed[group_id]`` channels go."""
        dropped: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
        for group_id, indices in removed.items():
            group = self.group(group_id)
            removed_mask = self._removed_mask(group_id, indices)
            for member in group.members:
                drop = (member.positions >= 0) & removed_mask[np.maximum(member.positions, 0)]
                previous = dropped[member.tensor].get(member.dim)
                dropped[member.tensor][member.dim] = drop if previous is None else previous | drop
        return {
            tensor: {dim: np.flatnonzero(~drop) for dim, drop in dims.items() if drop.any()}
            for tensor, dims in dropped.items()
            if any(drop.any() for drop in dims.values())
        }


    def attribute_updates(
        self, removed: Mapping[int, Sequence[int]], module: torch.nn.Module
    ) -> dict[str, dict[str, int]]:
        """New values of module int attributes that size a dimension which ``removed`` shrinks.

        An attribute is updated only when its module sizes that dimension (see ``SizeUse``) and
        the old size maps to a single new size; the caller verifies the result.
        """
        masks = {group_id: self._removed_mask(group_id, indices) for group_id, indices in removed.items()}
        new_sizes: dict[tuple[str, int], set[int]] = defaultdict(set)
        for use in self.size_uses:
            new = self._kept_positions(use.layout, masks)
            if new != use.size:
                new_sizes[(use.module, use.size)].add(new)
        updates: dict[str, dict[str, Any]] = defaultdict(dict)
        for (path, old), candidates in new_sizes.items():
            if len(candidates) != 1:
                continue
            owner = module.get_submodule(path)
            for name, value in vars(owner).items():
                resized = _resized(updates[path].get(name, value), old=old, new=next(iter(candidates)))
                if resized is not None and not name.startswith("_"):
                    updates[path][name] = resized
        return {path: values for path, values in updates.items() if values}

    def _removed_mask(self, group_id: int, indices: Sequence[int]) -> np.ndarray:
        mask = np.zeros(self.group(group_id).channels, dtype=bool)
        mask[np.asarray(indices, dtype=np.int64)] = True
        return mask

    def _kept_positions(self, layout: Layout, masks: Mapping[int, np.ndarray]) -> int:
        maps = self.table.index_maps(layout)
        kept = np.ones(self.table.size(layout), dtype=bool)
        for root, positions in maps.items():
            if root in masks:
                kept &= ~((positions >= 0) & masks[root][np.maximum(positions, 0)])
        return int(kept.sum())


def _resized(value: Any, *, old: int, new: int) -> Any:
    """``value`` with ``old`` replaced by ``new``: an int, or a shape tuple/list of ints; None if no match."""
    if type(value) is int:
        return new if value == old else None
    if isinstance(value, (tuple, list)) and value and all(type(item) is int for item in value) and old in value:
        return type(value)(new if item == old else item for item in value)
    return None


def build_groups(
    table: SpaceTable,
    tensor_layouts: Mapping[str, Sequence[Layout]],
    *,
    parameters: set[str],
    producers: Mapping[str, set[int]],
) -> list[PruningGroup]:
    """Collect, for every channel space, the tensor dimensions it appears in."""
    members: dict[int, list[Member]] = defaultdict(list)
    for tensor, layouts in tensor_layouts.items():
        for dim, layout in enumerate(layouts):
            for root, positions in table.index_maps(layout).items():
                produces = dim in producers.get(tensor, ())
                members[root].append(Member(tensor, dim, positions, tensor in parameters, produces))
    channel_roots = {table.find(atom) for atom in table.channel}
    groups = []
    for root in sorted(members):
        if root not in channel_roots:
            continue
        group_members = tuple(members[root])
        channels = table.size(Atom(root))
        reason = table.fixed.get(root) or ("a single channel" if channels < 2 else None)
        name = _group_name(group_members) + _part(table, tensor_layouts, group_members, root)
        groups.append(PruningGroup(root, name, channels, group_members, reason is None, reason))
    return groups


def _group_name(members: Sequence[Member]) -> str:
    names = list(dict.fromkeys(m.module or m.tensor for m in members if m.produces)) or [members[0].module]
    return names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} tied)"


def _part(
    table: SpaceTable, tensor_layouts: Mapping[str, Sequence[Layout]], members: Sequence[Member], root: int
) -> str:
    """Where the group sits in its producer's output when it is one factor or piece of it.

    ``qkv`` of a 3-head attention with head size 64 produces 3 x 3 x 64 outputs: its head
    group is named ``blocks.0.attn.qkv[3x3x64: 2]``, the second factor.
    """
    producer = next((m for m in members if m.produces), None)
    if producer is None:
        return ""
    layout = table.resolve(tensor_layouts[producer.tensor][producer.dim])
    if isinstance(layout, Atom):
        return ""
    children = layout.factors if isinstance(layout, Product) else layout.parts
    sizes = [str(table.size(child)) for child in children]
    index = next((i for i, child in enumerate(children) if root in table.atoms(child)), 0)
    joiner = "x" if isinstance(layout, Product) else "+"
    return f"[{joiner.join(sizes)}: {index + 1}]"
