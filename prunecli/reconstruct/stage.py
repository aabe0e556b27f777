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
from prunecli.errors import InputError
from prunecli.reconstruct.torch_layers import Reconstruction, reconstruct_layers

if TYPE_CHECKING:
    import torch

    from prunecli.config.schema import ReconstructStep
    from prunecli.pipeline.state import RunState

STAGE = "reconstructed"


def reconstruct_stage(state: RunState, step: ReconstructStep) -> None:
    """Refit ``state.module``'s layers toward ``state.original``'s outputs, append the report entry, measure."""
    if state.module is None or state.original is None:
        raise InputError("reconstruct needs a torch model; give model.arch and a state_dict instead of an ONNX file")
    calibration = calibration_batches(state, count=step.batches)
    start = time.perf_counter()
    with state.timed("reconstruct"):
        result = reconstruct_layers(state.module, state.original, state.keep, batches=calibration, ridge=step.ridge)
    seconds = time.perf_counter() - start
    state.reconstruction.append(reconstruction_entry(step, result, samples=sum(len(b) for b in calibration),
                                                     seconds=seconds))  # fmt: skip
    from prunecli.pipeline.measure import measure_stage

    measure_stage(state, STAGE)


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
