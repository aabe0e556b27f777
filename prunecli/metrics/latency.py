"""Latency of one forward pass per model, all models of a run timed interleaved (see ``interleave``).

Both backends run the same batch (the example's first sample repeated ``spec.batch_size``
times) on the same number of intra-op threads, so their numbers compare. Each model gets
p50/p90 over its per-round times (milliseconds per call), a ``spread`` (interquartile range
over p50) and, against the baseline model timed in the same rounds, a speed-up interval::

    latencies = measure_torch_latencies({"original": a, "pruned": b}, example, spec=spec, device="cpu",
                                        threads=1, baseline="original")
    latencies["pruned"].to_dict()
    # {"p50": 0.11, "p90": 0.12, "spread": 0.04, "backend": "torch", "device": "cpu", "threads": 1,
    #  "batch_size": 1, "rounds": 30, "speedup": {"median": 1.8, "low": 1.7, "high": 1.9, ...}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunecli.config.schema import LatencySpec
from prunecli.errors import InputError
from prunecli.metrics.interleave import Speedup, speedup, time_interleaved
from prunecli.metrics.onnx_session import open_session, run_session
from prunecli.threads import torch_threads


@dataclass(frozen=True)
class Latency:
    """One model's latency percentiles in milliseconds, how they were measured, and its speed-up."""

    p50_ms: float
    p90_ms: float
    spread: float
    backend: str
    device: str
    threads: int
    batch_size: int
    rounds: int
    speedup: Speedup | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report's form: ``p50``/``p90`` in milliseconds plus the conditions and the speed-up."""
        return {
            "p50": self.p50_ms, "p90": self.p90_ms, "spread": self.spread, "backend": self.backend,
            "device": self.device, "threads": self.threads, "batch_size": self.batch_size, "rounds": self.rounds,
            "speedup": None if self.speedup is None else self.speedup.to_dict(),
        }  # fmt: skip


def unavailable(*, backend: str, device: str, reason: str) -> dict[str, Any]:
    """The report's form of a latency that could not be measured, with the reason."""
    return {"p50": None, "p90": None, "backend": backend, "device": device, "unavailable": reason}


def measure_torch_latencies(
    modules: Mapping[str, torch.nn.Module],
    example_input: torch.Tensor,
    *,
    spec: LatencySpec,
    device: str,
    threads: int | None,
    baseline: str | None,
) -> dict[str, Latency]:
    """Time the ``modules`` in eager mode on ``device``, interleaved (they are moved there)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    batch = _repeat_first(example_input, spec.batch_size).to(device)
    runs = {name: partial(module.to(device).eval(), batch) for name, module in modules.items()}
    synchronize = torch.cuda.synchronize if device == "cuda" else _no_op
    with torch_threads(threads) as used, torch.inference_mode():
        times_ms = time_interleaved(runs, warmup=spec.warmup, rounds=spec.repeats, synchronize=synchronize)
    return _summaries(times_ms, spec=spec, backend="torch", device=device, threads=used, baseline=baseline)


def measure_onnx_latencies(
    onnx_paths: Mapping[str, Path],
    example_input: np.ndarray,
    *,
    spec: LatencySpec,
    device: str,
    threads: int | None,
    baseline: str | None,
) -> dict[str, Latency]:
    """Time the ONNX models with ONNX Runtime (CUDAExecutionProvider when ``device`` is cuda), interleaved."""
    threads = threads or torch.get_num_threads()
    batch = _repeat_first(np.asarray(example_input, dtype=np.float32), spec.batch_size)
    sessions = {name: open_session(path, device=device, threads=threads) for name, path in onnx_paths.items()}
    runs = {name: partial(run_session, session, batch) for name, session in sessions.items()}
    times_ms = time_interleaved(runs, warmup=spec.warmup, rounds=spec.repeats)
    return _summaries(times_ms, spec=spec, backend="onnxruntime", device=device, threads=threads, baseline=baseline)


def _summaries(
    times_ms: Mapping[str, list[float]], *, spec: LatencySpec, backend: str, device: str, threads: int,
    baseline: str | None,
) -> dict[str, Latency]:  # fmt: skip
    summaries = {}
    for name, times in times_ms.items():
        q25, p50, q75, p90 = (float(value) for value in np.percentile(times, [25, 50, 75, 90]))
        versus = None
        if baseline in times_ms and name != baseline:
            versus = speedup(times_ms[baseline], times, max_interval_width=spec.max_interval_width)
        summaries[name] = Latency(
            p50, p90, spread=(q75 - q25) / p50 if p50 > 0 else 0.0, backend=backend, device=device,
            threads=threads, batch_size=spec.batch_size, rounds=len(times), speedup=versus,
        )  # fmt: skip
    return summaries


def _repeat_first(example: Any, batch_size: int) -> Any:
    """A batch of ``batch_size`` copies of the example's first sample (torch tensor or numpy array)."""
    first = example[:1]
    repeats = (batch_size,) + (1,) * (first.ndim - 1)
    return first.repeat(*repeats) if isinstance(first, torch.Tensor) else np.tile(first, repeats)


def _no_op() -> None:
    pass
