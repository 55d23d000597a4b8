"""The burst lane's pure decision (policy/burst.py): levels, hysteresis, cooldown, budgets, month rollover, restarts,
max duration, and DR first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from hybridops_daemon.config.burst import BurstPolicy
from hybridops_daemon.policy.burst import BurstDecision, BurstState, accrue, decide_burst

T0 = datetime(2026, 12, 4, 18, 0, tzinfo=UTC).timestamp()


def policy(**changes: Any) -> BurstPolicy:
    raw: dict[str, Any] = {
        "signal": "onprem_p95_latency",
        "levels": [{"size": 2, "trip": 0.5, "clear": 0.3}, {"size": 4, "trip": 0.8, "clear": 0.6}],
        "unit_price_usd_hour": 0.5,
        "scale_out_after": "2m",
        "scale_in_after": "10m",
        "step_cooldown": "5m",
    }
    return BurstPolicy.model_validate(raw | changes)


class Lane:
    """Feeds pressure samples every ``every`` seconds and keeps the state, like the daemon's loop would."""

    def __init__(self, burst: BurstPolicy, start: float = T0) -> None:
        self.policy, self.now, self.state = burst, start, BurstState()
        self.steps: list[BurstDecision] = []

    def feed(self, pressure: float | None, seconds: float, every: float = 10.0, dr: tuple[str, ...] = ()) -> BurstDecision:
        end = self.now + seconds
        decision = None
        while self.now < end:
            self.now += every
            decision, self.state = decide_burst(self.state, pressure, self.policy, self.now, dr)
            if decision.notable:
                self.steps.append(decision)
        assert decision is not None
        return decision

    def sizes(self) -> list[tuple[int, int]]:
        return [(d.size_before, d.size_after) for d in self.steps if d.action != "refuse"]


def test_confirmed_pressure_scales_out_to_the_level_it_confirms_and_not_before() -> None:
    lane = Lane(policy())
    lane.feed(0.6, 120)
    assert lane.state.size == 0  # the window opens at the first sample past the trip: 110 s < 2 min so far
    last = lane.feed(0.6, 10)
    assert (last.action, last.size_after) == ("scale_out", 2)
    assert last.reason == "scale out 0 → 2: pressure past 0.5 for 2m"


def test_a_spike_past_the_top_level_goes_straight_there_once_confirmed() -> None:
    lane = Lane(policy())
    lane.feed(0.9, 130)
    assert lane.sizes() == [(0, 4)]


def test_scale_in_is_one_level_at_a_time_after_the_calm_window_and_hysteresis_holds_between() -> None:
    lane = Lane(policy())
    lane.feed(0.9, 130)
    lane.feed(0.7, 1200)  # below level 2's trip, above its clear (0.6): the hysteresis band holds size 4
    assert lane.state.size == 4
    lane.feed(0.55, 610)  # calm below 0.6 for 10 min: one level down
    assert lane.sizes() == [(0, 4), (4, 2)]
    lane.feed(0.4, 600)  # 0.4 is above level 1's clear (0.3): size 2 holds
    assert lane.state.size == 2
    lane.feed(0.1, 610)
    assert lane.sizes() == [(0, 4), (4, 2), (2, 0)]
    assert lane.state.started_at is None


def test_a_noisy_signal_around_the_trip_does_not_flap() -> None:
    lane = Lane(policy())
    for _ in range(60):  # an hour of 0.45 / 0.55: past the trip for 10 s at a time, never confirmed
        lane.feed(0.55, 10)
        lane.feed(0.45, 10)
    assert lane.steps == []
    lane.feed(0.55, 130)
    for _ in range(60):  # at size 2, the same noise never stays calm below 0.3 for long: no scale-in
        lane.feed(0.55, 10)
        lane.feed(0.25, 10)
    assert lane.sizes() == [(0, 2)]


def test_the_step_cooldown_spaces_steps() -> None:
    lane = Lane(policy(step_cooldown="30m"))
    lane.feed(0.6, 130)
    lane.feed(0.9, 130)  # level 2 confirmed 2 min after the first step: the cooldown holds it
    assert lane.sizes() == [(0, 2)]
    held = lane.feed(0.9, 10)
    assert held.reason == "pressure wants size 4; within the step cooldown"
    lane.feed(0.9, 30 * 60)
    assert lane.sizes() == [(0, 2), (2, 4)]
    assert lane.steps[1].at - lane.steps[0].at >= 30 * 60


def test_over_the_hourly_budget_is_capped_at_the_largest_affordable_level_or_refused() -> None:
    capped = Lane(policy(budget={"hourly_usd": 1.5}))
    capped.feed(0.9, 130)
    (step,) = capped.steps
    assert (step.action, step.size_after) == ("scale_out", 2)
    assert "capped from 4: size 4 costs $2.00/h, over the hourly budget of $1.50" in step.reason
    refused = Lane(policy(budget={"hourly_usd": 1.5, "over_budget": "refuse"}))
    refused.feed(0.9, 300)
    (first,) = refused.steps  # a standing refusal is journaled once
    assert first.action == "refuse" and first.size_after == 0
    assert first.reason == "scale-out to 4 refused: size 4 costs $2.00/h, over the hourly budget of $1.50"


