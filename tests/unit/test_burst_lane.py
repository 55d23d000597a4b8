"""A burst lane in the daemon: the pure ``decide_burst_lane`` (scale runs, their ends, intents, DR first), and the
decision loop running one against the sandbox driver with a temporary journal, restarted mid-burst."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hybridops_daemon.chain.approvals import ApprovalBook
from hybridops_daemon.chain.runner import ChainRunner
from hybridops_daemon.config.profile import Profile, profile_problems
from hybridops_daemon.daemon.burst import SCALE_RECORD, cutting_over, yielding
from hybridops_daemon.daemon.chains import ChainSupervisor
from hybridops_daemon.daemon.decisions import DecisionLoop
from hybridops_daemon.daemon.inbox import Inbox
from hybridops_daemon.daemon.lane import Lane
from hybridops_daemon.daemon.takeover import restore_state
from hybridops_daemon.drivers.modules import resource_key, validate_inputs
from hybridops_daemon.drivers.registry import DRIVER_MODULES
from hybridops_daemon.drivers.sandbox import SandboxDriver, SandboxWorld
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.metrics import Metrics
from hybridops_daemon.observations import ObservationStore
from hybridops_daemon.policy.burst_lane import decide_burst_lane, figures
from hybridops_daemon.policy.types import (
    ChainEvent,
    Command,
    Decision,
    DecisionKind,
    Intent,
    LaneState,
    LaneStatus,
    Observation,
)
from hybridops_daemon.sdnotify import Notifier
from hybridops_daemon.signals.sample import Sample
from tests.unit.test_takeover import MemoryLeadership

LANE = "burst"
T0 = 1_796_083_200.0  # 2026-12-01T00:00:00Z: a month's spend starts at zero
PROFILE = Profile.model_validate(
    {
        "name": "burst",
        "version": 1,
        "signals": {"latency": {"max_age": "10s"}},
        "burst": {
            "signal": "latency",
            "levels": [{"size": 2, "trip": 0.5, "clear": 0.3}, {"size": 4, "trip": 1.0, "clear": 0.8}],
            "unit_price_usd_hour": 0.5,
            "scale_out_after": "30s",
            "scale_in_after": "60s",
            "step_cooldown": "30s",
            "budget": {"hourly_usd": 10, "monthly_usd": 100},
            "yields_to": ["prod"],
        },
        "chains": {
            "scale": [
                {
                    "id": "capacity",
                    "module": "compute/group-size@v1",
                    "inputs": {"group": "burst-pool", "size": "${run.size}"},
                    "timeout": "2s",
                    "backoff": "10ms",
                    "retries": 0,
                }
            ]
        },
    }
)


def group_size(world: SandboxWorld) -> int | None:
    """The sandbox group's size, as the scale step left it (None: never set)."""
    module = "compute/group-size@v1"
    found = world.resource(resource_key(module, validate_inputs(module, {"group": "burst-pool", "size": 0})))
    return None if found is None else int(found["size"])


def seen(value: float | None, at: float, event: Intent | ChainEvent | None = None) -> Observation:
    return Observation({("latency", "edge01"): Sample("latency", value, at, "test", "edge01")}, "edge01", None, event)


class Pure:
    """One burst lane fed through ``decide_burst_lane`` at times relative to T0."""

    def __init__(self) -> None:
        self.state = LaneState(lane=LANE, since=T0)

    def feed(self, value: float | None, at: float, event: Intent | ChainEvent | None = None, **kw: object) -> Decision:
        decision, self.state = decide_burst_lane(self.state, seen(value, T0 + at, event), PROFILE, T0 + at, **kw)  # type: ignore[arg-type]
        return decision

    def scaled_out(self) -> Decision:
        self.feed(0.7, 0)
        return self.feed(0.7, 30)


