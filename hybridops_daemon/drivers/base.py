"""The driver contract: check / apply / verify / compensate for the modules a driver supports.

A driver never imports the policy or the journal; the chain runner records what a driver returns.
Secrets reach a driver resolved, in ``StepContext.secrets``, never in ``inputs``.

Fencing beside the change: where the target can hold it, a driver writes the run's fencing token next to its
change (a label, a TXT record, a custom field) and its check() hands the stamp it finds to
``refuse_newer_stamp``, so a leader whose leadership has ended cannot overwrite what a newer one changed.
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


class Fenced(PermanentDriverError):
    """The target carries a change stamped with a newer fencing token than this run's: a newer leader acted
    there, and this run must not overwrite it. Permanent: retrying under the same token cannot help."""


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


def refuse_newer_stamp(target: str, stamped: int | None, step: StepContext) -> None:
    """Raise Fenced when ``target`` was changed under a fencing token newer than ``step``'s own.

    ``stamped`` is the token found beside the target's last change, None when there is none (never stamped,
    or a stamp that does not parse: see ``parse_stamp``). A stamp equal to or older than the step's token, or
    none, lets the step proceed. ``target`` names the target in the message (e.g. "floating IP 203.0.113.10").
    """
    if stamped is not None and stamped > step.fencing_token:
        raise Fenced(
            f"fenced: {target} was changed under fencing token {stamped}, newer than this run's "
            f"{step.fencing_token}; refusing to overwrite"
        )


def parse_stamp(text: str | None) -> int | None:
    """A stamp's token from its decimal text (``"42"``); None for no text or text that is not a plain decimal
    (someone else's edit: it proves no newer leadership, so it does not block, and the next apply replaces it)."""
    if text is None or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def stamp_mismatch(target: str, stamped: int | None, step: StepContext) -> str:
    """For verify(): "" when ``target`` carries ``step``'s own fencing token, else why not, in words."""
    if stamped == step.fencing_token:
        return ""
    if stamped is None:
        return f"{target} carries no fencing stamp, not this run's token {step.fencing_token}"
    newer = " (newer: fenced)" if stamped > step.fencing_token else ""
    return f"{target} is stamped with fencing token {stamped}{newer}, not this run's {step.fencing_token}"
