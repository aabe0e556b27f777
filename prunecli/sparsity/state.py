"""SparsityState: the masks every sparsify step has set, kept on the RunState for later steps."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SparsityState:
    """Keep-masks by parameter name (``"fc1.weight"``), combined over sparsify steps, and layers left dense.

    ``masks`` are bool tensors on the CPU; ``skipped`` maps a parameter name to why a step left it
    alone (e.g. an N:M pattern that does not divide its input size).
    """

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    steps: list[dict[str, object]] = field(default_factory=list)
    remembered: dict[str, torch.Tensor] = field(default_factory=dict)  # dynamic steps: masked weights' values

    def add(self, masks: dict[str, torch.Tensor]) -> None:
        """Combine ``masks`` with the ones already set (a weight zeroed once stays zeroed)."""
        for name, mask in masks.items():
            mask = mask.detach().cpu()
            self.masks[name] = self.masks[name] & mask if name in self.masks else mask