def test_a_confirmed_scale_out_starts_a_scale_run_and_holds_until_it_ends() -> None:
    lane = Pure()
    assert lane.feed(0.7, 0).kind is DecisionKind.HOLD
    decision = lane.feed(0.7, 30)
    assert (decision.kind, decision.chain) == (DecisionKind.SCALE, "scale")
    assert decision.run_id is not None and decision.run_id == lane.state.active_run
    assert decision.reason == f"scale out 0 → 2: pressure past 0.5 for 30.0s (run {decision.run_id})"
    assert lane.state.burst is not None and lane.state.burst.size == 2 and lane.state.burst.stepping_from == (0, None)
    assert lane.state.status is LaneStatus.PRIMARY

    held = lane.feed(1.5, 120)  # pressure for the next level, confirmed meanwhile: the run in flight holds it
    assert (held.kind, held.reason) == (DecisionKind.HOLD, f"scale run {decision.run_id} in progress (0 → 2)")
    assert not held.notable

    done = lane.feed(1.5, 121, ChainEvent(LANE, decision.run_id, True, "scale chain completed: 1 steps"))
    assert done.reason == f"scale run {decision.run_id} succeeded: size 0 → 2"
    assert lane.state.active_run is None and lane.state.burst is not None and lane.state.burst.stepping_from is None
    assert lane.feed(1.5, 122).kind is DecisionKind.HOLD  # pressure past 1.0 is confirmed anew from here
    assert lane.feed(1.5, 152).reason.startswith("scale out 2 → 4: pressure past 1 for 30.0s")


def test_a_failed_scale_run_leaves_the_last_size_reached_and_pays_for_its_time() -> None:
    lane = Pure()
    lane.feed(0.7, 0)
    first = lane.scaled_out()
    assert first.run_id is not None
    lane.feed(0.7, 31, ChainEvent(LANE, first.run_id, True, "ok"))
    lane.feed(0.1, 40)
    calm = lane.feed(0.1, 100)
    assert calm.reason.startswith("scale in 2 → 0") and calm.run_id is not None
    failed = lane.feed(0.1, 100 + 3600, ChainEvent(LANE, calm.run_id, False, "step capacity failed: quota"))
    assert failed.kind is DecisionKind.HOLD and lane.state.active_run is None
    assert "failed: step capacity failed: quota; the size stays at 2, the last size reached" in failed.reason
    burst = lane.state.burst
    assert burst is not None and burst.size == 2 and burst.started_at == T0 + 30  # the burst's clock is its own
    assert burst.failed_run == calm.run_id  # an alert stands on it (notify/alerts.py) until a scale run succeeds
    # Paid at size 2 until the scale-in was decided, at 0 while it ran: the spend is what the policy accrued.
    assert burst.spent_usd == pytest.approx(2 * 0.5 * 70 / 3600)
    assert lane.feed(0.1, 3701).kind is DecisionKind.HOLD  # calm is confirmed anew, no step within the cooldown
    again = lane.feed(0.1, 3761)
    assert again.kind is DecisionKind.SCALE and again.reason.startswith("scale in 2 → 0") and again.run_id is not None
    lane.feed(0.1, 3790, ChainEvent(LANE, again.run_id, True, "ok"))
    assert lane.state.burst is not None and lane.state.burst.failed_run is None


def test_a_failed_scale_out_returns_to_zero() -> None:
    lane = Pure()
    decision = lane.scaled_out()
    assert decision.run_id is not None
    lane.feed(0.7, 40, ChainEvent(LANE, decision.run_id, False, "boom"))
    burst = lane.state.burst
    assert burst is not None and (burst.size, burst.started_at) == (0, None)
    assert burst.spent_usd == pytest.approx(2 * 0.5 * 10 / 3600)  # the ten seconds it was asked for, at size 2
    assert lane.feed(0.7, 45).reason == "pressure wants size 2; within the step cooldown"


def test_pause_holds_the_size_and_dr_commands_are_refused_with_the_reason() -> None:
    lane = Pure()
    lane.feed(0.7, 0)
    pause = lane.feed(0.7, 1, Intent(1, LANE, Command.PAUSE, "ops"))
    assert (pause.kind, lane.state.status) == (DecisionKind.HOLD, LaneStatus.PAUSED)
    held = lane.feed(0.7, 60)
    assert held.reason == "paused by ops; the size stays at 0 until resume" and lane.state.active_run is None
    for command in (Command.DRILL, Command.CUTOVER, Command.FAILBACK, Command.TEARDOWN):
        refused = lane.feed(0.7, 61, Intent(2, LANE, command, "ops"))
        assert refused.kind is DecisionKind.REFUSE and refused.intent_id == 2
        assert refused.reason.startswith(f"{command.value} refused: lane burst is a burst lane (burst@v1)")
    resumed = lane.feed(0.7, 62, Intent(3, LANE, Command.RESUME, "ops"))
    assert resumed.reason == "resumed by ops; lane is PRIMARY" and lane.state.status is LaneStatus.PRIMARY
    assert lane.feed(0.7, 63).kind is DecisionKind.SCALE  # the pressure was confirmed meanwhile: it acts now


