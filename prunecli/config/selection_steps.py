"""The score and select steps: how channels are ranked (criteria) and how many of each group go.

``ScoreStep`` names a criterion (or a hybrid of several); ``SelectStep`` turns the scores into a
plan by exactly one of ratio, threshold (``ThresholdSpec``), target (``TargetSpec``) or a
sensitivity sweep. ``prunecli.config.steps`` puts them in the ``Step`` union with the others.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from prunecli.config.base import StrictModel


CRITERION_HELP = (
    "A criterion name, or {hybrid: {name: weight, ...}}. Static: l1, l2 (norms of the channel's weights), "
    "random (seeded baseline), fpgm (sum of distances from the channel's filter to the others; small = redundant), "
    "bn_scale (|gamma| of the normalisation after the producer; groups without one are kept whole). Data-driven, "
    "over `batches` batches of the train split (eval if none), activations read at the inputs of the group's "
    "consumers: activation (mean |activation|), apoz (1 - fraction of zeros after the activation), taylor "
    "(|sum activation x gradient of the loss|), gradient (mean |dL/dw| over the group's weights), "
    "weight_activation (mean |activation| x sum |outgoing weights|). hybrid: the weighted sum of "
    "the named criteria's scores, each rank-normalised to [0, 1] per group. On an ONNX model the data-driven "
    "ones run the graph in torch (prunecli.onnx_torch); bn_scale reads unfused normalisation nodes."
)


class HybridCriterion(StrictModel):
    """``{hybrid: {l2: 0.5, taylor: 0.5}}``: a weighted sum of rank-normalised criteria (see criteria.hybrid)."""

    hybrid: dict[str, float] = Field(min_length=1, description="Criterion name -> weight (> 0).")

    @field_validator("hybrid")
    @classmethod
    def _known_parts(cls, value: dict[str, float]) -> dict[str, float]:
        from prunecli.criteria.registry import check_criterion_name

        for name, weight in value.items():
            check_criterion_name(name)
            if not weight > 0:
                raise ValueError(f"weight of '{name}' is {weight:g}; give every part a weight > 0")
        return value


class ScoreStep(StrictModel):
    """Compute an importance per channel of every prunable group (higher = more important)."""

    kind: Literal["score"]
    criterion: str | HybridCriterion = Field(default="l2", description=CRITERION_HELP)
    batches: PositiveInt = Field(
        default=8, description="Data-driven criteria: batches (of data.batch_size) of the train split (eval if none)."
    )
    reduction: Literal["sum", "mean", "max"] = Field(
        default="sum",
        description="How a coupled group's member scores (each branch of a residual sum, producers, consumers...) "
        "combine per channel. l1/l2 with sum are the group-lasso norm.",
    )

    @field_validator("criterion", mode="before")
    @classmethod
    def _known_criterion(cls, value: Any) -> Any:
        from prunecli.criteria.registry import check_criterion_name

        if isinstance(value, str):
            return check_criterion_name(value)
        if not isinstance(value, dict):
            return value
        from pydantic import ValidationError

        try:
            return HybridCriterion.model_validate(value)
        except ValidationError as error:  # one line about the mapping, not one per union member
            errors = error.errors()
            first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
            where = ".".join(str(part) for part in first["loc"])
            problem = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
            if first["type"] == "extra_forbidden":
                where, problem = "", f"unknown key '{where}'; write criterion: {{hybrid: {{l2: 0.5, taylor: 0.5}}}}"
            raise ValueError(f"{where + ': ' if where else ''}{problem}") from None

    @property
    def criterion_spec(self) -> str | dict[str, float]:
        """The criterion name, or the hybrid weights by name."""
        return self.criterion if isinstance(self.criterion, str) else dict(self.criterion.hybrid)


class ThresholdSpec(StrictModel):
    """A score threshold relative to the scores themselves; set exactly one form.

    ``relative: 0.1``: below 10 % of the group's highest score (``scope: global``: of the mean of
    all groups' scores, each group divided by its own mean first); ``std: 1.0``: below
    ``mean - 1.0 * std``; ``percentile: 30``: below the 30th percentile. Channels scored strictly
    below the cutoff go.
    """

    relative: float | None = Field(default=None, gt=0, description="Fraction of the group max (global: of the mean).")
    std: float | None = Field(default=None, description="k in mean - k * std.")
    percentile: float | None = Field(default=None, ge=0, le=100)

    @model_validator(mode="after")
    def _one_form(self) -> "ThresholdSpec":
        if len(_given(self)) != 1:
            raise ValueError("set exactly one of relative, std or percentile, e.g. threshold: {relative: 0.1}")
        return self

    @property
    def form(self) -> tuple[str, float]:
        """The one form set, as (name, value): ``("relative", 0.1)``."""
        return _given(self)[0]


class TargetSpec(StrictModel):
    """What the pruned model must reach; set exactly one: ``macs``/``params`` (fraction kept) or ``latency_ms``."""

    macs: float | None = Field(default=None, gt=0, le=1, description="Fraction of the original MACs kept.")
    params: float | None = Field(default=None, gt=0, le=1, description="Fraction of the original params kept.")
    latency_ms: float | None = Field(
        default=None, gt=0, description="p50 milliseconds on the first latency backend and the run's device."
    )

    @model_validator(mode="after")
    def _one_target(self) -> "TargetSpec":
        if len(_given(self)) != 1:
            raise ValueError("set exactly one of macs, params or latency_ms, e.g. target: {macs: 0.5}")
        return self

    @property
    def metric(self) -> tuple[str, float]:
        """The one target set, as (name, value): ``("macs", 0.5)``."""
        return _given(self)[0]


def _given(spec: StrictModel) -> list[tuple[str, float]]:
    """The (name, value) fields of ``spec`` that are not None, in declaration order."""
    return [(name, float(value)) for name, value in spec if value is not None]


_NO_MODE = object()  # SelectStep input with none of ratio, threshold, target


class SelectStep(StrictModel):
    """Decide which channels go, by exactly one of ``ratio``, ``threshold``, ``target`` or ``by: sensitivity``.

    ``ratio``: the fraction of channels removed (per group, or over all groups with ``scope:
    global``). ``threshold``: channels scored below it go (a number, or a ``ThresholdSpec``).
    ``target``: how many channels go for the pruned model to reach the target, found by bisection;
    ranked over all groups (``scope: global``, the default) or the same fraction of every group
    (``scope: local``).
    ``by: sensitivity``: each group's ratio is the largest of ``sensitivity_ratios`` at which that
    group alone (pruned by its scores, no fine-tuning) loses at most ``max_drop`` eval accuracy.
    ``overrides`` fix a group's ratio by module glob; ``max_ratio`` caps every other group;
    ``round_to`` and ``min_channels`` apply last, in every mode.
    """

    kind: Literal["select"]
    ratio: float | None = Field(default=None, ge=0.0, lt=1.0, description="Fraction of channels removed.")
    scope: Literal["local", "global"] | None = Field(
        default=None,
        description="local: every group alike; global: channels ranked over all groups, each group's scores divided "
        "by their mean. Default: local for ratio and threshold, global for target.",
    )
    round_to: PositiveInt = 1
    min_channels: PositiveInt = 1
    threshold: float | ThresholdSpec | None = Field(
        default=None, description="A score (channels below it go) or {relative|std|percentile: value}."
    )
    target: TargetSpec | None = None
    max_ratio: float = Field(default=0.9, gt=0, le=1, description="Most of any group's channels a mode may remove.")
    overrides: dict[str, float] = Field(
        default_factory=dict, description="Module glob -> that group's ratio, e.g. {'layer4.*': 0.7, 'head.*': 0}."
    )
    ignore: list[str] = Field(default_factory=list, description="Module names or globs whose output channels are kept.")
    by: Literal["scores", "sensitivity"] = Field(
        default="scores",
        description="sensitivity: per-group ratios from a sensitivity sweep, each group alone costing <= max_drop.",
    )
    max_drop: float | None = Field(
        default=None, ge=0, description="by: sensitivity: most eval accuracy one group alone may cost (0.01: a point)."
    )
    sensitivity_ratios: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], min_length=1,
        description="by: sensitivity: the ratios swept per group.",
    )

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold_form(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        from pydantic import ValidationError

        try:
            return ThresholdSpec.model_validate(value)
        except ValidationError as error:  # one line about the mapping, not one per union member
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            problem = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
            if first["type"] == "extra_forbidden":
                where, problem = "", f"unknown key '{where}'; use one of relative, std or percentile"
            raise ValueError(f"{where + ': ' if where else ''}{problem}") from None

    @model_validator(mode="before")
    @classmethod
    def _some_mode(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("by") == "sensitivity":
            return data
        if isinstance(data, dict) and all(data.get(key) is None for key in ("ratio", "threshold", "target")):
            return {**data, "ratio": _NO_MODE}  # reported as ratio: missing required key; add it
        return data

    @field_validator("ratio", mode="before")
    @classmethod
    def _ratio_given(cls, value: Any) -> Any:
        if value is _NO_MODE:
            from pydantic_core import PydanticCustomError

            raise PydanticCustomError("missing", "Field required")
        return value

    @model_validator(mode="after")
    def _one_mode_and_overrides_in_range(self) -> "SelectStep":
        given = [name for name in ("ratio", "threshold", "target") if getattr(self, name) is not None]
        if self.by == "sensitivity":
            given.append("by: sensitivity")
            if self.max_drop is None:
                raise ValueError("by: sensitivity needs max_drop, the accuracy one group alone may cost, e.g. 0.01")
        elif self.max_drop is not None:
            raise ValueError("max_drop applies to by: sensitivity only; add by: sensitivity or remove max_drop")
        if len(given) > 1:
            raise ValueError(
                f"{' and '.join(given)} exclude each other; keep one of ratio, threshold, target or by: sensitivity"
            )
        if self.scope is None:
            self.scope = "global" if self.target is not None else "local"
        for pattern, ratio in self.overrides.items():
            if not 0 <= ratio <= self.max_ratio:
                raise ValueError(
                    f"overrides['{pattern}'] is {ratio:g}, outside [0, max_ratio={self.max_ratio:g}]; "
                    "lower it or raise max_ratio"
                )
        return self

    @property
    def mode(self) -> str:
        """``ratio``, ``threshold``, ``target`` or ``sensitivity``: the one that is set."""
        if self.by == "sensitivity":
            return "sensitivity"
        return "target" if self.target is not None else "threshold" if self.threshold is not None else "ratio"
