"""Run a validated pipeline end to end: check, load, measure, run the steps, write outputs and report."""

from __future__ import annotations

import contextlib
import copy
import random
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

import prunecli
from prunecli.config.loading import describe_validation_error, dump_resolved, input_files, with_absolute_paths
from prunecli.config.schema import Pipeline
from prunecli.data.checks import check_against_model
from prunecli.distributed import check_structure, distributed_report, on_main, process_group, state_fingerprint
from prunecli.errors import InputError, OnnxExportError, VerificationError
from prunecli.graph.summary import prunability
from prunecli.model_io import export_onnx, save_model, save_onnx_model
from prunecli.model_io.atomic import atomic_path, atomic_write_text
from prunecli.model_io.outputs import first_tensor
from prunecli.model_io.output_folder import OutputFolder
from prunecli.pipeline.checks import Prepared, check_pipeline, prepare
from prunecli.pipeline.gates import evaluate_gates
from prunecli.pipeline.measure import measure_latencies, measure_stage
from prunecli.pipeline.options import RunOptions, RunResult
from prunecli.pipeline.state import RunState, timed
from prunecli.pipeline.steps import run_step
from prunecli.quantize.stage import quantization_report
from prunecli.reconstruct.report import reconstruction_report
from prunecli.regularize.report import regularization_report
from prunecli.report.rounds import rounds_entry
from prunecli.report.write import write_report
from prunecli.sparsity.report import sparsity_report
from prunecli.threads import torch_threads

SAMPLE_SIZE = 32


def run_pipeline(pipeline: Pipeline, *, options: RunOptions) -> RunResult:
    """Run ``pipeline``; write the model, ``report.json``/``.md`` and ``pipeline.resolved.yaml`` as one unit.

    Everything is written into a staging folder and swapped into ``options.output_dir`` at the
    end (see ``OutputFolder``); a run that fails leaves the previous outputs as they were. A
    verification mismatch still commits the report (the evidence), without a model.

    Under torchrun every rank runs the steps alike (fine-tuning shared) and the pruned structure is
    checked identical across ranks; only rank 0 opens the output folder, measures latency and
    writes; the other ranks wait for it and get its verdict, with an empty report (``prunecli.distributed``).
    """
    pipeline = with_options(pipeline, options)
    with process_group() as world:
        options = replace(options, progress=options.progress and world.is_main)  # progress bars: rank 0's only
        folder = open_output_folder(pipeline, options=options) if world.is_main else _checked(pipeline, options)
        with folder, torch_threads(pipeline.threads):
            state = start_state(pipeline, options=options)
            measure_stage(state, "original")
            try:
                for step in pipeline.steps:
                    run_step(state, step)
            except VerificationError as error:  # the evidence of the mismatch; no model is written
                code = error.exit_code
                on_main(world, lambda: _commit_reports(state, folder), exit_code=lambda _: code)
                raise
            check = check_structure(world, state_fingerprint(state), where="at the end of the run")
            state.distributed = distributed_report(world, check)
            finished, code = on_main(world, lambda: _finish(state, folder), exit_code=_gates_exit_code)
    report, written = finished if finished else ({}, {})
    return RunResult(report=report, gates_passed=code == 0, written=written, module=state.module, rank=world.rank)


def _checked(pipeline: Pipeline, options: RunOptions) -> contextlib.nullcontext[None]:
    """On a torchrun rank other than 0: check the pipeline as rank 0 does, and open no output folder."""
    check_pipeline(pipeline, base_dir=options.base_dir)
    return contextlib.nullcontext()


def _finish(state: RunState, folder: OutputFolder) -> tuple[dict[str, Any], dict[str, Path]]:
    """Time every stage, write the model and the reports, commit the output folder: (report, written)."""
    measure_latencies(state)
    written = _write_model(state, folder)
    report = _write_reports(state, folder, written=written)
    folder.commit()
    return report, written


def _commit_reports(state: RunState, folder: OutputFolder) -> None:
    _write_reports(state, folder, written={})
    folder.commit()


def _gates_exit_code(finished: tuple[dict[str, Any], dict[str, Path]]) -> int:
    """0 when every gate passed, else 1 (the CLI's exit code)."""
    return 0 if all(gate["passed"] for gate in finished[0]["gates"].values()) else 1


def open_output_folder(pipeline: Pipeline, *, options: RunOptions) -> OutputFolder:
    """Check the pipeline before any work, then open its output folder (refusing one that holds an input)."""
    check_pipeline(pipeline, base_dir=options.base_dir)
    inputs = input_files(pipeline, base_dir=options.base_dir) + [p for p in [options.pipeline_file] if p]
    return OutputFolder.open(options.output_dir, inputs=inputs)


