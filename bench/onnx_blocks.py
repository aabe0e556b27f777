"""prune_blocks on an ONNX input: timm resnet18 exported by the TorchScript exporter, 2 branches removed.

Random weights with randomised BatchNorms (timm zero-initialises each block's last BatchNorm, which
would make every branch output zero), 224x224, 8 random samples; one ``prune_blocks`` step (``count:
2``, 2 scoring batches of 4) run through ``run_pipeline``, 20 interleaved latency rounds on one thread.
Prints each candidate's params, score and whether it went, the verification, and params, MACs and
ONNX Runtime p50 of stages ``original`` and ``blocks_pruned``::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/onnx_blocks.py --criterion loss
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prunecli.batch.timm_source import import_timm  # noqa: E402
from prunecli.config.loading import load_pipeline  # noqa: E402
from prunecli.pipeline.options import RunOptions  # noqa: E402
from prunecli.pipeline.runner import run_pipeline  # noqa: E402
from tests.models import randomize_batchnorm  # noqa: E402

SIZE = 224


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criterion", choices=["loss", "relative_norm"], default="loss")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-onnx-blocks-") as name:
        folder = Path(name)
        _write_inputs(folder)
        pipeline = {
            "version": 1, "model": {"path": "resnet18.onnx", "input_shape": [1, 3, SIZE, SIZE]},
            "data": {"format": "npz", "train": "data.npz", "eval": "data.npz", "batch_size": 4},
            "steps": [{"kind": "prune_blocks", "count": 2, "criterion": args.criterion, "batches": 2}],
            "latency": {"repeats": 20, "warmup": 3},
        }  # fmt: skip
        (folder / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
        options = RunOptions(output_dir=folder / "out", base_dir=folder)
        report = run_pipeline(load_pipeline(folder / "pipeline.yaml"), options=options).report
    blocks = report["blocks"]
    rows = [(row["name"], row["params"], row["score"], row["removed"]) for row in blocks["candidates"]]
    print(json.dumps({"candidates": rows, "verification": blocks["verification"]}, indent=1))
    for stage in ("original", "blocks_pruned"):
        figures = report[stage]
        latency = figures["latency_ms"]
        print(stage, f"params {figures['params']}", f"macs {figures['macs']}", f"p50 {latency['p50']:.1f} ms",
              f"speedup {json.dumps(latency.get('speedup'))}")  # fmt: skip


def _write_inputs(folder: Path) -> None:
    torch.manual_seed(0)
    net = randomize_batchnorm(import_timm().create_model("resnet18", pretrained=False, num_classes=10))
    buffer = io.BytesIO()
    torch.onnx.export(net.eval(), (torch.randn(1, 3, SIZE, SIZE),), buffer, dynamo=False, opset_version=17,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})  # fmt: skip
    (folder / "resnet18.onnx").write_bytes(buffer.getvalue())
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((8, 3, SIZE, SIZE), dtype=np.float32)
    np.savez(folder / "data.npz", inputs=inputs, labels=rng.integers(0, 10, 8))


if __name__ == "__main__":
    main()
