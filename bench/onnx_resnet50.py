"""Time and memory of native ONNX pruning on resnet50 (timm, random weights) exported to ONNX at 224x224.

What is measured, on the exported file (~100 MB), for a plan that removes half of every prunable
group's channels by L2 norm (the pipeline's ``score l2`` + ``select ratio 0.5``):

- ``surgery``: ``build_onnx_graph`` (shape inference, coupling rules, groups) + ``prune_onnx`` (slice
  initializers, rewrite size constants), the pruned ``ModelProto`` in memory;
- ``verified``: ``build_onnx_graph`` + ``prune_onnx_model`` (the same surgery, then ``onnx.checker``
  with full checking and the ONNX Runtime verification against the masked original, batch 1).

Each mode runs in a fresh child process (one thread) that imports the runtime (numpy, onnx, onnxruntime,
prunecli's ONNX modules and the torch they import) and loads the file with ``onnx.load``. Wall time is
the median of ``--repeats`` runs. Peak memory is the kernel's resident-set high-water mark (``VmHWM``,
reset through ``/proc/self/clear_refs`` after loading) during one run, given as the increase over the
resident set after the imports (the runtime's baseline; the loaded model is part of the increase),
plus the ``tracemalloc`` peak of a separate run (Python and numpy allocations only; protobuf's own are
not traced)::

    OMP_NUM_THREADS=1 python bench/onnx_resnet50.py --repeats 5 [--json]

Done when the ``surgery`` median is under 2 s and its peak stays under 3x the file size above the
baseline; exit code 0 then, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch load: spinning threads distort timings
REPO = Path(__file__).resolve().parent.parent
MODES = ("surgery", "verified")
TIME_LIMIT_S = 2.0
MEMORY_LIMIT_FILE_SIZES = 3.0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.measure is not None:
        print(json.dumps(_measure(Path(args.measure), mode=args.mode, repeats=args.repeats, size=args.input_size)))
        return 0
    with tempfile.TemporaryDirectory(prefix="onnx-resnet50-") as folder:
        path = Path(folder) / f"{args.model}.onnx"
        _export(args.model, path, size=args.input_size)
        _write_plan(path, size=args.input_size)
        rows = [_child(path, mode=mode, repeats=args.repeats, size=args.input_size) for mode in MODES]
    surgery = rows[0]
    passed = surgery["median_s"] < TIME_LIMIT_S and surgery["peak_over_baseline_file_sizes"] < MEMORY_LIMIT_FILE_SIZES
    for row in rows:
        print(json.dumps(row) if args.json else _line(row))
    if not args.json:
        print(f"done-when (surgery under {TIME_LIMIT_S:g} s, peak under {MEMORY_LIMIT_FILE_SIZES:g}x the file size "
              f"above the baseline): {'passed' if passed else 'FAILED'}")  # fmt: skip
    return 0 if passed else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="timm architecture (random weights)")
    parser.add_argument("--input-size", type=int, default=224, help="square input side, pixels")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per mode (median reported)")
    parser.add_argument("--json", action="store_true", help="one JSON row per mode")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # child process: the ONNX file to measure
    parser.add_argument("--mode", choices=MODES, default="surgery", help=argparse.SUPPRESS)
    return parser


def _export(name: str, path: Path, *, size: int) -> None:
    """``name`` from timm (random weights) exported by the TorchScript exporter, opset 17, batch axis dynamic."""
    import warnings

    import torch

    sys.path.insert(0, str(REPO))
    from tests.timm_compat import import_timm

    torch.manual_seed(0)
    model = import_timm().create_model(name, pretrained=False).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(1, 3, size, size),), str(path), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "batch"}},
        )  # fmt: skip


def _write_plan(path: Path, *, size: int) -> None:
    """The channels ``score l2`` + ``select ratio 0.5`` remove, as ``<file>.plan.json`` (group id -> indices)."""
    import onnx

    from prunecli.config.schema import SelectStep
    from prunecli.criteria.inputs import ScoringInputs
    from prunecli.criteria.registry import get_criterion
    from prunecli.onnx_graph import build_onnx_graph, initializer_arrays
    from prunecli.selection import select_channels

    model = onnx.load(str(path))
    graph = build_onnx_graph(model, input_shape=(1, 3, size, size))
    scores = get_criterion("l2")(ScoringInputs(graph=graph, module=None, tensors=initializer_arrays(model)))
    plan = select_channels(graph, scores, SelectStep(kind="select", ratio=0.5))
    removed = {str(group_id): [int(i) for i in indices] for group_id, indices in plan.removed.items()}
    path.with_suffix(".plan.json").write_text(json.dumps(removed))


def _child(path: Path, *, mode: str, repeats: int, size: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--measure", str(path), "--mode", mode, "--repeats", str(repeats),
               "--input-size", str(size)]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"the {mode} measurement failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _measure(path: Path, *, mode: str, repeats: int, size: int) -> dict[str, Any]:
    """In a fresh process: baseline after imports, then one run for the memory peak, one traced, ``repeats`` timed."""
    import numpy as np
    import onnx
    import onnxruntime  # noqa: F401 - part of the runtime's baseline

    from prunecli.onnx_graph import build_onnx_graph, prune_onnx_model
    from prunecli.onnx_graph.surgery import prune_onnx

    baseline = _status_kib("VmRSS") * 1024
    model = onnx.load(str(path))
    loaded = _status_kib("VmRSS") * 1024
    removed = {int(k): v for k, v in json.loads(path.with_suffix(".plan.json").read_text()).items()}
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)}

    def run() -> tuple[onnx.ModelProto, float | None]:
        graph = build_onnx_graph(model, input_shape=(1, 3, size, size))
        if mode == "surgery":
            return prune_onnx(model, graph, removed), None
        outcome = prune_onnx_model(model, graph, removed, feeds=feeds, tolerance=1e-4)
        if not outcome.verification.passed:
            raise RuntimeError(f"verification failed: {outcome.verification}")
        return outcome.model, outcome.verification.max_abs_diff

    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    pruned, max_abs_diff = run()
    peak = _status_kib("VmHWM") * 1024
    params_kept = _float_params(pruned) / _float_params(model)
    del pruned
    tracemalloc.start()
    run()
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    file_bytes = path.stat().st_size
    return {
        "mode": mode, "file_mb": round(file_bytes / 2**20, 1), "median_s": round(statistics.median(seconds), 3),
        "min_s": round(min(seconds), 3), "max_s": round(max(seconds), 3), "repeats": repeats,
        "baseline_rss_mb": round(baseline / 2**20, 1), "loaded_rss_mb": round(loaded / 2**20, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "peak_over_baseline_file_sizes": round((peak - baseline) / file_bytes, 2),
        "tracemalloc_peak_mb": round(traced_peak / 2**20, 1), "max_abs_diff": max_abs_diff,
        "groups_pruned": len(removed), "params_kept": round(params_kept, 3),
    }  # fmt: skip


def _float_params(model: onnx.ModelProto) -> int:
    from onnx import TensorProto

    return sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type == TensorProto.FLOAT)


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (VmRSS: resident now, VmHWM: resident high-water mark)."""
    return int(re.search(rf"^{field}:\s+(\d+)", Path("/proc/self/status").read_text(), re.MULTILINE).group(1))


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['mode']:<9} file {row['file_mb']} MB  median {row['median_s']:.3f} s (min {row['min_s']:.3f}, "
        f"max {row['max_s']:.3f}, {row['repeats']} runs)  RSS: baseline {row['baseline_rss_mb']} MB, loaded "
        f"{row['loaded_rss_mb']} MB, peak {row['peak_rss_mb']} MB = baseline + "
        f"{row['peak_over_baseline_file_sizes']}x file  tracemalloc peak {row['tracemalloc_peak_mb']} MB  "
        f"({row['groups_pruned']} groups pruned, {row['params_kept']:.0%} of the params kept)"
    )


if __name__ == "__main__":
    sys.exit(main())
