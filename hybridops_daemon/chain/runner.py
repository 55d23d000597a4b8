"""The chain runner: runs a module chain step by step, journaling intent before every effect.

Per step: intent (idempotency key, fencing token) → check() → [approval] → apply() with timeout and
bounded retries (re-checking before each retry, since a timed-out apply may have landed) → verify() by an
independent read → publish outputs. A run that stopped half-way (crash, kill -9, SIGTERM) is resumed from
check() of its first unfinished step, so no effect is applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import structlog

from hybridops_daemon.chain.approvals import ApprovalBook, PendingApproval
from hybridops_daemon.chain.templating import UnresolvedReference, render
from hybridops_daemon.config.profile import Step
from hybridops_daemon.drivers.base import CheckResult, Driver, DriverError, StepContext
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.journal.store import RUN_RELEASED, Journal
from hybridops_daemon.lease.base import Lease, LeaseLost
from hybridops_daemon.policy.types import ChainEvent
from hybridops_daemon.retry import Backoff
from hybridops_daemon.secrets import SecretUnavailable, resolve, resolve_all

log = structlog.get_logger("hybridops.chain")
T = TypeVar("T")
StepOutcome = Literal["applied", "skipped", "failed"]
# Told once whether the run is in the lane's handover before its first step: None if it is, else why not.
Stored = Callable[[str | None], None]


def _ignore(_why: str | None) -> None:
    pass


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything needed to run, or resume, one chain run. Journaled whole in ``run.start``."""

    run_id: str
    lane: str
    chain: str  # "cutover" | "failback" | "scale"
    kind: str  # the decision kind that started it: cutover, failback, drill, teardown, scale
    trigger: str
    actor: str
    reason: str
    profile: Mapping[str, Any]  # {"name", "version"}
    steps: tuple[Step, ...]
    approval_timeout: float
    hourly_cost_usd: float
    size: int | None = None  # a scale run's: the capacity its steps set, as ``${run.size}``

    @property
    def run_mapping(self) -> dict[str, Any]:
        """What ``${run.<key>}`` in a step's inputs reads."""
        return {"id": self.run_id, "lane": self.lane} | ({"size": self.size} if self.size is not None else {})

    def start_body(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "lane": self.lane,
            "chain": self.chain,
            "kind": self.kind,
            "trigger": self.trigger,
            "actor": self.actor,
            "reason": self.reason,
            "profile": dict(self.profile),
            "steps": [step.id for step in self.steps],
            "plan": [_plan_entry(step) for step in self.steps],
            "inputs": {step.id: step.inputs for step in self.steps},
            "approval_timeout": self.approval_timeout,
            "hourly_cost_usd": self.hourly_cost_usd,
        } | ({"size": self.size} if self.size is not None else {})

    @classmethod
    def from_start(cls, body: Mapping[str, Any]) -> RunSpec:
        return cls(
            run_id=body["run_id"],
            lane=body["lane"],
            chain=body["chain"],
            kind=body["kind"],
            trigger=body["trigger"],
            actor=body["actor"],
            reason=body["reason"],
            profile=body["profile"],
            steps=tuple(_step_from_plan(plan) for plan in body["plan"]),
            approval_timeout=float(body["approval_timeout"]),
            hourly_cost_usd=float(body["hourly_cost_usd"]),
            size=int(body["size"]) if body.get("size") is not None else None,
        )


def _plan_entry(step: Step) -> dict[str, Any]:
    """A step as journaled. Secret *references* move to a list under ``secret_refs``: the redactor blanks the
    values under a key like "secrets", and a resumed run must still know where its secrets live."""
    entry = step.model_dump(mode="json", by_alias=True, exclude={"secrets"})
    entry["secret_refs"] = [
        {"name": name, **ref.model_dump(mode="json", exclude_none=True)} for name, ref in step.secrets.items()
    ]
    return entry


def _step_from_plan(entry: Mapping[str, Any]) -> Step:
    data = dict(entry)
    refs = data.pop("secret_refs", [])
    data["secrets"] = {ref["name"]: {k: v for k, v in ref.items() if k != "name"} for ref in refs}
    return Step.model_validate(data)


