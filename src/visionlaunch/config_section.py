"""The base of every section of the run config (config.py's and optim_config.py's): the rules each key follows."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from visionlaunch.numbers import bool_for_number


class ConfigSection(BaseModel):
    # forbid: a misspelt key fails loudly. frozen: a validated config never changes (what a run used is recorded).
    # allow_inf_nan: an infinite or NaN number is never a valid setting (optim.lr=.inf would fail at step 1).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if bool_for_number(cls.model_fields[info.field_name].annotation, value):
            raise ValueError("expected a number, not true/false (YAML reads those words as booleans)")
        return value
