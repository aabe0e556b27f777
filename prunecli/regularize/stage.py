"""The regularize step on a run: train with the penalty, record its distribution before and after, measure.

    regularize_stage(state, RegularizeStep(kind="regularize", penalty="l1_bn", strength=1e-4, epochs=10))
    state.regularization[-1]["after"]["median"]     # |gamma| after training with the penalty

The training is the finetune loop with the penalty as a ``TrainingHooks.penalty``: the same
optimizer, schedule, seed handling, distillation and sparsity masks as a ``finetune`` step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prunecli.finetune import TrainingHooks, finetune
from prunecli.regularize.penalties import make_penalty
from prunecli.regularize.report import regularization_entry

if TYPE_CHECKING:
    import torch

    from prunecli.config.schema import RegularizeStep
    from prunecli.graph.channel_graph import ChannelGraph
    from prunecli.pipeline.state import RunState

STAGE = "regularized"


def regularize_stage(state: RunState, step: RegularizeStep) -> None:
    """Train ``state.module`` with ``step.strength`` times the penalty, append the report entry, measure the stage."""
    if state.module is None:  # ONNX input: the graph run in torch (prunecli.onnx_torch)
        from prunecli.onnx_torch.stage import regularize_onnx_stage

        regularize_onnx_stage(state, step)
        return
    graph = current_graph(state) if step.penalty == "group_lasso" else None
    teacher = state.original if step.distill is not None else None
    with state.timed("regularize"):
        entry = train_with_penalty(state, step, state.module, graph=graph, teacher=teacher)
    state.regularization.append(entry)
    from prunecli.pipeline.measure import measure_stage

    measure_stage(state, STAGE)


def train_with_penalty(state: RunState, step: RegularizeStep, module: torch.nn.Module, *, graph: ChannelGraph | None,
                       teacher: torch.nn.Module | None) -> dict[str, Any]:  # fmt: skip
    """Train ``module`` with the step's penalty (the finetune loop and options); the report entry of the step."""
    penalty = make_penalty(step.penalty, module, graph=graph)
    before = penalty.distribution()
    losses = finetune(
        module, train=state.data.train, step=step, batch_size=state.pipeline.data.batch_size,
        device=state.device, seed=state.seed, teacher=teacher,
        progress=state.options.progress, masks=state.sparsity.masks if state.sparsity else None,
        hooks=TrainingHooks(penalty=lambda: step.strength * penalty.value()),
    )  # fmt: skip
    return regularization_entry(step, penalty, before=before, after=penalty.distribution(), losses=losses)


def current_graph(state: RunState) -> ChannelGraph:
    """The channel graph of ``state.module`` as it is now: the run's own until a prune step changed the model.

    The first one traced is kept on the state for the ``score`` step; after a prune the model is
    traced again for this step only (the run's graph stays the one its plan refers to).
    """
    if state.graph is not None and state.verification is None:
        return state.graph
    from prunecli.graph.trace import build_channel_graph

    with state.timed("trace"):
        graph = build_channel_graph(state.module, state.sample)
    if state.graph is None:
        state.graph = graph
    return graph
