"""Which alerts the daemon raises itself, as a pure function of what it holds: the lanes it leads, the approvals its
chains wait for, the last verification of its journal.

An alert's identity in Alertmanager is its label set. Lane alerts carry no ``node`` label on purpose: when the lane's
leadership moves mid-run, the new leader re-sends the same alert (same labels) and Alertmanager keeps one alert, not
two, so on-call gets one page per run whichever edge reports it (the edge is an annotation). Only this node's own
alerts (its journal) carry ``node`` as a label. A follower raises no lane alert: its copy of the lane's state is the
leader's, possibly stale, and it must not resolve what the leader still reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hybridops_daemon.chain.approvals import PendingApproval
from hybridops_daemon.policy import teardown
from hybridops_daemon.policy.types import LaneState, LaneStatus

# Severity by the kind of run: a real cutover wakes someone; a drill is news for the morning.
SEVERITY = {"cutover": "critical", "failback": "warning", "teardown": "warning", "drill": "info", "scale": "info"}
RUNBOOK = "docs/runbook.md#"


@dataclass(frozen=True, slots=True)
class Alert:
    labels: tuple[tuple[str, str], ...]  # sorted: the identity Alertmanager deduplicates on
    annotations: tuple[tuple[str, str], ...]
    url: str  # generatorURL: the run's page, or the view's overview

    @property
    def name(self) -> str:
        return dict(self.labels)["alertname"]

    @property
    def scope(self) -> str:
        """The lane the alert is about, or "" for the node's own: whoever speaks for it may resolve it."""
        return dict(self.labels).get("lane", "")

    def document(self) -> dict[str, Any]:
        """The alert as Alertmanager's v2 API takes it, without its times."""
        return {"labels": dict(self.labels), "annotations": dict(self.annotations), "generatorURL": self.url}


def alert(name: str, labels: Mapping[str, str], annotations: Mapping[str, str], url: str) -> Alert:
    notes = {**annotations, "runbook_url": RUNBOOK + name.lower()}
    return Alert(tuple(sorted({"alertname": name, **labels}.items())), tuple(sorted(notes.items())), url)


@dataclass(frozen=True, slots=True)
class LaneView:
    """What the alerts read of a lane this node leads."""

    name: str
    state: LaneState
    run_kind: str | None = None  # the kind of the decision that started the lane's latest run (drill, cutover, ...)
    run_reason: str = ""
    step: str | None = None  # the active run's first unfinished step
    refusal_reason: str = ""


def lane_alerts(lane: LaneView, node: str, link: str) -> Iterable[Alert]:
    state = lane.state
    notes = {"node": node}
    if state.active_run is not None:
        kind = lane.run_kind or _chain_of(state)
        step = f", at step {lane.step}" if lane.step else ""
        yield _run_alert(
            "HybridopsRunActive",
            (lane, kind, state.active_run, SEVERITY.get(kind, "warning")),
            f"A {kind} run is under way on lane {lane.name}{step}",
            f"Run {state.active_run} on lane {lane.name}: {lane.run_reason}",
            {**notes, "reason": lane.run_reason},
            link,
        )
    run = teardown.failed_run(state)
    if run is not None:
        kind = lane.run_kind or _chain_of(state)
        yield _run_alert(
            "HybridopsRunFailed",
            (lane, kind, run, "critical"),
            f"A {kind} run failed on lane {lane.name}; automation is paused",
            f"Run {run} on lane {lane.name} failed; nothing acts on the lane until an operator resumes it",
            notes,
            link,
        )
    if state.refusal is not None:
        summary = f"Lane {lane.name} wants to cut over and is refused ({state.refusal})"
        yield _refused("HybridopsCutoverRefused", "critical", lane, summary, f"cutover refused: {state.refusal}", notes, link)
    if state.burst is not None:
        yield from _burst_alerts(lane, notes, link)
    if state.stranded is not None:
        yield _run_alert(
            "HybridopsCapacityLeftRunning",
            (lane, "teardown", state.stranded, "critical"),
            f"Paid capacity left by failed run {state.stranded} on lane {lane.name} may still be running",
            f"`hyopsctl teardown --lane {lane.name}` runs its teardown now; the daemon retries on schedule",
            notes,
            link,
        )


