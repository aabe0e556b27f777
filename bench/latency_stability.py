"""Do speed-ups and min_speedup gates hold when another process takes the CPU?

Runs one structure-only pipeline (a timm model, random weights, L2 at ``--ratio``, classifier
ignored) through the real CLI ``--runs`` times on a quiet machine, then ``--runs`` times while a
CPU-bound competitor runs (``torch``: a matmul loop on torch's default threads, the harshest
neighbour; ``python``: a busy loop). For each run and backend it prints the final stage's
speed-up (median of per-round ratios and its 95 % interval) and the p50s, then per backend:

- the median speed-up of the quiet runs and of the loaded runs, and their relative difference;
- whether any loaded run would pass a ``min_speedup`` gate that every quiet run fails decisively
  (its whole interval below the limit): gates pass on a stable measurement's low end, so that would
  be a stable loaded run whose low end is above every quiet high end, i.e. load making a model look
  faster. The best low
  ends of both are printed too: between two sets of runs of the same model they differ by noise
  alone, so which set's best is higher is a coin toss, not a finding.

    python bench/latency_stability.py --model resnet18 --input-size 96 --runs 5 --competitor torch [--threads 2]

Exit code 0 when both checks hold for every backend (loaded median within ``--max-difference``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPETITORS = {
    "torch": "import torch\na = torch.randn(512, 512)\nwhile True:\n    a @ a\n",
    "python": "while True:\n    pass\n",
}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    with tempfile.TemporaryDirectory(prefix="prunecli-stability-") as folder:
        pipeline = _write_case(Path(folder), args)
        quiet = [_run(pipeline, Path(folder) / f"quiet{i}") for i in range(args.runs)]
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITORS[args.competitor]])
        try:
            loaded = [_run(pipeline, Path(folder) / f"loaded{i}") for i in range(args.runs)]
        finally:
            competitor.kill()
            competitor.wait()
    summary = _summary(quiet, loaded, max_difference=args.max_difference)
    print(json.dumps(summary) if args.json else _table(quiet, loaded, summary))
    return 0 if all(row["ok"] for row in summary.values()) else 1


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30, help="latency rounds per run")
    parser.add_argument("--threads", type=int, default=1, help="the pipeline's threads")
    parser.add_argument("--competitor", choices=sorted(COMPETITORS), default="torch")
    parser.add_argument("--max-difference", type=float, default=0.15, help="allowed |loaded/quiet - 1| of medians")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def _write_case(folder: Path, args: argparse.Namespace) -> Path:
    """The model's state_dict, a small eval split and the pipeline, in ``folder``."""
    import torch

    sys.path.insert(0, str(REPO))
    from bench.timm_arch import create  # noqa: E402 - the repository root is on sys.path now

    torch.manual_seed(0)
    torch.save(create(model_name=args.model, num_classes=10).state_dict(), folder / "model.pt")
    inputs = np.random.default_rng(0).standard_normal((8, 3, args.input_size, args.input_size), dtype=np.float32)
    np.savez(folder / "eval.npz", inputs=inputs, labels=np.arange(8) % 10)
    pipeline = {
        "version": 1,
        "model": {"path": "model.pt", "arch": str(REPO / "bench" / "timm_arch.py") + ":create",
                  "kwargs": {"model_name": args.model, "num_classes": 10},
                  "input_shape": [1, 3, args.input_size, args.input_size]},
        "data": {"format": "npz", "eval": "eval.npz"},
        "steps": [{"kind": "score", "criterion": "l2"},
                  {"kind": "select", "ratio": args.ratio, "ignore": ["fc"]},
                  {"kind": "prune"}],
        "latency": {"repeats": args.repeats, "backends": ["torch", "onnxruntime"]},
        "threads": args.threads,
    }  # fmt: skip
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


def _run(pipeline: Path, out: Path) -> dict[str, dict[str, float]]:
    """One CLI run; per backend the final stage's speed-up interval and both p50s (ms)."""
    command = [sys.executable, "-m", "prunecli", "run", str(pipeline), "-o", str(out), "--json"]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env={**os.environ})
    if completed.returncode != 0:
        raise SystemExit(f"prunecli run failed ({completed.returncode}): {completed.stderr.strip()}")
    report = json.loads(completed.stdout)
    final = report[report["stages"][-1]]
    rows = {}
    for original, pruned in zip(report["original"]["latency"], final["latency"]):
        rows[pruned["backend"]] = {**pruned["speedup"], "p50_original_ms": original["p50"], "p50_ms": pruned["p50"]}
    return rows


def _summary(quiet: list[dict], loaded: list[dict], *, max_difference: float) -> dict[str, dict[str, Any]]:
    summary = {}
    for backend in quiet[0]:
        quiet_median = statistics.median(run[backend]["median"] for run in quiet)
        loaded_median = statistics.median(run[backend]["median"] for run in loaded)
        quiet_best_low = max(run[backend]["low"] for run in quiet)
        quiet_best_high = max(run[backend]["high"] for run in quiet)
        loaded_best_low = max(run[backend]["low"] for run in loaded)
        passing_low = max((run[backend]["low"] for run in loaded if run[backend]["stable"]), default=0.0)
        difference = loaded_median / quiet_median - 1
        passes_where_quiet_fails = passing_low > quiet_best_high  # an unstable run passes no gate
        summary[backend] = {
            "quiet_median": quiet_median, "loaded_median": loaded_median, "difference": difference,
            "quiet_best_low": quiet_best_low, "quiet_best_high": quiet_best_high, "loaded_best_low": loaded_best_low,
            "loaded_passes_a_gate_quiet_fails": passes_where_quiet_fails,
            "ok": abs(difference) <= max_difference and not passes_where_quiet_fails,
        }  # fmt: skip
    return summary


def _table(quiet: list[dict], loaded: list[dict], summary: dict[str, dict[str, Any]]) -> str:
    lines = ["| run | backend | speed-up | interval | stable | p50 original ms | p50 pruned ms |", "|---" * 7 + "|"]
    for label, runs in (("quiet", quiet), ("loaded", loaded)):
        for index, run in enumerate(runs):
            for backend, row in run.items():
                lines.append(
                    f"| {label} {index + 1} | {backend} | {row['median']:.2f}x | {row['low']:.2f}-{row['high']:.2f} "
                    f"| {'yes' if row['stable'] else 'no'} | {row['p50_original_ms']:.3f} | {row['p50_ms']:.3f} |"
                )
    lines.append("")
    for backend, row in summary.items():
        lines.append(
            f"{backend}: median speed-up quiet {row['quiet_median']:.2f}x, loaded {row['loaded_median']:.2f}x "
            f"({row['difference'] * 100:+.1f}%); best low end quiet {row['quiet_best_low']:.2f}x, loaded "
            f"{row['loaded_best_low']:.2f}x; highest quiet high end {row['quiet_best_high']:.2f}x; "
            f"{'ok' if row['ok'] else 'NOT OK'}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
