"""What a model returns, reduced to tensors: all of them (verification) or the logits (metrics, training)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from prunecli.errors import UnsupportedModelError


def output_tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor in a model's output, searching tuples, lists and dicts in order.

    Dicts keep insertion order: a Hugging Face ``ModelOutput`` puts the logits first.
    """
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        children = list(output.values())
    elif isinstance(output, (tuple, list)):
        children = list(output)
    else:
        return []
    return [tensor for child in children for tensor in output_tensors(child)]


def first_tensor(output: Any) -> torch.Tensor:
    """The first tensor in a model's output: the logits.

    Example: ``first_tensor((logits, aux))`` and ``first_tensor({"logits": logits, "aux": aux})`` give ``logits``.
    """
    tensors = output_tensors(output)
    if not tensors:
        raise UnsupportedModelError(f"the model returned a {type(output).__name__} with no tensor in it; return logits")
    return tensors[0]
