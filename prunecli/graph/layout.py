"""Channel spaces and layouts: how the positions of one tensor dimension map onto prunable channels.

Every dimension of every tensor in a traced model gets a *layout*, a small tree over *atoms*:

- ``Atom(id)``: an index space of its own (the out-channels of a conv, say);
- ``Concat(parts)``: the parts laid end to end (``torch.cat`` along that dimension);
- ``Product(factors)``: row-major composition, the last factor fastest (``flatten`` of
  ``(C, H, W)`` is ``Product(C, H, W)``; a ``reshape`` of ``3*heads*head_dim`` into
  ``(3, heads, head_dim)`` splits one atom into a product of three).

Atoms live in a ``SpaceTable``, a union-find: ops that force two dimensions to share their
channels (an elementwise add, a BatchNorm after a conv) *unify* their layouts. An atom can
later be *defined* as a Concat or Product of new atoms (when a split or reshape shows its
inner structure); every layout that mentions it then resolves to that definition.

Worked example: ``y = cat([conv_a(x), conv_b(x)], 1); z = fc(flatten(y))`` with conv_a, conv_b
producing 4 and 2 channels of 3x3 maps. conv_a.weight dim 0 is atom A (4), conv_b.weight dim 0
is atom B (2); ``y``'s dim 1 is ``Concat(A, B)``; ``flatten`` gives ``Product(Concat(A, B), S)``
with S the fixed spatial atom (9); fc.weight dim 1 unifies with that. Removing channel 1 of A
removes positions 9..17 of fc's input: ``index_maps`` turns a layout into those position maps.

Atoms are also marked *fixed* (with a reason: model input, model output, spatial, unsupported
op, ...) or *channel* (produced by a layer that can make fewer of them). Marks travel with
unification and with definitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Union

import numpy as np


@dataclass(frozen=True)
class Atom:
    """An index space of its own, identified by its id in a SpaceTable."""

    id: int


@dataclass(frozen=True)
class Concat:
    """Parts laid end to end along one dimension."""

    parts: tuple["Layout", ...]


@dataclass(frozen=True)
class Product:
    """Row-major composition of factors: position = ((i0 * n1) + i1) * n2 + i2 ..."""

    factors: tuple["Layout", ...]


Layout = Union[Atom, Concat, Product]


class SpaceTable:
    """Union-find over atoms, with sizes, definitions and fixed/channel marks."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._size: list[int] = []
        self._definition: dict[int, Layout] = {}
        self.fixed: dict[int, str] = {}
        self.channel: set[int] = set()
        self.size_conflicts: list[str] = []  # unify() of different sizes: always a rule's mistake
        self._singleton: Atom | None = None

    # -- atoms -------------------------------------------------------------------------
    def new(self, size: int, *, fixed: str | None = None) -> Atom:
        """A fresh atom of ``size`` positions, optionally fixed with a reason."""
        self._parent.append(len(self._parent))
        self._size.append(int(size))
        atom = Atom(len(self._parent) - 1)
        if fixed:
            self.fixed[atom.id] = fixed
        return atom

    def singleton(self) -> Atom:
        """The one shared atom of size 1 (broadcast and squeezed dimensions): never pruned."""
        if self._singleton is None:
            self._singleton = self.new(1, fixed="dimension of size 1")
        return self._singleton

    def find(self, atom_id: int) -> int:
        """The representative id of ``atom_id``'s class."""
        root = atom_id
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[atom_id] != root:
            self._parent[atom_id], atom_id = root, self._parent[atom_id]
        return root

    def size(self, layout: Layout) -> int:
        """Number of positions of a layout."""
        if isinstance(layout, Atom):
            return self._size[self.find(layout.id)]
        if isinstance(layout, Concat):
            return sum(self.size(part) for part in layout.parts)
        return prod(self.size(factor) for factor in layout.factors)

    # -- resolving ---------------------------------------------------------------------
    def resolve(self, layout: Layout) -> Layout:
        """The layout with atoms replaced by their roots or definitions, flattened."""
        if isinstance(layout, Atom):
            root = self.find(layout.id)
            definition = self._definition.get(root)
            return self.resolve(definition) if definition is not None else Atom(root)
        if isinstance(layout, Concat):
            parts = [self.resolve(part) for part in layout.parts if self.size(part) > 0]
            flat = [sub for part in parts for sub in (part.parts if isinstance(part, Concat) else (part,))]
            return flat[0] if len(flat) == 1 else Concat(tuple(flat))
        factors = [self.resolve(factor) for factor in layout.factors if self.size(factor) != 1]
        flat = [sub for f in factors for sub in (f.factors if isinstance(f, Product) else (f,))]
        if not flat:
            return self.singleton()
        return flat[0] if len(flat) == 1 else Product(tuple(flat))

    def atoms(self, layout: Layout) -> list[int]:
        """Root ids of the atoms a layout resolves to, in order."""
        resolved = self.resolve(layout)
        if isinstance(resolved, Atom):
            return [resolved.id]
        children = resolved.parts if isinstance(resolved, Concat) else resolved.factors
        return [atom for child in children for atom in self.atoms(child)]

    # -- marks -------------------------------------------------------------------------
    def mark_fixed(self, layout: Layout, reason: str) -> None:
        """Mark every atom of a layout as not prunable, keeping the first reason given."""
        for atom in self.atoms(layout):
            self.fixed.setdefault(atom, reason)

    def mark_channel(self, layout: Layout) -> None:
        """Mark every atom of a layout as channels a layer produces (candidates for pruning)."""
        self.channel.update(self.atoms(layout))

    # -- structure ---------------------------------------------------------------------
    def define(self, atom: Atom, layout: Layout) -> None:
        """Give an unstructured atom inner structure; its marks pass to the new atoms."""
        root = self.find(atom.id)
        self._definition[root] = layout
        if root in self.fixed:
            self.mark_fixed(layout, self.fixed[root])
        if root in self.channel:
            self.mark_channel(layout)

    def split(self, layout: Layout, sizes: list[int], *, as_product: bool) -> list[Layout]:
        """Split a layout into consecutive pieces (Concat) or factors (Product) of ``sizes``.

        An atom is refined in place. A layout that already has that structure is reused.
        Anything else cannot be split consistently: it is fixed and fresh fixed atoms returned.
        """
        resolved = self.resolve(layout)
        children = None
        if as_product and isinstance(resolved, Product):
            children = resolved.factors
        if not as_product and isinstance(resolved, Concat):
            children = resolved.parts
        if children is not None and [self.size(c) for c in children] == list(sizes):
            return list(children)
        if isinstance(resolved, Atom):
            pieces = [self.new(size) for size in sizes]
            self.define(resolved, Product(tuple(pieces)) if as_product else Concat(tuple(pieces)))
            return list(pieces)
        reason = "dimension is split in a way that does not match its channel structure"
        self.mark_fixed(resolved, reason)
        return [self.new(size, fixed=reason) for size in sizes]

    def unify(self, first: Layout, second: Layout) -> None:
        """Record that two dimensions share their channels position by position."""
        a, b = self.resolve(first), self.resolve(second)
        if a == b:
            return
        if self.size(a) != self.size(b):
            self.size_conflicts.append(f"sizes {self.size(a)} and {self.size(b)}")
            reason = "dimensions of different sizes meet"
            self.mark_fixed(a, reason)
            self.mark_fixed(b, reason)
            return
        if isinstance(a, Atom) and isinstance(b, Atom):
            self._union(a.id, b.id)
        elif isinstance(a, Atom):
            self.define(a, b)
        elif isinstance(b, Atom):
            self.define(b, a)
        elif type(a) is type(b) and self._child_sizes(a) == self._child_sizes(b):
            for child_a, child_b in zip(self._children(a), self._children(b)):
                self.unify(child_a, child_b)
        else:
            reason = "channels are combined in two incompatible layouts"
            self.mark_fixed(a, reason)
            self.mark_fixed(b, reason)

    def _union(self, a: int, b: int) -> None:
        if a == b:
            return
        self._parent[b] = a
        if b in self.fixed:
            self.fixed.setdefault(a, self.fixed.pop(b))
        if b in self.channel:
            self.channel.add(a)

    @staticmethod
    def _children(layout: Concat | Product) -> tuple[Layout, ...]:
        return layout.parts if isinstance(layout, Concat) else layout.factors

    def _child_sizes(self, layout: Concat | Product) -> list[int]:
        return [self.size(child) for child in self._children(layout)]

    # -- positions ---------------------------------------------------------------------
    def index_maps(self, layout: Layout) -> dict[int, np.ndarray]:
        """For each atom of a layout, the atom's channel index at every position (-1: none).

        >>> table = SpaceTable(); a = table.new(2); s = table.new(3, fixed="spatial")
        >>> table.index_maps(Product((a, s)))[a.id].tolist()
        [0, 0, 0, 1, 1, 1]
        """
        resolved = self.resolve(layout)
        if isinstance(resolved, Atom):
            return {resolved.id: np.arange(self.size(resolved))}
        total = self.size(resolved)
        maps: dict[int, np.ndarray] = {}
        if isinstance(resolved, Concat):
            offset = 0
            for part in resolved.parts:
                length = self.size(part)
                for atom, positions in self.index_maps(part).items():
                    merged = maps.setdefault(atom, np.full(total, -1))
                    merged[offset : offset + length] = positions
                offset += length
            return maps
        sizes = [self.size(factor) for factor in resolved.factors]
        for k, factor in enumerate(resolved.factors):
            inner, outer = prod(sizes[k + 1 :]), prod(sizes[:k])
            for atom, positions in self.index_maps(factor).items():
                maps[atom] = np.tile(np.repeat(positions, inner), outer)
        return maps


