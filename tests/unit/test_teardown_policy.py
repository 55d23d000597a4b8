"""No paid capacity left behind (hardening #8), in the pure core: a failed drill or cutover strands its capacity; the
teardown is scheduled with backoff, runs on ``teardown``, and ends the stranding only when it succeeds."""

from __future__ import annotations

from typing import Any

import pytest

from hybridops_daemon.policy.types import Command, DecisionKind, LaneState, LaneStatus, Trigger
from tests.unit.test_decide import EDGE, PEER, T0, Lane, make_profile

CHAINS: dict[str, Any] = {
    "cutover": [
        {
            "id": "capacity",
            "module": "compute/capacity@v1",
            "inputs": {"name": "drill-standby", "state": "running"},
            "hourly_cost_usd": 0.27,
        },
        {"id": "fip", "module": "network/floating-ip@v1", "inputs": {"ip": "203.0.113.10", "target": PEER}},
    ],
    "failback": [
        {"id": "fip", "module": "network/floating-ip@v1", "inputs": {"ip": "203.0.113.10", "target": EDGE}},
        {"id": "capacity", "module": "compute/capacity@v1", "inputs": {"name": "drill-standby", "state": "stopped"}},
    ],
}


def drill_lane(**overrides: Any) -> Lane:
    profile = make_profile(chains=CHAINS, teardown={"retry_after": "60s", "retry_max": "5m"}, **overrides)
    return Lane(profile)


def failed_drill(lane: Lane) -> None:
    assert lane.command(0, Command.DRILL).kind is DecisionKind.DRILL
    d = lane.finish(10, ok=False, detail="step fip failed: 503")
    assert lane.state.status is LaneStatus.PAUSED and lane.state.stranded is not None
    assert "capacity may be running: capacity (drill-standby); teardown attempt 1 in 1m, or hyopsctl teardown" in d.reason
    assert d.notable  # journaled, with the state a restart resumes from


def test_a_failed_drill_strands_its_capacity_and_the_teardown_runs_on_schedule() -> None:
    lane = drill_lane()
    lane.sample(0, 1.0)
    failed_drill(lane)
    drill_run = lane.state.stranded
    assert lane.tick(69).kind is DecisionKind.HOLD  # not yet: 60 s after the failure
    d = lane.tick(70)
    assert d.kind is DecisionKind.TEARDOWN and d.chain == "failback" and d.trigger is Trigger.SCHEDULE
    what = f"teardown of what failed run {drill_run} may have left running (capacity (drill-standby)); attempt 1"
    assert d.reason.startswith(what)
    assert lane.state.status is LaneStatus.FAILING_BACK and lane.state.paused_by is None  # the failure's pause lifted
    d = lane.finish(80)
    assert lane.state.status is LaneStatus.PRIMARY
    state = lane.state
    assert (state.stranded, state.teardown_tries, state.teardown_at, state.drill_deadline) == (None, 0, None, None)


def test_a_failing_teardown_is_retried_with_doubling_delays_up_to_the_cap() -> None:
    lane = drill_lane()
    failed_drill(lane)
    t = 10.0
    waits = []
    for attempt in range(1, 6):
        at = lane.state.teardown_at
        assert at is not None
        waits.append(round(at - (T0 + t)))
        t = at - T0
        assert lane.tick(t).kind is DecisionKind.TEARDOWN
        assert lane.decisions[-1].reason.endswith(f"attempt {attempt} (run {lane.state.active_run})")
        t += 5
        d = lane.finish(t, ok=False, detail="step capacity failed: 500")
        assert lane.state.status is LaneStatus.PAUSED and lane.state.teardown_tries == attempt
        assert f"teardown attempt {attempt + 1} in" in d.reason
    assert waits == [60, 120, 240, 300, 300]  # 1m after the failed drill, doubled per failed teardown, capped at 5m
    assert lane.state.stranded is not None and lane.state.stranded == lane.decisions[0].run_id  # still the drill's run


