"""Weight-level (unstructured) sparsity: masks that zero individual weights and keep them zero.

``masks`` holds the tensor math (pure functions), ``layers`` picks the weights a step touches,
``report`` turns the final model into the report's ``sparsity`` entry.
"""

from prunecli.sparsity.masks import apply_masks, bind_masks, magnitude_masks, n_m_mask
from prunecli.sparsity.state import SparsityState

__all__ = ["SparsityState", "apply_masks", "bind_masks", "magnitude_masks", "n_m_mask"]
