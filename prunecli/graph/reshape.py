"""Layouts through ``reshape``/``view``/``flatten``: merge dimensions into products, split them into factors."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from prunecli.graph.layout import Layout, Product, SpaceTable


def reshape_layouts(
    table: SpaceTable, layouts: Sequence[Layout], in_shape: Sequence[int], out_shape: Sequence[int]
) -> list[Layout]:
    """Output layouts of a reshape from ``in_shape`` to ``out_shape`` (same number of elements).

    The input dimensions are broken into a queue of factors; each output dimension takes
    factors until their sizes multiply to its own, splitting a factor when it must.
    Size-1 dimensions carry no channels.

    >>> t = SpaceTable(); c, h, w = t.new(8), t.new(4), t.new(4)
    >>> out = reshape_layouts(t, [c, h, w], [8, 4, 4], [128])
    >>> t.size(out[0]), [t.size(f) for f in t.resolve(out[0]).factors]
    (128, [8, 4, 4])
    """
    queue: list[Layout] = []
    for layout, size in zip(layouts, in_shape):
        if size != 1:
            resolved = table.resolve(layout)
            queue.extend(resolved.factors if isinstance(resolved, Product) else [resolved])
    outputs: list[Layout] = []
    for size in out_shape:
        if size == 1:
            outputs.append(table.singleton())
            continue
        taken: list[Layout] = []
        while prod(table.size(f) for f in taken) < size and queue:
            need = size // prod(table.size(f) for f in taken)
            factor = queue.pop(0)
            factor_size = table.size(factor)
            if factor_size > need and factor_size % need == 0 and size % prod(table.size(f) for f in taken) == 0:
                head, tail = table.split(factor, [need, factor_size // need], as_product=True)
                taken.append(head)
                queue.insert(0, tail)
            else:
                taken.append(factor)
        if prod(table.size(f) for f in taken) != size:
            return _unmatched(table, layouts, out_shape)
        outputs.append(taken[0] if len(taken) == 1 else Product(tuple(taken)))
    return outputs


def _unmatched(table: SpaceTable, layouts: Sequence[Layout], out_shape: Sequence[int]) -> list[Layout]:
    reason = "reshaped in a way that mixes channels with other dimensions"
    for layout in layouts:
        table.mark_fixed(layout, reason)
    return [table.new(size, fixed=reason) if size != 1 else table.singleton() for size in out_shape]