def start_state(pipeline: Pipeline, *, options: RunOptions) -> RunState:
    """Load and check the model and data of a checked pipeline, seeded: the state the steps start from."""
    timings_s: dict[str, float] = {}
    with timed(timings_s, "load"):
        prepared = prepare(pipeline, base_dir=options.base_dir, trust_pickle=options.trust_pickle)
        _seed_everything(pipeline.seed)
        return _start(pipeline, options=options, prepared=prepared, timings_s=timings_s)


def with_options(pipeline: Pipeline, options: RunOptions) -> Pipeline:
    """``pipeline`` with the run options that override it (device, seed, threads) filled in."""
    update = {"device": options.device, "seed": options.seed, "threads": options.threads}
    fields = pipeline.model_dump() | {key: value for key, value in update.items() if value is not None}
    try:
        return Pipeline.model_validate(fields)
    except ValidationError as error:
        raise InputError(f"run options: {describe_validation_error(error)}") from None


def _write_reports(state: RunState, folder: OutputFolder, *, written: dict[str, Path]) -> dict[str, Any]:
    """Write report.json, report.md and pipeline.resolved.yaml into the staging folder; adds them to ``written``."""
    with state.timed("write"):
        written["pipeline"] = folder.path / "pipeline.resolved.yaml"
        report = build_report(state, written=written)
        staged = write_report(report, out_dir=folder.staging, plots=True, sensitivity=state.sensitivity)
        written.update({key: folder.final_path(path) for key, path in staged.items()})
        resolved = with_absolute_paths(state.pipeline, base_dir=state.options.base_dir)
        atomic_write_text(folder.staging / "pipeline.resolved.yaml", dump_resolved(resolved))
    return report


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _start(pipeline: Pipeline, *, options: RunOptions, prepared: Prepared, timings_s: dict[str, float]) -> RunState:
    loaded = prepared.loaded
    state = RunState(
        pipeline=pipeline, options=options, loaded=loaded, data=prepared.data, device=pipeline.device,
        seed=pipeline.seed, timings_s=timings_s,
    )  # fmt: skip
    if loaded.module is not None:
        state.module = loaded.module.to(state.device).eval()
        state.original = copy.deepcopy(state.module)
    state.data = check_against_model(state.data, input_shape=loaded.input_shape, num_outputs=_num_outputs(state))
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


def _write_model(state: RunState, folder: OutputFolder) -> dict[str, Path]:
    """Write the model into the staging folder; ``model.onnx`` on a best-effort basis for torch models."""
    with state.timed("write"):
        if state.module is None:
            import onnx

            from prunecli.model_io.onnx_external import uses_external_data

            model, external = onnx.load(str(state.loaded.onnx_path)), uses_external_data(state.loaded.source)
            staged = save_onnx_model(model, out_dir=folder.staging, external_data=external)  # written as it came
            _stage_int8(state, folder, staged)
            return {key: folder.final_path(path) for key, path in staged.items()}
        example = state.sample[:2].cpu()
        staged = save_model(
            state.loaded, state.module.cpu(), out_dir=folder.staging, example_input=example, keep=state.keep,
            attributes=state.attributes, modules=state.replaced_modules, onnx=False,
        )  # fmt: skip
    with state.timed("export"):
        try:
            staged["onnx"] = export_onnx(state.module, example, folder.staging / "model.onnx")
        except OnnxExportError as error:
            state.onnx_error = str(error)
        _stage_int8(state, folder, staged)
    state.module.to(state.device)
    return {key: folder.final_path(path) for key, path in staged.items()}


def _stage_int8(state: RunState, folder: OutputFolder, staged: dict[str, Path]) -> None:
    """Copy the quantize step's int8 file, if any, beside model.onnx as ``model.int8.onnx``."""
    if state.quantization and state.quantization["path"]:
        with atomic_path(folder.staging / "model.int8.onnx") as temporary:
            shutil.copyfile(state.quantization["path"], temporary)
        staged["onnx_int8"] = folder.staging / "model.int8.onnx"


