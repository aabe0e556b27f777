"""Coupling rules: for each op, how the layouts of its inputs' dimensions become its outputs'.

Rules are registered by ATen schema name (``aten::conv2d``) in one explicit registry;
registering a name twice is an error. An op with no rule fixes every dimension it touches,
so an unknown op can make a model less prunable but never wrong.
"""

from prunecli.graph.rules.context import RULES, TraceContext, rule

# Importing the rule modules registers their rules.
from prunecli.graph.rules import layers, pointwise, shape  # noqa: E402,F401

__all__ = ["RULES", "TraceContext", "rule"]