def test_a_dr_lane_cutting_over_comes_first_and_the_decision_says_so() -> None:
    lane = Pure()
    lane.feed(0.7, 0)
    refused = lane.feed(0.7, 30, dr_cutting_over=("prod",))
    assert refused.kind is DecisionKind.REFUSE
    assert refused.reason == "scale-out to 2 waits: DR lane prod is cutting over (its capacity comes first)"
    assert not lane.feed(0.7, 31, dr_cutting_over=("prod",)).notable  # a standing refusal is said once
    assert lane.feed(0.7, 32).kind is DecisionKind.SCALE

    prod = Lane("prod", PROFILE, LaneState("prod", LaneStatus.CUTTING_OVER, active_run="prod-1"), {})
    burst = Lane(LANE, PROFILE, LaneState(LANE), {})
    assert yielding({"prod": prod, LANE: burst}, burst) == ("prod",)
    paused_mid_run = LaneState("prod", LaneStatus.PAUSED, paused_from=LaneStatus.CUTTING_OVER, active_run="prod-1")
    assert cutting_over(paused_mid_run) and not cutting_over(LaneState("prod", LaneStatus.ON_STANDBY))


def test_a_sample_past_its_max_age_is_unknown_and_confirms_nothing() -> None:
    lane = Pure()
    lane.feed(0.7, 0)
    stale = Observation({("latency", "edge01"): Sample("latency", 0.7, T0, "test", "edge01")}, "edge01")
    decision, lane.state = decide_burst_lane(lane.state, stale, PROFILE, T0 + 30)
    assert decision.kind is DecisionKind.HOLD and decision.unknown_signals == ("latency@edge01",)
    assert lane.feed(0.7, 31).kind is DecisionKind.HOLD  # the window starts again


def test_a_scale_step_whose_max_size_is_below_the_top_level_is_a_profile_problem() -> None:
    def problems(max_size: int) -> list[tuple[tuple[str | int, ...], str]]:
        data = PROFILE.model_dump(mode="json", by_alias=True)
        data["chains"]["scale"][0]["inputs"]["max_size"] = max_size
        return profile_problems(Profile.model_validate(data), DRIVER_MODULES)

    assert problems(4) == []
    assert problems(3) == [(("chains", "scale", 0, "inputs", "max_size"), "max_size 3 is below the largest burst level (4)")]


# ------------------------------------------------------------------------------------------------ in the daemon


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Daemonish:
    journal: Journal
    world: SandboxWorld
    lane: Lane
    loop: DecisionLoop
    store: ObservationStore
    clock: Clock

    def pressure(self, value: float, after: float) -> None:
        self.clock.now += after
        self.store.put(Sample("latency", value, self.clock.now, "test", "edge01"))
        self.loop.step()

    async def run_ends(self) -> None:
        assert self.lane.chain is not None
        await asyncio.wait_for(asyncio.shield(self.lane.chain), 10)
        self.loop.step()  # the loop takes the chain's end


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemonish]:
    clock = Clock(T0)
    journal = Journal.open(tmp_path / "journal.db", Redactor())
    world = SandboxWorld(tmp_path / "world.json")
    leadership = MemoryLeadership(token=5)
    lane = Lane(LANE, PROFILE, restore_state(journal, LANE, clock()), {"sandbox": SandboxDriver(world.path)}, leadership)
    lane.led = True
    runner = ChainRunner(journal, {LANE: lane.drivers}, {LANE: leadership}, ApprovalBook(), Redactor(), clock)
    inbox, store = Inbox(), ObservationStore()
    metrics = Metrics(dict, dict, dict, lambda: None, clock)
    try:
        async with asyncio.TaskGroup() as group:
            chains = ChainSupervisor(runner, group, journal, inbox, clock)
            loop = DecisionLoop({LANE: lane}, store, journal, chains, inbox, metrics, Notifier(""), "edge01", None, clock)
            yield Daemonish(journal, world, lane, loop, store, clock)
    finally:
        journal.close()