def build_report(state: RunState, *, written: dict[str, Path]) -> dict[str, Any]:
    """The report dict (as in report.json)."""
    names = list(state.stages)
    final = state.stages[names[-1]]
    report: dict[str, Any] = {"stages": names, **state.stages}
    report["verification"] = state.verification.to_dict() if state.verification else None
    report["gates"] = evaluate_gates(state.pipeline.gates, original=state.stages["original"], final=final)
    report["groups"] = _group_rows(state)
    report["selection"] = state.plan.selection if state.plan else None  # mode; for targets requested/achieved
    report["scoring"] = state.scoring  # per score step: criterion, seconds, batches, groups left unscored
    report["prunability"] = _prunability(state)
    report["sparsity"] = _sparsity(state)  # sparsify steps
    report["regularization"] = regularization_report(state.regularization)  # regularize steps: before/after
    report["reconstruction"] = reconstruction_report(state.reconstruction)  # reconstruct steps: per-layer fit
    report["rounds"] = rounds_entry(state.rounds, state.stages)  # repeat: one row per round (report.rounds)
    report["blocks"] = state.blocks  # prune_blocks: candidates, scores, removed, verification (blocks.stage)
    report["model"] = {"path": str(state.loaded.source), "format": state.loaded.format}
    report["outputs"] = {key: str(path) for key, path in written.items()}
    report["onnx_export_error"] = state.onnx_error
    report["quantization"] = quantization_report(state, written=written)  # mode, int8 file or why not
    report["threads"] = {"work": state.pipeline.threads, "latency": state.latency_threads}
    report["distributed"] = state.distributed  # torchrun: world size, backend, structure check (else world_size 1)
    report["timings_s"] = {phase: round(seconds, 4) for phase, seconds in state.timings_s.items()}
    report.update(seed=state.seed, device=state.device, prunecli_version=prunecli.__version__)
    return report


def _sparsity(state: RunState) -> dict[str, Any] | None:
    """The report's sparsity entry: zeros of the final model (on an ONNX input, of the written graph's initializers)."""
    if state.module is None and state.sparsity is not None:
        from prunecli.sparsity.onnx_weights import onnx_sparsity_report

        original = state.snapshots.get("original", state.loaded.source)
        return onnx_sparsity_report(state.sparsity, current=state.loaded.onnx_path, original=original)
    return sparsity_report(state.sparsity, state.module, state.original)


def _prunability(state: RunState) -> dict[str, Any] | None:
    """Shares of params and MACs that stayed out of reach, and why (None when nothing was traced)."""
    if state.graph is None:
        return None
    if state.module is None:  # an ONNX input: shares of the graph's initializers
        from prunecli.onnx_graph.pipeline import onnx_prunability

        return onnx_prunability(state)
    left_intact = state.plan.skipped if state.plan else {}
    traced = state.graph_of or state.original  # the model the graph came from (after prune_blocks, the smaller one)
    summary = prunability(state.graph, traced, state.sample, left_intact=left_intact)
    reasons = dict(summary["unprunable_reasons"])
    for reason in left_intact.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    surgery = state.surgery_fallbacks.counts() if state.surgery_fallbacks else {}
    return {
        "unprunable_params_share": summary["unprunable_params_share"],
        "unprunable_macs_share": summary["unprunable_macs_share"],
        "unprunable_reasons": reasons,
        "fallbacks": {**summary["fallbacks"], **surgery},  # engine fallbacks by kind (prunecli.graph.fallbacks)
    }


def _score_stats(scores: np.ndarray | None) -> dict[str, float] | None:
    """min, median and max of a group's channel scores (None when the group has none)."""
    if scores is None or len(scores) == 0:
        return None
    return {"min": float(np.min(scores)), "median": float(np.median(scores)), "max": float(np.max(scores))}


def _group_rows(state: RunState) -> list[dict[str, Any]]:
    if state.graph is None:
        return []
    skipped = state.plan.skipped if state.plan else {}
    rows = []
    for group in _in_model_order(state.graph.groups, state.original):
        kept = state.plan.kept(group) if state.plan else group.channels
        reason = group.reason or skipped.get(group.id)
        rows.append({"name": group.name, "channels": group.channels, "kept": kept,
                     "prunable": group.prunable and group.id not in skipped, "reason": reason})  # fmt: skip
        choice = state.plan.choices.get(group.id) if state.plan else None
        rows[-1].update(threshold=choice.threshold if choice else None, override=choice.override if choice else None,
                        limit=choice.limit if choice else None)  # fmt: skip
        rows[-1]["score"] = _score_stats(state.scores.get(group.id) if state.scores else None)
    return rows


def _in_model_order(groups: list[Any], module: torch.nn.Module | None) -> list[Any]:
    """``groups`` sorted by where their first producer module comes in ``module`` (the rest last, as they were)."""
    if module is None:
        return list(groups)
    position = {name: index for index, (name, _) in enumerate(module.named_modules())}
    last = len(position)
    return sorted(groups, key=lambda g: min((position.get(m.module, last) for m in g.producers), default=last))
