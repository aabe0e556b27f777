"""Gradual (AGP) pruning against one-shot pruning at the same MAC budget and the same fine-tuning epochs.

On the sample CNN, through ``prunecli.run``:

- ``agp``: a ``repeat`` block of ``--rounds`` rounds (score, select ``target: {macs: M}`` on the
  AGP schedule, prune, finetune ``--epochs`` epochs), then ``--final-epochs`` more: with the
  defaults, the pipeline of ``configs/digits_cnn_agp.yaml``;
- ``one-shot``: score, select ``target: {macs: M}``, prune, one finetune of as many epochs in all;
- with ``--schedules linear,geometric`` also those schedules, as repeat blocks like ``agp``.

Every fine-tuning step uses the same options (``--lr``, adam, cosine, distillation from the
unpruned model with ``--alpha``). Each method runs with every seed of ``--seeds`` (the seed of
the pipeline: data order and scoring); the table gives the mean over seeds, then per seed, and a
paired comparison (wins, a sign test, the mean difference). The final model's latency is timed
interleaved with the original (torch, one thread). 16 seeds take about 2 minutes on one thread.

    python bench/schedules_compare.py                           # the README's table (6 epochs)
    python bench/schedules_compare.py --rounds 3                # 8 epochs: the README's second line
    python bench/schedules_compare.py --seeds 0 --schedules linear,geometric --json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--macs", type=float, default=0.29, help="fraction of the original MACs kept (the target)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per round (one-shot: rounds x this)")
    parser.add_argument("--final-epochs", type=int, default=2, help="agp: fine-tuning epochs after the last round")
    parser.add_argument("--lr", type=float, default=3.0e-3)
    parser.add_argument("--alpha", type=float, default=0.5, help="distillation weight; 0 for plain cross-entropy")
    parser.add_argument("--criterion", default="l2")
    parser.add_argument("--seeds", default=",".join(map(str, range(16))), help="comma-separated pipeline seeds")
    parser.add_argument("--schedules", default="", help="more repeat schedules to compare, e.g. linear,geometric")
    parser.add_argument("--json", action="store_true", help="one JSON line per run instead of the table")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    seeds = [int(seed) for seed in args.seeds.split(",")]
    methods = ["agp", *[name for name in args.schedules.split(",") if name], "one-shot"]
    runs = [_run(method, seed=seed, args=args) for method in methods for seed in seeds]
    print("\n".join(json.dumps(run) for run in runs) if args.json else _table(runs, methods=methods, args=args))
    return 0


def _run(method: str, *, seed: int, args: argparse.Namespace) -> dict:
    import prunecli

    with tempfile.TemporaryDirectory(prefix="prunecli-schedules-") as folder:
        path = Path(folder) / "pipeline.yaml"
        path.write_text(yaml.safe_dump(_pipeline(method, seed=seed, args=args), sort_keys=False))
        report = prunecli.run(path, output=Path(folder) / "out")
    original, final = report["original"], report[report["stages"][-1]]
    latency = final["latency_ms"]
    return {
        "method": method, "seed": seed, "macs_kept": final["macs"] / original["macs"],
        "accuracy_original": original["accuracy"], "accuracy_final": final["accuracy"],
        "p50_ms": latency["p50"], "p50_ms_original": original["latency_ms"]["p50"],
        "speedup": latency["speedup"]["median"], "verified": report["verification"]["passed"],
        "rounds": [(row["macs_kept"], row["accuracy"]) for row in report["rounds"] or []],
    }  # fmt: skip


def _pipeline(method: str, *, seed: int, args: argparse.Namespace) -> dict:
    finetune = {"kind": "finetune", "epochs": args.epochs, "lr": args.lr}
    if args.alpha > 0:
        finetune["distill"] = {"alpha": args.alpha, "temperature": 4.0}
    select = {"kind": "select", "target": {"macs": args.macs}, "ignore": ["fc"]}
    prune = [{"kind": "score", "criterion": args.criterion}, select, {"kind": "prune"}]
    if method == "one-shot":
        steps = [*prune, {**finetune, "epochs": args.epochs * args.rounds + args.final_epochs}]
    else:
        steps = [{"kind": "repeat", "rounds": args.rounds, "schedule": method, "steps": [*prune, finetune]}]
        steps += [{**finetune, "epochs": args.final_epochs}] if args.final_epochs else []
    return {
        "version": 1,
        "model": {"path": str(SAMPLES / "digits_cnn.pt"), "arch": f"{SAMPLES / 'archs.py'}:DigitsCNN",
                  "input_shape": [1, 1, 8, 8]},
        "data": {"format": "npz", "train": str(SAMPLES / "digits_train.npz"), "eval": str(SAMPLES / "digits_val.npz")},
        "steps": steps,
        "latency": {"repeats": 20, "backends": ["torch"]},
        "seed": seed,
    }  # fmt: skip


def _table(runs: list[dict], *, methods: list[str], args: argparse.Namespace) -> str:
    total = args.rounds * args.epochs + args.final_epochs
    lines = [
        f"Sample CNN to {args.macs}x MACs (select target, {args.criterion}, channels ranked over all groups); "
        f"{total} fine-tuning epochs in all for every method (lr {args.lr:g}, adam, cosine, distillation alpha "
        f"{args.alpha:g}); mean over seeds {args.seeds}, then per seed.",
        "",
        "| method | MACs kept | accuracy before pruning | final accuracy | loss (points) | p50 ms torch | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        mine = [run for run in runs if run["method"] == method]
        lines.append(_line(method if method == "one-shot" else f"{method} ({args.rounds} rounds)", mine))
    for run in runs:
        lines.append(_line(f"{run['method']}, seed {run['seed']}", [run]))
    return "\n".join(lines) + "\n\n" + _verdict(runs, methods=methods, macs=args.macs)


def _line(label: str, runs: list[dict]) -> str:
    def mean(key: str) -> float:
        return statistics.fmean(run[key] for run in runs)

    loss = (mean("accuracy_original") - mean("accuracy_final")) * 100
    return (
        f"| {label} | {mean('macs_kept'):.3f} | {mean('accuracy_original') * 100:.2f}% | "
        f"{mean('accuracy_final') * 100:.2f}% | {loss:.2f} | {mean('p50_ms'):.3f} | {mean('speedup'):.2f}x |"
    )


def _verdict(runs: list[dict], *, methods: list[str], macs: float) -> str:
    agp = [run for run in runs if run["method"] == "agp"]
    shot = [run for run in runs if run["method"] == "one-shot"]
    loss = statistics.fmean(run["accuracy_original"] - run["accuracy_final"] for run in agp) * 100
    differences = [(a["accuracy_final"] - s["accuracy_final"]) * 100 for a, s in zip(agp, shot)]
    wins, losses = sum(d > 0 for d in differences), sum(d < 0 for d in differences)
    spread = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else float("nan")
    return (
        f"agp: MACs kept <= 0.3 in {sum(run['macs_kept'] <= 0.3 for run in agp)}/{len(agp)} runs (target {macs}); "
        f"mean loss {loss:.2f} points; beats one-shot in {wins}/{len(agp)} seeds, loses in {losses} (two-sided "
        f"sign test p = {_sign_test(wins, losses):.3f}); paired difference {statistics.fmean(differences):+.2f} "
        f"points (standard error {spread:.2f}); "
        f"mean final accuracy agp {statistics.fmean(r['accuracy_final'] for r in agp) * 100:.2f}% vs one-shot "
        f"{statistics.fmean(r['accuracy_final'] for r in shot) * 100:.2f}%; "
        f"verification passed in every run: {all(run['verified'] for run in runs)}."
    )


def _sign_test(wins: int, losses: int) -> float:
    """Two-sided sign test: the chance of a split at least this uneven if either method wins half the time."""
    trials = wins + losses
    if trials == 0:
        return 1.0
    tail = sum(math.comb(trials, k) for k in range(min(wins, losses) + 1)) / 2**trials
    return min(1.0, 2 * tail)


if __name__ == "__main__":
    sys.exit(main())
