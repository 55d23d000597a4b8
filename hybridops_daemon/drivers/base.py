"""The driver contract: check / apply / verify / compensate for the modules a driver supports.

A driver never imports the policy or the journal; the chain runner records what a driver returns.
Secrets reach a driver resolved, in ``StepContext.secrets``, never in ``inputs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class DriverError(Exception):
    """A step's effect could not be checked, applied or verified. ``retryable`` tells the runner whether to retry."""

    retryable = True


class PermanentDriverError(DriverError):
    """Retrying cannot help (bad input, refused by the target, guard tripped)."""

    retryable = False


@dataclass(frozen=True, slots=True)
class StepContext:
    run_id: str
    lane: str
    step_id: str
    module: str
    inputs: Mapping[str, Any]
    secrets: Mapping[str, str]
    fencing_token: int
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class CheckResult:
    """``satisfied``: the outside world already is in the desired state (apply would change nothing)."""

    satisfied: bool
    observed: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    log: tuple[str, ...] = ()
    outputs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The independent read that proves a step worked."""

    ok: bool
    probe: str
    observed: Mapping[str, Any] = field(default_factory=dict)
    detail: str = ""


class Driver(Protocol):
    name: str
    modules: frozenset[str]

    async def check(self, step: StepContext) -> CheckResult: ...

    async def apply(self, step: StepContext) -> ApplyResult: ...

    async def verify(self, step: StepContext) -> ProbeResult: ...

    async def compensate(self, step: StepContext) -> ApplyResult: ...
