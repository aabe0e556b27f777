"""Einsum: the same letter ties dimensions, as in the torch front-end's ``aten::einsum`` rule.

``bij,jk->bik`` with ``jk`` an initializer is a linear layer: ``j`` ties the activation's
features to the weight's inputs and ``k`` is produced by the weight. ``bhid,bhjd->bhij`` (q @ kᵀ)
and ``bhij,bhjd->bhid`` (attention @ v) tie batch and heads; a letter summed away between two
activations is fixed, like the head size of ``q @ kᵀ``. Equations with an ellipsis, an implicit
output, a repeated letter in one operand (diagonals, traces) or an output letter no operand has
are not followed: their tensors stay whole, with the equation as the reason.
"""

from __future__ import annotations

import onnx

from prunecli.graph.layout import unify_letters
from prunecli.onnx_graph.context import OnnxContext, attribute, onnx_rule


def parse_equation(equation: str, ranks: list[int]) -> tuple[list[str], str] | None:
    """The operand terms and the output of an explicit equation over operands of ``ranks``, or None."""
    inputs, arrow, output = equation.replace(" ", "").partition("->")
    terms = inputs.split(",")
    letters = set("".join(terms))
    if not arrow or "." in inputs + output or len(terms) != len(ranks):
        return None
    if any(len(term) != rank or len(set(term)) != len(term) for term, rank in zip(terms, ranks)):
        return None
    if len(set(output)) != len(output) or not set(output) <= letters or not all(c.isalpha() for c in letters):
        return None
    return terms, output


@onnx_rule("Einsum")
def einsum(ctx: OnnxContext, node: onnx.NodeProto):
    """Tie each letter's dimensions; a weight's letter that only the output shares is produced by it."""
    equation = attribute(node, "equation", b"")
    equation = equation.decode() if isinstance(equation, bytes) else str(equation)
    parsed = parse_equation(equation, [len(ctx.shape(name)) for name in node.input])
    if parsed is None:
        return ctx.unsupported(node, f"the Einsum equation '{equation}'")
    terms, output = parsed
    by_letter = unify_letters(ctx.table, terms, [ctx.layouts(name) for name in node.input])
    weights = [ctx.is_initializer(name) for name in node.input]
    activation_letters = {letter for term, weight in zip(terms, weights) if not weight for letter in term}
    for term, name, weight in zip(terms, node.input, weights):
        for dim, letter in enumerate(term if weight else ""):
            if letter in output and letter not in activation_letters:
                ctx.produce(name, dim, node)  # a weight's output dimension, as in a linear layer
    if len(terms) > 1 and not any(weights):
        for letter in set(by_letter) - set(output):
            ctx.table.mark_fixed(by_letter[letter], "contracted between two activations (an attention's head size)")
    return [[by_letter.get(letter, ctx.table.singleton()) for letter in output]]
