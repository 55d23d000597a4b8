"""Readiness: run every step's read-only ``preflight()`` for a lane's chains, concurrently, each within a time budget.

A step whose driver has no preflight is "not checked", never ready. A preflight that raises a driver error, or one
that outruns its budget, is "not ready" with the reason in words; a bug in a driver (any other exception) is "not
ready" too, logged, and never fails the caller. Secrets are resolved as the chain runner resolves them and never
appear in a reason: the redactor that guards the journal masks them first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from hybridops_daemon.chain.templating import UnresolvedReference, render
from hybridops_daemon.config.profile import Profile, Step
from hybridops_daemon.drivers.base import Driver, DriverError, Preflight, Readiness, StepContext
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.policy.readiness import signal_name
from hybridops_daemon.secrets import SecretUnavailable, resolve_all

log = structlog.get_logger("hybridops.readiness")

Chain = Literal["cutover", "failback", "scale"]
CHAINS: tuple[Chain, ...] = ("cutover", "failback", "scale")  # a lane has the first two or the last one
READY, NOT_READY, NOT_CHECKED = "ready", "not ready", "not checked"
MAX_REASON_CHARS = 300


@dataclass(frozen=True, slots=True)
class StepReadiness:
    lane: str
    chain: Chain
    step: str
    state: str  # READY, NOT_READY or NOT_CHECKED
    reason: str
    checked_at: float
    duration_s: float
    observed: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return self.chain, self.step

    @property
    def signal(self) -> str:
        """The signal the observation store carries it as: 1.0 ready, 0.0 not ready (a profile may read it)."""
        return signal_name(self.chain, self.step)

    def document(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "step": self.step,
            "state": self.state,
            "reason": self.reason,
            "checked_at": self.checked_at,
            "duration_s": self.duration_s,
            "observed": dict(self.observed),
            "metrics": dict(self.metrics),
        }


async def read(driver: Preflight, context: StepContext) -> Readiness:
    """A driver's preflight as readiness reads it: a driver error is not ready, its text (an operator's sentence) the
    reason. The driver tests call this too, so they judge a preflight as the daemon does."""
    try:
        return await driver.preflight(context)
    except DriverError as exc:
        return Readiness(False, str(exc))


def preflight_inputs(step: Step, lane: str) -> dict[str, Any]:
    """The step's inputs as profiled, ``${run.*}`` filled with placeholders; a reference to an earlier step's output
    stays as written (there is no run to take it from: a preflight reads only literal inputs)."""
    inputs: dict[str, Any] = {}
    for key, value in step.inputs.items():
        try:
            inputs[key] = render(value, {}, {"id": "preflight", "lane": lane})
        except UnresolvedReference:
            inputs[key] = value
    return inputs


class Preflights:
    """One lane's preflights: its drivers, each step's time budget, the redactor its reasons pass through."""

    def __init__(
        self, lane: str, drivers: Mapping[str, Driver], budget: float, redactor: Redactor, clock: Callable[[], float] = time.time
    ) -> None:
        self.lane = lane
        self._drivers = drivers
        self.budget = budget
        self._redactor = redactor
        self._clock = clock

    async def check(self, profile: Profile, at_rest: Chain = "failback") -> list[StepReadiness]:
        """Every step of both chains, all at once (each preflight reads its own target), in chain order. Bounded by
        the budget: each step gets it whole. ``at_rest``: the chain whose end state the lane is in (its steps are
        told so: a change there is drift)."""
        steps = [(chain, step) for chain in CHAINS for step in profile.chain(chain)]
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._check_step(chain, step, chain == at_rest)) for chain, step in steps]
        return [task.result() for task in tasks]

    def _answer(
        self,
        chain: Chain,
        step: Step,
        started: tuple[float, float],
        state: str,
        reason: str,
        observed: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> StepReadiness:
        # Redact first, cut second: a cut secret no longer matches the redactor.
        text = self._redactor.redact_text(" ".join(reason.split()))[:MAX_REASON_CHARS]
        shown = self._redactor.redact(dict(observed or {}))
        assert isinstance(shown, dict)  # a mapping redacts to a mapping
        took = round(time.monotonic() - started[1], 4)
        return StepReadiness(self.lane, chain, step.id, state, text, started[0], took, shown, dict(metrics or {}))

    async def _check_step(self, chain: Chain, step: Step, at_rest: bool) -> StepReadiness:
        started = (float(self._clock()), time.monotonic())
        driver = self._drivers.get(step.driver)
        if driver is None:
            missing = f"driver {step.driver!r} is not configured for lane {self.lane!r}"
            return self._answer(chain, step, started, NOT_READY, missing)
        if not isinstance(driver, Preflight):
            return self._answer(chain, step, started, NOT_CHECKED, f"driver {step.driver!r} has no preflight")
        try:
            secrets = resolve_all(step.secrets)
        except SecretUnavailable as exc:
            return self._answer(chain, step, started, NOT_READY, str(exc))
        for value in secrets.values():
            self._redactor.add_secret(value)
        inputs = preflight_inputs(step, self.lane)
        context = StepContext("preflight", self.lane, step.id, step.module, inputs, secrets, 0, at_rest=at_rest)
        try:
            async with asyncio.timeout(self.budget):
                found = await read(driver, context)
        except TimeoutError:
            return self._answer(chain, step, started, NOT_READY, f"preflight timed out after {self.budget:g}s")
        except Exception as exc:  # a bug in a driver's preflight is a not-ready step, never a dead readiness loop
            log.exception("preflight crashed", lane=self.lane, chain=chain, step=step.id)
            reason = f"internal error in the {step.driver} preflight: {type(exc).__name__}"
            return self._answer(chain, step, started, NOT_READY, reason)
        state = READY if found.ready else NOT_READY
        return self._answer(chain, step, started, state, found.reason, found.observed, found.metrics)
