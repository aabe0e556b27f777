"""One small handler per step kind, registered against the step's config type."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from prunecli.config.schema import (
    EvaluateStep, FinetuneStep, PruneBlocksStep, PruneStep, QuantizeStep, ReconstructStep, RegularizeStep, RepeatStep,
    ScoreStep, SelectStep, SparsifyStep,
)  # fmt: skip
from prunecli.criteria.inputs import ScoringInputs
from prunecli.criteria.scoring import score_groups
from prunecli.errors import InputError, VerificationError
from prunecli.finetune import finetune
from prunecli.graph.trace import build_channel_graph
from prunecli.model_io.plan_file import compose_keep, merge_attributes
from prunecli.pipeline.measure import measure_stage
from prunecli.pipeline.state import RunState
from prunecli.registry import Registry
from prunecli.selection import select_channels
from prunecli.surgery.prune import prune_module

Handler = Callable[[RunState, object], None]
HANDLERS: Registry[type, Handler] = Registry("step handler")
handles = HANDLERS.register  # @handles(ScoreStep): the handler of one step config type


def run_step(state: RunState, step: object) -> None:
    """Run one step on the state."""
    HANDLERS.lookup(type(step))(state, step)


@handles(ScoreStep)
def score(state: RunState, step: ScoreStep) -> None:
    """Build the channel graph (again after a prune replaced the module) and score every prunable group's channels."""
    tensors, module = None, state.module
    if state.module is None:  # ONNX input: criteria read its initializers; data-driven ones run it in torch
        from prunecli.onnx_torch.stage import scoring_sources

        tensors, module = scoring_sources(state, step.criterion_spec)
    elif state.graph is None or state.graph_of is not state.module:
        with state.timed("trace"):
            state.graph = build_channel_graph(state.module, state.sample)
        state.graph_of = state.module
        if state.original_channels is None:  # the first graph: ratios of later rounds count against it
            state.original_channels = {group.name: group.channels for group in state.graph.groups}
    split = state.data.train if state.data.train is not None else state.data.eval
    inputs = ScoringInputs(
        graph=state.graph, module=module, seed=state.seed, reduction=step.reduction, split=split,
        batch_size=state.pipeline.data.batch_size, batch_count=step.batches, device=state.device,
        progress=state.options.progress, tensors=tensors,
    )  # fmt: skip
    with state.timed("score"):
        result = score_groups(step.criterion_spec, inputs)
    state.scores = result.scores
    state.scoring.append(result.to_report(names={group.id: group.name for group in state.graph.groups}))


@handles(SelectStep)
def select(state: RunState, step: SelectStep) -> None:
    """Choose the channels each group loses."""
    widest = max((group.channels for group in state.graph.prunable_groups), default=0)
    if step.ratio != 0 and 0 < widest <= step.min_channels:
        raise InputError(
            f"select.min_channels is {step.min_channels} but the widest prunable group has {widest} channels, "
            "so nothing would be pruned; lower min_channels"
        )
    measure = None
    if step.target is not None and state.module is None:  # ONNX: count the candidate graph
        from prunecli.onnx_graph.pipeline import onnx_target_measure

        measure = onnx_target_measure(state, step.target.metric[0])
    elif step.target is not None:
        from prunecli.pipeline.measure import latency_input
        from prunecli.selection.measures import target_measure

        example = latency_input(state).to(state.device)
        measure = target_measure(
            step.target.metric[0], module=state.module, graph=state.graph, example=example,
            spec=state.pipeline.latency, device=state.device, threads=state.latency_threads, original=state.original,
        )  # fmt: skip
    group_ratios = _sensitivity_ratios(state, step) if step.mode == "sensitivity" else None
    with state.timed("select"):
        state.plan = select_channels(
            state.graph, state.scores, step, measure=measure, group_ratios=group_ratios,
            original_channels=state.original_channels,
        )  # fmt: skip


