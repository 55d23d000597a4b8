"""A burst lane's decision: a pure function of (state, pressure, policy, now, DR lanes cutting over).

Scale out when the pressure has stayed past a level's trip for ``scale_out_after`` (to the highest level so
confirmed); scale in one level at a time once it has stayed on the calm side of the current level's clear for
``scale_in_after``; never two steps within ``step_cooldown``. Spend is accrued in the state (size × unit price × time,
per UTC month), so a restart resumes it from the last record and a retention cut that keeps the lane's last decision
keeps it too. A burst ends at zero when it reaches ``max_duration`` or exhausts the monthly budget, and no new one
starts until the pressure has cleared the lowest level: otherwise it would start again at the next tick.

UNKNOWN pressure (no fresh sample) confirms nothing either way: both timers restart, the size holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from hybridops_daemon.config.burst import BurstPolicy
from hybridops_daemon.durations import format_duration

Action = Literal["scale_out", "scale_in", "hold", "refuse"]


class BurstState(NamedTuple):
    size: int = 0
    past_trip_since: tuple[float | None, ...] = ()  # per level: since when the pressure has been past its trip
    calm_since: float | None = None  # since when the pressure has been calm below the current level's clear
    last_step_at: float | None = None
    started_at: float | None = None  # when the size last left zero
    exhausted: str | None = None  # why the last burst was ended (max duration, budget): none starts until calm
    refusal: str | None = None  # the standing refusal's code, so that it is journaled once
    month: str = ""  # the UTC month ``spent_usd`` counts, "2026-12"
    spent_usd: float = 0.0  # spend this month up to ``accrued_at``
    accrued_at: float | None = None
    # (size, started_at) before the scale run in flight (the daemon's, not decide_burst's): a failed run returns to them
    stepping_from: tuple[int, float | None] | None = None
    failed_run: str | None = None  # the latest scale run, if it failed: an alert stands until a scale run succeeds

    def durable(self) -> dict[str, Any]:
        stepping = list(self.stepping_from) if self.stepping_from is not None else None
        return self._asdict() | {"past_trip_since": list(self.past_trip_since), "stepping_from": stepping}

    @classmethod
    def from_durable(cls, raw: Mapping[str, Any]) -> BurstState:
        stepping = raw.get("stepping_from")
        return cls(
            **{
                **raw,
                "past_trip_since": tuple(raw.get("past_trip_since", ())),
                "stepping_from": (int(stepping[0]), stepping[1]) if stepping is not None else None,
            }
        )


class BurstDecision(NamedTuple):
    action: Action
    size_before: int
    size_after: int
    reason: str
    at: float
    spent_usd: float  # month to date, at ``at``
    budget_left_usd: float | None  # of the monthly budget; None without one

    @property
    def notable(self) -> bool:
        return self.action != "hold"


def reading(value: float | None, seen_at: float, max_age: float, now: float) -> float | None:
    """The pressure as a lane sees it at ``now`` from its latest sample (``value`` seen at ``seen_at``): UNKNOWN (None)
    once older than the signal's ``max_age``, or when there is none."""
    return None if value is None or math.isnan(value) or now - seen_at > max_age else value