def couple_conv(table: SpaceTable, x: list[Layout], w: list[Layout], w_shape: tuple[int, ...], groups: int) -> None:
    """Tie a convolution's input channels (``x[1]``) to its weight (``w``), for torch and ONNX rules alike.

    Kernel dims are fixed. ``groups == 1``: input channels meet weight dim 1. Depthwise (one input
    channel per filter, ``groups`` filters): output channels are the input channels. Other grouped
    convs split both sides into (groups, channels per group) and keep the group count fixed.
    """
    for kernel in w[2:]:
        table.mark_fixed(kernel, "kernel dimension")
    if groups == 1:
        table.unify(x[1], w[1])
    elif w_shape[1] == 1 and w_shape[0] == groups:
        table.unify(x[1], w[0])
    else:
        in_group, in_channel = table.split(x[1], [groups, w_shape[1]], as_product=True)
        out_group, _ = table.split(w[0], [groups, w_shape[0] // groups], as_product=True)
        table.unify(in_group, out_group)
        table.unify(in_channel, w[1])
        table.mark_fixed(in_group, "group count of a grouped convolution")


def concat_layouts(table: SpaceTable, parts: list[list[Layout]], axis: int) -> list[Layout]:
    """The output layout of concatenating ``parts`` along ``axis``: a Concat there, the other dims tied."""
    first = parts[0]
    for other in parts[1:]:
        for d, layout in enumerate(other):
            if d != axis:
                table.unify(first[d], layout)
    outputs = list(first)
    outputs[axis] = Concat(tuple(part[axis] for part in parts))
    return outputs


def broadcast_layouts(
    table: SpaceTable, a: list[Layout], a_shape: tuple, b: list[Layout], b_shape: tuple
) -> list[Layout]:
    """Numpy-broadcast dimensions of two operands (e.g. a matmul's batch dims): equal non-1 sizes are tied."""
    rank = max(len(a), len(b))
    out = []
    for i in range(rank):
        ia, ib = i - (rank - len(a)), i - (rank - len(b))
        la = a[ia] if ia >= 0 and a_shape[ia] != 1 else None
        lb = b[ib] if ib >= 0 and b_shape[ib] != 1 else None
        if la is not None and lb is not None:
            table.unify(la, lb)
        out.append(la or lb or table.singleton())
    return out


def unify_letters(table: SpaceTable, terms: list[str], operands: list[list[Layout]]) -> dict[str, Layout]:
    """Einsum: tie the dimensions that share a letter across ``operands``; size-1 dimensions broadcast.

    Returns one layout per letter (the first operand's that is not of size 1).
    """
    by_letter: dict[str, Layout] = {}
    for term, layouts in zip(terms, operands):
        for letter, layout in zip(term, layouts):
            if table.size(layout) == 1:
                continue
            if letter in by_letter:
                table.unify(by_letter[letter], layout)
            else:
                by_letter[letter] = layout
    return by_letter
