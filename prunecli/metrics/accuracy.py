"""Accuracy and loss of a classifier on a labelled split, for a torch module or an ONNX file.

Both backends feed the same batches and score logits with the same function, so a model and
its ONNX export give the same ``Evaluation`` (up to float noise)::

    evaluate_torch(module, split, batch_size=64, device="cpu")
    # Evaluation(accuracy=0.953, top5=0.998, loss=0.161, samples=360)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from prunecli.data.dataset import Split, batches
from prunecli.errors import InputError, UnsupportedModelError
from prunecli.metrics.onnx_session import open_session, run_session
from prunecli.model_io.outputs import first_tensor

TOP5_MIN_CLASSES = 6  # top-5 accuracy is only informative with more than 5 classes


@dataclass(frozen=True)
class Evaluation:
    """Top-1 accuracy and top-5 accuracy (fractions; top5 None with <= 5 classes), mean cross-entropy loss."""

    accuracy: float
    top5: float | None
    loss: float
    samples: int


def evaluate_torch(module: torch.nn.Module, split: Split, *, batch_size: int, device: str) -> Evaluation:
    """Evaluate ``module`` (moved to ``device``, put in eval mode) on ``split``."""
    module = module.to(device).eval()
    with torch.inference_mode():
        scored = (
            (first_tensor(module(inputs.to(device))).float().cpu(), labels)
            for inputs, labels in batches(split, batch_size=batch_size)
        )
        return _evaluation(scored)


def evaluate_onnx(onnx_path: Path, split: Split, *, batch_size: int, threads: int | None = None) -> Evaluation:
    """Evaluate the ONNX model at ``onnx_path`` with ONNX Runtime on the CPU."""
    session = open_session(onnx_path, device="cpu", threads=threads)
    scored = (
        (torch.from_numpy(np.asarray(run_session(session, inputs.numpy())[0], dtype=np.float32)), labels)
        for inputs, labels in batches(split, batch_size=batch_size)
    )
    return _evaluation(scored)


def _evaluation(scored: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Evaluation:
    """Sum per-batch scores of (logits (B, C), labels (B,)) pairs into one Evaluation."""
    loss_sum, correct_top1, correct_top5, samples, classes = 0.0, 0, 0, 0, 0
    for logits, labels in scored:
        _check_logits(logits, labels)
        classes = logits.shape[1]
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(min(5, classes), dim=1).indices  # (B, k), best first
        hits = top == labels[:, None]
        correct_top1 += int(hits[:, 0].sum())
        correct_top5 += int(hits.any(dim=1).sum())
        samples += len(labels)
    return Evaluation(
        accuracy=correct_top1 / samples,
        top5=correct_top5 / samples if classes >= TOP5_MIN_CLASSES else None,
        loss=loss_sum / samples,
        samples=samples,
    )


def _check_logits(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 2 or logits.shape[0] != len(labels):
        raise UnsupportedModelError(
            f"the model returned shape {tuple(logits.shape)} for {len(labels)} samples; "
            "accuracy needs (batch, classes) logits"
        )
    if int(labels.max()) >= logits.shape[1]:
        raise InputError(
            f"labels go up to {int(labels.max())} but the model has {logits.shape[1]} outputs; check the data's labels"
        )
