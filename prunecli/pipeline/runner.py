"""Run a validated pipeline end to end: check, load, measure, run the steps, write outputs and report."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

import prunecli
from prunecli.config.loading import dump_resolved, with_absolute_paths
from prunecli.config.schema import Pipeline
from prunecli.data import load_data
from prunecli.data.checks import check_against_model
from prunecli.errors import InputError, VerificationError
from prunecli.graph.summary import prunability
from prunecli.model_io import load_model, save_model, save_onnx_model
from prunecli.model_io.atomic import atomic_write_text
from prunecli.pipeline.checks import check_before_work
from prunecli.pipeline.gates import evaluate_gates
from prunecli.pipeline.measure import measure_stage
from prunecli.pipeline.options import RunOptions, RunResult
from prunecli.pipeline.state import RunState
from prunecli.pipeline.steps import run_step
from prunecli.report.write import write_report
from prunecli.model_io.outputs import first_tensor

SAMPLE_SIZE = 32


def run_pipeline(pipeline: Pipeline, *, options: RunOptions) -> RunResult:
    """Run ``pipeline`` and write the model, ``report.json``/``.md`` and ``pipeline.resolved.yaml``."""
    device = options.device or pipeline.device
    seed = pipeline.seed if options.seed is None else options.seed
    check_before_work(pipeline, base_dir=options.base_dir, device=device)
    _seed_everything(seed)
    state = _load(pipeline, options=options, device=device, seed=seed)
    measure_stage(state, "original")
    try:
        for step in pipeline.steps:
            run_step(state, step)
    except VerificationError:
        _write_reports(state, written={})  # the evidence of the mismatch; no model is written
        raise
    written = _write_model(state)
    report = _write_reports(state, written=written)
    passed = all(gate["passed"] for gate in report["gates"].values())
    return RunResult(report=report, gates_passed=passed, written=written, module=state.module)


def _write_reports(state: RunState, *, written: dict[str, Path]) -> dict[str, Any]:
    """Write report.json, report.md and pipeline.resolved.yaml; adds them to ``written``."""
    out_dir, pipeline = state.options.output_dir, state.pipeline
    report = build_report(state, written=written)
    out_dir.mkdir(parents=True, exist_ok=True)
    written.update(write_report(report, out_dir=out_dir))
    written["pipeline"] = out_dir / "pipeline.resolved.yaml"
    resolved = with_absolute_paths(pipeline, base_dir=state.options.base_dir)
    atomic_write_text(written["pipeline"], dump_resolved(resolved))
    return report


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _load(pipeline: Pipeline, *, options: RunOptions, device: str, seed: int) -> RunState:
    data = load_data(pipeline.data, base_dir=options.base_dir)
    loaded = load_model(pipeline.model, base_dir=options.base_dir, trust_pickle=options.trust_pickle)
    state = RunState(pipeline=pipeline, options=options, loaded=loaded, data=data, device=device, seed=seed)
    if loaded.module is not None:
        state.module = loaded.module.to(device).eval()
        state.original = copy.deepcopy(state.module)
    state.data = check_against_model(data, input_shape=loaded.input_shape, num_outputs=_num_outputs(state))
    state.sample = _sample_batch(state)
    return state


def _num_outputs(state: RunState) -> int | None:
    if state.module is None:
        return None
    example = torch.zeros((2, *state.loaded.input_shape[1:]), device=state.device)
    try:
        with torch.no_grad():  # not inference_mode: some models cache tensors on their first forward
            logits = first_tensor(state.module(example))
    except Exception as error:  # the user's forward can fail in any way on a wrong shape
        raise InputError(
            f"the model fails on an input of shape {tuple(example.shape)} ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:160] if str(error) else ''}); check model.input_shape"
        ) from error
    return logits.shape[-1] if logits.dim() >= 2 else None


def _sample_batch(state: RunState) -> torch.Tensor:
    """A real batch (eval split first) for tracing and verification; random if there is no data."""
    split = state.data.eval if state.data.eval is not None else state.data.train
    inputs = torch.from_numpy(np.ascontiguousarray(split.inputs[:SAMPLE_SIZE]))
    return inputs.to(state.device)


def _write_model(state: RunState) -> dict[str, Path]:
    out_dir = state.options.output_dir
    if state.module is None:
        import onnx

        return save_onnx_model(onnx.load(str(state.loaded.onnx_path)), out_dir=out_dir)
    example = state.sample[:2].cpu()
    written = save_model(
        state.loaded, state.module.cpu(), out_dir=out_dir, example_input=example, keep=state.keep,
        attributes=state.attributes,
    )  # fmt: skip
    state.module.to(state.device)
    return written


def build_report(state: RunState, *, written: dict[str, Path]) -> dict[str, Any]:
    """The report dict (as in report.json)."""
    names = list(state.stages)
    final = state.stages[names[-1]]
    report: dict[str, Any] = {"stages": names, **state.stages}
    report["verification"] = state.verification.to_dict() if state.verification else None
    report["gates"] = evaluate_gates(state.pipeline.gates, original=state.stages["original"], final=final)
    report["groups"] = _group_rows(state)
    report["prunability"] = _prunability(state)
    report["model"] = {"path": str(state.loaded.source), "format": state.loaded.format}
    report["outputs"] = {key: str(path) for key, path in written.items()}
    report.update(seed=state.seed, device=state.device, prunecli_version=prunecli.__version__)
    return report


def _prunability(state: RunState) -> dict[str, Any] | None:
    """Shares of params and MACs that stayed out of reach, and why (None when nothing was traced)."""
    if state.graph is None:
        return None
    left_intact = state.plan.skipped if state.plan else {}
    summary = prunability(state.graph, state.original, state.sample, left_intact=left_intact)
    reasons = dict(summary["unprunable_reasons"])
    for reason in left_intact.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "unprunable_params_share": summary["unprunable_params_share"],
        "unprunable_macs_share": summary["unprunable_macs_share"],
        "unprunable_reasons": reasons,
    }


def _group_rows(state: RunState) -> list[dict[str, Any]]:
    if state.graph is None:
        return []
    skipped = state.plan.skipped if state.plan else {}
    rows = []
    for group in state.graph.groups:
        kept = state.plan.kept(group) if state.plan else group.channels
        reason = group.reason or skipped.get(group.id)
        rows.append({"name": group.name, "channels": group.channels, "kept": kept,
                     "prunable": group.prunable and group.id not in skipped, "reason": reason})  # fmt: skip
    return rows
