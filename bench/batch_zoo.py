"""``prunecli batch`` over 20 timm architectures: ``--jobs 2`` against the same models one after another.

    OMP_NUM_THREADS=1 python bench/batch_zoo.py                  # 20 models, --jobs 2 then --jobs 1
    python bench/batch_zoo.py --models resnet18,lcnet_050 --jobs 2 --threads 1 --out out/bench_batch_zoo

Each model is ``timm:NAME`` (random weights, seed 0, never downloaded; 10 classes) pruned by a
structure-only pipeline: score l2, select 0.5 (local), prune, evaluate, on 4 random images of
``--size`` pixels (the accuracy is meaningless; the data only lets the run measure). Both modes run
the whole zoo from an empty folder with ``--threads`` torch threads per model process, so they
differ only in how many models run at a time. Prints one JSON line per mode and one for the
speed-up, then a table. Exit code 0 when every model passed in both modes, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = (
    "resnet18,resnext26ts,skresnet18,nf_resnet26,mobilenetv2_050,mobilenetv3_small_050,mnasnet_small,"
    "hardcorenas_a,lcnet_050,tinynet_e,rexnet_100,regnetx_002,ghostnet_050,repvgg_a0,convnext_atto,dla34,"
    "ese_vovnet19b_dw,poolformer_s12,edgenext_xx_small,vit_tiny_patch16_224"
)
IMAGE_SIZE_KWARG = {"vit_tiny_patch16_224"}  # transformers with a fixed patch grid: built for --size


def write_inputs(folder: Path, *, models: list[str], size: int) -> tuple[Path, Path]:
    """The pipeline (structure only) and the manifest of ``models``, with 4 random images, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(folder / "images.npz", inputs=rng.standard_normal((4, 3, size, size)).astype("float32"),
             labels=np.arange(4))  # fmt: skip
    pipeline = {
        "version": 1,
        "model": {"input_shape": [1, 3, size, size]},
        "data": {"format": "npz", "eval": str(folder / "images.npz")},
        "steps": [{"kind": "score", "criterion": "l2"}, {"kind": "select", "ratio": 0.5, "scope": "local"},
                  {"kind": "prune"}, {"kind": "evaluate"}],
        "latency": {"warmup": 1, "repeats": 5, "backends": ["torch"]},
    }  # fmt: skip
    manifest = [_entry(name, size=size) for name in models]
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (folder / "zoo.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder / "pipeline.yaml", folder / "zoo.yaml"


def run_mode(pipeline: Path, manifest: Path, output: Path, *, jobs: int, threads: int) -> dict[str, Any]:
    """Run the batch once (from an empty ``output``) and time it; the mode's JSON line."""
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-m", "prunecli", "batch", str(pipeline), str(manifest), "-o", str(output),
               "--jobs", str(jobs), "--threads", str(threads), "--json"]  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    try:
        rows = json.loads(completed.stdout)["rows"]
    except (ValueError, KeyError):
        raise SystemExit(f"prunecli batch --jobs {jobs} exited {completed.returncode}: {completed.stderr[-2000:]}")
    failed = {row["name"]: row["error"] for row in rows if row["status"] != "passed"}
    return {
        "mode": f"jobs{jobs}", "jobs": jobs, "threads_per_model": threads, "models": len(rows),
        "wall_s": round(wall, 1), "sum_model_s": round(sum(row["seconds"] for row in rows), 1),
        "statuses": dict(Counter(row["status"] for row in rows)), "exit_code": completed.returncode,
        "max_peak_rss_mb": max((row["peak_rss_mb"] or 0 for row in rows), default=0), "failed": failed,
        "rows": {row["name"]: {"seconds": row["seconds"], "params": [row["params_before"], row["params_after"]],
                               "macs": [row["macs_before"], row["macs_after"]]} for row in rows},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the zoo with ``--jobs`` and with ``--jobs 1``; print JSON lines and a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="Comma-separated timm architectures.")
    parser.add_argument("--jobs", type=int, default=2, help="Models at a time in the parallel mode.")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads per model process (both modes).")
    parser.add_argument("--size", type=int, default=64, help="Input height and width.")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench_batch_zoo")
    args = parser.parse_args(argv)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    pipeline, manifest = write_inputs(args.out, models=models, size=args.size)
    results = [run_mode(pipeline, manifest, args.out / f"jobs{jobs}", jobs=jobs, threads=args.threads)
               for jobs in (args.jobs, 1)]  # fmt: skip
    for result in results:
        print(json.dumps({key: value for key, value in result.items() if key != "rows"}))
    speedup = results[1]["wall_s"] / results[0]["wall_s"]
    machine = {"cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}
    print(json.dumps({"speedup": round(speedup, 2), "jobs": args.jobs, **machine}))
    print_table(results, speedup)
    return 0 if all(result["exit_code"] == 0 for result in results) else 1


def print_table(results: list[dict[str, Any]], speedup: float) -> None:
    """Wall time per mode, and each model's seconds in both."""
    print(f"\n{'mode':<8} {'models':>6} {'passed':>6} {'wall s':>8} {'sum of model s':>15} {'max peak MB':>12}")
    for result in results:
        passed = result["statuses"].get("passed", 0)
        print(f"{result['mode']:<8} {result['models']:>6} {passed:>6} {result['wall_s']:>8.1f} "
              f"{result['sum_model_s']:>15.1f} {result['max_peak_rss_mb']:>12,.0f}")  # fmt: skip
    print(f"speed-up of {results[0]['mode']} over one after another: {speedup:.2f}x\n")
    names = sorted(results[0]["rows"])
    modes = " ".join(f"{result['mode'] + ' s':>9}" for result in results)
    print(f"{'model':<24} {modes}  params before → after")
    for name in names:
        params = results[0]["rows"][name]["params"]
        shown = "-" if params[0] is None else f"{params[0]:,} → {params[1]:,}"
        seconds = " ".join(f"{result['rows'].get(name, {}).get('seconds', float('nan')):>9.1f}" for result in results)
        print(f"{name:<24} {seconds}  {shown}")


def _entry(name: str, *, size: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_classes": 10}
    if name in IMAGE_SIZE_KWARG:
        kwargs["img_size"] = size
    return {"timm": name, "kwargs": kwargs}


if __name__ == "__main__":
    sys.exit(main())
