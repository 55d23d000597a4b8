"""The daemon's side of direct notification: what the alerts read of each lane, gathered from the rooms that hold it."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from hybridops_daemon.chain.approvals import ApprovalBook
from hybridops_daemon.daemon.lane import Lane
from hybridops_daemon.notify.alerts import LaneView, Report, alerts_of
from hybridops_daemon.policy import teardown
from hybridops_daemon.policy.types import DecisionKind


def lane_view(lane: Lane) -> LaneView:
    state = lane.state
    decision = lane.run_decision or {}
    failed = teardown.failed_run(state)
    # run_decision outlives its run's end (it is replaced by the next run's): it still names a failed run's kind.
    run_kind = decision.get("kind") if decision.get("run_id") in (state.active_run, failed) else None
    progress = lane.run_progress
    step = None
    if progress is not None and progress.run_id == state.active_run and progress.end is None:
        step = next((str(s) for s in progress.start.get("steps", []) if str(s) not in progress.done), None)
    last = lane.last_decision
    refusal = last.reason if last is not None and last.kind is DecisionKind.REFUSE else ""
    return LaneView(lane.name, state, run_kind, str(decision.get("reason", "")), step, refusal)


def daemon_alerts(
    lanes: Mapping[str, Lane],
    approvals: ApprovalBook,
    journal_problem: Callable[[], str | None],
    node: str,
    link: Callable[[], str],
) -> Callable[[], Report]:
    """The notifier's source of alerts: only the lanes this node leads (a follower's copy may be stale)."""

    def current() -> Report:
        led = [lane_view(lane) for lane in lanes.values() if lane.leads]
        waiting = [pending for pending in approvals.pending() if pending.lane in lanes and lanes[pending.lane].leads]
        return alerts_of(led, waiting, journal_problem(), node, link())

    return current