def test_the_monthly_budget_refuses_what_it_cannot_pay_and_ends_a_burst_that_spent_it() -> None:
    burst = policy(budget={"monthly_usd": 10.0}, scale_in_after="1h")
    lane = Lane(burst)
    lane.state = lane.state._replace(month="2026-12", spent_usd=9.5, accrued_at=T0)
    lane.feed(0.6, 130)  # size 2 for an hour (its least run) costs $1: over the $0.50 left
    assert [d.action for d in lane.steps] == ["refuse"]
    assert "would take this month's spend to $10.50, over the monthly budget of $10.00" in lane.steps[0].reason
    lane = Lane(burst)
    lane.state = lane.state._replace(month="2026-12", spent_usd=8.0, accrued_at=T0)
    lane.feed(0.6, 130)
    assert lane.state.size == 2
    last = lane.feed(0.6, 3 * 3600)  # $1/h: the budget is spent two hours in
    assert lane.sizes() == [(0, 2), (2, 0)]
    assert lane.steps[-1].reason.startswith("scale in 2 → 0: this month's budget is spent ($10.0")
    assert last.budget_left_usd is not None and last.budget_left_usd <= 0
    assert lane.state.exhausted == "budget"  # no new burst starts while the pressure stays


def test_spend_is_per_utc_month_and_a_month_rollover_counts_only_the_new_months_part() -> None:
    burst = policy()
    before = datetime(2026, 11, 30, 23, 0, tzinfo=UTC).timestamp()
    state = BurstState(size=4, month="2026-11", spent_usd=120.0, accrued_at=before)
    after = accrue(state, burst, before + 2 * 3600)  # one hour in November, one in December
    assert after.month == "2026-12"
    assert after.spent_usd == pytest.approx(4 * 0.5)
    assert accrue(state, burst, before + 1800).spent_usd == pytest.approx(121.0)


def test_a_restart_mid_burst_resumes_size_timers_and_spend_from_the_durable_state() -> None:
    lane = Lane(policy())
    lane.feed(0.9, 130)
    lane.feed(0.5, 300)
    durable = lane.state.durable()
    restarted = Lane(policy(), start=lane.now)
    restarted.state = BurstState.from_durable(durable)
    restarted.feed(0.5, 600)  # the daemon was down for none of it here; spend carries on from accrued_at
    lane.feed(0.5, 600)
    assert restarted.state == lane.state
    down = Lane(policy(), start=lane.now + 3600)  # down for an hour at size 2: the capacity still ran and is paid
    down.state = lane.state
    decision = down.feed(0.5, 10)
    assert decision.spent_usd == pytest.approx(lane.state.spent_usd + 2 * 0.5 * (3600 + 10) / 3600)


def test_max_duration_scales_in_to_zero_says_why_and_waits_for_calm_before_another_burst() -> None:
    lane = Lane(policy(max_duration="1h"))
    lane.feed(0.9, 130)
    lane.feed(0.9, 3600)
    assert lane.sizes() == [(0, 4), (4, 0)]
    assert lane.steps[-1].reason == "scale in 4 → 0: the burst ran 1h, its max_duration is 1h"
    lane.feed(0.9, 3600)
    assert lane.state.size == 0
    lane.feed(0.2, 10)  # calm below the lowest clear: the next burst may start
    lane.feed(0.9, 130)
    assert lane.sizes()[-1] == (0, 4)


def test_a_dr_cutover_comes_first_and_the_decision_says_so() -> None:
    lane = Lane(policy())
    lane.feed(0.9, 300, dr=("prod",))
    (refused,) = lane.steps
    assert refused.action == "refuse"
    assert refused.reason == "scale-out to 4 waits: DR lane prod is cutting over (its capacity comes first)"
    lane.feed(0.9, 10)
    assert lane.sizes() == [(0, 4)]


def test_unknown_pressure_holds_the_size_and_restarts_both_windows() -> None:
    lane = Lane(policy())
    lane.feed(0.9, 130)
    lane.feed(0.1, 500)
    lane.feed(None, 60)
    held = lane.feed(0.1, 500)  # the calm window restarted after the gap: under 10 min
    assert held.reason == "holding at size 4" and lane.state.size == 4
    lane.feed(0.1, 120)
    assert lane.sizes() == [(0, 4), (4, 2)]


@pytest.mark.parametrize(
    ("levels", "problem"),
    [
        ([{"size": 2, "trip": 0.5, "clear": 0.6}], "clear must be on the calm side of trip"),
        ([{"size": 2, "trip": 0.5, "clear": 0.3}, {"size": 2, "trip": 0.8, "clear": 0.6}], "sizes must grow"),
        ([{"size": 2, "trip": 0.5, "clear": 0.3}, {"size": 4, "trip": 0.4, "clear": 0.3}], "trip must be past"),
    ],
)
def test_levels_that_would_flap_or_never_climb_are_refused(levels: list[dict[str, float]], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        policy(levels=levels)
