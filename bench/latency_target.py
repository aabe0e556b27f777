"""Does ``select: {target: {latency_ms: X}}`` land on X? A bench, not a timed unit test (timings are noisy).

Runs the sample CNN (or a timm model with ``--model``, random weights, 10 classes) through the
runner with a latency target of ``--fraction`` times the original model's p50 (measured first, on
the same backend, device and threads), then prints the requested and achieved milliseconds, the
number of candidates measured during the search, and, as an independent check, the pruned stage's
p50 from the report's own final interleaved measurement::

    python bench/latency_target.py --fraction 0.7 [--model resnet18 --input-size 64] [--backend torch]

Exit code 0 when the report's pruned p50 is within ``--tolerance`` of the request (relative).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from prunecli.config.loading import load_pipeline
    from prunecli.pipeline.options import RunOptions
    from prunecli.pipeline.runner import run_pipeline

    with tempfile.TemporaryDirectory(prefix="latency-target-") as folder:
        folder = Path(folder)
        fields = _pipeline(args, folder)
        original_ms = _original_p50(fields, folder)
        requested = round(args.fraction * original_ms, 4)
        fields["steps"][1] = {"kind": "select", "target": {"latency_ms": requested}, "ignore": _ignore(args)}
        path = folder / "pipeline.yaml"
        path.write_text(yaml.safe_dump(fields))
        options = RunOptions(output_dir=folder / "out", base_dir=folder, trust_pickle=True)
        report = run_pipeline(load_pipeline(path), options=options).report
    selection = report["selection"]
    pruned_ms = report["pruned"]["latency_ms"]["p50"]
    row = {
        "model": args.model, "backend": args.backend, "original_ms": round(original_ms, 4), "requested_ms": requested,
        "achieved_ms": round(selection["achieved"], 4), "measurements": selection["measurements"],
        "rounds_per_measurement": args.repeats, "report_pruned_p50_ms": round(pruned_ms, 4),
        "macs_kept": round(report["pruned"]["macs"] / report["original"]["macs"], 4),
    }  # fmt: skip
    print(json.dumps(row))
    return 0 if abs(pruned_ms / requested - 1) <= args.tolerance else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sample", help="'sample' (the digits CNN) or a timm model name")
    parser.add_argument("--input-size", type=int, default=64, help="timm models: input height and width")
    parser.add_argument("--fraction", type=float, default=0.7, help="target = this x the original p50")
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    parser.add_argument("--repeats", type=int, default=30, help="latency rounds per measurement")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=0.1, help="relative, on the report's pruned p50")
    return parser


def _pipeline(args: argparse.Namespace, folder: Path) -> dict:
    latency = {"repeats": args.repeats, "warmup": 5, "backends": [args.backend]}
    steps = [{"kind": "score", "criterion": "l2"}, {"kind": "select", "ratio": 0.0}, {"kind": "prune"}]
    if args.model == "sample":
        samples = REPO / "sample_models"
        model = {"path": str(samples / "digits_cnn.pt"), "arch": f"{samples / 'archs.py'}:DigitsCNN",
                 "input_shape": [1, 1, 8, 8]}  # fmt: skip
        data = {"format": "npz", "train": str(samples / "digits_train.npz"), "eval": str(samples / "digits_val.npz")}
    else:
        model, data = _timm_model(args, folder)
    return {"version": 1, "model": model, "data": data, "steps": steps, "latency": latency, "threads": args.threads}


def _timm_model(args: argparse.Namespace, folder: Path) -> tuple[dict, dict]:
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from timm_compat import define_torchvision_op_schemas

    define_torchvision_op_schemas()
    import timm

    module = timm.create_model(args.model, pretrained=False, num_classes=10).eval()
    torch.save(module, folder / "model.pt")
    size = args.input_size
    inputs = np.random.default_rng(0).standard_normal((8, 3, size, size)).astype(np.float32)
    np.savez(folder / "eval.npz", inputs=inputs, labels=np.arange(8) % 10)
    model = {"path": str(folder / "model.pt"), "format": "pickle", "input_shape": [1, 3, size, size]}
    return model, {"format": "npz", "eval": str(folder / "eval.npz")}


def _ignore(args: argparse.Namespace) -> list[str]:
    return ["fc"] if args.model == "sample" else []


def _original_p50(fields: dict, folder: Path) -> float:
    """The original model's p50 on the pipeline's backend: a ratio-0 run's original stage."""
    from prunecli.config.loading import load_pipeline
    from prunecli.pipeline.options import RunOptions
    from prunecli.pipeline.runner import run_pipeline

    path = folder / "baseline.yaml"
    path.write_text(yaml.safe_dump(fields))
    options = RunOptions(output_dir=folder / "baseline", base_dir=folder, trust_pickle=True)
    return run_pipeline(load_pipeline(path), options=options).report["original"]["latency_ms"]["p50"]


if __name__ == "__main__":
    sys.exit(main())
