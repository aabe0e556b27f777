"""Int8 weight quantization of an exported ONNX model with ONNX Runtime's quantization tools.

``dynamic``: int8 weights, activations quantized at run time (``quantize_dynamic``).
``static``: int8 weights and activations, their ranges calibrated on real batches
(``quantize_static``, QDQ format: the safer default for ONNX Runtime on CPU)::

    reader = NumpyBatchReader(batches, input_name="input")
    quantize_onnx(Path("model.onnx"), Path("model.int8.onnx"), mode="static", calibration=reader)

The float model is first run through ``quant_pre_process`` (shape inference and graph
optimisation); when that fails, quantization goes on from the float model as it is.
A quantization that fails raises ``QuantizationError`` with one line.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from prunecli.model_io.atomic import atomic_path

MODES = ("dynamic", "static")


class QuantizationError(Exception):
    """ONNX Runtime could not quantize the model; the message is one line, with the cause."""


class NumpyBatchReader:
    """A ``CalibrationDataReader`` over numpy input batches: ``{input_name: batch}`` per call, then None."""

    def __init__(self, batches: Iterable[np.ndarray], *, input_name: str = "input") -> None:
        self._batches = [np.ascontiguousarray(batch, dtype=np.float32) for batch in batches]
        self._input_name = input_name
        self._iterator: Iterator[np.ndarray] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next calibration feed, or None when the batches are used up."""
        batch = next(self._iterator, None)
        return None if batch is None else {self._input_name: batch}

    def rewind(self) -> None:
        """Start over from the first batch."""
        self._iterator = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


def quantize_onnx(float_path: Path, out_path: Path, *, mode: str, calibration: NumpyBatchReader | None = None) -> Path:
    """Quantize the ONNX model at ``float_path`` to int8 at ``out_path`` (written atomically); returns ``out_path``."""
    if mode not in MODES:
        raise QuantizationError(f"unknown quantization mode '{mode}'; use one of {', '.join(MODES)}")
    if mode == "static" and (calibration is None or len(calibration) == 0):
        raise QuantizationError("static quantization needs calibration batches; give data or use mode: dynamic")
    with tempfile.TemporaryDirectory(prefix="prunecli-int8-") as folder:
        source = _preprocessed(Path(float_path), Path(folder) / "pre.onnx")
        try:
            with atomic_path(Path(out_path)) as temporary, _quiet():
                _quantize(source, temporary, mode=mode, calibration=calibration)
        except Exception as error:  # ORT raises anything on graphs it cannot quantize
            raise QuantizationError(f"ONNX Runtime could not quantize the model ({_first_line(error)})") from error
    return Path(out_path)


def _quantize(source: Path, target: Path, *, mode: str, calibration: NumpyBatchReader | None) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode == "dynamic":
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
        return
    calibration.rewind()
    quantize_static(
        str(source), str(target), calibration, quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8, per_channel=True,
    )  # fmt: skip


def _preprocessed(float_path: Path, out_path: Path) -> Path:
    """``float_path`` after ``quant_pre_process`` (at ``out_path``), or ``float_path`` itself if that fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _quiet():
            quant_pre_process(str(float_path), str(out_path))
        return out_path
    except Exception:  # preprocessing only helps; quantizing the float model as it is still works
        return float_path


class _quiet:
    """Silence ORT quantization's warnings and log lines (not the user's business) within the block."""

    def __enter__(self) -> None:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger().setLevel(self._level)
        self._warnings.__exit__(*exc)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__