def _sensitivity_ratios(state: RunState, step: SelectStep) -> dict[str, float]:
    """Per group name, the largest swept ratio at which the group alone costs at most ``max_drop``."""
    from prunecli.pipeline.sensitivity import ratios_within, sensitivity_sweep

    with state.timed("sensitivity"):
        state.sensitivity = sensitivity_sweep(state, ratios=step.sensitivity_ratios)
    return ratios_within(state.sensitivity, max_drop=step.max_drop)


@handles(PruneStep)
def prune(state: RunState, step: PruneStep) -> None:
    """Remove the selected channels, verify pruned == masked original, then measure."""
    if state.module is None:  # ONNX input: ONNX surgery, verified in ONNX Runtime
        from prunecli.onnx_graph.pipeline import prune_onnx_stage

        prune_onnx_stage(state, step)
        measure_stage(state, "pruned")
        return
    with state.timed("prune"):
        outcome = prune_module(
            state.module, state.graph, state.plan.removed, inputs=state.sample, tolerance=step.tolerance
        )
    state.plan.leave_intact(outcome.left_intact)
    state.surgery_fallbacks = outcome.fallbacks
    state.verification = outcome.verification
    if not state.verification.passed:
        raise VerificationError(
            f"pruned outputs differ from the masked original by {state.verification.max_abs_diff:.3g} "
            f"(tolerance {step.tolerance:g}); this is a prunecli bug: please report it with --debug output"
        )
    state.module = outcome.module  # keep and attributes stay relative to the unpruned arch (model.plan.json)
    state.keep = compose_keep(state.keep, outcome.keep)
    state.attributes = merge_attributes(state.attributes, outcome.attributes)
    measure_stage(state, "pruned")


@handles(FinetuneStep)
def finetune_step(state: RunState, step: FinetuneStep) -> None:
    """Train the current model, optionally distilling from the unpruned one, then measure."""
    if state.module is None:  # ONNX input: the graph run in torch, trained values written back (onnx_torch)
        from prunecli.onnx_torch.stage import finetune_onnx_stage

        finetune_onnx_stage(state, step)
        return
    teacher = state.original if step.distill is not None else None
    with state.timed("finetune"):
        finetune(
            state.module,
            train=state.data.train,
            step=step,
            batch_size=state.pipeline.data.batch_size,
            device=state.device,
            seed=state.seed,
            teacher=teacher,
            progress=state.options.progress,
            masks=state.sparsity.masks if state.sparsity else None,
        )
    measure_stage(state, "finetuned")


@handles(EvaluateStep)
def evaluate(state: RunState, step: EvaluateStep) -> None:
    """Measure the current model under the step's name."""
    measure_stage(state, step.name)


def _delegate(step_type: type, target: str) -> None:
    """Register ``module:function`` as the handler of ``step_type``, imported on first use.

    Steps with a module of their own (sparsify, regularize, quantize, ...) keep their imports
    (onnxruntime, matplotlib, timm-sized code) out of runs that never use them.
    """

    def handler(state: RunState, step: object) -> None:
        module, function = target.split(":")
        getattr(importlib.import_module(module), function)(state, step)

    handles(step_type)(handler)


_delegate(SparsifyStep, "prunecli.sparsity.step:sparsify_stage")  # magnitude, N:M, movement, dynamic masks
_delegate(RegularizeStep, "prunecli.regularize.stage:regularize_stage")  # train with a sparsity penalty
_delegate(QuantizeStep, "prunecli.quantize.stage:quantize_stage")  # int8 ONNX, stage "quantized"
_delegate(ReconstructStep, "prunecli.reconstruct.stage:reconstruct_stage")  # least-squares refit of pruned layers
_delegate(RepeatStep, "prunecli.pipeline.repeat:run_rounds")  # iterative pruning on a schedule
_delegate(PruneBlocksStep, "prunecli.blocks.stage:prune_blocks_stage")  # remove residual branches / layers
