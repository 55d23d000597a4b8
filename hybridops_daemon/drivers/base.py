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
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, runtime_checkable

from hybridops_daemon import secrets  # the module, not its names: it may still be loading (see drivers/__init__.py)
from hybridops_daemon.config.base import SecretRef


class DriverError(Exception):
    """A step's effect could not be checked, applied or verified. ``retryable`` tells the runner whether to retry.

    Raised as such only for a failure no kind below describes (an answer the SDK could not make sense of, a
    change by someone else between two reads): retryable, so the runner's bounded retries and re-check decide.
    ``code`` is the target's own name for the failure when it gave one (an API error code, an HTTP status, an
    exit status); ``details`` holds further facts a caller may act on (e.g. the lag that tripped a guard).
    Messages name the driver (or its target) and what it tried, never a secret.
    """

    retryable: ClassVar[bool] = True

    def __init__(self, message: str, *, code: str | int | None = None, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.details: Mapping[str, Any] = MappingProxyType(dict(details or {}))


class PermanentDriverError(DriverError):
    """Retrying cannot help. Drivers raise one of the kinds below; this base is what the runner and tests catch."""

    retryable = False


class Unavailable(DriverError):
    """Retryable: the target, or the way to it, did not do what was asked this time for a reason that may pass.

    Raised when a connection is refused or reset, a request or an operation outlasts its time limit (it may
    still land: the runner re-checks before retrying), the target answers 5xx, is busy (locked, in between
    states, starting up), answers something unusable, or runs the change and reports that it failed.
    """


class RateLimited(DriverError):
    """Retryable: the target throttles us (HTTP 429 or the API's own rate-limit code).

    ``retry_after``: seconds from when the error was raised until the target said a retry may pass (its
    ``Retry-After`` or quota reset), None when it did not say.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        code: str | int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.retry_after = retry_after


class Refused(PermanentDriverError):
    """Permanent: the target said no (a 4xx other than not-found and bad credentials, a permission it lacks),
    the step's inputs are invalid, or one of the driver's own guards tripped (lag, split brain, ambiguity)."""


class NotFound(PermanentDriverError):
    """Permanent: what the step names does not exist: the resource at the target (404, no such zone, server,
    instance, floating IP), or a site, pack or program the driver's configuration should provide."""


class CredentialsUnavailable(PermanentDriverError):
    """Permanent: the driver has no usable credentials: a secret reference resolves to nothing (or to something
    that is no key), or the target rejects the credentials it was given (401, bad password, TSIG rejected).
    The message names the reference, never the secret."""


class NoCompensation(PermanentDriverError):
    """Permanent: compensate() was asked for, but the module defines no undo for the step (the failback chain
    puts things back), or there is nothing this run applied to undo."""


class Fenced(Refused):
    """The target carries a change stamped with a newer fencing token than this run's: a newer leader acted
    there, and this run must not overwrite it. Permanent: retrying under the same token cannot help."""


def clipped(text: str, limit: int, secret: str, mask: str = "***") -> str:
    """``text`` with ``secret`` masked, then cut to ``limit`` characters. In this order: a secret cut at the limit no
    longer matches itself, so masking afterwards would let its first characters through to the journal and the logs."""
    return (text.replace(secret, mask) if secret else text)[:limit]


def scrubbed(error: DriverError, secret: str, mask: str = "***") -> DriverError:
    """``error`` with ``secret`` masked in its message, should an upstream have echoed it; kind, code and details kept."""
    if secret and secret in str(error):
        error.args = (str(error).replace(secret, mask),)
    return error


def secret(driver: str, name: str, ref: SecretRef) -> str:
    """The secret ``ref`` points at; CredentialsUnavailable naming ``driver`` and the reference when it cannot be read."""
    try:
        return secrets.resolve(name, ref)
    except secrets.SecretUnavailable as exc:  # names the reference, never a value
        raise CredentialsUnavailable(f"{driver}: {exc}") from None


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
    # Preflight only: the step belongs to the chain whose end state the lane is in now (the failback chain of a lane
    # on its primary), so its target should already be as the step wants it, and a change would be drift.
    at_rest: bool = False


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


@dataclass(frozen=True, slots=True)
class Readiness:
    """What a read-only preflight found: whether the step could succeed now and, when not, why, naming the fault
    ("floating IP 203.0.113.10 is locked", "replica lag 5 MiB over max_lag_bytes 1 MiB"). ``observed`` is what it saw
    (JSON-able, no secret): the journal keeps it when readiness changes. ``metrics`` are numbers worth exporting
    (e.g. ``{"replica_lag_bytes": 123, "replica_lag_seconds": 0.4}``)."""

    ready: bool
    reason: str
    observed: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class Preflight(Protocol):
    """A driver that can check, without changing anything, that a step would succeed now (readiness, issue #13).

    ``preflight`` must never write: no mutating request, no lock taken that a chain could meet. It answers ready or
    not ready with the reason; it raises the driver's usual errors (``CredentialsUnavailable``, ``Refused``,
    ``NotFound``, ``Unavailable``...) when the target answers with one, and the caller reports them as not ready
    with the error's text. The caller bounds it with a timeout. The step's inputs are as profiled, with references
    to a run (``${run.id}``) or to earlier steps' outputs left unrendered: a preflight reads only literal inputs.
    A driver without ``preflight`` is reported "not checked", never ready.
    """

    async def preflight(self, step: StepContext) -> Readiness: ...


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
