"""A burst lane as the daemon decides it: ``decide_burst_lane(state, observation, profile, now, dr_cutting_over)``.

Pure, like ``decide()``: the lane's load signal is read from the observation (UNKNOWN past its max age, as the
simulator reads it), ``decide_burst`` picks the size, and this module adds what only the daemon has: operator
intents, the scale run in flight and its end.

- A scale step starts a run of the ``scale`` chain (the size reaches its steps as ``${run.size}``). While it runs the
  lane decides nothing more: a second step would race the first at the same cloud group.
- The size in the state is the size asked for from the moment the step is decided (spend counts it from then, as the
  simulator does: the cloud bills capacity while it boots). A run that fails returns the lane to the size it had
  actually reached before the run, with what the run's time cost still counted; the lane stays automatic and the
  step cooldown spaces the next try, so a failing cloud API is asked again every ``step_cooldown``, not every tick.
- Pause and resume are a DR lane's; drills, cutovers, failbacks and teardowns are refused: a burst lane has no
  cutover or failback chain, and it scales in by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.policy.burst import BurstState, accrue, decide_burst, reading
from hybridops_daemon.policy.decide import pause_or_resume, start_run
from hybridops_daemon.policy.types import (
    ChainEvent,
    Command,
    Decision,
    DecisionKind,
    Intent,
    LaneState,
    LaneStatus,
    Observation,
    Trigger,
)

K = DecisionKind


def pressure(observation: Observation, profile: Profile, now: float) -> float | None:
    """The lane's load signal on this edge at ``now``: its latest sample, UNKNOWN (None) past the signal's max age."""
    burst = profile.burst
    assert burst is not None, "a burst lane's profile has `burst:`"
    sample = observation.readings.get((burst.signal, observation.self_edge))
    if sample is None:
        return None
    return reading(sample.value, sample.observed_at, profile.signals[burst.signal].max_age, now)


def decide_burst_lane(
    state: LaneState, observation: Observation, profile: Profile, now: float, dr_cutting_over: Sequence[str] = ()
) -> tuple[Decision, LaneState]:
    """``dr_cutting_over``: the lanes the profile's ``yields_to`` names that are cutting over now."""
    burst = state.burst if state.burst is not None else BurstState()
    event = observation.event
    if isinstance(event, ChainEvent):
        return _scale_ended(state, burst, event, profile, now)
    if isinstance(event, Intent):
        return _on_intent(state, event, profile, now)
    if state.status is LaneStatus.PAUSED:
        return _hold(state, state, f"paused by {state.paused_by}; the size stays at {burst.size} until resume", now)
    if state.active_run is not None:
        stepping = burst.stepping_from[0] if burst.stepping_from is not None else "?"
        return _hold(state, state, f"scale run {state.active_run} in progress ({stepping} → {burst.size})", now)
    level = pressure(observation, profile, now)
    assert profile.burst is not None
    chosen, after = decide_burst(burst, level, profile.burst, now, dr_cutting_over)
    unknown = () if level is not None else (f"{profile.burst.signal}@{observation.self_edge}",)
    if chosen.action in ("scale_out", "scale_in"):
        stepped = start_run(state, state.status, now, burst=after._replace(stepping_from=(burst.size, burst.started_at)))
        reason = f"{chosen.reason} (run {stepped.active_run})"
        return _decision(K.SCALE, state, stepped, reason, now, chain="scale", unknown=unknown), stepped
    kind = K.REFUSE if chosen.action == "refuse" else K.HOLD
    kept = state._replace(burst=after)
    return _decision(kind, state, kept, chosen.reason, now, unknown=unknown), kept


class BurstFigures(NamedTuple):
    size: int
    spent_usd: float  # this UTC month, to ``at``
    budget_left_usd: float | None  # of the monthly budget; None without one
    month: str
    at: float


def figures(burst: BurstState | None, profile: Profile, now: float) -> BurstFigures:
    """The lane's size, its spend this month and the budget left as of ``now`` (the capacity bills on between
    decisions): what records, status and metrics show."""
    assert profile.burst is not None
    current = accrue(burst if burst is not None else BurstState(), profile.burst, now)
    monthly = profile.burst.budget.monthly_usd
    left = None if monthly is None else round(monthly - current.spent_usd, 6)
    return BurstFigures(current.size, round(current.spent_usd, 6), left, current.month, now)


def _scale_ended(
    state: LaneState, burst: BurstState, event: ChainEvent, profile: Profile, now: float
) -> tuple[Decision, LaneState]:
    if event.run_id != state.active_run:
        return _hold(state, state, f"ignored the end of run {event.run_id}: not this lane's active run", now)
    before, started = burst.stepping_from if burst.stepping_from is not None else (burst.size, burst.started_at)
    if event.ok:
        after = state._replace(active_run=None, burst=burst._replace(stepping_from=None, failed_run=None))
        reason = f"scale run {event.run_id} succeeded: size {before} → {burst.size}"
    else:
        assert profile.burst is not None
        # Billed at the size asked for up to now (some of it may have started), then back to the size reached.
        back = accrue(burst, profile.burst, now)._replace(
            size=before, started_at=started, stepping_from=None, failed_run=event.run_id
        )
        after = state._replace(active_run=None, burst=back)
        reason = (
            f"scale run {event.run_id} failed: {event.detail}; the size stays at {before}, the last size reached"
            " (the next step waits for the step cooldown)"
        )
    if state.status is LaneStatus.PAUSED:
        reason += " (still paused)"
    return _decision(K.HOLD, state, after, reason, now), after


def _on_intent(state: LaneState, intent: Intent, profile: Profile, now: float) -> tuple[Decision, LaneState]:
    command = intent.command
    if command in (Command.PAUSE, Command.RESUME):
        after, why = pause_or_resume(state, intent, now)
        if after is not None:
            return _decision(K.HOLD, state, after, why, now, intent=intent), after
    else:
        why = (
            f"lane {state.lane} is a burst lane ({profile.ref}): it scales on load pressure and has no cutover or"
            " failback chain; drill, cutover, failback and teardown are for DR lanes (pause and resume apply)"
        )
    return _decision(K.REFUSE, state, state, f"{command.value} refused: {why}", now, intent=intent), state


def _hold(before: LaneState, after: LaneState, reason: str, now: float) -> tuple[Decision, LaneState]:
    return _decision(K.HOLD, before, after, reason, now), after


def _decision(
    kind: DecisionKind,
    before: LaneState,
    after: LaneState,
    reason: str,
    now: float,
    *,
    chain: str | None = None,
    intent: Intent | None = None,
    unknown: tuple[str, ...] = (),
) -> Decision:
    trigger, actor = (intent.trigger, intent.actor) if intent is not None else (Trigger.AUTOMATIC, "policy")
    run_id = after.active_run if chain else None
    intent_id = intent.id if intent is not None else None
    return Decision(
        kind, before.lane, reason, now, before.status, after.status, trigger, actor, run_id, chain, intent_id, (), unknown
    )
