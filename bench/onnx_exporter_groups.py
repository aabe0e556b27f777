"""Prunable groups of timm models exported to ONNX by both torch exporters, against the torch front-end.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/onnx_exporter_groups.py
    python bench/onnx_exporter_groups.py --models resnet18,vit_tiny_patch16_224

Each model (random weights, seed 0, 10 classes, never downloaded; small inputs: 32x32, ViTs with
8-pixel patches, Swin 64x64 with 4-pixel windows) is exported with the TorchScript exporter
(opset 17, and opset 16, which writes LayerNorms out as ReduceMean/Sub/Pow/Sqrt/Div) and the dynamo
exporter (opset 18), all with a dynamic batch. Each export's channel
graph is built (``build_onnx_graph``, batch 2), every prunable group is halved and the result
verified in ONNX Runtime (``prune_onnx_model``). Prints one line per model: the torch front-end's
prunable groups, then per exporter prunable/all groups, the verification and the build time.
Exit code 0 when every export verifies and matches the torch front-end's count, else 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODELS = {
    "resnet18": ({}, 32),
    "mobilenetv3_small_100": ({}, 32),
    "convnext_atto": ({}, 32),
    "vit_tiny_patch16_224": ({"img_size": 32, "patch_size": 8}, 32),
    "deit_tiny_patch16_224": ({"img_size": 32, "patch_size": 8}, 32),
    "swin_tiny_patch4_window7_224": ({"img_size": 64, "window_size": 4, "patch_size": 4}, 64),
}


EXPORTS = (("TorchScript", 17), ("TorchScript", 16), ("dynamo", 18))  # exporter, opset


def _export(module, size: int, path: Path, *, dynamo: bool, opset: int) -> None:
    import torch

    example = torch.randn(2, 3, size, size)  # batch 2: dynamo specialises a batch of 1
    if dynamo:
        torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=opset, input_names=["input"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}})  # fmt: skip
    else:
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                          dynamic_axes={"input": {0: "batch"}})  # fmt: skip


def _measure(path: Path, size: int) -> tuple[str, bool, int]:
    import numpy as np
    import onnx

    from prunecli.onnx_graph import build_onnx_graph, prune_onnx_model, random_feeds

    model = onnx.load(str(path))
    shape = [2, 3, size, size]
    start = time.perf_counter()
    graph = build_onnx_graph(model, input_shape=shape)
    seconds = time.perf_counter() - start
    rng = np.random.default_rng(1)
    removed = {g.id: np.sort(rng.choice(g.channels, g.channels // 2, replace=False)) for g in graph.prunable_groups}
    outcome = prune_onnx_model(model, graph, removed, feeds=random_feeds(model, input_shape=shape), tolerance=1e-4)
    check = outcome.verification
    line = (f"{len(graph.prunable_groups)}/{len(graph.groups)} {'verified' if check.passed else 'MISMATCH'} "
            f"{check.max_abs_diff:.1e} build {seconds:.2f}s")  # fmt: skip
    return line, check.passed, len(graph.prunable_groups)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names among the defaults")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from prunecli.batch.timm_source import import_timm
    from prunecli.graph.trace import build_channel_graph

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    timm = import_timm()
    ok = True
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            kwargs, size = MODELS[name]
            torch.manual_seed(0)
            module = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
            expected = len(build_channel_graph(module, torch.zeros(1, 3, size, size)).prunable_groups)
            row = [name, f"torch {expected}"]
            for exporter, opset in EXPORTS:
                path = Path(folder) / f"{name}_{exporter}_{opset}.onnx"
                _export(module, size, path, dynamo=exporter == "dynamo", opset=opset)
                line, passed, count = _measure(path, size)
                ok &= passed and count == expected
                row.append(f"{exporter} (opset {opset}) {line}")
            print(" | ".join(row), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
