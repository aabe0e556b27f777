"""Prune real timm architectures with the engine directly and time each stage.

For each model (random weights): build the channel graph (timed), score with l2, select a
local ``--ratio`` of every group's channels (the classifier ignored), then prune a copy the way
the prune step does (timed): slice, leave intact the groups whose removal breaks the forward
(counted), verify pruned == masked original. Prints a table, or one JSON row per model with --json::

    python bench/zoo_bench.py --models resnet18,resnet50 --ratio 0.5 --input-size 224

Exit code: 0 when every model passed, 1 when one failed (the table says why).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = (
    "resnet18,resnet50,mobilenetv3_small_050,efficientnet_b0,regnetx_002,densenet121,"
    "convnext_atto,vit_tiny_patch16_224,swin_tiny_patch4_window7_224,mobilevit_xxs"
)
TOLERANCE = 1e-4  # verification: max abs difference relative to max(1, output scale), as the prune step


@dataclass
class BenchRow:
    """One model's result; sizes in millions of parameters and GMACs (one sample), times in seconds.

    ``groups_left_intact`` counts groups selected for pruning whose removal broke the forward;
    ``surgery_seconds`` covers slicing, those forward checks and the verification. ``fallbacks``
    counts the engine's fallbacks by kind, graph and surgery together (``prunecli.graph.fallbacks``);
    with ``PRUNECLI_STRICT=1`` the bug kinds fail the model instead.
    """

    model: str
    passed: bool
    reason: str | None = None
    params_before_m: float | None = None
    params_after_m: float | None = None
    macs_before_g: float | None = None
    macs_after_g: float | None = None
    groups_pruned: int | None = None
    groups_left_intact: int | None = None
    graph_seconds: float | None = None
    surgery_seconds: float | None = None
    verified_surgery_seconds: float | None = None
    max_abs_diff: float | None = None
    fallbacks: dict[str, int] | None = None


def import_timm() -> ModuleType:
    """timm through the repository's compat shim (tests/timm_compat.py)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.timm_compat import import_timm as shimmed_import

    return shimmed_import()


def bench_model(name: str, *, timm: ModuleType, ratio: float, input_size: int, num_classes: int) -> BenchRow:
    """Prune ``name`` once; a failure at any stage becomes the row's reason."""
    row = BenchRow(model=name, passed=False)
    try:
        _prune(row, timm=timm, ratio=ratio, input_size=input_size, num_classes=num_classes)
    except Exception as error:  # the bench reports every failure, whatever raised it
        first_line = (str(error).strip().splitlines() or [""])[0]
        row.reason = f"{type(error).__name__}: {first_line}"[:300]
    return row


def _prune(row: BenchRow, *, timm: ModuleType, ratio: float, input_size: int, num_classes: int) -> None:
    import torch

    from prunecli.config.schema import SelectStep
    from prunecli.criteria.inputs import ScoringInputs
    from prunecli.criteria.registry import get_criterion
    from prunecli.graph.trace import build_channel_graph
    from prunecli.selection import select_channels
    from prunecli.surgery.prune import prune_module

    torch.manual_seed(0)
    model = timm.create_model(row.model, pretrained=False, num_classes=num_classes).eval()
    inputs = torch.randn(2, 3, input_size, input_size)
    row.params_before_m, row.macs_before_g = _size(model, inputs)
    started = time.perf_counter()
    graph = build_channel_graph(model, inputs)
    row.graph_seconds = time.perf_counter() - started
    scores = get_criterion("l2")(ScoringInputs(graph=graph, module=model, seed=0))
    step = SelectStep(kind="select", ratio=ratio, scope="local", ignore=_classifier_names(model))
    removed = select_channels(graph, scores, step).removed
    started = time.perf_counter()
    outcome = prune_module(model, graph, removed, inputs=inputs, tolerance=TOLERANCE)
    row.verified_surgery_seconds = time.perf_counter() - started
    applied = {group_id: kept for group_id, kept in removed.items() if group_id not in outcome.left_intact}
    row.surgery_seconds = _time_surgery(model, graph, applied)
    row.groups_left_intact = len(outcome.left_intact)
    row.fallbacks = {**graph.fallbacks.counts(), **outcome.fallbacks.counts()}
    row.groups_pruned = len(removed) - row.groups_left_intact
    pruned, verification = outcome.module, outcome.verification
    row.params_after_m, row.macs_after_g = _size(pruned, inputs)
    row.max_abs_diff, row.passed = verification.max_abs_diff, verification.passed
    if not verification.passed:
        row.reason = f"pruned != masked original: max abs diff {verification.max_abs_diff:.3g}"
    elif outcome.left_intact:
        row.reason = f"left intact: {next(iter(outcome.left_intact.values()))}"


