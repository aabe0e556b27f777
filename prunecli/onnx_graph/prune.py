"""Prune an ONNX model by a plan: surgery, the full ONNX checker, and verification in ONNX Runtime."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from prunecli.errors import InternalError
from prunecli.model_io.onnx_external import model_source
from prunecli.onnx_graph.build import OnnxChannelGraph
from prunecli.onnx_graph.surgery import prune_onnx
from prunecli.onnx_graph.verify import verify_onnx_surgery
from prunecli.surgery.verify import Verification


@dataclass(frozen=True)
class OnnxPruneOutcome:
    """The pruned graph, the kept positions per initializer dimension, and its verification."""

    model: onnx.ModelProto
    keep: dict[str, dict[int, np.ndarray]]
    verification: Verification


def prune_onnx_model(
    model: onnx.ModelProto,
    graph: OnnxChannelGraph,
    removed: Mapping[int, Sequence[int]],
    *,
    feeds: Mapping[str, np.ndarray],
    tolerance: float,
) -> OnnxPruneOutcome:
    """Remove ``removed`` channels from a copy of ``model``, check it, and verify it against masking.

    A pruned graph that fails ``onnx.checker`` (full check, with shape inference) is a prunecli
    bug: ``InternalError``. A graph that runs but differs from the masked original is reported
    by the verification, not hidden.
    """
    keep = graph.keep_indices(removed)
    pruned = prune_onnx(model, graph, removed)
    check_surgery(pruned, what="the pruned ONNX graph")
    verification = verify_onnx_surgery(
        original=model, pruned=pruned, graph=graph, keep=keep, feeds=feeds, tolerance=tolerance
    )
    return OnnxPruneOutcome(pruned, keep, verification)


def check_surgery(model: onnx.ModelProto, *, what: str) -> None:
    """The full ONNX checker (with shape inference) on a graph surgery wrote; a failure is a prunecli bug."""
    try:
        with model_source(model) as source:  # a path with external data for a graph over 2 GB
            onnx.checker.check_model(source, full_check=True)
    except Exception as error:  # the checker raises several types; all mean the surgery is wrong
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise InternalError(f"{what} fails onnx.checker ({first_line}); this is a prunecli bug") from error
