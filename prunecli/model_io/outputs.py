"""What a model returns, reduced to the one tensor prunecli measures and trains on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from prunecli.errors import UnsupportedModelError


def first_tensor(output: Any) -> torch.Tensor:
    """The first tensor in a model's output, searching tuples, lists and dicts in order: the logits.

    Example: ``first_tensor((logits, aux))`` and ``first_tensor({"logits": logits, "aux": aux})`` give ``logits``.
    """
    found = _search(output)
    if found is None:
        raise UnsupportedModelError(f"the model returned a {type(output).__name__} with no tensor in it; return logits")
    return found


def _search(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        children = list(output.values())  # insertion order: a ModelOutput puts logits first
    elif isinstance(output, (tuple, list)):
        children = list(output)
    else:
        return None
    for child in children:
        found = _search(child)
        if found is not None:
            return found
    return None