async def test_the_loop_scales_through_the_chain_and_journals_each_step(daemon: Daemonish) -> None:
    daemon.pressure(0.7, 0)
    daemon.pressure(0.7, 30)
    run = daemon.lane.state.active_run
    assert run is not None
    await daemon.run_ends()
    assert group_size(daemon.world) == 2
    start = daemon.journal.last("run.start", lane=LANE)
    assert start is not None and (start.body["chain"], start.body["size"], start.body["hourly_cost_usd"]) == ("scale", 2, 1.0)
    intent = next(r for r in daemon.journal.run_records(run) if r.kind == "step.intent")
    assert intent.body["inputs"] == {"group": "burst-pool", "size": 2}  # ${run.size}, a number
    decision = next(r for r in daemon.journal.run_records(run) if r.kind == "decision")
    assert decision.body["kind"] == "scale" and decision.body["reason"].startswith("scale out 0 → 2")
    assert {k: decision.body["burst"][k] for k in ("signal", "pressure", "size_before", "size_after")} == {
        "signal": "latency",
        "pressure": 0.7,
        "size_before": 0,
        "size_after": 2,
    }
    scale = daemon.journal.last(SCALE_RECORD, lane=LANE)
    assert scale is not None and scale.run_id == run
    assert {k: scale.body[k] for k in ("ok", "size_before", "size_requested", "size_after", "month")} == {
        "ok": True,
        "size_before": 0,
        "size_requested": 2,
        "size_after": 2,
        "month": "2026-12",
    }
    assert scale.body["reason"] == f"scale run {run} succeeded: size 0 → 2"
    assert scale.body["budget_left_usd"] == pytest.approx(100 - scale.body["spent_usd"])


async def test_a_restart_mid_burst_recovers_size_and_spend_from_the_journal_even_after_a_retention_cut(
    daemon: Daemonish,
) -> None:
    daemon.pressure(0.7, 0)
    daemon.pressure(0.7, 30)
    await daemon.run_ends()
    for _ in range(6):  # ten minutes at size 2 under pressure: holds, none of them journaled
        daemon.pressure(0.7, 100)
    before = figures(daemon.lane.state.burst, PROFILE, daemon.clock.now + 3600)
    assert before.size == 2 and before.spent_usd == pytest.approx(2 * 0.5 * (3600 + 600) / 3600, abs=0.01)

    # The daemon stops here, and an hour later starts again: the capacity ran on and is paid for.
    restarted = restore_state(daemon.journal, LANE, daemon.clock.now + 3600)
    assert restarted.burst is not None and restarted.burst.size == 2 and restarted.active_run is None
    after = figures(restarted.burst, PROFILE, daemon.clock.now + 3600)
    assert (after.size, after.month) == (2, "2026-12")
    assert after.spent_usd == pytest.approx(before.spent_usd) and after.budget_left_usd == pytest.approx(before.budget_left_usd)
    assert restarted.burst.past_trip_since == () and restarted.burst.calm_since is None  # confirmed anew

    # Retention cuts everything but the newest record: the lane's last decision rides in the cut's summary.
    daemon.journal.append("daemon.stop", {"node": "edge01", "reason": "signal"}, ts=daemon.clock.now)
    report = daemon.journal.prune(before_ts=daemon.clock.now + 1, now=daemon.clock.now + 1)
    assert report is not None and report.removed > 0 and daemon.journal.last(SCALE_RECORD, lane=LANE) is None
    cut = restore_state(daemon.journal, LANE, daemon.clock.now + 3600)
    assert cut == restarted


async def test_a_failed_scale_run_is_journaled_and_the_lane_stays_where_it_was(daemon: Daemonish) -> None:
    daemon.world.inject_fault("compute/group-size@v1", "apply", fail_times=1, message="quota exceeded")
    daemon.pressure(0.7, 0)
    daemon.pressure(0.7, 30)
    await daemon.run_ends()
    assert group_size(daemon.world) is None
    scale = daemon.journal.last(SCALE_RECORD, lane=LANE)
    assert scale is not None and (scale.body["ok"], scale.body["size_requested"], scale.body["size_after"]) == (False, 2, 0)
    assert "quota exceeded" in scale.body["reason"] and "the size stays at 0, the last size reached" in scale.body["reason"]
    assert daemon.lane.state.status is LaneStatus.PRIMARY and daemon.lane.state.burst is not None
    assert daemon.lane.state.burst.size == 0
    daemon.pressure(0.7, 31)  # past the cooldown, the pressure still confirmed: the lane tries again
    await daemon.run_ends()
    assert group_size(daemon.world) == 2
