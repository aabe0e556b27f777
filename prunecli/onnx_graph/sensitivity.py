"""Sensitivity on an ONNX input: a group pruned alone by the ONNX surgery, evaluated in ONNX Runtime.

The ONNX back-end of ``prunecli.pipeline.sensitivity`` (which owns the sweep, the progress file
and the report): each point prunes the current graph with ``prune_onnx_model`` (checked and
verified against the masked original, like a run's prune step) and evaluates the candidate::

    onnx_evaluation(state)                        # {"accuracy": 0.986, "loss": 0.05}: the current graph
    onnx_point(state, group, np.array([0, 3]))    # the same with the group's channels 0 and 3 removed
    onnx_fingerprint(state)                       # the current graph's bytes, for the progress file
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from prunecli.metrics.accuracy import evaluate_onnx
from prunecli.onnx_graph.pipeline import current_model
from prunecli.onnx_graph.prune import prune_onnx_model

if TYPE_CHECKING:
    from prunecli.graph.channel_graph import PruningGroup
    from prunecli.pipeline.state import RunState


def onnx_evaluation(state: RunState, path: Path | None = None) -> dict[str, float | None]:
    """Accuracy and loss of the ONNX file ``path`` (default: the current model) on the eval split (else train)."""
    split = state.data.eval if state.data.eval is not None else state.data.train
    evaluation = evaluate_onnx(
        path or state.loaded.onnx_path, split, batch_size=state.pipeline.data.batch_size,
        threads=state.pipeline.threads,
    )  # fmt: skip
    return {"accuracy": evaluation.accuracy, "loss": evaluation.loss}


def onnx_point(state: RunState, group: PruningGroup, channels: np.ndarray, *, tolerance: float) -> dict[str, Any]:
    """Accuracy and loss of the current graph with ``channels`` of ``group`` removed (verified surgery)."""
    model = current_model(state)
    feeds = {_input_name(model): state.sample.detach().cpu().numpy()}
    outcome = prune_onnx_model(model, state.graph, {group.id: channels}, feeds=feeds, tolerance=tolerance)
    if not outcome.verification.passed:
        reason = f"pruned outputs differ from the masked original by {outcome.verification.max_abs_diff:.3g}"
        return {"accuracy": None, "loss": None, "error": reason}
    with tempfile.TemporaryDirectory(prefix="prunecli-sensitivity-") as folder:
        path = Path(folder) / "candidate.onnx"
        onnx.save_model(outcome.model, str(path))
        return onnx_evaluation(state, path)


def onnx_fingerprint(state: RunState) -> bytes:
    """What identifies the swept model: the current graph, serialized (external data included)."""
    return current_model(state).SerializeToString()


def _input_name(model: onnx.ModelProto) -> str:
    from prunecli.model_io.onnx_file import graph_input

    return graph_input(model).name
