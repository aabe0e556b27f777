"""The pipeline's steps, one config class per ``kind``, and the ``Step`` union that tells them apart.

Each class validates its own options (unknown keys, ranges, modes that exclude each other) and
names the fix in its errors; ``prunecli.pipeline.steps`` registers one handler per class.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, PositiveInt, field_validator, model_validator

from prunecli.config.base import StrictModel


from prunecli.config.selection_steps import (  # noqa: F401 (re-exported with the other steps)
    CRITERION_HELP, HybridCriterion, ScoreStep, SelectStep, TargetSpec, ThresholdSpec,
)  # fmt: skip


class PruneStep(StrictModel):
    """Physically remove the selected channels, then verify pruned == masked original."""

    kind: Literal["prune"]
    tolerance: float = Field(default=1e-4, gt=0, description="Max abs difference allowed by verification.")


class DistillSpec(StrictModel):
    """Knowledge distillation from the unpruned model during fine-tuning."""

    alpha: float = Field(default=0.5, ge=0.0, le=1.0, description="Weight of the distillation loss.")
    temperature: float = Field(default=4.0, gt=0)


class FinetuneStep(StrictModel):
    """Train the pruned model on the training split.

    On an ONNX input the current graph runs as a torch module (prunecli.onnx_torch) with the same
    options, distilled from the input graph; the trained values are written back into the graph.
    """

    kind: Literal["finetune"]
    epochs: int = Field(default=1, ge=0)
    lr: float = Field(default=1e-3, gt=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    momentum: float = Field(default=0.9, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    schedule: Literal["none", "cosine", "step"] = "cosine"
    step_size: PositiveInt = Field(default=1, description="step schedule: epochs between decays.")
    gamma: float = Field(default=0.1, gt=0, description="step schedule: decay factor.")
    distill: DistillSpec | None = None


class RegularizeStep(FinetuneStep):
    """Train with a sparsity penalty so that what to remove becomes obvious; measured as stage ``regularized``.

    Every batch's loss is the task loss plus ``strength`` times the penalty. ``l1_bn``: the sum of
    |gamma| of every normalisation layer's scale (network slimming, Liu et al. 2017; follow with
    ``score: bn_scale`` and a ``select`` threshold). ``group_lasso``: the sum, over every channel of
    every prunable group, of the L2 norm of all its slices in all the group's members (the channel
    graph's coupled rows, norm entries and consumer columns). ``l1`` / ``l2``: the sum of |w| / w^2
    of every weight with 2 or more dimensions. The training options are a finetune step's. On an ONNX
    input the graph is trained in torch as by finetune (``l1_bn`` reads its normalisation nodes' scales).
    """

    kind: Literal["regularize"]  # type: ignore[assignment]
    penalty: Literal["l1_bn", "group_lasso", "l1", "l2"] = Field(
        description="l1_bn: |gamma| of normalisation scales; group_lasso: L2 norm of each prunable channel's "
        "slices in all its group's members; l1 / l2: |w| / w^2 of every weight with >= 2 dims."
    )
    strength: float = Field(gt=0, description="lambda: the penalty's weight in the loss (loss = task + lambda * P).")
    epochs: int = Field(default=5, ge=1, description="Epochs of training with the penalty.")


class EvaluateStep(StrictModel):
    """Measure the current model (size, MACs, latency, accuracy) under ``name`` in the report."""

    kind: Literal["evaluate"]
    name: str = "final"


class SparsifyStep(StrictModel):
    """Zero individual weights of conv and linear layers; the zeros stay zero through later fine-tuning.

    Exactly one of ``ratio`` (fraction of the considered weights zeroed, smallest |w| first, per
    layer or ``scope: global``), ``threshold`` (weights with |w| below it) or ``pattern`` (``"N:M"``:
    in every M consecutive weights along a row of ``weight.reshape(out, -1)`` the N largest stay;
    layers whose row size is not a multiple of M are skipped and reported). The output layer is
    left dense unless ``include_output``; ``ignore`` globs name modules left dense. ``method:
    movement`` (with ``ratio``) first trains ``epochs`` epochs accumulating each weight's movement
    score ``-sum over steps of w * dL/dw`` (Sanh et al. 2020), then zeroes the lowest-scored weights.
    On an ONNX input the layers are the weight initializers of Conv, Gemm and MatMul nodes (movement
    trains the graph in torch first).
    """

    kind: Literal["sparsify"]
    method: Literal["magnitude", "movement"] = Field(
        default="magnitude",
        description="How weights are ranked: magnitude (|w|), or movement (-sum of w * dL/dw over `epochs` of "
        "training; the weights moving toward zero go first).",
    )
    ratio: float | None = Field(default=None, ge=0.0, lt=1.0, description="Fraction of weights zeroed.")
    threshold: float | None = Field(default=None, ge=0.0, description="Weights with |w| below this are zeroed.")
    pattern: str | None = Field(default=None, description='N:M structured sparsity, e.g. "2:4" or "4:8" (quoted).')
    scope: Literal["local", "global"] = Field(default="local", description="ratio: per layer, or over all layers.")
    ignore: list[str] = Field(default_factory=list, description="Module names or globs left dense.")
    include_output: bool = Field(default=False, description="Also sparsify the model's last conv/linear layer.")
    dynamic: bool = Field(
        default=False,
        description="Inside a repeat: each round recomputes the masks from |w| of all considered weights at the "
        "round's ratio, a weight masked earlier counting with the value it had when masked; a masked weight that "
        "now ranks above a kept one comes back with that value. Without it a weight masked once stays masked.",
    )
    epochs: PositiveInt | None = Field(
        default=None, description="movement: epochs of training (adam, cosine) that accumulate the scores; default 1."
    )
    lr: float | None = Field(default=None, gt=0, description="movement: learning rate of that training; default 1e-3.")

    @field_validator("pattern", mode="before")
    @classmethod
    def _pattern_form(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError('quote the pattern, e.g. pattern: "2:4" (unquoted YAML reads 2:4 as a number)')
        if isinstance(value, str):
            n, _, m = value.partition(":")
            if not (n.isdigit() and m.isdigit() and 0 < int(n) < int(m)):
                raise ValueError(f"pattern '{value}' is not N:M with 0 < N < M; write e.g. \"2:4\"")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> "SparsifyStep":
        given = [name for name in ("ratio", "threshold", "pattern") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of ratio, threshold or pattern, e.g. ratio: 0.9 or pattern: \"2:4\"")
        if self.pattern is not None and self.scope == "global":
            raise ValueError("scope applies to ratio only; remove scope: global from this pattern step")
        return self

    @model_validator(mode="after")
    def _movement_options(self) -> "SparsifyStep":
        if self.method == "movement" and self.ratio is None:
            raise ValueError("method: movement zeroes the lowest-scored fraction of the weights; give ratio, e.g. 0.5")
        if self.method != "movement" and (self.epochs is not None or self.lr is not None):
            raise ValueError("epochs and lr apply to method: movement only; remove them or set method: movement")
        return self

    @model_validator(mode="after")
    def _dynamic_ratio(self) -> "SparsifyStep":
        if self.dynamic and (self.method != "magnitude" or self.ratio is None):
            raise ValueError("dynamic applies to method: magnitude with a ratio; remove dynamic or give ratio")
        return self

    @property
    def n_m(self) -> tuple[int, int] | None:
        """The pattern as (N, M), or None."""
        if self.pattern is None:
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)


class QuantizeStep(StrictModel):
    """Quantize the exported ONNX model to int8 with ONNX Runtime; the last step, measured as stage ``quantized``.

    ``dynamic``: int8 weights, activations quantized at run time. ``static``: int8 weights and
    activations (QDQ), ranges calibrated on ``batches`` batches of the train split (eval if none).
    On an ONNX input the current graph is quantized as it is (no export).
    """

    kind: Literal["quantize"]
    mode: Literal["dynamic", "static"] = "static"
    batches: PositiveInt = Field(default=8, description="static: calibration batches (of data.batch_size).")


class ReconstructStep(StrictModel):
    """Refit, by least squares, the layers that lost input channels so they reproduce the original's outputs.

    Channel pruning by reconstruction (He et al. 2017; ThiNet, Luo et al. 2017), no gradients: in
    forward order, each Linear / Conv2d whose inputs were pruned gets the weight and bias that best
    map its inputs in the pruned model to the same layer's outputs (the kept ones) in the unpruned
    model, on ``batches`` batches of the train split (eval if none). Needs a prune step before it;
    measured as stage ``reconstructed``. On an ONNX input the layers are Conv, Gemm and MatMul (+ Add
    bias) nodes, refit in ONNX Runtime toward the same nodes of the input graph.
    """

    kind: Literal["reconstruct"]
    batches: PositiveInt = Field(
        default=8, description="Calibration batches (of data.batch_size) of the train split (eval if none)."
    )
    ridge: float = Field(
        default=1e-2, ge=0,
        description="Ridge strength, relative to the mean squared input of the layer; it pulls the refit weights "
        "toward the pruned ones. 0: plain least squares.",
    )  # fmt: skip


class PruneBlocksStep(StrictModel):
    """Remove whole residual branches (the ``f`` in ``x + f(x)``) and, on request, identity-shaped layers.

    Candidates are found in the traced graph, not by class name. ``residual``: the branch of every
    residual add; a module made of residual branches only (a transformer block) is one candidate
    and becomes a pass-through; a branch in a module that does more (a ResNet BasicBlock, ReLU after
    the add) loses its modules (pass-throughs, its last one returns zeros). ``layer``: modules with
    parameters, called once on one tensor, whose output has the input's shape (replaced by a
    pass-through). Each candidate is scored removed alone; the lowest-scored ``count`` (or ``ratio``
    of the candidates, rounded down) go, skipping any that overlaps one already chosen. Verified:
    the pruned outputs equal the original's with those branches zeroed (layers bypassed) by hooks.
    Measured as stage ``blocks_pruned``; comes before score/select/prune, which then see the smaller model.
    On an ONNX input: the branches of residual Adds (the nodes between the skip and the Add, feeding
    nothing else), cut out of the graph, scored and verified in ONNX Runtime (``layer`` has no ONNX form).
    """

    kind: Literal["prune_blocks"]
    count: PositiveInt | None = Field(default=None, description="How many candidates are removed.")
    ratio: float | None = Field(
        default=None, gt=0, le=1, description="Fraction of the candidates removed (rounded down)."
    )
    candidates: list[Literal["residual", "layer"]] = Field(
        default_factory=lambda: ["residual"], min_length=1,
        description="residual: residual branches and blocks made of them; layer: modules whose output has their "
        "input's shape (norms, square convs and linears, whole stages).",
    )  # fmt: skip
    criterion: Literal["loss", "relative_norm"] = Field(
        default="loss",
        description="loss: increase of the eval-mode loss when the candidate alone is removed (hooks), over "
        "`batches` batches of the train split (eval if none); relative_norm: mean ||f(x)|| / ||x|| of a branch "
        "(||M(x) - x|| / ||x|| of a block or layer), no labels needed.",
    )
    batches: PositiveInt = Field(default=4, description="Scoring batches (of data.batch_size).")
    ignore: list[str] = Field(
        default_factory=list, description="Module names or globs; candidates touching a matching module stay."
    )
    tolerance: float = Field(default=1e-4, gt=0, description="Max abs difference allowed by verification.")

    @model_validator(mode="after")
    def _count_or_ratio(self) -> "PruneBlocksStep":
        if (self.count is None) == (self.ratio is None):
            raise ValueError("set exactly one of count or ratio, e.g. count: 2 or ratio: 0.25")
        return self


class RepeatStep(StrictModel):
    """Run ``steps`` ``rounds`` times, removing a little more each round (gradual pruning), on a schedule.

    The inner ``select``'s ``ratio`` or ``target`` (``macs``/``params``) and the inner ``sparsify``'s
    ``ratio`` are the values the last round reaches; ``schedule`` gives every earlier round's value
    (see ``prunecli.selection.schedule``), from ``start`` (round 1's value) or else from the unpruned
    model. Every value counts against the unpruned model: ``target: {macs: 0.3}`` keeps 0.3 of the
    original MACs, ``ratio: 0.5`` removes half of each group's original channels. The channel graph
    is rebuilt every round, each prune is verified, and each round's stages are named
    ``round<k>.<stage>`` (``round2.pruned``, ``round2.finetuned``). Allowed inside: score, select,
    prune, finetune, sparsify, evaluate; a round needs a prune or a sparsify step.
    """

    kind: Literal["repeat"]
    rounds: int = Field(ge=1, le=100, description="How many times the steps run.")
    schedule: Literal["linear", "agp", "geometric"] = Field(
        default="agp",
        description="How the kept fraction k moves from the first round to the final value: linear; agp (cubic, "
        "Zhu & Gupta 2017: k_N + (k_0 - k_N)(1 - p)^3, big steps first); geometric (each round keeps the same "
        "share of the previous one).",
    )
    start: float | None = Field(
        default=None, ge=0, le=1,
        description="Round 1's value, in the scheduled option's unit (ratio: fraction removed; target: fraction "
        "kept). Default: the schedule's first step from the unpruned model.",
    )  # fmt: skip
    steps: list[Step] = Field(min_length=1, description="The steps of one round, in order.")

    @model_validator(mode="after")
    def _round_steps(self) -> "RepeatStep":
        from prunecli.config.rounds import check_repeat

        check_repeat(self)
        return self


Step = Annotated[
    Union[
        ScoreStep, SelectStep, PruneStep, FinetuneStep, EvaluateStep, SparsifyStep, QuantizeStep, RegularizeStep,
        RepeatStep, PruneBlocksStep, ReconstructStep,
    ],
    Field(discriminator="kind"),
]
RepeatStep.model_rebuild()  # its steps are Steps: resolved once the union exists