def _time_surgery(model: object, graph: object, removed: dict) -> float:
    """Seconds to compute the kept indices and attributes and slice a model in place (the copy is not timed)."""
    import copy

    from prunecli.surgery import apply_keep

    target = copy.deepcopy(model)
    started = time.perf_counter()
    apply_keep(target, graph.keep_indices(removed), attributes=graph.attribute_updates(removed, target))
    return time.perf_counter() - started


def _size(model: object, inputs: object) -> tuple[float, float]:
    """Millions of parameters and GMACs of one sample."""
    from prunecli.metrics.macs import count_macs
    from prunecli.metrics.size import count_params

    return count_params(model) / 1e6, count_macs(model, inputs) / 1e9


def _classifier_names(model: object) -> list[str]:
    classifier = getattr(model, "default_cfg", {}).get("classifier") or []
    return [classifier] if isinstance(classifier, str) else list(classifier)


def render_table(rows: list[BenchRow], *, ratio: float, input_size: int) -> object:
    """A rich table of the rows."""
    from rich.table import Table

    table = Table(title=f"prunecli zoo bench: local l2, ratio {ratio}, input {input_size}x{input_size}")
    for column in ("model", "result", "reason", "fallbacks"):
        table.add_column(column, overflow="fold")
    numbers = ("groups pruned", "intact", "params M", "pruned M", "MACs G", "pruned G", "graph s", "surgery s",
               "+verify s")  # fmt: skip
    for column in numbers:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row.model,
            "[green]pass[/]" if row.passed else "[red]fail[/]",
            row.reason or "",
            ", ".join(f"{kind} {count}" for kind, count in sorted((row.fallbacks or {}).items())),
            _number(row.groups_pruned, digits=0),
            _number(row.groups_left_intact, digits=0),
            _number(row.params_before_m, digits=2),
            _number(row.params_after_m, digits=2),
            _number(row.macs_before_g, digits=3),
            _number(row.macs_after_g, digits=3),
            _number(row.graph_seconds, digits=2),
            _number(row.surgery_seconds, digits=3),
            _number(row.verified_surgery_seconds, digits=3),
        )
    return table


def _number(value: float | None, *, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="Comma-separated timm model names.")
    parser.add_argument("--ratio", type=float, default=0.5, help="Fraction of each group's channels removed.")
    parser.add_argument("--input-size", type=int, default=224, help="Square input side, pixels (also for MACs).")
    parser.add_argument("--num-classes", type=int, default=1000, help="Classifier outputs.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object per model instead of a table.")
    args = parser.parse_args(argv)
    if not 0 <= args.ratio < 1:
        parser.error("--ratio must be in [0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    timm = import_timm()
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(names) - set(timm.list_models()))
    if unknown:
        print(f"unknown timm model(s): {', '.join(unknown)}; see timm.list_models()", file=sys.stderr)
        return 2
    rows = []
    for name in names:
        row = bench_model(name, timm=timm, ratio=args.ratio, input_size=args.input_size, num_classes=args.num_classes)
        rows.append(row)
        if args.json:
            print(json.dumps(asdict(row)), flush=True)
    if not args.json:
        from rich.console import Console

        Console().print(render_table(rows, ratio=args.ratio, input_size=args.input_size))
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
