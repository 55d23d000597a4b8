"""Scenarios for the pure decision core, asserting on the decision and the sentence that explains it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.policy.decide import decide
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
from hybridops_daemon.signals.sample import Sample

EDGE = "edge01"
PEER = "edge02"
T0 = 1_800_000_000.0


def make_profile(**overrides: Any) -> Profile:
    data: dict[str, Any] = {
        "name": "prod",
        "version": 3,
        "signals": {"primary_http": {"max_age": "5s"}, "wan_loss": {"max_age": "10s"}},
        "rules": [
            {
                "name": "primary_down",
                "signal": "primary_http",
                "direction": "below",
                "trip": 0.5,
                "for": "3s",
                "consecutive": 3,
            },
        ],
        "cooldown": "300s",
        "chains": {
            "cutover": [
                {"id": "fip", "module": "network/floating-ip@v1", "inputs": {"ip": "203.0.113.10", "target": PEER}},
            ],
            "failback": [
                {"id": "fip", "module": "network/floating-ip@v1", "inputs": {"ip": "203.0.113.10", "target": EDGE}},
            ],
        },
    }
    data.update(overrides)
    return Profile.model_validate(data)


class Lane:
    """Drives decide() the way the daemon loop does: one call per sample, tick or event."""

    def __init__(self, profile: Profile, *, both_edges_peer: bool = False) -> None:
        self.profile = profile
        self.state = LaneState(lane="prod", since=T0)
        self.readings: dict[tuple[str, str], Sample] = {}
        self.decisions: list[Decision] = []

    def sample(self, t: float, value: float | None, signal: str = "primary_http", edge: str = EDGE) -> Decision:
        self.readings[(signal, edge)] = Sample(signal, value, T0 + t, "test", edge)
        return self.tick(t)

    def tick(self, t: float, event: Intent | ChainEvent | None = None) -> Decision:
        observation = Observation(readings=dict(self.readings), self_edge=EDGE, peer_edge=PEER, event=event)
        decision, self.state = decide(self.state, observation, self.profile, T0 + t)
        self.decisions.append(decision)
        return decision

    def command(self, t: float, command: Command, intent_id: int = 1) -> Decision:
        return self.tick(t, Intent(id=intent_id, lane="prod", command=command, actor="uid=0(root) pid=1"))

    def finish(self, t: float, ok: bool = True, detail: str = "") -> Decision:
        assert self.state.active_run is not None
        return self.tick(t, ChainEvent(lane="prod", run_id=self.state.active_run, ok=ok, detail=detail))

    def kinds(self) -> list[DecisionKind]:
        return [d.kind for d in self.decisions if d.kind is not DecisionKind.HOLD]


def feed(lane: Lane, values: Iterable[tuple[float, float | None]]) -> None:
    for t, v in values:
        lane.sample(t, v)


def test_healthy_primary_holds_with_a_reason() -> None:
    lane = Lane(make_profile())
    d = lane.sample(0, 1.0)
    assert d.kind is DecisionKind.HOLD
    assert d.reason == "primary healthy"
    assert not d.notable


def test_confirmed_outage_cuts_over_once_with_the_evidence_in_the_reason() -> None:
    lane = Lane(make_profile())
    feed(lane, [(0, 1.0), (1, 0.0), (2, 0.0)])
    assert lane.state.status is LaneStatus.DEGRADED
    assert lane.decisions[1].reason.startswith("degraded: primary_down@edge01 breaching")
    d = lane.sample(3, 0.0)  # third in a row but only 2 s of breach: `for` is 3 s
    assert d.kind is DecisionKind.HOLD
    d = lane.sample(4, 0.0)
    assert d.kind is DecisionKind.CUTOVER
    assert d.chain == "cutover"
    assert d.run_id == lane.state.active_run == "prod-20270115T080004-1"
    assert d.reason == (
        "cutover: 1 of 1 required rules tripped: primary_down@edge01 (primary_http=0, 4 in a row) (run prod-20270115T080004-1)"
    )
    assert lane.state.status is LaneStatus.CUTTING_OVER
    assert any(e.tripped and e.rule == "primary_down" for e in d.evidence)
    # While the chain runs nothing else happens.
    assert lane.sample(5, 0.0).reason == "run prod-20270115T080004-1 in progress"
    d = lane.finish(6)
    assert lane.state.status is LaneStatus.ON_STANDBY
    assert d.reason == "cutover run prod-20270115T080004-1 succeeded; lane is ON_STANDBY"
    assert lane.kinds() == [DecisionKind.CUTOVER]


def test_recovery_before_confirmation_returns_to_primary() -> None:
    lane = Lane(make_profile())
    feed(lane, [(0, 0.0), (1, 0.0)])
    assert lane.state.status is LaneStatus.DEGRADED
    d = lane.sample(2, 1.0)
    assert lane.state.status is LaneStatus.PRIMARY
    assert d.reason == "recovered: no rule is breaching"
    assert d.notable


def test_stale_signal_is_unknown_never_healthy_and_never_failed() -> None:
    lane = Lane(make_profile())
    feed(lane, [(0, 0.0), (1, 0.0)])
    d = lane.tick(30)  # last sample 29 s old, max_age 5 s
    assert d.kind is DecisionKind.HOLD
    assert d.unknown_signals == ("primary_http@edge01",)
    assert lane.state.status is LaneStatus.DEGRADED  # not recovered: UNKNOWN is not healthy
    assert d.evidence == ()  # a plain hold is never journaled, so it carries no evidence
    assert lane.tick(300).kind is DecisionKind.HOLD  # and not failed either: no cutover on missing data
    lane.command(301, Command.PAUSE)  # a notable decision shows the rule as unknown and not tripped
    evidence = lane.decisions[-1].evidence
    assert [(e.rule, e.unknown, e.tripped, e.breaching) for e in evidence] == [("primary_down", True, False, True)]


def test_absent_signal_with_unknown_breach_trips_by_time() -> None:
    profile = make_profile(
        rules=[
            {
                "name": "primary_down",
                "signal": "primary_http",
                "direction": "below",
                "trip": 0.5,
                "for": "10s",
                "unknown": "breach",
            }
        ],
    )
    lane = Lane(profile)
    assert lane.tick(0).kind is DecisionKind.HOLD
    assert lane.tick(9).kind is DecisionKind.HOLD
    d = lane.tick(10)
    assert d.kind is DecisionKind.CUTOVER
    assert "primary_http=UNKNOWN" in d.reason


def test_hysteresis_keeps_a_tripped_rule_tripped_inside_the_band() -> None:
    profile = make_profile(
        rules=[
            {"name": "loss", "signal": "wan_loss", "direction": "above", "trip": 20, "clear": 5, "for": "0s", "consecutive": 1}
        ],
        failback={"automatic": True, "stable_for": "60s"},
        cooldown="0s",
    )
    lane = Lane(profile)
    assert lane.sample(0, 30, signal="wan_loss").kind is DecisionKind.CUTOVER
    lane.finish(1)
    lane.sample(2, 10, signal="wan_loss")  # inside the band: still tripped, the clock for failback does not start
    assert lane.state.clear_since is None
    lane.sample(3, 4, signal="wan_loss")  # past the clear level
    assert lane.state.clear_since == T0 + 3
    lane.sample(62, 4, signal="wan_loss")
    d = lane.sample(63, 4, signal="wan_loss")
    assert d.kind is DecisionKind.FAILBACK
    assert d.reason.startswith("primary stable for 1m (window 1m); failing back")


def test_corroboration_needs_n_of_m_rules() -> None:
    profile = make_profile(
        rules=[
            {"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5},
            {"name": "wan_loss_high", "signal": "wan_loss", "direction": "above", "trip": 20},
        ],
        corroboration={"min_rules": 2},
    )
    lane = Lane(profile)
    lane.sample(0, 0.0)
    d = lane.sample(1, 1.0, signal="wan_loss")
    assert d.kind is DecisionKind.HOLD and lane.state.status is LaneStatus.DEGRADED
    d = lane.sample(2, 50.0, signal="wan_loss")
    assert d.kind is DecisionKind.CUTOVER
    assert d.reason.startswith("cutover: 2 of 2 required rules tripped: primary_down@edge01")


def test_both_edges_must_agree() -> None:
    profile = make_profile(
        rules=[{"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5}],
        corroboration={"both_edges": True},
    )
    lane = Lane(profile)
    d = lane.sample(0, 0.0)
    assert d.kind is DecisionKind.HOLD and "primary_http@edge02" in d.unknown_signals
    lane.sample(1, 1.0, edge=PEER)
    assert lane.sample(2, 0.0).kind is DecisionKind.HOLD  # the peer still sees the primary up
    d = lane.sample(3, 0.0, edge=PEER)
    assert d.kind is DecisionKind.CUTOVER
    assert "primary_down@edge01" in d.reason and "primary_down@edge02" in d.reason


def test_cooldown_refuses_once_then_holds_quietly() -> None:
    profile = make_profile(
        rules=[{"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5}],
        failback={"automatic": False},
    )
    lane = Lane(profile)
    assert lane.sample(0, 0.0).kind is DecisionKind.CUTOVER
    lane.finish(1)
    lane.command(2, Command.FAILBACK)
    lane.finish(3)
    d = lane.sample(10, 0.0)
    assert d.kind is DecisionKind.REFUSE
    assert d.reason.startswith("cutover refused: cooldown after the last action: 4m52s left")
    d = lane.sample(11, 0.0)
    assert d.kind is DecisionKind.HOLD and not d.notable
    assert d.reason == "cutover still refused: cooldown after the last action: 4m51s left"
    assert lane.sample(302, 0.0).kind is DecisionKind.CUTOVER


def test_action_limit_and_cost_guardrail() -> None:
    profile = make_profile(
        rules=[{"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5}],
        cooldown="0s",
        action_limit={"max_actions": 1, "window": "1h"},
    )
    lane = Lane(profile)
    assert lane.sample(0, 0.0).kind is DecisionKind.CUTOVER
    lane.finish(1)
    lane.command(2, Command.FAILBACK)
    lane.finish(3)
    d = lane.sample(4, 0.0)
    assert d.kind is DecisionKind.REFUSE and "1 automatic actions in the last 1h (limit 1)" in d.reason

    costly = make_profile(
        rules=[{"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5}],
        cost={"budget_usd_per_hour": 1.0},
        chains={
            "cutover": [
                {
                    "id": "cap",
                    "module": "compute/capacity@v1",
                    "hourly_cost_usd": 2.5,
                    "inputs": {"name": "standby", "state": "running"},
                }
            ],
            "failback": [],
        },
    )
    lane = Lane(costly)
    d = lane.sample(0, 0.0)
    assert d.kind is DecisionKind.REFUSE
    assert "costs $2.50/h, over the budget of $1.00/h" in d.reason


def test_operator_cutover_overrides_guardrails_and_says_so() -> None:
    lane = Lane(make_profile(action_limit={"max_actions": 1, "window": "1h"}))
    lane.command(0, Command.CUTOVER)
    lane.finish(1)
    lane.command(2, Command.FAILBACK)
    lane.finish(3)
    d = lane.command(4, Command.CUTOVER)
    assert d.kind is DecisionKind.CUTOVER and d.trigger is Trigger.OPERATOR
    assert d.reason.endswith("overrides: cooldown after the last action: 4m58s left")


def test_drill_runs_and_tears_down_by_its_deadline() -> None:
    lane = Lane(make_profile(drill={"teardown_after": "10m"}))
    d = lane.command(0, Command.DRILL)
    assert d.kind is DecisionKind.DRILL and d.chain == "cutover" and d.trigger is Trigger.OPERATOR
    assert d.reason.endswith("teardown after 10m")
    lane.finish(5)
    assert lane.tick(100).reason == "on standby: drill teardown in 8m20s"
    d = lane.tick(600)
    assert d.kind is DecisionKind.FAILBACK and d.trigger is Trigger.SCHEDULE and d.chain == "failback"
    lane.finish(610)
    assert lane.state.status is LaneStatus.PRIMARY and lane.state.drill_deadline is None


def test_drill_refused_where_profile_forbids_or_lane_busy() -> None:
    lane = Lane(make_profile(drill={"allowed": False}))
    d = lane.command(0, Command.DRILL)
    assert d.kind is DecisionKind.REFUSE
    assert d.reason == "drill refused: profile prod@v3 does not allow drills on this lane"
    lane = Lane(make_profile())
    lane.command(0, Command.DRILL)
    assert lane.command(1, Command.DRILL, 2).reason == "drill refused: lane is CUTTING_OVER; a drill starts only from PRIMARY"


def test_pause_stops_automation_and_resume_restores() -> None:
    lane = Lane(make_profile(rules=[{"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5}]))
    d = lane.command(0, Command.PAUSE)
    assert d.reason == "paused by uid=0(root) pid=1; automatic actions stop"
    assert lane.sample(1, 0.0).kind is DecisionKind.HOLD
    assert lane.command(2, Command.DRILL).reason.startswith("drill refused: lane is paused by uid=0(root) pid=1")
    d = lane.command(3, Command.RESUME)
    assert d.reason == "resumed by uid=0(root) pid=1; lane is PRIMARY"
    assert lane.sample(4, 0.0).kind is DecisionKind.CUTOVER


def test_failed_chain_pauses_the_lane() -> None:
    lane = Lane(make_profile())
    lane.command(0, Command.CUTOVER)
    d = lane.finish(1, ok=False, detail="step fip failed: boom")
    assert lane.state.status is LaneStatus.PAUSED
    assert d.reason.endswith("failed: step fip failed: boom; automation paused until an operator resumes")
    assert lane.command(2, Command.RESUME).reason.endswith("lane is DEGRADED")


def test_chain_end_while_paused_updates_where_resume_returns() -> None:
    lane = Lane(make_profile())
    lane.command(0, Command.CUTOVER)
    lane.command(1, Command.PAUSE)
    d = lane.finish(2)
    assert d.reason.endswith("(still paused)")
    assert lane.state.status is LaneStatus.PAUSED
    lane.command(3, Command.RESUME)
    assert lane.state.status is LaneStatus.ON_STANDBY


def test_durable_state_round_trips() -> None:
    lane = Lane(make_profile())
    lane.command(0, Command.DRILL)
    restored = LaneState.from_durable(lane.state.durable())
    assert restored.durable() == lane.state.durable()
    assert restored.status is LaneStatus.CUTTING_OVER


@pytest.mark.parametrize("command", [Command.FAILBACK, Command.RESUME])
def test_commands_that_do_not_fit_the_state_are_refused(command: Command) -> None:
    lane = Lane(make_profile())
    d = lane.command(0, command)
    assert d.kind is DecisionKind.REFUSE
    assert lane.state.status is LaneStatus.PRIMARY
