"""Which criterion keeps the most accuracy? Every criterion on the sample CNN at the same MAC budget.

For each registered criterion, the sample CNN is pruned to ``--macs`` of its MACs (``select:
target``, so every criterion lands on the same budget) and evaluated right after pruning and after
``--epochs`` epochs of fine-tuning (same seed and schedule for all), through ``prunecli.run``.
Prints a markdown table: criterion, accuracy before and after fine-tuning, MACs kept, and the
pruned model's torch p50 and speed-up (measured interleaved with the original).

With ``--rounds N`` the score, select and prune steps run in a ``repeat`` block of N rounds
(linear schedule, no fine-tuning between rounds): every round re-scores the pruned model, so a
criterion sees what the channels removed before left behind. "accuracy pruned" is then the last
round's, still before any fine-tuning.

    python bench/criteria_compare.py --macs 0.4 --epochs 3
    python bench/criteria_compare.py --macs 0.4 --scope local --rounds 4 --epochs 3
    python bench/criteria_compare.py --local-ratio 0.37 --epochs 3   # same channel counts for all
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--macs", type=float, default=0.4, help="fraction of the original MACs kept")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--criteria", default=None, help="comma-separated; default: every registered criterion")
    parser.add_argument(
        "--local-ratio", type=float, default=None,
        help="instead of the MACs target (channels ranked globally), remove this fraction of every group: "
        "the same channel counts for every criterion, so only the choice of channels differs",
    )  # fmt: skip
    parser.add_argument("--scope", choices=["local", "global"], default=None,
                        help="the select step's scope (target default: global)")
    parser.add_argument("--rounds", type=int, default=1, help="score-select-prune rounds before fine-tuning")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from prunecli.criteria.registry import known_criteria

    criteria = args.criteria.split(",") if args.criteria else known_criteria()
    select = {"ratio": args.local_ratio} if args.local_ratio is not None else {"target": {"macs": args.macs}}
    if args.scope:
        select["scope"] = args.scope
    rows = [_row(criterion, select=select, epochs=args.epochs, rounds=args.rounds, seed=args.seed)
            for criterion in criteria]
    print("\n".join(json.dumps(row) for row in rows) if args.json else _table(rows, epochs=args.epochs))
    return 0


def _row(criterion: str, *, select: dict, epochs: int, rounds: int = 1, seed: int = 0) -> dict:
    import prunecli

    with tempfile.TemporaryDirectory(prefix="prunecli-criteria-") as folder:
        path = Path(folder) / "pipeline.yaml"
        pipeline = _pipeline(criterion, select=select, epochs=epochs, rounds=rounds, seed=seed)
        path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
        report = prunecli.run(path, output=Path(folder) / "out")
    original, finetuned = report["original"], report["finetuned"]
    pruned = report["pruned"] if rounds == 1 else report[f"round{rounds}.pruned"]
    torch_latency = finetuned["latency"][0]
    return {
        "criterion": criterion, "accuracy_original": original["accuracy"], "accuracy_pruned": pruned["accuracy"],
        "accuracy_finetuned": finetuned["accuracy"], "macs_kept": pruned["macs"] / original["macs"],
        "p50_ms": torch_latency["p50"], "speedup": torch_latency["speedup"]["median"],
    }  # fmt: skip


def _pipeline(criterion: str, *, select: dict, epochs: int, rounds: int, seed: int) -> dict:
    pruning = [{"kind": "score", "criterion": criterion}, {"kind": "select", **select, "ignore": ["fc"]},
               {"kind": "prune"}]  # fmt: skip
    if rounds > 1:
        pruning = [{"kind": "repeat", "rounds": rounds, "schedule": "linear", "steps": pruning}]
    return {
        "version": 1,
        "seed": seed,
        "model": {"path": str(SAMPLES / "digits_cnn.pt"), "arch": f"{SAMPLES / 'archs.py'}:DigitsCNN",
                  "input_shape": [1, 1, 8, 8]},
        "data": {"format": "npz", "train": str(SAMPLES / "digits_train.npz"), "eval": str(SAMPLES / "digits_val.npz")},
        "steps": [*pruning, {"kind": "finetune", "epochs": epochs, "lr": 2.0e-3}],
        "latency": {"repeats": 20, "backends": ["torch"]},
    }  # fmt: skip


def _table(rows: list[dict], *, epochs: int) -> str:
    lines = [
        f"Sample CNN; accuracy right after pruning and after {epochs} epochs of fine-tuning.",
        "",
        "| criterion | accuracy pruned | accuracy fine-tuned | MACs kept | p50 ms torch | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['criterion']} | {row['accuracy_pruned'] * 100:.2f}% | {row['accuracy_finetuned'] * 100:.2f}% "
            f"| {row['macs_kept']:.3f} | {row['p50_ms']:.3f} | {row['speedup']:.2f}x |"
        )
    lines.append(f"\nUnpruned: {rows[0]['accuracy_original'] * 100:.2f}%." if rows else "")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
