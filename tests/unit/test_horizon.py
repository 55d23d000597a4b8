"""The horizon: decide() answers the same, with the same state and readings, at every time before it; for each level
the horizon handles, decide() answers differently once the level is reached (or, for a reading's expiry, passed)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.policy.compiled import compile_profile
from hybridops_daemon.policy.decide import decide
from hybridops_daemon.policy.horizon import Horizon
from hybridops_daemon.policy.types import DecisionKind, LaneState, LaneStatus, Observation, RuleMemory
from hybridops_daemon.signals.sample import Sample
from tests.unit.test_decide import EDGE, PEER, T0, make_profile

Readings = Mapping[tuple[str, str], Sample]
HOUR = 3600.0
LONG_LIVED = {"primary_http": {"max_age": "1h"}, "wan_loss": {"max_age": "1h"}}  # no expiry before the level tested


def reading(value: float | None, at: float = T0, signal: str = "primary_http", edge: str = EDGE) -> Readings:
    return {(signal, edge): Sample(signal, value, at, "test", edge)}


def tripped(since: float = T0 - 60) -> MappingProxyType[tuple[str, str], RuleMemory]:
    return MappingProxyType({("primary_down", EDGE): RuleMemory(since, 5, T0, True)})


def quiet(profile: Profile, state: LaneState, readings: Readings, t: float) -> bool:
    """What the simulator skips: a plain hold that leaves the state as it was."""
    decision, after = decide(state, Observation(readings, EDGE, PEER), profile, t)
    return decision.kind is DecisionKind.HOLD and not decision.notable and after == state


def horizon_of(profile: Profile, state: LaneState, readings: Readings, now: float = T0 + 1) -> float:
    """The horizon from ``now``, after proving decide() quiet at ``now`` and at every probed time before it."""
    level = Horizon(profile, EDGE, PEER)(state, readings, now)
    assert level >= now
    until = level if level < math.inf else now + 48 * HOUR
    for t in [now + (until - now) * k / 50 for k in range(50)] + [until - 1e-3]:
        assert quiet(profile, state, readings, t), f"decide() changed its answer at {t - T0} s, before the horizon"
    return level


def profile_with(**overrides: Any) -> Profile:
    return make_profile(signals=LONG_LIVED, **overrides)


def test_a_healthy_reading_matters_again_when_it_expires() -> None:
    profile = make_profile()  # primary_http's max age: 5 s
    state = LaneState("prod", since=T0, clear_since=T0)
    readings = reading(1.0)
    assert horizon_of(profile, state, readings) == T0 + 5
    assert quiet(profile, state, readings, T0 + 5)  # still fresh at exactly its max age
    assert not quiet(profile, state, readings, T0 + 5 + 1e-3)  # UNKNOWN: the rules are no longer all clear


def test_nothing_to_wait_for_without_readings_or_timers() -> None:
    assert horizon_of(make_profile(), LaneState("prod", since=T0), {}) == math.inf


def test_a_breaching_rule_trips_when_its_for_is_over() -> None:
    profile = profile_with(
        rules=[{"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5, "for": "30s"}]
    )
    memory = MappingProxyType({("primary_down", EDGE): RuleMemory(T0, 1, T0, False)})
    state = LaneState("prod", LaneStatus.DEGRADED, T0, memory)
    readings = reading(0.0)
    assert horizon_of(profile, state, readings) == T0 + 30
    assert decide(state, Observation(readings, EDGE, PEER), profile, T0 + 30)[0].kind is DecisionKind.CUTOVER


def test_a_rule_short_of_its_consecutive_count_waits_for_a_sample_not_for_time() -> None:
    # The `for` level comes and goes without a trip (two more breaching samples are needed): the horizon may name
    # it (an extra identical tick), but nothing changes up to the reading's expiry, nor after it (`unknown: hold`).
    profile = make_profile(signals={"primary_http": {"max_age": "20s"}})
    memory = MappingProxyType({("primary_down", EDGE): RuleMemory(T0, 1, T0, False)})
    state = LaneState("prod", LaneStatus.DEGRADED, T0, memory)
    readings = reading(0.0)
    assert horizon_of(profile, state, readings) == T0 + 3
    assert horizon_of(profile, state, readings, now=T0 + 3 + 1e-3) == T0 + 20
    assert horizon_of(profile, state, readings, now=T0 + 20 + 1e-3) == math.inf


def test_a_silent_signal_under_unknown_breach_trips_after_its_for() -> None:
    rule = {"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5, "for": "10s"}
    profile = make_profile(rules=[{**rule, "unknown": "breach"}])
    memory = MappingProxyType({("primary_down", EDGE): RuleMemory(T0 + 6, 0, None, False)})  # UNKNOWN since T0 + 6
    state = LaneState("prod", LaneStatus.DEGRADED, T0, memory)
    readings = reading(1.0, at=T0)  # 5 s max age: stale since T0 + 5
    assert horizon_of(profile, state, readings, now=T0 + 7) == T0 + 16
    assert decide(state, Observation(readings, EDGE, PEER), profile, T0 + 16)[0].kind is DecisionKind.CUTOVER


def test_a_tripped_rule_inside_its_hysteresis_band_sets_no_level() -> None:
    # wan_loss at 20: below the trip level (40), above the clear level (5): the rule stays tripped, nothing is clear,
    # so neither its `for` nor the failback window can change anything; only the reading's expiry is named.
    profile = profile_with(
        rules=[{"name": "wan_lossy", "signal": "wan_loss", "direction": "above", "trip": 40, "clear": 5, "for": "10s"}],
        failback={"automatic": True, "stable_for": "1m"},
    )
    memory = MappingProxyType({("wan_lossy", EDGE): RuleMemory(None, 0, T0 - 30, True)})
    state = LaneState("prod", LaneStatus.ON_STANDBY, T0 - 600, memory, last_action_at=T0 - 600)
    readings = reading(20.0, signal="wan_loss")
    assert horizon_of(profile, state, readings) == T0 + HOUR


def test_a_standing_cooldown_refusal_lifts_when_the_cooldown_ends() -> None:
    profile = profile_with(cooldown="5m")
    state = LaneState("prod", LaneStatus.DEGRADED, T0 - 100, tripped(), (T0 - 100,), last_action_at=T0 - 100, refusal="cooldown")
    readings = reading(0.0)
    assert horizon_of(profile, state, readings) == T0 + 200
    assert decide(state, Observation(readings, EDGE, PEER), profile, T0 + 200)[0].kind is DecisionKind.CUTOVER


def test_an_automatic_action_leaving_the_limit_window_allows_the_next() -> None:
    profile = profile_with(cooldown="1m", action_limit={"max_actions": 1, "window": "1h"})
    state = LaneState("prod", LaneStatus.DEGRADED, T0, tripped(), (T0 - 3000,), last_action_at=T0 - 3000, refusal="limit")
    readings = reading(0.0)
    assert horizon_of(profile, state, readings) == T0 + 600
    assert decide(state, Observation(readings, EDGE, PEER), profile, T0 + 600)[0].kind is DecisionKind.CUTOVER


def test_the_failback_stability_window_ends_in_a_failback() -> None:
    profile = profile_with(failback={"automatic": True, "stable_for": "1m"})
    state = LaneState("prod", LaneStatus.ON_STANDBY, T0 - 900, last_action_at=T0 - 900, clear_since=T0 - 10)
    readings = reading(1.0)
    assert horizon_of(profile, state, readings) == T0 + 50
    assert decide(state, Observation(readings, EDGE, PEER), profile, T0 + 50)[0].kind is DecisionKind.FAILBACK


def test_a_drill_tears_down_at_its_deadline_before_any_later_level() -> None:
    profile = profile_with(drill={"allowed": True, "teardown_after": "2m"})
    state = LaneState("prod", LaneStatus.ON_STANDBY, T0, drill_deadline=T0 + 120, clear_since=T0)
    readings = reading(1.0)
    assert horizon_of(profile, state, readings) == T0 + 120  # the failback window (10 m) would end later
    decision = decide(state, Observation(readings, EDGE, PEER), profile, T0 + 120)[0]
    assert decision.kind is DecisionKind.FAILBACK
    assert decision.trigger == "schedule"


def test_the_peer_s_reading_expires_too_when_both_edges_must_agree() -> None:
    state = LaneState("prod", since=T0, clear_since=T0)
    readings = {**reading(1.0), **reading(1.0, at=T0 - 3, edge=PEER)}
    both = make_profile(corroboration={"both_edges": True})
    assert horizon_of(both, state, readings) == T0 + 2
    assert not quiet(both, state, readings, T0 + 2 + 1e-3)
    assert horizon_of(make_profile(), state, readings) == T0 + 5  # one edge: the peer's reading is not read


def test_the_horizon_reads_the_compiled_profile_decide_evaluates() -> None:
    profile = make_profile()
    assert compile_profile(profile) is compile_profile(profile)
    compiled = compile_profile(profile).by_name["primary_down"]
    assert (compiled.max_age, compiled.confirm) == (5.0, 3.0)
