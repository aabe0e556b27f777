"""The reconstruct step on a run: refit the layers that lost input channels, record the fit, measure.

    reconstruct_stage(state, ReconstructStep(kind="reconstruct", batches=8, ridge=1e-2))
    state.reconstruction[-1]["layers"][0]["error_after"]   # the first refit layer's relative output error
    state.stages["reconstructed"]["accuracy"]              # against state.stages["pruned"]["accuracy"]

Calibration batches are the first ``batches`` shuffled batches (seeded) of the train split, or of
the eval split when there is no train split.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prunecli.data.dataset import batches
from prunecli.reconstruct.torch_layers import Reconstruction, reconstruct_layers

if TYPE_CHECKING:
    import torch

    from prunecli.config.schema import ReconstructStep
    from prunecli.pipeline.state import RunState

STAGE = "reconstructed"


def reconstruct_stage(state: RunState, step: ReconstructStep) -> None:
    """Refit the current model's layers toward the original's outputs, append the report entry, measure.

    A torch model is refit in place; an ONNX input (``state.module`` None) in ONNX Runtime, into a new
    current file (``reconstruct.onnx_layers``).
    """
    calibration = calibration_batches(state, count=step.batches)
    start = time.perf_counter()
    with state.timed("reconstruct"):
        if state.module is None:
            result = _reconstruct_onnx(state, calibration, ridge=step.ridge)
        else:
            result = reconstruct_layers(state.module, state.original, state.keep, batches=calibration,
                                        ridge=step.ridge)  # fmt: skip
    seconds = time.perf_counter() - start
    state.reconstruction.append(reconstruction_entry(step, result, samples=sum(len(b) for b in calibration),
                                                     seconds=seconds))  # fmt: skip
    from prunecli.pipeline.measure import measure_stage

    measure_stage(state, STAGE)


def _reconstruct_onnx(state: RunState, calibration: list[torch.Tensor], *, ridge: float) -> Reconstruction:
    """Refit the current ONNX graph toward the input graph's outputs and make the refit graph the current model."""
    import onnx

    from prunecli.onnx_graph.pipeline import current_model, replace_current_model
    from prunecli.reconstruct.onnx_layers import reconstruct_onnx

    original = onnx.load(str(state.snapshots.get("original", state.loaded.source)))
    arrays = [batch.detach().cpu().numpy() for batch in calibration]
    model, result = reconstruct_onnx(original, current_model(state), state.keep, batches=arrays, ridge=ridge,
                                     threads=state.pipeline.threads)  # fmt: skip
    replace_current_model(state, model)
    return result


def calibration_batches(state: RunState, *, count: int) -> list[torch.Tensor]:
    """The first ``count`` shuffled batches (seeded) of the train split, else the eval split, on the run's device."""
    split = state.data.train if state.data.train is not None else state.data.eval
    chosen = []
    for inputs, _ in batches(split, batch_size=state.pipeline.data.batch_size, shuffle=True, seed=state.seed):
        if len(chosen) == count:
            break
        chosen.append(inputs.to(state.device))
    return chosen


def reconstruction_entry(
    step: ReconstructStep, result: Reconstruction, *, samples: int, seconds: float
) -> dict[str, Any]:
    """One reconstruct step's report entry: options, calibration samples, seconds, layers refit and skipped."""
    return {
        "batches": step.batches,
        "ridge": step.ridge,
        "samples": samples,
        "seconds": round(seconds, 4),
        "layers": [layer.to_dict() for layer in result.layers],
        "skipped": dict(result.skipped),
    }
