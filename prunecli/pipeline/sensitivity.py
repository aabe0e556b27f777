"""Sensitivity analysis: how much each group alone costs in accuracy when pruned at each ratio.

For every prunable group and every ratio, the group's lowest-scored channels (by the pipeline's
first ``score`` step; ``l2`` when it has none) are removed from a copy of the model, with the
same verified surgery a run uses, and the copy is evaluated on the eval split, without
fine-tuning. The curves answer "which layers can lose how much?"::

    sweep = sensitivity_sweep(state, ratios=[0.1, 0.3, 0.5], progress=progress)
    sweep["groups"][0]   # {"name": "stem_conv (+1 tied)", "channels": 16,
                         #  "curve": [{"ratio": 0.1, "removed": 1, "accuracy": 0.98, "loss": 0.05}, ...]}

A sweep is resumable: every finished point is written (atomically) to a progress file, keyed by a
fingerprint of the model, data, pipeline and ratios; a rerun of the same sweep skips those points.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunecli.config.schema import Pipeline, ScoreStep
from prunecli.metrics.accuracy import evaluate_torch
from prunecli.model_io.atomic import atomic_write_text
from prunecli.pipeline.options import RunOptions
from prunecli.pipeline.state import RunState
from prunecli.pipeline.steps import run_step
from prunecli.report.sensitivity import write_sensitivity
from prunecli.surgery.prune import prune_module
from prunecli.threads import torch_threads

Point = dict[str, Any]
Progress = Callable[[int, int], None]  # (points done, points in all)
VERIFY_TOLERANCE = 1e-4


def sensitivity_sweep(
    state: RunState, *, ratios: Sequence[float], progress_file: Path | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Prune each scored prunable group alone at each ratio and evaluate; resumes from ``progress_file``.

    ``state`` must hold a graph and scores (a ``score`` step has run).
    """
    groups = [group for group in state.graph.prunable_groups if group.id in state.scores]
    fingerprint = _fingerprint(state, ratios)
    done = _read_progress(progress_file, fingerprint=fingerprint)
    baseline = _evaluate(state, state.module)
    total, finished = len(groups) * len(ratios), 0
    for group in groups:
        for ratio in ratios:
            key = f"{group.name}@{ratio}"
            if key not in done:
                done[key] = _point(state, group, ratio, baseline=baseline)
                _write_progress(progress_file, fingerprint=fingerprint, points=done)
            finished += 1
            if progress is not None:
                progress(finished, total)
    curves = [
        {"name": group.name, "channels": group.channels, "curve": [done[f"{group.name}@{r}"] for r in ratios]}
        for group in groups
    ]
    return {"ratios": list(ratios), "baseline": baseline, "groups": curves}


def ratios_within(sweep: dict[str, Any], *, max_drop: float) -> dict[str, float]:
    """Per group name, the largest swept ratio whose accuracy drop (vs the baseline) is at most ``max_drop``.

    The curve is read in ratio order and stops at the first ratio that costs too much, so a
    noisy recovery at a higher ratio is never picked.
    """
    base = sweep["baseline"]["accuracy"]
    chosen = {}
    for group in sweep["groups"]:
        ratio = 0.0
        for point in sorted(group["curve"], key=lambda p: p["ratio"]):
            if point["accuracy"] is None or base - point["accuracy"] > max_drop:
                break
            ratio = point["ratio"]
        chosen[group["name"]] = ratio
    return chosen


def _score(state: RunState) -> None:
    step = next((s for s in state.pipeline.all_steps if isinstance(s, ScoreStep)), None)
    run_step(state, step or ScoreStep(kind="score", criterion="l2"))


def _point(state: RunState, group: Any, ratio: float, *, baseline: dict[str, Any]) -> Point:
    count = min(math.floor(ratio * group.channels), group.channels - 1)
    point: Point = {"ratio": ratio, "removed": count}
    if count == 0:
        return {**point, **baseline}
    order = np.argsort(state.scores[group.id], kind="stable")
    if state.module is None:  # ONNX input: ONNX surgery, evaluated in ONNX Runtime
        from prunecli.onnx_graph.sensitivity import onnx_point

        return {**point, **onnx_point(state, group, np.sort(order[:count]), tolerance=VERIFY_TOLERANCE)}
    outcome = prune_module(
        state.module, state.graph, {group.id: np.sort(order[:count])}, inputs=state.sample, tolerance=VERIFY_TOLERANCE
    )
    if outcome.left_intact:
        return {**point, "accuracy": None, "loss": None, "error": outcome.left_intact[group.id]}
    return {**point, **_evaluate(state, outcome.module)}


def _evaluate(state: RunState, module: Any) -> dict[str, float | None]:
    if module is None:  # ONNX input: the current graph in ONNX Runtime
        from prunecli.onnx_graph.sensitivity import onnx_evaluation

        return onnx_evaluation(state)
    split = state.data.eval if state.data.eval is not None else state.data.train
    batch_size = state.pipeline.data.batch_size
    evaluation = evaluate_torch(module, split, batch_size=batch_size, device=state.device)
    return {"accuracy": evaluation.accuracy, "loss": evaluation.loss}


def _fingerprint(state: RunState, ratios: Sequence[float]) -> str:
    """What a progress file must match to be resumed: the model's weights, data, pipeline and ratios."""
    digest = hashlib.sha256()
    if state.original is None:  # ONNX input
        from prunecli.onnx_graph.sensitivity import onnx_fingerprint

        digest.update(onnx_fingerprint(state))
    else:
        for tensor in state.original.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    split = state.data.eval if state.data.eval is not None else state.data.train
    digest.update(split.inputs.tobytes())
    digest.update(state.pipeline.model_dump_json(exclude={"steps"}).encode())
    scoring = [step.model_dump(mode="json") for step in state.pipeline.steps if isinstance(step, ScoreStep)]
    digest.update(json.dumps(scoring).encode())
    digest.update(json.dumps(list(ratios)).encode())
    return digest.hexdigest()


def _read_progress(path: Path | None, *, fingerprint: str) -> dict[str, Point]:
    if path is None or not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return dict(document.get("points") or {}) if document.get("fingerprint") == fingerprint else {}


def _write_progress(path: Path | None, *, fingerprint: str, points: dict[str, Point]) -> None:
    if path is not None:
        atomic_write_text(path, json.dumps({"fingerprint": fingerprint, "points": points}) + "\n")


@dataclass(frozen=True)
class SensitivityResult:
    """A finished sweep (as in sensitivity.json) and the files written for it."""

    sweep: dict[str, Any]
    written: dict[str, Path]


def run_sensitivity(
    pipeline: Pipeline, *, options: RunOptions, ratios: Sequence[float], progress: Progress | None = None
) -> SensitivityResult:
    """Sweep ``pipeline``'s model and write sensitivity.json/.md/.png into the output folder, as one unit.

    Finished points are kept beside the output folder until the sweep completes, so a rerun of an
    interrupted sweep continues where it stopped.
    """
    from prunecli.pipeline.runner import open_output_folder, start_state, with_options

    pipeline = with_options(pipeline, options)
    folder = open_output_folder(pipeline, options=options)
    with folder, torch_threads(pipeline.threads):
        state = start_state(pipeline, options=options)
        _score(state)
        sweep = sensitivity_sweep(state, ratios=ratios, progress_file=folder.progress_path, progress=progress)
        staged = write_sensitivity(sweep, out_dir=folder.staging)
        folder.commit()
    folder.progress_path.unlink(missing_ok=True)
    return SensitivityResult(sweep=sweep, written={key: folder.final_path(path) for key, path in staged.items()})
