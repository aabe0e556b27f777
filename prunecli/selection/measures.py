"""Measures of candidate plans for ``select.target``: the report's own counters on a pruned copy.

A measure takes ``removed`` (group id -> channel indices) and returns the figure a target is
compared with: the fraction of the original MACs or params kept (``count_macs``/``count_params``,
as the report counts them), or the candidate's p50 latency in milliseconds, timed interleaved with
the original on the pipeline's first latency backend and device. The original is the unpruned
model (``reference``), also when ``module`` was pruned before (a repeat's later rounds)::

    measure = structure_measure(module, graph, sample, metric="macs")
    measure({})          # 1.0
    measure = structure_measure(half, graph_of_half, sample, metric="macs", reference=module)
    measure({})          # 0.5: half of the unpruned model's MACs are left before this select
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from prunecli.config.schema import LatencySpec
from prunecli.errors import InputError
from prunecli.graph.channel_graph import ChannelGraph
from prunecli.metrics.latency import measure_onnx_latencies, measure_torch_latencies
from prunecli.metrics.macs import count_macs
from prunecli.metrics.size import count_params
from prunecli.surgery.torch_surgery import apply_keep

Removed = Mapping[int, np.ndarray]


def pruned_copy(module: torch.nn.Module, graph: ChannelGraph, removed: Removed) -> torch.nn.Module:
    """A copy of ``module`` with the ``removed`` channels sliced away (no verification)."""
    pruned = copy.deepcopy(module)
    apply_keep(pruned, graph.keep_indices(removed), attributes=graph.attribute_updates(removed, module))
    return pruned.eval()


def structure_measure(
    module: torch.nn.Module, graph: ChannelGraph, example: torch.Tensor, *, metric: str,
    reference: torch.nn.Module | None = None,
) -> Callable[[Removed], float]:  # fmt: skip
    """The fraction of ``reference``'s MACs (``metric="macs"``) or params that a candidate plan of ``module`` keeps.

    ``reference`` is the unpruned model (``module`` itself when None).
    """
    count = (lambda m: count_macs(m, example[:1])) if metric == "macs" else count_params
    original = count(reference if reference is not None else module)
    current = count(module) / original

    def measure(removed: Removed) -> float:
        if not removed:
            return current
        try:
            return count(pruned_copy(module, graph, removed)) / original
        except Exception as error:  # the model's own code can fail on new shapes
            raise InputError(
                f"select.target: the model's forward fails on a candidate plan ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:120] if str(error) else ''}); use select.ratio, or ignore the layer"
            ) from error

    return measure


def latency_measure(
    module: torch.nn.Module, graph: ChannelGraph, example: torch.Tensor, *, spec: LatencySpec, device: str,
    threads: int,
) -> Callable[[Removed], float]:  # fmt: skip
    """The p50 milliseconds of a candidate plan, timed interleaved with ``module`` on ``spec.backends[0]``."""
    backend = spec.backends[0]

    def measure(removed: Removed) -> float:
        candidates = {"original": module, "candidate": pruned_copy(module, graph, removed)}
        if backend == "torch":
            timed = measure_torch_latencies(
                candidates, example, spec=spec, device=device, threads=threads, baseline="original"
            )
        else:
            timed = _onnx_latencies(candidates, example, spec=spec, device=device, threads=threads)
        return timed["candidate"].p50_ms

    return measure


def _onnx_latencies(candidates, example: torch.Tensor, *, spec: LatencySpec, device: str, threads: int):
    from prunecli.model_io import export_onnx

    with tempfile.TemporaryDirectory(prefix="prunecli-target-") as folder:
        paths = {name: export_onnx(m.cpu(), example.cpu(), Path(folder) / f"{name}.onnx") 
                 for name, m in candidates.items()}
        timed = measure_onnx_latencies(
            paths, example.cpu().numpy(), spec=spec, device=device, threads=threads, baseline="original"
        )
    module = candidates["original"]
    module.to(device)
    return timed


def target_measure(
    metric: str, *, module: torch.nn.Module, graph: ChannelGraph, example: torch.Tensor, spec: LatencySpec,
    device: str, threads: int, original: torch.nn.Module,
) -> Callable[[Removed], float]:  # fmt: skip
    """The measure a ``select.target`` metric (``macs``, ``params`` or ``latency_ms``) is compared with.

    ``macs`` and ``params`` are fractions of ``original`` (the unpruned model) kept.
    """
    if metric == "latency_ms":
        return latency_measure(module, graph, example, spec=spec, device=device, threads=threads)
    return structure_measure(module, graph, example, metric=metric, reference=original)
