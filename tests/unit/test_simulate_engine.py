"""The replay engine: decide() on each wake and at the tick cadence, simulated chains and approval gates, operator
commands from the trace, and the tick skipping that must change nothing."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.simulate.engine import Replay, replay
from hybridops_daemon.simulate.trace import Trace, load_trace


def make_profile(**overrides: Any) -> Profile:
    """One probe rule (3 failed probes over 3 s); a 15 s cutover chain costing $0.75/h; a 15 s failback chain."""
    data: dict[str, Any] = {
        "name": "prod",
        "version": 1,
        "signals": {"primary_http": {"max_age": "5s"}},
        "rules": [
            {"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5, "for": "3s", "consecutive": 3}
        ],
        "cooldown": "5m",
        "chains": {
            "cutover": [
                {"id": "capacity", "module": "compute/capacity@v1", "hourly_cost_usd": 0.5, "expected_duration": "10s"},
                {"id": "fip", "module": "network/floating-ip@v1", "hourly_cost_usd": 0.25, "expected_duration": "5s"},
            ],
            "failback": [
                {"id": "fip", "module": "network/floating-ip@v1", "expected_duration": "5s"},
                {"id": "capacity", "module": "compute/capacity@v1", "expected_duration": "10s"},
            ],
        },
    }
    data.update(overrides)
    return Profile.model_validate(data)


def trace_of(tmp_path: Path, lines: list[dict[str, Any]]) -> Trace:
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return load_trace(path)


def probe(start: int, stop: int, value: float | None = 1, step: int = 1, **extra: Any) -> list[dict[str, Any]]:
    return [{"t": t, "signal": "primary_http", "value": value, **extra} for t in range(start, stop, step)]


def kinds(result: Replay) -> list[tuple[float, str, str]]:
    return [(d.t, d.kind, d.status) for d in result.decisions]


def test_an_outage_cuts_over_and_the_chain_takes_its_expected_duration(tmp_path: Path) -> None:
    trace = trace_of(tmp_path, probe(0, 100) + probe(100, 110, 0) + probe(110, 200))
    result = replay(make_profile(), trace, lane="prod")
    # 4th failed probe: 3 in a row and 3 s since the first; the chain's 10 s + 5 s end it at 118.
    assert kinds(result) == [
        (100.0, "hold", "DEGRADED"),
        (103.0, "cutover", "CUTTING_OVER"),
        (118.0, "hold", "ON_STANDBY"),
    ]
    assert result.decisions[1].reason == (
        "cutover: 1 of 1 required rules tripped: primary_down@edge01 (primary_http=0, 4 in a row) (run prod-19700101T000143-1)"
    )
    assert [(r.run_id, r.chain, r.started, r.ended, r.ok) for r in result.runs] == [
        ("prod-19700101T000143-1", "cutover", 103.0, 118.0, True)
    ]
    assert result.standby == [(118.0, 199.0)]
    assert result.billed == [(103.0, 199.0)]
    assert result.final_status == "ON_STANDBY"


def test_confirmation_completes_on_a_tick_between_samples(tmp_path: Path) -> None:
    profile = make_profile(
        signals={"primary_http": {"max_age": "30s"}},
        rules=[
            {"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5, "for": "25s", "consecutive": 2}
        ],
    )
    trace = trace_of(tmp_path, probe(0, 100, step=10) + probe(100, 200, 0, step=10))
    for every_tick in (False, True):
        result = replay(profile, trace, lane="prod", every_tick=every_tick)
        assert kinds(result)[:2] == [(100.0, "hold", "DEGRADED"), (125.0, "cutover", "CUTTING_OVER")]


def test_a_silent_signal_reads_unknown_after_its_max_age(tmp_path: Path) -> None:
    breach = make_profile(
        rules=[
            {
                "name": "primary_down",
                "signal": "primary_http",
                "direction": "below",
                "trip": 0.5,
                "for": "10s",
                "unknown": "breach",
            }
        ]
    )
    # The probe goes quiet after t=50; a command at 200 keeps the trace going.
    trace = trace_of(tmp_path, [*probe(0, 51), {"t": 200, "command": "pause"}])
    result = replay(breach, trace, lane="prod")
    # Stale once more than 5 s old (first tick: 56), then breaching for 10 s of UNKNOWN: 66.
    assert kinds(result)[:2] == [(56.0, "hold", "DEGRADED"), (66.0, "cutover", "CUTTING_OVER")]
    hold = replay(make_profile(), trace, lane="prod")
    assert kinds(hold) == [(200.0, "hold", "PAUSED")]  # under `unknown: hold` silence is never an outage


def test_samples_at_one_instant_are_one_wake_and_ticks_fill_the_gaps(tmp_path: Path) -> None:
    together = trace_of(tmp_path, [*probe(0, 1), *probe(0, 1, edge="edge02"), *probe(3, 4)])
    # wake at 0 (both samples), ticks at 1 and 2 (the first tick after a wake always runs), wake at 3
    assert replay(make_profile(), together, lane="prod", every_tick=True).decide_calls == 4
    # Skipping: the wake at 0 changed the state (the failback window's clock starts), so the tick at 1 runs; it is
    # quiet, and nothing can change before the reading's max age (5 s), past the next sample: no tick at 2.
    assert replay(make_profile(), together, lane="prod").decide_calls == 3


def test_both_edges_need_the_peer_sample_with_its_edge(tmp_path: Path) -> None:
    profile = make_profile(corroboration={"min_rules": 1, "both_edges": True})
    only_here = trace_of(tmp_path, sorted(probe(0, 60, 0) + probe(0, 60, 1, edge="edge02"), key=lambda line: line["t"]))
    assert [d.kind for d in replay(profile, only_here, lane="prod").decisions] == ["hold"]  # DEGRADED only
    both = trace_of(tmp_path, sorted(probe(0, 60, 0) + probe(0, 60, 0, edge="edge02"), key=lambda line: line["t"]))
    assert kinds(replay(profile, both, lane="prod"))[1] == (3.0, "cutover", "CUTTING_OVER")
    other_peer = replay(profile, both, lane="prod", peer="edge03")  # the samples name edge02: not this node's peer
    assert "cutover" not in [d.kind for d in other_peer.decisions]


def gated_profile() -> Profile:
    return make_profile(
        approval_timeout="1m",
        chains={
            "cutover": [{"id": "capacity", "module": "compute/capacity@v1", "hourly_cost_usd": 0.5, "expected_duration": "10s"}],
            "failback": [
                {"id": "fip", "module": "network/floating-ip@v1", "expected_duration": "5s"},
                {"id": "capacity", "module": "compute/capacity@v1", "approval": True, "expected_duration": "10s"},
            ],
        },
    )


def outage_then(commands: list[dict[str, Any]], end: int = 400) -> list[dict[str, Any]]:
    lines = probe(0, 10, 0) + probe(10, end)  # cutover at 3, on standby at 13
    lines.extend(commands)
    return sorted(lines, key=lambda line: line["t"])


def test_an_approval_gate_waits_for_approve_from_the_trace(tmp_path: Path) -> None:
    trace = trace_of(
        tmp_path,
        outage_then(
            [
                {"t": 200, "command": "failback", "lane": "prod"},
                {"t": 202, "command": "approve", "lane": "prod"},  # too early: the gate opens at 205
                {"t": 230, "command": "approve", "lane": "prod"},
            ]
        ),
    )
    result = replay(gated_profile(), trace, lane="prod")
    failback = result.runs[1]
    assert (failback.chain, failback.started, failback.ended, failback.ok) == ("failback", 200.0, 240.0, True)
    assert failback.approvals == [("capacity", 230.0)]
    assert result.notes == ["line 205 (t=202): approve ignored: no step of lane prod waits for approval"]
    assert result.final_status == "PRIMARY"
    assert result.billed == [(3.0, 240.0)]


def test_an_unanswered_gate_waits_and_then_expires_like_the_daemon(tmp_path: Path) -> None:
    waiting = replay(gated_profile(), trace_of(tmp_path, outage_then([{"t": 200, "command": "failback"}], end=240)), lane="prod")
    run = waiting.runs[1]
    assert (run.ended, run.waiting_step, run.waiting_since) == (None, "capacity", 205.0)
    assert waiting.final_status == "FAILING_BACK"

    expired = replay(gated_profile(), trace_of(tmp_path, outage_then([{"t": 200, "command": "failback"}])), lane="prod")
    run = expired.runs[1]
    assert (run.ended, run.ok, run.detail, run.waiting_step) == (265.0, False, "step capacity: approval expired after 1m", None)
    assert kinds(expired)[-1] == (265.0, "hold", "PAUSED")
    assert expired.billed == [(3.0, 399.0)]  # a failed failback leaves the capacity running


def test_reject_fails_the_run_at_once(tmp_path: Path) -> None:
    trace = trace_of(tmp_path, outage_then([{"t": 200, "command": "failback"}, {"t": 210, "command": "reject"}]))
    result = replay(gated_profile(), trace, lane="prod")
    assert (result.runs[1].ended, result.runs[1].detail) == (210.0, "step capacity: rejected by trace")
    assert result.decisions[-1].reason.startswith("failback run prod-19700101T000320-2 failed: step capacity: rejected by trace")


def test_commands_become_intents_for_this_lane_only(tmp_path: Path) -> None:
    lines = [*probe(0, 300), {"t": 100, "command": "drill", "lane": "drill"}, {"t": 150, "command": "cutover"}]
    result = replay(make_profile(), trace_of(tmp_path, sorted(lines, key=lambda line: line["t"])), lane="prod")
    assert result.notes == ["line 102 (t=100): drill for lane drill ignored (simulating prod)"]
    forced = result.decisions[0]
    assert (forced.t, forced.kind, forced.trigger, forced.reason) == (
        150.0,
        "cutover",
        "operator",
        "cutover forced by trace (run prod-19700101T000230-1)",
    )


def test_a_drill_tears_down_at_its_deadline(tmp_path: Path) -> None:
    profile = make_profile(drill={"allowed": True, "teardown_after": "2m"})
    result = replay(profile, trace_of(tmp_path, [*probe(0, 100), {"t": 100, "command": "drill"}, *probe(100, 400)]), lane="prod")
    assert kinds(result) == [
        (100.0, "drill", "CUTTING_OVER"),
        (115.0, "hold", "ON_STANDBY"),
        (220.0, "failback", "FAILING_BACK"),
        (235.0, "hold", "PRIMARY"),
    ]
    assert result.decisions[2].trigger == "schedule"
    assert result.billed == [(100.0, 235.0)]


def test_a_paused_lane_keeps_its_standby_time_when_the_chain_ends_under_the_pause(tmp_path: Path) -> None:
    lines = outage_then([{"t": 5, "command": "pause"}, {"t": 100, "command": "resume"}], end=200)
    result = replay(make_profile(), trace_of(tmp_path, lines), lane="prod")
    # The cutover chain ends at 18 while paused: the lane is served from the cloud from then on.
    assert result.standby == [(18.0, 199.0)]
    assert result.final_status == "ON_STANDBY"


def random_trace(rng: random.Random) -> list[dict[str, Any]]:
    """Sparse, irregular samples of two signals, outages, gaps, nulls, and operator commands at random times."""
    lines: list[dict[str, Any]] = []
    t, down_until = 0.0, -1.0
    while t < 4 * 3600:
        t = round(t + rng.choice([2.5, 7, 10, 10, 10, 23]), 1)
        if t > down_until and rng.random() < 0.01:
            down_until = t + rng.uniform(20, 900)
        if rng.random() < 0.03:
            continue  # a lost sample
        value: float | None = None if rng.random() < 0.02 else (0.0 if t < down_until else 1.0)
        lines.append({"t": t, "signal": "primary_http", "value": value})
        if rng.random() < 0.5:
            lines.append({"t": t, "signal": "wan_loss", "value": rng.choice([0.5, 1, 45, 80]) if t < down_until else 0.5})
        if rng.random() < 0.004:
            lines.append({"t": t, "command": rng.choice(["pause", "resume", "drill", "failback", "approve", "cutover"])})
    return lines


@pytest.mark.parametrize("seed", range(6))
def test_skipping_quiet_ticks_gives_exactly_what_running_every_tick_gives(tmp_path: Path, seed: int) -> None:
    profile = make_profile(
        signals={"primary_http": {"max_age": "15s"}, "wan_loss": {"max_age": "25s"}},
        rules=[
            {"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5, "for": "25s", "consecutive": 2},
            {
                "name": "wan_lossy",
                "signal": "wan_loss",
                "direction": "above",
                "trip": 40,
                "clear": 5,
                "for": "17s",
                "unknown": "breach",
            },
        ],
        corroboration={"min_rules": 1},
        cooldown="7m",
        action_limit={"max_actions": 3, "window": "1h"},
        failback={"automatic": True, "stable_for": "2m"},
        drill={"allowed": True, "teardown_after": "4m"},
        approval_timeout="3m",
    )
    trace = trace_of(tmp_path, random_trace(random.Random(seed)))
    skipping = replay(profile, trace, lane="prod", tick=1.5)
    exhaustive = replay(profile, trace, lane="prod", tick=1.5, every_tick=True)
    assert len(skipping.decisions) > 5  # the trace exercises the policy
    assert skipping.decisions == exhaustive.decisions
    assert skipping.runs == exhaustive.runs
    assert (skipping.billed, skipping.standby, skipping.notes, skipping.final_status) == (
        exhaustive.billed,
        exhaustive.standby,
        exhaustive.notes,
        exhaustive.final_status,
    )
    assert skipping.decide_calls < exhaustive.decide_calls / 2


def test_the_profile_s_drill_schedule_fires_on_the_simulated_clock(tmp_path: Path) -> None:
    profile = make_profile(drill={"allowed": True, "teardown_after": "15m", "schedule": "0 3 * * *"})  # 03:00 UTC daily
    result = replay(profile, trace_of(tmp_path, probe(0, 2 * 86400, step=60)), lane="prod")
    drills = [(d.t, d.trigger, d.reason) for d in result.decisions if d.kind == "drill"]
    assert drills == [
        (10800.0, "schedule", "drill by schedule: running the cutover chain (run prod-19700101T030000-1); teardown after 15m"),
        (97200.0, "schedule", "drill by schedule: running the cutover chain (run prod-19700102T030000-3); teardown after 15m"),
    ]
    assert result.billed == [(10800.0, 11715.0), (97200.0, 98115.0)]  # until each teardown (15 s chain) completes
    unscheduled = make_profile(drill={"allowed": False, "schedule": "0 3 * * *"})
    assert replay(unscheduled, trace_of(tmp_path, probe(0, 86400, step=60)), lane="prod").decisions == []


def test_readiness_replays_from_a_trace_like_any_signal(tmp_path: Path) -> None:
    """A trace records the preflights as ``ready_<chain>_<step>`` samples: the replay refuses the outage's automatic
    cutover while the floating-IP step is reported broken (the profile's option), and cuts over once it is fixed."""
    broken = [{"t": t, "signal": "ready_cutover_fip", "value": 0} for t in range(0, 130, 60)]
    fixed = [{"t": 150, "signal": "ready_cutover_fip", "value": 1}]
    trace = trace_of(tmp_path, sorted(probe(0, 100) + probe(100, 200, 0) + broken + fixed, key=lambda line: line["t"]))
    result = replay(make_profile(readiness={"refuse_broken_cutover": True}), trace, lane="prod")
    refusal = next(d for d in result.decisions if d.kind == "refuse")
    assert refusal.t == 103.0 and "the cutover path is reported broken at fip: no reason given" in refusal.reason
    assert [(d.t, d.kind) for d in result.decisions if d.kind == "cutover"] == [(150.0, "cutover")]