def month_of(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m")


def month_start(at: float) -> float:
    moment = datetime.fromtimestamp(at, UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp()


def accrue(state: BurstState, policy: BurstPolicy, now: float) -> BurstState:
    """Add what the current size cost since ``accrued_at``; a new month counts only its own part."""
    since = state.accrued_at if state.accrued_at is not None else now
    spent, month = state.spent_usd, state.month
    if month_of(now) != month:
        since, spent, month = max(since, month_start(now)), 0.0, month_of(now)
    spent += policy.cost_per_hour(state.size) * max(0.0, now - since) / 3600
    return state._replace(spent_usd=spent, month=month, accrued_at=now)


def _since(previous: float | None, holds: bool, now: float) -> float | None:
    return (previous if previous is not None else now) if holds else None


def _level_index(policy: BurstPolicy, size: int) -> int:
    """The highest level at or below ``size`` (-1: below the lowest, i.e. zero)."""
    return max((i for i, level in enumerate(policy.levels) if level.size <= size), default=-1)


class _Pass:
    """One decision's context: the state after timers and spend were brought to ``now``, and how to answer."""

    def __init__(self, state: BurstState, policy: BurstPolicy, now: float) -> None:
        self.state, self.policy, self.now = state, policy, now

    def answer(self, action: Action, after: BurstState, reason: str) -> tuple[BurstDecision, BurstState]:
        monthly = self.policy.budget.monthly_usd
        left = None if monthly is None else round(monthly - after.spent_usd, 6)
        return BurstDecision(action, self.state.size, after.size, reason, self.now, round(after.spent_usd, 6), left), after

    def hold(self, reason: str, **changes: Any) -> tuple[BurstDecision, BurstState]:
        return self.answer("hold", self.state._replace(**changes), reason)

    def refuse(self, code: str, reason: str) -> tuple[BurstDecision, BurstState]:
        """A standing refusal is journaled once (``refusal`` remembers its code), then held quietly."""
        return self.answer("hold" if self.state.refusal == code else "refuse", self.state._replace(refusal=code), reason)

    def step(self, size: int, reason: str, **changes: Any) -> tuple[BurstDecision, BurstState]:
        state = self.state
        started = (state.started_at or self.now) if size > 0 else None
        after = state._replace(size=size, last_step_at=self.now, calm_since=None, started_at=started, refusal=None, **changes)
        return self.answer("scale_out" if size > state.size else "scale_in", after, reason)


def decide_burst(
    state: BurstState, pressure: float | None, policy: BurstPolicy, now: float, dr_cutting_over: Sequence[str] = ()
) -> tuple[BurstDecision, BurstState]:
    state = _timed(accrue(state, policy, now), pressure, policy, now)
    this = _Pass(state, policy, now)
    ended = _burst_over(this)
    if ended is not None:  # ending a burst is about money: it does not wait for the cooldown
        return ended
    confirmed = [
        level.size
        for level, since in zip(policy.levels, state.past_trip_since, strict=True)
        if since is not None and now - since >= policy.scale_out_after
    ]
    wanted = max(confirmed, default=0)
    cooling = state.last_step_at is not None and now - state.last_step_at < policy.step_cooldown
    if wanted > state.size:
        if state.exhausted:
            return this.hold(f"pressure wants size {wanted}, but the last burst ended ({state.exhausted}); waiting for calm")
        if dr_cutting_over:
            lanes = ", ".join(dr_cutting_over)
            return this.refuse("dr", f"scale-out to {wanted} waits: DR lane {lanes} is cutting over (its capacity comes first)")
        if cooling:
            return this.hold(f"pressure wants size {wanted}; within the step cooldown")
        target, over = _affordable(policy, state, wanted)
        if target <= state.size:
            return this.refuse("budget", f"scale-out to {wanted} refused: {over}")
        capped = f" (capped from {wanted}: {over})" if target < wanted else ""
        held = f"pressure past {_trip_of(policy, target)} for {format_duration(policy.scale_out_after)}"
        return this.step(target, f"scale out {state.size} → {target}{capped}: {held}")
    if state.size > 0 and state.calm_since is not None and now - state.calm_since >= policy.scale_in_after:
        if cooling:
            return this.hold("calm, but within the step cooldown")
        current = _level_index(policy, state.size)
        lower = policy.levels[current - 1].size if current > 0 else 0
        calm = f"pressure calm past {policy.levels[current].clear:g} for {format_duration(policy.scale_in_after)}"
        return this.step(lower, f"scale in {state.size} → {lower}: {calm}")
    if pressure is None:
        return this.hold("pressure UNKNOWN: holding")
    return this.hold(f"holding at size {state.size}", refusal=None)  # no scale-out wanted: no refusal stands


def _timed(state: BurstState, pressure: float | None, policy: BurstPolicy, now: float) -> BurstState:
    """The confirmation timers after this sample: past each level's trip, calm below the current level's clear, and the
    end of an exhausted burst's wait once the pressure has cleared the lowest level."""
    timers = state.past_trip_since if len(state.past_trip_since) == len(policy.levels) else (None,) * len(policy.levels)
    if pressure is None:
        return state._replace(past_trip_since=(None,) * len(policy.levels), calm_since=None)
    past = tuple(_since(timers[i], policy.passed(pressure, level.trip), now) for i, level in enumerate(policy.levels))
    current = _level_index(policy, state.size)
    calm = current >= 0 and not policy.passed(pressure, policy.levels[current].clear)
    exhausted = None if not policy.passed(pressure, policy.levels[0].clear) else state.exhausted
    return state._replace(past_trip_since=past, calm_since=_since(state.calm_since, calm, now), exhausted=exhausted)


def _burst_over(this: _Pass) -> tuple[BurstDecision, BurstState] | None:
    state, policy, now = this.state, this.policy, this.now
    if state.size == 0:
        return None
    limit = policy.max_duration
    if limit is not None and state.started_at is not None and now - state.started_at >= limit:
        ran = f"the burst ran {format_duration(now - state.started_at)}, its max_duration is {format_duration(limit)}"
        return this.step(0, f"scale in {state.size} → 0: {ran}", exhausted="max_duration")
    monthly = policy.budget.monthly_usd
    if monthly is not None and state.spent_usd >= monthly:
        spent = f"${state.spent_usd:.2f} of ${monthly:.2f}"
        return this.step(0, f"scale in {state.size} → 0: this month's budget is spent ({spent})", exhausted="budget")
    return None


def _trip_of(policy: BurstPolicy, size: int) -> str:
    return next((f"{level.trip:g}" for level in policy.levels if level.size >= size), "?")


def _affordable(policy: BurstPolicy, state: BurstState, wanted: int) -> tuple[int, str]:
    """The largest level up to ``wanted`` both budgets allow (or ``wanted`` itself when it fits), and why a larger one
    did not. A step runs at least ``max(scale_in_after, step_cooldown)`` before it can be undone: the monthly check
    counts that much of it."""
    budget = policy.budget
    hold_hours = max(policy.scale_in_after, policy.step_cooldown) / 3600
    best, over = state.size, ""
    for level in policy.levels:
        if level.size > wanted or level.size <= state.size:
            continue
        hourly = policy.cost_per_hour(level.size)
        if budget.hourly_usd is not None and hourly > budget.hourly_usd:
            over = over or f"size {level.size} costs ${hourly:.2f}/h, over the hourly budget of ${budget.hourly_usd:.2f}"
            continue
        projected = state.spent_usd + hourly * hold_hours
        if budget.monthly_usd is not None and projected > budget.monthly_usd:
            over = over or (
                f"size {level.size} would take this month's spend to ${projected:.2f},"
                f" over the monthly budget of ${budget.monthly_usd:.2f}"
            )
            continue
        best = level.size
    if best < wanted and budget.over_budget == "refuse":
        return state.size, over
    return best, over