def _failure(exc: DriverError | TimeoutError, step: Step) -> tuple[str, bool]:
    """What a failed driver call journals: its error in words, and whether trying again may help."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {step.timeout:g}s", True
    return str(exc) or type(exc).__name__, exc.retryable


class StepFailed(Exception):
    pass


class RunReleased(Exception):
    """This node lost the lane's leadership mid-run and stopped; the run is the next leader's to finish."""


class ChainRunner:
    """Runs chains for every lane of this node. Drivers are per lane, so a drill never reaches prod's targets."""

    def __init__(
        self,
        journal: Journal,
        drivers: Mapping[str, Mapping[str, Driver]],
        leases: Lease | Mapping[str, Lease],
        approvals: ApprovalBook,
        redactor: Redactor,
        clock: Callable[[], float] = time.time,
        max_backoff: float = 30.0,
        on_step: Callable[[str, str, StepOutcome, float], None] | None = None,
        on_record: Callable[[str, RunSpec, Mapping[str, Any]], None] | None = None,
    ) -> None:
        self._on_step = on_step  # (lane, step, outcome, seconds): metrics, without the chain knowing about them
        self._on_record = on_record  # (kind, spec, body) of every run record: the daemon's handover document
        self._journal = journal
        self._drivers = drivers
        # Per lane (or one for all): the fencing token of each step, re-checked before every apply().
        self._leases: Callable[[str], Lease] = leases.__getitem__ if isinstance(leases, Mapping) else lambda _lane: leases
        self._approvals = approvals
        self._redactor = redactor
        self._clock = clock
        self._max_backoff = max_backoff

    def _record(self, kind: str, spec: RunSpec, body: Mapping[str, Any]) -> None:
        self._journal.append(kind, body, ts=self._clock(), lane=spec.lane, run_id=spec.run_id)
        if self._on_record is not None:
            self._on_record(kind, spec, body)

    def _register_secrets(self, spec: RunSpec) -> None:
        """Teach the redactor every secret the run may touch before its first record is written."""
        for step in spec.steps:
            for name, ref in step.secrets.items():
                # An unavailable secret fails its step later, with the reason in that step's record.
                with contextlib.suppress(SecretUnavailable):
                    self._redactor.add_secret(resolve(name, ref))

    async def start(self, spec: RunSpec, stored: Stored = _ignore) -> ChainEvent:
        """Run a new run; ``stored`` hears whether it reached the lane's handover before its first step."""
        self._register_secrets(spec)
        self._record("run.start", spec, {**spec.start_body(), "fencing_token": self._leases(spec.lane).token})
        return await self._execute(spec, done={}, started=time.monotonic(), stored=stored)

    async def take_over(
        self, start: Mapping[str, Any], done: Mapping[str, Mapping[str, Any]], previous: Mapping[str, Any]
    ) -> ChainEvent:
        """Continue a run another holding of the lane started (``start`` is its ``run.start`` body, ``done`` the steps it
        finished with their outputs, ``previous`` who held it). Journaled as this node's ``run.start`` naming the run it
        continues; every unfinished step starts again at check(), so what already landed is skipped, not repeated."""
        spec = RunSpec.from_start(start)
        self._register_secrets(spec)
        finished = {step: dict(outputs) for step, outputs in done.items()}
        pending = [s.id for s in spec.steps if s.id not in finished]
        continued = {**previous, "completed_steps": [s.id for s in spec.steps if s.id in finished]}
        body = {**spec.start_body(), "fencing_token": self._leases(spec.lane).token, "continued_from": continued}
        self._record("run.start", spec, body)
        log.info("run taken over", run_id=spec.run_id, from_step=pending[0] if pending else None, previous=dict(previous))
        return await self._execute(spec, done=finished, started=time.monotonic())

    async def resume(self, run_id: str) -> ChainEvent:
        """Continue an unfinished run from check() of its first unfinished step."""
        records = self._journal.run_records(run_id)
        start = next(r for r in records if r.kind == "run.start")
        spec = RunSpec.from_start(start.body)
        self._register_secrets(spec)
        done = {r.body["step"]: dict(r.body.get("outputs") or {}) for r in records if r.kind == "step.done"}
        pending = [s.id for s in spec.steps if s.id not in done]
        self._record(
            "run.resumed",
            spec,
            {
                "run_id": run_id,
                "from_step": pending[0] if pending else None,
                "completed_steps": [s.id for s in spec.steps if s.id in done],
                "interrupted_after_seq": records[-1].seq,
                "interrupted_at_kind": records[-1].kind,
                "fencing_token": self._leases(spec.lane).token,
            },
        )
        log.info("run resumed", run_id=run_id, from_step=pending[0] if pending else None)
        return await self._execute(spec, done=done, started=time.monotonic())

    async def _execute(
        self, spec: RunSpec, done: dict[str, dict[str, Any]], started: float, stored: Stored = _ignore
    ) -> ChainEvent:
        holding = self._leases(spec.lane).token  # the holding this node runs the run under, to the end
        outputs = dict(done)
        current = next((s.id for s in spec.steps if s.id not in done), "")
        step_began = time.monotonic()
        try:
            try:
                # Fenced, and (with etcd) it stores the lane's handover, which names this run from its run.start on:
                # once it lands, a successor continues the run even if this node is deposed before any step.
                await self._leases(spec.lane).ensure(holding)
            except LeaseLost as lost:
                why = f"this node lost the lane before the run was handed over, so no step was checked: {lost}"
                stored(why)
                raise RunReleased(why) from None
            stored(None)
            for step in spec.steps:
                if step.id in done:
                    continue
                current, step_began = step.id, time.monotonic()
                published, step_outcome = await self._run_step(spec, step, outputs)
                outputs[step.id] = published
                self._report(spec.lane, step.id, step_outcome, time.monotonic() - step_began)
        except StepFailed as exc:
            self._report(spec.lane, current, "failed", time.monotonic() - step_began)
            detail = self._redactor.redact_text(f"step {current} failed: {exc}")
            try:
                # A step that fails because this node was cut off, or because the target carries a newer leader's
                # stamp, has not failed the run: the lane moved on. Only a current holder may end it.
                await self._leases(spec.lane).ensure(holding)
            except LeaseLost as lost:
                reason = f"{detail}; and this node no longer leads the lane: {lost}"
                self._release(spec, current, reason)
                raise RunReleased(reason) from None
            self._record("step.failed", spec, {"step": current, "error": detail})
            self._record(
                "run.end",
                spec,
                {
                    "run_id": spec.run_id,
                    "ok": False,
                    "reason": detail,
                    "outputs": outputs,
                    "elapsed_s": round(time.monotonic() - started, 3),
                },
            )
            log.warning("run failed", run_id=spec.run_id, step=current, error=detail)
            return ChainEvent(spec.lane, spec.run_id, ok=False, detail=detail)
        except RunReleased as exc:
            self._release(spec, current, str(exc))
            raise
        except asyncio.CancelledError:
            # SIGTERM past the grace period: say where we stopped; resume() picks it up on the next start.
            self._record("run.interrupted", spec, {"run_id": spec.run_id, "step": current, "reason": "daemon stopping"})
            raise
        reason = f"{spec.chain} chain completed: {len(spec.steps)} steps"
        self._record(
            "run.end",
            spec,
            {
                "run_id": spec.run_id,
                "ok": True,
                "reason": reason,
                "outputs": outputs,
                "elapsed_s": round(time.monotonic() - started, 3),
            },
        )
        log.info("run succeeded", run_id=spec.run_id, chain=spec.chain)
        return ChainEvent(spec.lane, spec.run_id, ok=True, detail=reason)

    def _release(self, spec: RunSpec, step: str, reason: str) -> None:
        """Journal that this node stops working on the run (its leadership is gone); the next leader finishes it."""
        self._record(RUN_RELEASED, spec, {"run_id": spec.run_id, "step": step, "reason": reason})
        log.warning("run released: leadership lost", run_id=spec.run_id, step=step, reason=reason)

    def _report(self, lane: str, step: str, outcome: StepOutcome, seconds: float) -> None:
        if self._on_step is not None:
            self._on_step(lane, step, outcome, seconds)

    async def _run_step(
        self, spec: RunSpec, step: Step, outputs: Mapping[str, Mapping[str, Any]]
    ) -> tuple[dict[str, Any], StepOutcome]:
        """Run one step; return what it publishes and its outcome ("applied" or "skipped")."""
        driver = self._drivers.get(spec.lane, {}).get(step.driver)
        if driver is None:
            raise StepFailed(f"driver {step.driver!r} is not configured for lane {spec.lane!r}")
        try:
            inputs = render(step.inputs, outputs, spec.run_mapping)
            secrets = resolve_all(step.secrets)
        except (UnresolvedReference, SecretUnavailable) as exc:
            raise StepFailed(str(exc)) from None
        for value in secrets.values():
            self._redactor.add_secret(value)  # again: a secret rotated since the run started is still hidden

        attempts = sum(1 for r in self._journal.run_records(spec.run_id) if r.kind == "step.intent" and r.body["step"] == step.id)
        token = self._leases(spec.lane).token
        attempt = attempts + 1
        self._record(
            "step.intent",
            spec,
            {
                "step": step.id,
                "module": step.module,
                "driver": step.driver,
                "attempt": attempt,
                "idempotency_key": f"{spec.run_id}/{step.id}/{attempt}",
                "fencing_token": token,
                "inputs": inputs,
            },
        )
        ctx = StepContext(spec.run_id, spec.lane, step.id, step.module, inputs, secrets, token, attempt)

        check = await self._check(spec, step, driver, ctx)
        if check.satisfied:
            published = dict(check.outputs)
            done = {"step": step.id, "outcome": "skipped (already satisfied)", "outputs": published, "fencing_token": token}
            self._record("step.done", spec, done)
            return published, "skipped"

        if step.approval:
            await self._await_approval(spec, step)

        published = await self._apply_with_retries(spec, step, driver, ctx)
        probe = await self._call("verify", driver.verify(ctx), step)
        self._record(
            "step.verify",
            spec,
            {"step": step.id, "ok": probe.ok, "probe": probe.probe, "observed": dict(probe.observed), "detail": probe.detail},
        )
        if not probe.ok:
            raise StepFailed(f"verify failed ({probe.probe}): {probe.detail}")
        self._record("step.done", spec, {"step": step.id, "outcome": "applied", "outputs": published, "fencing_token": token})
        return published, "applied"

    async def _apply_with_retries(self, spec: RunSpec, step: Step, driver: Driver, ctx: StepContext) -> dict[str, Any]:
        backoff = Backoff(step.backoff, self._max_backoff)
        for attempt in range(1, step.retries + 2):
            try:
                await self._leases(spec.lane).ensure(ctx.fencing_token)
            except LeaseLost as exc:
                # Not a failure of the run: this node may no longer act on it. The journal says why it stopped.
                reason = f"refused to apply {step.id} under fencing token {ctx.fencing_token}: {exc}"
                self._record("step.refused", spec, {"step": step.id, "fencing_token": ctx.fencing_token, "reason": str(exc)})
                raise RunReleased(reason) from None
            began = time.monotonic()
            try:
                async with asyncio.timeout(step.timeout):
                    result = await driver.apply(ctx)
            except (DriverError, TimeoutError) as exc:
                error, retryable = _failure(exc, step)
                self._record(
                    "step.apply",
                    spec,
                    {
                        "step": step.id,
                        "attempt": attempt,
                        "fencing_token": ctx.fencing_token,
                        "ok": False,
                        "error": error,
                        "retryable": retryable,
                        "elapsed_s": round(time.monotonic() - began, 3),
                    },
                )
                last = not retryable or attempt > step.retries
                if not last:
                    await backoff.wait()
                # A timed-out or failed apply may still have landed: look before trying again, or before giving up.
                check = await self._check(spec, step, driver, ctx)
                if check.satisfied:
                    return dict(check.outputs)
                if last:
                    raise StepFailed(f"apply failed after {attempt} attempt(s): {error}") from None
                continue
            self._record(
                "step.apply",
                spec,
                {
                    "step": step.id,
                    "attempt": attempt,
                    "fencing_token": ctx.fencing_token,
                    "ok": True,
                    "log": list(result.log),
                    "outputs": dict(result.outputs),
                    "elapsed_s": round(time.monotonic() - began, 3),
                },
            )
            return dict(result.outputs)
        raise AssertionError("unreachable: the loop returns or raises")

    async def _check(self, spec: RunSpec, step: Step, driver: Driver, ctx: StepContext) -> CheckResult:
        """check(), journaled. A retryable failure (the target briefly unreachable) is retried with the step's
        backoff: failing the step would pause the lane over a blip, and applying blind could act twice."""
        backoff = Backoff(step.backoff, self._max_backoff)
        for attempt in range(1, step.retries + 2):
            try:
                async with asyncio.timeout(step.timeout):
                    check = await driver.check(ctx)
            except (DriverError, TimeoutError) as exc:
                error, retryable = _failure(exc, step)
                self._record("step.check", spec, {"step": step.id, "attempt": attempt, "error": error, "retryable": retryable})
                if not retryable or attempt > step.retries:
                    raise StepFailed(f"check failed: {error}") from None
                await backoff.wait()
                continue
            self._record("step.check", spec, {"step": step.id, "satisfied": check.satisfied, "observed": dict(check.observed)})
            return check
        raise AssertionError("unreachable: the loop returns or raises")

    async def _call(self, what: str, call: Awaitable[T], step: Step) -> T:
        try:
            async with asyncio.timeout(step.timeout):
                return await call
        except TimeoutError:
            raise StepFailed(f"{what} timed out after {step.timeout:g}s") from None
        except DriverError as exc:
            raise StepFailed(f"{what} failed: {exc}") from None

    async def _await_approval(self, spec: RunSpec, step: Step) -> None:
        now = self._clock()
        pending = PendingApproval(spec.run_id, step.id, spec.lane, now, now + spec.approval_timeout)
        self._record("step.approval", spec, {"step": step.id, "status": "waiting", "expires_at": pending.expires_at})
        log.info("step waits for approval", run_id=spec.run_id, step=step.id)
        verdict = await self._approvals.wait(pending, spec.approval_timeout)
        if verdict is None:
            self._record("step.approval", spec, {"step": step.id, "status": "expired"})
            raise StepFailed(f"approval expired after {spec.approval_timeout:g}s")
        status = "approved" if verdict.approved else "rejected"
        self._record("step.approval", spec, {"step": step.id, "status": status, "actor": verdict.actor})
        if not verdict.approved:
            raise StepFailed(f"rejected by {verdict.actor}")
