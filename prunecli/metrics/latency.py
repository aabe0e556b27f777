"""Latency of one forward pass: warm-up runs, then ``repeats`` timed runs; p50 and p90 in milliseconds.

Both backends run the same batch (the example's first sample repeated ``spec.batch_size`` times)
on the same number of intra-op threads (``spec.threads``, else torch's default), so their
numbers compare::

    latency = measure_torch_latency(module, example, spec=LatencySpec(repeats=30), device="cpu")
    latency.to_dict()   # {"p50": 0.41, "p90": 0.47, "backend": "torch", "device": "cpu", "threads": 4, "batch_size": 1}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunecli.config.schema import LatencySpec
from prunecli.errors import InputError
from prunecli.metrics.onnx_session import open_session, run_session


@dataclass(frozen=True)
class Latency:
    """Latency percentiles in milliseconds and the conditions they were measured under."""

    p50_ms: float
    p90_ms: float
    backend: str
    device: str
    threads: int
    batch_size: int

    def to_dict(self) -> dict[str, Any]:
        """The report's form: ``p50``/``p90`` in milliseconds plus the conditions."""
        return {
            "p50": self.p50_ms,
            "p90": self.p90_ms,
            "backend": self.backend,
            "device": self.device,
            "threads": self.threads,
            "batch_size": self.batch_size,
        }


def measure_torch_latency(
    module: torch.nn.Module, example_input: torch.Tensor, *, spec: LatencySpec, device: str
) -> Latency:
    """Time ``module`` in eager mode on ``device`` (the module is moved there)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    module = module.to(device).eval()
    batch = _repeat_first(example_input, spec.batch_size).to(device)
    synchronize = torch.cuda.synchronize if device == "cuda" else _no_op
    with _torch_threads(spec.threads) as threads, torch.inference_mode():
        times_ms = _time_runs(lambda: module(batch), warmup=spec.warmup, repeats=spec.repeats, synchronize=synchronize)
    return _latency(times_ms, backend="torch", device=device, threads=threads, batch_size=spec.batch_size)


def measure_onnx_latency(onnx_path: Path, example_input: np.ndarray, *, spec: LatencySpec, device: str) -> Latency:
    """Time the ONNX model with ONNX Runtime (CUDAExecutionProvider when ``device`` is cuda)."""
    threads = spec.threads or torch.get_num_threads()
    session = open_session(onnx_path, device=device, threads=threads)
    batch = _repeat_first(np.asarray(example_input, dtype=np.float32), spec.batch_size)
    times_ms = _time_runs(
        lambda: run_session(session, batch), warmup=spec.warmup, repeats=spec.repeats, synchronize=_no_op
    )
    return _latency(times_ms, backend="onnxruntime", device=device, threads=threads, batch_size=spec.batch_size)


def _time_runs(run: Callable[[], object], *, warmup: int, repeats: int, synchronize: Callable[[], None]) -> list[float]:
    """Milliseconds of each of ``repeats`` calls to ``run``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    synchronize()
    times_ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize()
        times_ms.append((time.perf_counter() - start) * 1000.0)
    return times_ms


def _latency(times_ms: list[float], *, backend: str, device: str, threads: int, batch_size: int) -> Latency:
    p50_ms, p90_ms = np.percentile(times_ms, [50, 90])
    return Latency(float(p50_ms), float(p90_ms), backend=backend, device=device, threads=threads, batch_size=batch_size)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[int]:
    """Use ``threads`` intra-op threads inside the block (None: leave torch's setting); yields the count."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _repeat_first(example: Any, batch_size: int) -> Any:
    """A batch of ``batch_size`` copies of the example's first sample (torch tensor or numpy array)."""
    first = example[:1]
    repeats = (batch_size,) + (1,) * (first.ndim - 1)
    return first.repeat(*repeats) if isinstance(first, torch.Tensor) else np.tile(first, repeats)


def _no_op() -> None:
    pass
