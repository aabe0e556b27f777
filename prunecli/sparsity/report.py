"""The report's ``sparsity`` entry and its markdown section.

Sparsity is counted on the final model over the weights the sparsify steps considered; the
sizes are of the state_dict as ``torch.save`` writes it, raw and zlib-compressed (zeros
compress, so the compressed size is what storing the model sparse saves).
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Mapping
from typing import Any

import torch

from prunecli.sparsity.state import SparsityState

NOTE = (
    "zeros are stored densely; dense kernels do not run faster unless the measured speed-up says so "
    "(the compressed size is what storing the weights sparse saves)"
)


def sparsity_report(
    state: SparsityState | None, module: torch.nn.Module | None, original: torch.nn.Module | None
) -> dict[str, Any] | None:
    """Fraction of zeros per layer and overall, stored sizes before/after, and the note; None without a step."""
    if state is None or module is None:
        return None
    sizes = {"original": stored_sizes(original), "final": stored_sizes(module)}
    return sparsity_entry(state, dict(module.named_parameters()), sizes=sizes)


def sparsity_entry(state: SparsityState, weights: Mapping[str, Any], *, sizes: dict[str, Any]) -> dict[str, Any]:
    """The ``sparsity`` entry from the masked ``weights`` by name (torch tensors or numpy arrays) and stored sizes."""
    names = [name for name in state.masks if name in weights]
    zeros = {name: int((weights[name] == 0).sum()) for name in names}
    counts = {name: math.prod(weights[name].shape) for name in names}
    total = sum(counts.values())
    return {
        "layers": {name: round(zeros[name] / counts[name], 6) for name in names},
        "overall": round(sum(zeros.values()) / total, 6) if total else 0.0,
        "zeros": sum(zeros.values()),
        "weights": total,
        "skipped": dict(state.skipped),
        "steps": list(state.steps),
        "bytes": sizes,
        "note": NOTE,
    }


def stored_sizes(module: torch.nn.Module | None) -> dict[str, int] | None:
    """``{"dense": bytes of torch.save(state_dict), "compressed": the same bytes zlib-compressed}``."""
    if module is None:
        return None
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in module.state_dict().items()}, buffer)
    data = buffer.getvalue()
    return {"dense": len(data), "compressed": len(zlib.compress(data, 6))}


def sparsity_markdown(report: dict[str, Any]) -> list[str]:
    """The ``## Sparsity`` section of report.md (empty when the run had no sparsify step)."""
    entry = report.get("sparsity")
    if not entry:
        return []
    sizes = entry["bytes"]
    lines = [
        f"Overall {entry['overall']:.1%} of {entry['weights']} weights are zero. Note: {entry['note']}.",
        _size_line(sizes.get("original"), "original") + "; " + _size_line(sizes.get("final"), "final") + ".",
    ]
    rows = ["| layer | zero |", "|---|---:|"] + [f"| {n} | {f:.1%} |" for n, f in entry["layers"].items()]
    rows += [f"| {n} | skipped: {why} |" for n, why in entry["skipped"].items()]
    return ["## Sparsity", "\n\n".join(lines), "\n".join(rows)]


def _size_line(sizes: dict[str, int] | None, label: str) -> str:
    if not sizes:
        return f"{label}: n/a"
    return f"{label}: {sizes['dense']} bytes dense, {sizes['compressed']} bytes compressed"
