"""The base of every config object: unknown keys are errors, values are checked strictly."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base for every config object: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
