"""The cost model on tiny hand-made traces, with the arithmetic written out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.simulate.cost import always_on_rate, cost_of
from hybridops_daemon.simulate.engine import replay
from hybridops_daemon.simulate.report import result
from tests.unit.test_simulate_engine import make_profile, probe, trace_of

# make_profile(): the cutover chain's capacity costs 0.5 + 0.25 = $0.75/h; each chain takes 15 s.


def outage_and_failback(tmp_path: Path) -> Any:
    lines = probe(0, 600) + probe(600, 900, 0, labels={"fault": True}) + probe(900, 3601)
    lines.append({"t": 1200, "command": "failback"})
    return trace_of(tmp_path, sorted(lines, key=lambda line: line["t"]))


def test_policy_cost_runs_from_the_cutover_until_the_failback_completes(tmp_path: Path) -> None:
    profile = make_profile(cost={"budget_usd_per_hour": 5, "always_on_usd_per_hour": 1.5})
    trace = outage_and_failback(tmp_path)
    out = result(profile, trace, replay(profile, trace, lane="prod"), tick=1.0, grace=60.0)
    # cutover at 603 (4th failed probe), on standby at 618, failback at 1200, done at 1215
    assert [(d["t"], d["kind"]) for d in out["decisions"] if d["kind"] != "hold"] == [(603.0, "cutover"), (1200.0, "failback")]
    assert out["cost"] == {
        "policy_usd": 0.1275,  # $0.75/h × (1215 - 603) s / 3600
        "always_on_usd": 1.5,  # $1.50/h × 3600 s / 3600
        "saving_ratio": 0.915,  # 1 - 0.1275 / 1.5
        "hourly_usd": 0.75,
        "always_on_hourly_usd": 1.5,
        "billed_s": 612.0,
    }
    assert out["time_on_standby_s"] == 582.0  # 618 .. 1200
    assert out["duration_s"] == 3600.0


def test_a_drill_is_paid_until_its_teardown_completes(tmp_path: Path) -> None:
    profile = make_profile(drill={"allowed": True, "teardown_after": "2m"})
    trace = trace_of(tmp_path, [*probe(0, 100), {"t": 100, "command": "drill"}, *probe(100, 1801)])
    out = result(profile, trace, replay(profile, trace, lane="prod"), tick=1.0, grace=60.0)
    # drill at 100, deadline 220, teardown chain 15 s: paid 100 .. 235
    assert out["cost"]["billed_s"] == 135.0
    assert out["cost"]["policy_usd"] == pytest.approx(0.75 * 135 / 3600)
    assert out["cost"]["always_on_usd"] == pytest.approx(0.75 * 1800 / 3600)  # default baseline: the same capacity, 24/7
    assert (out["drills"], out["cutovers"], out["failbacks"]) == (1, 0, 1)


def test_a_failed_cutover_stops_the_bill_a_failed_failback_does_not(tmp_path: Path) -> None:
    gated_cutover = make_profile(
        chains={
            "cutover": [{"id": "capacity", "module": "compute/capacity@v1", "hourly_cost_usd": 1.0, "approval": True}],
            "failback": [{"id": "capacity", "module": "compute/capacity@v1"}],
        }
    )
    lines = probe(0, 10, 0) + probe(10, 100) + [{"t": 50, "command": "reject"}]
    trace = trace_of(tmp_path, sorted(lines, key=lambda line: line["t"]))
    replayed = replay(gated_cutover, trace, lane="prod")
    assert replayed.billed == [(3.0, 50.0)]  # rejected at the gate: the runner compensates, the capacity stops
    assert cost_of(gated_cutover, replayed.billed, trace.duration).policy_usd == pytest.approx(47 / 3600)

    gated_failback = make_profile(
        approval_timeout="30s",
        chains={
            "cutover": [{"id": "capacity", "module": "compute/capacity@v1", "hourly_cost_usd": 1.0}],
            "failback": [{"id": "capacity", "module": "compute/capacity@v1", "approval": True}],
        },
    )
    lines = probe(0, 10, 0) + probe(10, 300) + [{"t": 100, "command": "failback"}]
    replayed = replay(gated_failback, trace_of(tmp_path, sorted(lines, key=lambda line: line["t"])), lane="prod")
    assert replayed.runs[1].ok is False  # the gate expired at 130
    assert replayed.billed == [(3.0, 299.0)]  # still running when the trace ends


def test_cost_arithmetic_and_the_baseline() -> None:
    profile = make_profile()
    assert always_on_rate(profile) == 0.75
    cost = cost_of(profile, [(0.0, 1800.0), (3600.0, 5400.0)], 7200.0)
    assert (cost.billed_s, cost.policy_usd, cost.always_on_usd, cost.saving_ratio) == (3600.0, 0.75, 1.5, 0.5)
    explicit = make_profile(cost={"budget_usd_per_hour": 1, "always_on_usd_per_hour": 3.0})
    assert cost_of(explicit, [], 3600.0).always_on_usd == 3.0
    free = make_profile(cost={"budget_usd_per_hour": 1, "always_on_usd_per_hour": 0})
    assert cost_of(free, [(0.0, 60.0)], 3600.0).saving_ratio is None  # nothing to save against
