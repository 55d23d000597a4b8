"""No paid capacity left behind: what a failed run leaves, and when its teardown runs. Pure, like decide().

A cutover chain that fails part-way may have started cloud capacity (the profile's steps with an hourly cost); so
may a drill whose teardown (the failback chain) failed. The lane then records the run as *stranded*: ``hyopsctl
status`` says "FAILED, capacity may be running: ...", and the failback chain is retried as a *teardown*:

- after a drill (or a drill's teardown) failed, on a schedule: ``teardown.retry_after`` after the failure, doubling
  per failed teardown up to ``teardown.retry_max``;
- after a real cutover failed, on the same schedule but only once the primary is healthy on every rule: until then
  the standby capacity is the lane's only way out, and tearing it down would make the incident worse;
- at once on ``hyopsctl teardown --lane L`` (journaled; the chain's approval gates apply as in any failback).

A scheduled teardown respects an operator's pause (only the pause the failure itself set is lifted by it). A
successful teardown, or a later successful cutover (which puts the capacity to use), ends the stranding.
"""

from __future__ import annotations

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.durations import format_duration
from hybridops_daemon.policy.types import LaneState, LaneStatus

FAILED_RUN = "failed run "  # paused_by of the pause a failed chain sets; an operator's pause names a uid


def paused_by_failure(state: LaneState) -> bool:
    return state.status is LaneStatus.PAUSED and (state.paused_by or "").startswith(FAILED_RUN)


def failed_run(state: LaneState) -> str | None:
    """The run whose failure paused the lane, or None when no failure holds it paused."""
    return (state.paused_by or "")[len(FAILED_RUN) :] if paused_by_failure(state) else None


def left_behind(state: LaneState, running: LaneStatus | None, profile: Profile) -> bool:
    """Whether a run that just failed may have left paid capacity running that nothing else will stop: a cutover
    (drill or real), a drill's teardown, or a teardown of capacity already stranded."""
    if not profile.capacity():
        return False
    return running is LaneStatus.CUTTING_OVER or state.drill_deadline is not None or state.stranded is not None


def delay(profile: Profile, failed_teardowns: int) -> float:
    policy = profile.teardown
    return float(min(policy.retry_max, policy.retry_after * 2 ** min(failed_teardowns, 32)))


def stranding(state: LaneState, run_id: str, profile: Profile, now: float) -> tuple[dict[str, object], str]:
    """The state changes and the sentence for a failed run that may have left capacity running."""
    tries = state.teardown_tries + 1 if state.stranded is not None else 0
    wait = delay(profile, tries)
    changes: dict[str, object] = {"stranded": state.stranded or run_id, "teardown_tries": tries, "teardown_at": now + wait}
    when = f"teardown attempt {tries + 1} in {format_duration(wait)}"
    if state.drill_deadline is None:
        when += " once the primary is healthy on every rule"
    sentence = f"capacity may be running: {', '.join(profile.capacity())}; {when}, or hyopsctl teardown --lane {state.lane}"
    return changes, sentence


def due(state: LaneState, primary_clear: bool, now: float) -> bool:
    """Whether the scheduled teardown starts now."""
    if state.stranded is None or state.teardown_at is None or now < state.teardown_at or state.active_run is not None:
        return False
    if state.status is LaneStatus.PAUSED and not paused_by_failure(state):
        return False  # an operator paused the lane: they may be looking at the capacity; hyopsctl teardown still works
    return state.drill_deadline is not None or primary_clear


def describe(state: LaneState, profile: Profile) -> str:
    """The reason a teardown starts, naming what it stops."""
    return (
        f"teardown of what failed run {state.stranded} may have left running ({', '.join(profile.capacity())}); "
        f"attempt {state.teardown_tries + 1}"
    )


def ended() -> dict[str, object]:
    """The state changes once nothing is stranded any more."""
    return {"stranded": None, "teardown_tries": 0, "teardown_at": None}
