"""The pipeline schema: versioned, validated data. Unknown keys and wrong types are errors.

A pipeline names the model, the data, an ordered list of steps (discriminated by ``kind``),
latency settings and pass/fail gates::

    version: 1
    model: {path: digits_cnn.pt, arch: archs.py:DigitsCNN, input_shape: [1, 1, 8, 8]}
    data: {format: npz, train: digits_train.npz, eval: digits_val.npz}
    steps:
      - {kind: score, criterion: l2}
      - {kind: select, ratio: 0.5, scope: local, round_to: 4, ignore: [fc]}
      - {kind: prune}
      - {kind: finetune, epochs: 3, lr: 1.0e-3, distill: {alpha: 0.5, temperature: 4}}
      - {kind: evaluate}
    gates: {max_accuracy_drop: 0.01, min_macs_reduction: 0.5}

Relative paths are resolved against the pipeline file's folder (see ``config.loading``). The
step classes live in ``config.steps`` and are importable from here too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from prunecli.config.base import StrictModel
from prunecli.config.steps import (  # the step classes are part of the schema's API
    DistillSpec,
    EvaluateStep,
    FinetuneStep,
    HybridCriterion,
    PruneBlocksStep,
    PruneStep,
    QuantizeStep,
    ReconstructStep,
    RegularizeStep,
    RepeatStep,
    ScoreStep,
    SelectStep,
    SparsifyStep,
    Step,
    TargetSpec,
    ThresholdSpec,
)

__all__ = [
    "DataSpec", "DistillSpec", "EvaluateStep", "FinetuneStep", "Gates", "HybridCriterion", "LatencySpec",
    "ModelSpec", "Pipeline", "PruneStep", "QuantizeStep", "RESERVED_STAGE_NAMES", "ScoreStep", "SelectStep",
    "SparsifyStep", "Step", "StrictModel", "TargetSpec", "ThresholdSpec", "RegularizeStep", "RepeatStep",
    "PruneBlocksStep", "ReconstructStep",
]  # fmt: skip

ModelFormat = Literal["auto", "state_dict", "pickle", "export", "onnx"]
DataFormat = Literal["npz", "pt", "csv", "image_folder", "digits"]
Device = Literal["cpu", "cuda"]


class ModelSpec(StrictModel):
    """Where the model is and how to rebuild it.

    ``arch`` is ``package.module:callable`` or ``path/to/file.py:callable`` (relative to the
    pipeline file); it is called with ``kwargs`` to build the module a state_dict loads into.
    An ``.onnx`` file (or ``format: onnx``) is pruned as a graph: score (l1, l2, fpgm, random),
    select, prune and evaluate run on it and the pruned graph is written as ``model.onnx``.
    """

    path: Path | None = None
    arch: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    input_shape: list[PositiveInt] | None = Field(
        default=None, description="Shape of one input batch, batch dimension first, e.g. [1, 1, 8, 8]."
    )
    format: ModelFormat = "auto"

    @field_validator("arch")
    @classmethod
    def _arch_has_callable(cls, value: str | None) -> str | None:
        if value is not None and (":" not in value or value.endswith(":") or value.startswith(":")):
            raise ValueError("arch must look like 'package.module:Callable' or 'file.py:Callable'")
        return value


class DataSpec(StrictModel):
    """The data set: a training split (for fine-tuning and data-driven criteria) and an eval split."""

    format: DataFormat = Field(
        description="npz/pt: arrays 'inputs' (N, ...) and 'labels' (N,) (or 'x'/'y'); csv: a header row, a label "
        "column and numeric feature columns; image_folder: root/<class_name>/*.png|jpg; digits: scikit-learn's "
        "8x8 digits. uint8 inputs (npz, pt, image pixels) are divided by 255; other dtypes and CSV values are "
        "used as they are."
    )
    train: Path | None = Field(default=None, description="Training file (folder for image_folder); digits ignores it.")
    eval: Path | None = Field(default=None, description="Eval file (folder for image_folder); digits ignores it.")
    batch_size: PositiveInt = Field(
        default=64, description="Samples per batch; under torchrun the global fine-tuning batch, split over the ranks."
    )
    label_column: str = Field(default="label", description="CSV only: the column holding integer labels.")
    image_size: list[PositiveInt] | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="image_folder only: [height, width] to resize to; set it to the model input's height and width.",
    )
    grayscale: bool = Field(
        default=False, description="image_folder only: read images as one channel (for 1-channel models); else RGB."
    )
    scale: float = Field(
        default=1.0,
        gt=0,
        description="Inputs are multiplied by this after reading (after uint8 inputs are divided by 255).",
    )


class LatencySpec(StrictModel):
    """How latency is measured: every stage's model timed interleaved with the original's, in rounds.

    Each round times every model once (a few calls for sub-millisecond models); p50/p90 are over
    rounds, and a stage's speed-up is the median of its per-round ratios to the original, with a
    95 % interval. An interval wider than ``max_interval_width`` of its median is reported unstable.
    """

    warmup: int = Field(default=5, ge=0, description="Untimed calls per model before the rounds.")
    repeats: PositiveInt = Field(default=30, description="Timed rounds; at least 6 give a speed-up interval.")
    batch_size: PositiveInt = 1
    threads: PositiveInt | None = Field(
        default=None, description="Intra-op threads while measuring latency (torch and ONNX Runtime); default: threads."
    )
    backends: list[Literal["torch", "onnxruntime"]] = Field(default_factory=lambda: ["torch", "onnxruntime"])
    max_interval_width: float = Field(
        default=0.2, gt=0, description="A speed-up interval wider than this fraction of its median is unstable."
    )


class Gates(StrictModel):
    """Pass/fail limits checked on the final model; a failed gate makes the run exit 1."""

    max_accuracy_drop: float | None = Field(default=None, ge=0, description="Fraction, e.g. 0.01 for one point.")
    min_macs_reduction: float | None = Field(default=None, ge=0, lt=1, description="Fraction of MACs removed.")
    min_params_reduction: float | None = Field(default=None, ge=0, lt=1, description="Fraction of params removed.")
    min_speedup: float | None = Field(
        default=None, gt=0,
        description="Speed-up of the final stage over the original (first latency backend); passes only when "
        "the low end of its 95 % interval reaches the limit, so noise can fail it but never pass it.",
    )


class Pipeline(StrictModel):
    """A whole pipeline file. ``version`` must be 1."""

    version: Literal[1]
    model: ModelSpec
    data: DataSpec
    steps: list[Step] = Field(min_length=1)
    latency: LatencySpec = Field(default_factory=LatencySpec)
    gates: Gates = Field(default_factory=Gates)
    seed: int = 0
    device: Device = "cpu"
    threads: PositiveInt = Field(
        default=1,
        description="Intra-op threads for all torch and ONNX Runtime work (tracing, fine-tuning, measuring). "
        "1 keeps figures stable on shared machines; raise it on a machine of your own.",
    )

    @model_validator(mode="after")
    def _steps_in_order(self) -> "Pipeline":
        seen: list[str] = []
        for index, step in enumerate(self.steps):
            needs = {"select": "score", "prune": "select", "reconstruct": "prune"}.get(step.kind)
            if needs and needs not in seen:
                raise ValueError(f"steps.{index}: a '{step.kind}' step needs a '{needs}' step before it")
            kinds = [inner.kind for inner in step.steps] if step.kind == "repeat" else [step.kind]
            if "prune" in kinds and "prune" in seen:
                raise ValueError(f"steps.{index}: only one 'prune' step (or one repeat that prunes) is allowed")
            if "quantize" in seen:
                raise ValueError(f"steps.{index}: 'quantize' must be the last step; move it to the end")
            if step.kind == "prune_blocks" and {"prune_blocks", "score", "select", "prune"} & set(seen):
                raise ValueError(
                    f"steps.{index}: one 'prune_blocks' step, before score, select and prune (blocks first, then the "
                    "channels of what is left); move it up"
                )
            seen.extend(kinds)
        _check_stage_names(self.steps)
        from prunecli.config.rounds import check_dynamic_in_repeat

        check_dynamic_in_repeat(self.steps)
        return self

    def steps_with_paths(self) -> list[tuple[str, Any]]:
        """Every step with its location, those inside repeat blocks included: ``[("steps.2.steps.1", step), ...]``."""
        located: list[tuple[str, Any]] = []
        for index, step in enumerate(self.steps):
            located.append((f"steps.{index}", step))
            if step.kind == "repeat":
                located += [(f"steps.{index}.steps.{inner}", s) for inner, s in enumerate(step.steps)]
        return located

    @property
    def all_steps(self) -> list[Any]:
        """Every step, those inside repeat blocks included, in order (a repeat comes before its steps)."""
        return [step for _, step in self.steps_with_paths()]


# Stages the runner names itself, and the report's other top-level keys: an evaluate step can't use them.
RESERVED_STAGE_NAMES = frozenset({
    "original", "pruned", "finetuned", "stages", "verification", "gates", "groups", "prunability", "model",
    "outputs", "seed", "device", "threads", "timings_s", "prunecli_version", "scoring",
    "selection", "quantized", "quantization", "sparsified", "sparsity", "regularized", "regularization",
    "rounds", "blocks_pruned", "blocks", "reconstructed", "reconstruction", "distributed",
})  # fmt: skip
ROUND_STAGE = re.compile(r"round\d+(\.|$)")  # round<k> and round<k>.<stage>: the stages of a repeat's rounds


def _check_stage_names(steps: list[Any], where: str = "steps") -> None:
    names: list[str] = []
    for index, step in enumerate(steps):
        if step.kind == "repeat":  # its evaluate names become round<k>.<name>
            _check_stage_names(step.steps, where=f"{where}.{index}.steps")
        if step.kind != "evaluate":
            continue
        if ROUND_STAGE.match(step.name):
            raise ValueError(f"{where}.{index}.name: '{step.name}' is a repeat round's stage name; give another name")
        if step.name in RESERVED_STAGE_NAMES or step.name in names:
            taken = "is another evaluate step's name" if step.name in names else "is taken by the report"
            raise ValueError(f"{where}.{index}.name: '{step.name}' {taken}; give this evaluate step another name")
        names.append(step.name)
