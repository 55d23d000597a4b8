"""The daemon's side of burst lanes: what the decision loop hands ``decide_burst_lane`` (the DR lanes cutting over),
what a burst decision's record carries beside it, the ``burst.scale`` record of each scale run that ended, and the
figures status and metrics show. The deciding itself is ``policy/burst_lane.py``; this module only reads and records.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from hybridops_daemon.daemon.lane import Lane
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.policy.burst_lane import BurstFigures, figures, pressure
from hybridops_daemon.policy.types import ChainEvent, Decision, LaneState, LaneStatus, Observation

log = structlog.get_logger("hybridops.daemon")

SCALE_RECORD = "burst.scale"


def cutting_over(state: LaneState) -> bool:
    """A DR lane's cutover is under way: its status, or a pause that let its cutover run finish."""
    if state.status is LaneStatus.CUTTING_OVER:
        return True
    return state.status is LaneStatus.PAUSED and state.paused_from is LaneStatus.CUTTING_OVER and state.active_run is not None


def yielding(lanes: Mapping[str, Lane], lane: Lane) -> tuple[str, ...]:
    """The lanes the burst lane's ``yields_to`` names that are cutting over now. A lane another node leads shows the
    state its leader last published (daemon/takeover.py mirrors it), so the edges agree on it."""
    burst = lane.profile.burst
    assert burst is not None
    return tuple(name for name in burst.yields_to if (other := lanes.get(name)) is not None and cutting_over(other.state))


def decision_body(lane: Lane, before: LaneState, observation: Observation, now: float) -> dict[str, Any]:
    """What a burst lane's decision record (and the decision a scale run starts from) carries beside the decision:
    the pressure it read, the size before and after, the spend this month and the budget left. ``size_after`` is
    the size a scale run sets (``Lane.run_spec`` reads it)."""
    burst = lane.profile.burst
    assert burst is not None
    shown = figures(lane.state.burst, lane.profile, now)
    return {
        "burst": {
            "signal": burst.signal,
            "pressure": pressure(observation, lane.profile, now),
            "size_before": before.burst.size if before.burst is not None else 0,
            "size_after": shown.size,
            "spent_usd": shown.spent_usd,
            "budget_left_usd": shown.budget_left_usd,
            "month": shown.month,
        }
    }


def record_scale(journal: Journal, lane: Lane, before: LaneState, event: ChainEvent, decision: Decision) -> dict[str, Any]:
    """Journal the step a scale run made, or failed to make: the size it started from, asked for and reached, and
    the month's spend after it. Returns the record's body."""
    burst = lane.profile.burst
    asked = before.burst
    assert burst is not None and asked is not None, "a scale run ends on a burst lane that asked for a size"
    started = asked.stepping_from[0] if asked.stepping_from is not None else asked.size
    shown = figures(lane.state.burst, lane.profile, decision.at)
    body = {
        "run_id": event.run_id,
        "ok": event.ok,
        "size_before": started,
        "size_requested": asked.size,
        "size_after": shown.size,
        "reason": decision.reason,
        "hourly_usd": round(burst.cost_per_hour(shown.size), 6),
        "spent_usd": shown.spent_usd,
        "budget_left_usd": shown.budget_left_usd,
        "month": shown.month,
    }
    journal.append(SCALE_RECORD, body, ts=decision.at, lane=lane.name, run_id=event.run_id)
    log.info("burst scale", lane=lane.name, **{k: v for k, v in body.items() if k != "reason"})
    return body


def lane_figures(lanes: Mapping[str, Lane], now: float) -> dict[str, BurstFigures]:
    """Every burst lane's size, spend this month and budget left, as of ``now``: for ``/metrics``."""
    return {name: figures(lane.state.burst, lane.profile, now) for name, lane in lanes.items() if lane.profile.burst}


def status_document(lane: Lane, now: float) -> dict[str, Any] | None:
    """A burst lane's part of ``hyopsctl status``; None for a DR lane."""
    burst = lane.profile.burst
    if burst is None:
        return None
    shown = figures(lane.state.burst, lane.profile, now)
    state = lane.state.burst
    stepping = state.stepping_from if state is not None and lane.state.active_run is not None else None
    return {
        "size": shown.size,
        "scaling_from": stepping[0] if stepping is not None else None,
        "max_size": max(level.size for level in burst.levels),
        "hourly_usd": round(burst.cost_per_hour(shown.size), 6),
        "spent_usd": shown.spent_usd,
        "month": shown.month,
        "monthly_budget_usd": burst.budget.monthly_usd,
        "budget_left_usd": shown.budget_left_usd,
        "hourly_budget_usd": burst.budget.hourly_usd,
        "yields_to": list(burst.yields_to),
    }
