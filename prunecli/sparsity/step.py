"""The sparsify step on a run: pick the weights, set the masks, zero the weights, measure stage ``sparsified``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prunecli.errors import InputError
from prunecli.sparsity.layers import candidate_weights, step_masks
from prunecli.sparsity.masks import apply_masks
from prunecli.sparsity.state import SparsityState

if TYPE_CHECKING:
    from prunecli.config.schema import SparsifyStep
    from prunecli.pipeline.state import RunState

STAGE = "sparsified"


def sparsify_stage(state: RunState, step: SparsifyStep) -> None:
    """Zero the step's weights in ``state.module``, record the masks on ``state.sparsity``, measure the stage."""
    if state.verification is None and any(s.kind == "prune" for s in state.pipeline.all_steps):
        raise InputError("a prune step after sparsify would drop its masks; move the sparsify step after prune")
    if state.module is None:  # ONNX input: masks on the graph's weight initializers
        from prunecli.pipeline.measure import measure_stage
        from prunecli.sparsity.onnx_weights import sparsify_onnx

        with state.timed("sparsify"):
            sparsify_onnx(state, step)
        measure_stage(state, STAGE)
        return
    weights = candidate_weights(state.module, ignore=step.ignore, include_output=step.include_output)
    if not weights:
        raise InputError("sparsify found no conv or linear weights to zero; shorten ignore or set include_output: true")
    with state.timed("sparsify"):
        if step.method == "movement":  # trains state.module first (see sparsity.movement)
            from prunecli.sparsity.movement import step_movement_masks

            masks, skipped = step_movement_masks(state, step, weights), {}
        elif step.dynamic:  # recomputed each round over all its weights, masked ones at their remembered values
            from prunecli.sparsity.dynamic import recompute_masks

            state.sparsity = state.sparsity or SparsityState()
            masks, skipped = recompute_masks(state.sparsity, weights, ratio=step.ratio, scope=step.scope), {}
        else:
            masks, skipped = step_masks(
                weights, ratio=step.ratio, threshold=step.threshold, pattern=step.n_m, scope=step.scope
            )
        sparsity = state.sparsity or SparsityState()
        sparsity.add(masks)
        sparsity.skipped.update(skipped)
        sparsity.steps.append(step.model_dump(exclude_none=True))
        apply_masks(dict(state.module.named_parameters()), sparsity.masks)
        state.sparsity = sparsity
    from prunecli.pipeline.measure import measure_stage

    measure_stage(state, STAGE)
