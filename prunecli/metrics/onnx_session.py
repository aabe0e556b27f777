"""ONNX Runtime sessions for measuring: provider choice by device, and run errors as one line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prunecli.errors import InputError

if TYPE_CHECKING:
    import onnxruntime


def open_session(onnx_path: Path, *, device: str, threads: int | None) -> onnxruntime.InferenceSession:
    """A session on ``device`` ("cpu" or "cuda") with ``threads`` intra-op threads (None: ORT's default)."""
    import onnxruntime

    if device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise InputError(
            "device 'cuda' was asked for but ONNX Runtime has no CUDAExecutionProvider; "
            "install onnxruntime-gpu or use --device cpu"
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.log_severity_level = 3  # errors only: no warnings about unused initializers
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return onnxruntime.InferenceSession(str(onnx_path), sess_options=options, providers=providers)


def run_session(session: onnxruntime.InferenceSession, inputs: np.ndarray) -> list[np.ndarray]:
    """Run ``session`` on ``inputs`` (fed to its first input); a failure is an InputError."""
    try:
        return session.run(None, {session.get_inputs()[0].name: inputs})
    except Exception as exc:  # ONNX Runtime's error classes share no base but Exception
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"ONNX Runtime cannot run the model on inputs of shape {inputs.shape}: {reason}; check the input shape"
        ) from exc