def _run_alert(
    name: str,
    about: tuple[LaneView, str, str, str],
    summary: str,
    description: str,
    notes: Mapping[str, str],
    link: str,
) -> Alert:
    """An alert about one run, ``about`` = (lane, kind, run id, severity): labelled with the run, linked to its page."""
    lane, kind, run, severity = about
    annotations = {**notes, "summary": summary, "description": description, "run_id": run}
    return alert(name, {"lane": lane.name, "kind": kind, "run": run, "severity": severity}, annotations, _run_page(link, run))


def _refused(
    name: str, severity: str, lane: LaneView, summary: str, fallback: str, notes: Mapping[str, str], link: str
) -> Alert:
    """A standing refusal: described by the refusing decision's reason (``fallback`` before one is known)."""
    annotations = {**notes, "summary": summary, "description": lane.refusal_reason or fallback, "reason": lane.refusal_reason}
    return alert(name, {"lane": lane.name, "kind": "refuse", "severity": severity}, annotations, link)


def _burst_alerts(lane: LaneView, notes: Mapping[str, str], link: str) -> Iterable[Alert]:
    """A burst lane's: capacity it wants and may not have (budget, a DR lane first), and a scale run that failed (the
    lane stays automatic and tries again after its step cooldown, so nothing else would say so)."""
    burst = lane.state.burst
    assert burst is not None
    if burst.refusal is not None:
        summary = f"Burst lane {lane.name} wants more capacity and is refused ({burst.refusal})"
        yield _refused("HybridopsBurstRefused", "warning", lane, summary, f"scale-out refused: {burst.refusal}", notes, link)
    if burst.failed_run is not None:
        yield _run_alert(
            "HybridopsScaleRunFailed",
            (lane, "scale", burst.failed_run, "warning"),
            f"A scale run failed on burst lane {lane.name}; its size stays at {burst.size}",
            f"Run {burst.failed_run} failed; the lane tries again after its step cooldown",
            notes,
            link,
        )


def approval_alert(pending: PendingApproval, node: str, link: str) -> Alert:
    return alert(
        "HybridopsApprovalRequested",
        {"lane": pending.lane, "kind": "approval", "run": pending.run_id, "step": pending.step, "severity": "warning"},
        {
            "node": node,
            "summary": f"Step {pending.step} of run {pending.run_id} on lane {pending.lane} waits for approval",
            "description": f"`hyopsctl approve {pending.run_id} {pending.step}` (or reject) on {node}",
            "run_id": pending.run_id,
        },
        _run_page(link, pending.run_id),
    )


def journal_alert(problem: str, node: str, link: str) -> Alert:
    return alert(
        "HybridopsJournalVerifyFailed",
        {"node": node, "kind": "journal", "severity": "critical"},
        {
            "node": node,
            "summary": f"The decision journal of {node} fails verification",
            "description": problem,
        },
        link.rstrip("/") + "/journal" if link else "",
    )


Key = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Report:
    """The alerts active now, by identity, and the scopes they speak for: the lanes this node leads and "" (the node
    itself). An alert missing from a report that speaks for its scope is over; one whose scope the report does not
    speak for (a lane now led elsewhere) is the other edge's to re-send or let expire."""

    alerts: dict[Key, Alert]
    scopes: frozenset[str]


def alerts_of(
    lanes: Iterable[LaneView], approvals: Iterable[PendingApproval], journal_problem: str | None, node: str, link: str
) -> Report:
    lanes = list(lanes)
    found = [alert for lane in lanes for alert in lane_alerts(lane, node, link)]
    found += [approval_alert(pending, node, link) for pending in approvals]
    if journal_problem is not None:
        found.append(journal_alert(journal_problem, node, link))
    return Report({alert.labels: alert for alert in found}, frozenset(["", *(lane.name for lane in lanes)]))


def _chain_of(state: LaneState) -> str:
    """The chain a run of unknown kind was on (a restart forgets the kind of a run that already ended)."""
    status = state.paused_from if state.status is LaneStatus.PAUSED else state.status
    return "failback" if status in (LaneStatus.FAILING_BACK, LaneStatus.ON_STANDBY) else "cutover"


def _run_page(link: str, run_id: str) -> str:
    return f"{link.rstrip('/')}/runs/{run_id}" if link else ""
