"""What both config files share: the strict base model, durations, names and secret references."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, WithJsonSchema, model_validator

from hybridops_daemon.durations import DURATION_PATTERN, parse_duration


class Strict(BaseModel):
    """Frozen, and ``extra="forbid"`` so a typo is an error, not a silently ignored key."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)


# The JSON schema must accept what operators write ("30s"), not only the float the model holds.
_DURATION_SCHEMA = {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": DURATION_PATTERN.pattern}]}
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA, mode="validation")]


def _above_zero(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError('must be a duration above 0, like "30s"')
    return seconds


# Intervals and timeouts: zero would spin a loop or fail every wait, so it is refused here, not at run time.
_POSITIVE_DURATION_SCHEMA = {
    "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": DURATION_PATTERN.pattern}]
}
PositiveDuration = Annotated[
    float,
    BeforeValidator(parse_duration),
    AfterValidator(_above_zero),
    WithJsonSchema(_POSITIVE_DURATION_SCHEMA, mode="validation"),
]


def _named(pattern: str, hint: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(hint)
        return value

    return check


# Names checked by validators rather than Field(pattern=...), so an operator reads a hint, not a regex.
Name = Annotated[
    str,
    AfterValidator(_named(r"[a-z][a-z0-9_-]{0,62}", "must be a lowercase name like prod or floating-ip (a-z, 0-9, _ and -)")),
    WithJsonSchema({"type": "string", "pattern": r"^[a-z][a-z0-9_-]{0,62}$"}),
]
SignalName = Annotated[
    str,
    AfterValidator(_named(r"[a-z][a-z0-9_]*", "must be a lowercase signal name like primary_http (a-z, 0-9 and _)")),
    WithJsonSchema({"type": "string", "pattern": r"^[a-z][a-z0-9_]*$"}),
]


class SecretRef(Strict):
    """Where a secret lives: an environment variable or a file. Never the secret itself."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _by_reference(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("secrets are given by reference, {env: VAR} or {file: path}, never inline")
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret reference names exactly one of 'env' or 'file'")
        return self