def test_an_operator_pause_holds_the_scheduled_teardown_and_teardown_runs_on_demand() -> None:
    lane = drill_lane()
    failed_drill(lane)
    lane.command(11, Command.RESUME)
    lane.command(12, Command.PAUSE)  # an operator looks at it
    assert lane.tick(500).kind is DecisionKind.HOLD and lane.state.status is LaneStatus.PAUSED
    d = lane.command(501, Command.TEARDOWN)
    assert d.kind is DecisionKind.TEARDOWN and d.trigger is Trigger.OPERATOR and d.reason.endswith("by uid=0(root) pid=1")
    refused = lane.command(502, Command.TEARDOWN)
    assert refused.kind is DecisionKind.REFUSE
    assert refused.reason == f"teardown refused: run {lane.state.active_run} is in progress"


def test_teardown_with_nothing_stranded_is_refused() -> None:
    lane = drill_lane()
    lane.sample(0, 1.0)
    d = lane.command(1, Command.TEARDOWN)
    assert d.kind is DecisionKind.REFUSE and "no failed run left capacity behind on this lane" in d.reason
    assert lane.state.status is LaneStatus.PRIMARY


def test_a_failed_real_cutover_waits_for_a_healthy_primary_before_tearing_down() -> None:
    lane = drill_lane()
    lane.command(0, Command.CUTOVER)
    d = lane.finish(1, ok=False, detail="step fip failed: 503")
    assert "teardown attempt 1 in 1m once the primary is healthy on every rule" in d.reason
    for t in (70, 80, 90):  # the primary is still down: the standby is the only way out
        assert lane.sample(t, 0.0).kind is DecisionKind.HOLD
    assert lane.sample(100, 1.0).kind is DecisionKind.TEARDOWN


def test_a_failed_drill_teardown_strands_the_running_drill_capacity() -> None:
    lane = drill_lane(drill={"allowed": True, "teardown_after": "15m"})
    lane.command(0, Command.DRILL)
    lane.finish(60)
    assert lane.state.status is LaneStatus.ON_STANDBY
    assert lane.tick(900).kind is DecisionKind.FAILBACK  # the drill's deadline
    d = lane.finish(910, ok=False, detail="step capacity failed: 500")
    assert lane.state.stranded == lane.decisions[-2].run_id and "capacity may be running" in d.reason
    assert lane.tick(970).kind is DecisionKind.TEARDOWN


def test_a_failed_real_failback_strands_nothing_the_cloud_still_serves() -> None:
    lane = drill_lane()
    lane.command(0, Command.CUTOVER)
    lane.finish(1)
    lane.command(2, Command.FAILBACK)
    d = lane.finish(3, ok=False, detail="step fip failed")
    assert lane.state.stranded is None and "capacity may be running" not in d.reason


def test_no_capacity_steps_no_stranding() -> None:
    lane = Lane(make_profile())  # its chain has no step with an hourly cost
    lane.command(0, Command.DRILL)
    lane.finish(1, ok=False, detail="boom")
    assert lane.state.stranded is None


def test_a_successful_cutover_after_a_failure_puts_the_capacity_to_use() -> None:
    lane = drill_lane()
    lane.command(0, Command.CUTOVER)
    lane.finish(1, ok=False, detail="boom")
    lane.command(2, Command.RESUME)
    lane.command(3, Command.CUTOVER)
    assert lane.state.drill_deadline is None
    lane.finish(4)
    assert lane.state.status is LaneStatus.ON_STANDBY and lane.state.stranded is None


def test_stranding_survives_a_restart() -> None:
    lane = drill_lane()
    failed_drill(lane)
    restored = LaneState.from_durable(lane.state.durable())
    assert (restored.stranded, restored.teardown_tries, restored.teardown_at) == (lane.state.stranded, 0, lane.state.teardown_at)


@pytest.mark.parametrize("bad", [{"retry_after": "0s"}, {"retry_after": "10m", "retry_max": "1m"}])
def test_teardown_policy_is_checked(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        make_profile(teardown=bad)
