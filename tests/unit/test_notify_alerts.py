"""Direct notification without a network: which alerts a lane raises (pure), and what the notifier queues from them."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from hybridops_daemon.chain.approvals import PendingApproval
from hybridops_daemon.config.models import AlertmanagerNotifyConfig
from hybridops_daemon.notify.alertmanager import AlertmanagerNotifier
from hybridops_daemon.notify.alerts import LaneView, Report, alerts_of
from hybridops_daemon.policy import teardown
from hybridops_daemon.policy.burst import BurstState
from hybridops_daemon.policy.types import LaneState, LaneStatus

LINK = "https://hyops.example.net/view"
REPO = Path(__file__).resolve().parents[2]


def report(*lanes: LaneView, approvals: tuple[PendingApproval, ...] = (), journal: str | None = None) -> Report:
    return alerts_of(lanes, approvals, journal, "edge01", LINK)


def only(found: Report) -> dict[str, object]:
    (alert,) = found.alerts.values()
    return {"labels": dict(alert.labels), "annotations": dict(alert.annotations), "url": alert.url}


def test_a_quiet_lane_raises_nothing_and_the_report_speaks_for_it() -> None:
    found = report(LaneView("prod", LaneState("prod")))
    assert found.alerts == {}
    assert found.scopes == {"", "prod"}


def test_an_active_cutover_pages_critical_with_its_reason_step_and_run_page_and_no_node_label() -> None:
    state = LaneState("prod", LaneStatus.CUTTING_OVER, active_run="prod-1")
    alert = only(report(LaneView("prod", state, "cutover", "2 of 2 rules tripped", "database")))
    assert alert["labels"] == {
        "alertname": "HybridopsRunActive",
        "lane": "prod",
        "kind": "cutover",
        "run": "prod-1",
        "severity": "critical",
    }
    notes = alert["annotations"]
    assert isinstance(notes, dict)
    assert notes["summary"] == "A cutover run is under way on lane prod, at step database"
    assert notes["reason"] == "2 of 2 rules tripped"
    assert notes["run_id"] == "prod-1"
    assert notes["node"] == "edge01"  # the reporting edge, as an annotation: a label would split one run in two
    assert notes["runbook_url"] == "docs/runbook.md#hybridopsrunactive"
    assert alert["url"] == f"{LINK}/runs/prod-1"


def test_a_drill_is_news_not_a_page() -> None:
    state = LaneState("drill", LaneStatus.CUTTING_OVER, active_run="drill-1")
    assert only(report(LaneView("drill", state, "drill")))["labels"]["severity"] == "info"  # type: ignore[index]


def test_a_failed_run_pauses_the_lane_and_says_so_with_the_kind_of_its_run() -> None:
    state = LaneState(
        "drill", LaneStatus.PAUSED, paused_from=LaneStatus.DEGRADED, paused_by=teardown.FAILED_RUN + "drill-7"
    )
    assert only(report(LaneView("drill", state, "drill")))["labels"] == {
        "alertname": "HybridopsRunFailed",
        "lane": "drill",
        "kind": "drill",
        "run": "drill-7",
        "severity": "critical",
    }
    # After a restart the run's kind is forgotten: the chain it was on is what is known.
    assert only(report(LaneView("drill", state)))["labels"]["kind"] == "cutover"  # type: ignore[index]


def test_an_operators_pause_is_not_a_failure() -> None:
    state = LaneState("prod", LaneStatus.PAUSED, paused_from=LaneStatus.PRIMARY, paused_by="uid 1000")
    assert report(LaneView("prod", state)).alerts == {}


def test_a_standing_refusal_and_stranded_capacity_each_raise_their_alert() -> None:
    state = LaneState("prod", LaneStatus.DEGRADED, refusal="limit", stranded="prod-3")
    found = report(LaneView("prod", state, refusal_reason="cutover refused: 1 automatic action in 1h"))
    by_name = {alert.name: alert for alert in found.alerts.values()}
    assert set(by_name) == {"HybridopsCutoverRefused", "HybridopsCapacityLeftRunning"}
    refused = dict(by_name["HybridopsCutoverRefused"].annotations)
    assert refused["description"] == "cutover refused: 1 automatic action in 1h"
    assert dict(by_name["HybridopsCapacityLeftRunning"].labels)["run"] == "prod-3"


def test_a_burst_lane_refused_capacity_or_with_a_failed_scale_run_raises_its_alert() -> None:
    assert report(LaneView("burst", LaneState("burst", burst=BurstState(size=2)))).alerts == {}
    burst = BurstState(size=2, refusal="monthly", failed_run="burst-7")
    found = report(LaneView("burst", LaneState("burst", burst=burst), refusal_reason="scale out refused: over budget"))
    by_name = {alert.name: alert for alert in found.alerts.values()}
    assert set(by_name) == {"HybridopsBurstRefused", "HybridopsScaleRunFailed"}
    assert dict(by_name["HybridopsBurstRefused"].annotations)["description"] == "scale out refused: over budget"
    failed = by_name["HybridopsScaleRunFailed"]
    assert dict(failed.labels) == {
        "alertname": "HybridopsScaleRunFailed", "lane": "burst", "kind": "scale", "run": "burst-7", "severity": "warning"
    }
    assert "its size stays at 2" in dict(failed.annotations)["summary"] and failed.url.endswith("burst-7")


def test_an_approval_names_its_step_and_the_journal_alert_is_the_nodes_own() -> None:
    pending = PendingApproval("prod-1", "dns", "prod", 100.0, 400.0)
    found = report(approvals=(pending,), journal="record 12: hash mismatch")
    by_name = {alert.name: alert for alert in found.alerts.values()}
    assert dict(by_name["HybridopsApprovalRequested"].labels)["step"] == "dns"
    journal = by_name["HybridopsJournalVerifyFailed"]
    assert dict(journal.labels)["node"] == "edge01" and journal.scope == ""
    assert dict(journal.annotations)["description"] == "record 12: hash mismatch"
    assert journal.url == f"{LINK}/journal"


# ------------------------------------------------------------------------------------------ the notifier's queue


def notifier(source: list[Report], queue: int = 10) -> AlertmanagerNotifier:
    config = AlertmanagerNotifyConfig(urls=("http://127.0.0.1:9",), queue=queue, resend_every=60, resolve_after=300)
    return AlertmanagerNotifier(config, lambda: source[0])


def cutover(run: str) -> LaneView:
    return LaneView("prod", LaneState("prod", LaneStatus.CUTTING_OVER, active_run=run), "cutover")


def queued(sender: AlertmanagerNotifier) -> list[tuple[str, str, bool]]:
    return [(n.alert.name, dict(n.alert.labels).get("run", ""), n.ends_at is None) for n in sender._queue]


def test_new_changed_over_and_resent_alerts_are_queued_once_each() -> None:
    source = [report(cutover("prod-1"))]
    sender = notifier(source)
    sender.evaluate(1000.0)
    sender.evaluate(1001.0)  # nothing changed
    assert queued(sender) == [("HybridopsRunActive", "prod-1", True)]
    source[0] = report(LaneView("prod", LaneState("prod")))
    sender.evaluate(1002.0)
    assert queued(sender)[1:] == [("HybridopsRunActive", "prod-1", False)]  # resolved
    assert sender._queue[1].starts_at == 1000.0 and sender._queue[1].ends_at == 1002.0
    source[0] = report(cutover("prod-2"))
    sender.evaluate(1003.0)
    sender._queue.clear()
    sender.evaluate(1000.0 + 59)  # the periodic re-send last ran at the first evaluation
    assert queued(sender) == []
    sender.evaluate(1000.0 + 61)  # resend_every passed: still active, sent again
    assert queued(sender) == [("HybridopsRunActive", "prod-2", True)]


def test_a_lane_led_elsewhere_now_is_forgotten_not_resolved() -> None:
    source = [report(cutover("prod-1"))]
    sender = notifier(source)
    sender.evaluate(1000.0)
    source[0] = report()  # this node no longer leads prod: the report does not speak for it
    sender.evaluate(1001.0)
    assert queued(sender) == [("HybridopsRunActive", "prod-1", True)]
    assert sender.stats.active == 0


def test_a_full_queue_drops_the_oldest_and_counts_them() -> None:
    source = [report()]
    sender = notifier(source, queue=3)
    for run in range(5):
        source[0] = report(cutover(f"prod-{run}"))
        sender.evaluate(1000.0 + run)
    # Each step queues the new run's firing and the old one's resolution: 9 notices, 3 kept, the newest.
    assert sender.stats.dropped == 6
    assert queued(sender) == [
        ("HybridopsRunActive", "prod-3", True),
        ("HybridopsRunActive", "prod-3", False),
        ("HybridopsRunActive", "prod-4", True),
    ]


def test_a_broken_alert_source_costs_pages_not_the_daemon() -> None:
    def broken() -> Report:
        raise KeyError("steps")

    sender = AlertmanagerNotifier(AlertmanagerNotifyConfig(urls=("http://127.0.0.1:9",)), broken)
    sender.evaluate(1000.0)
    assert queued(sender) == []


def test_every_direct_alert_has_a_runbook_section() -> None:
    pending = PendingApproval("prod-1", "dns", "prod", 100.0, 400.0)
    failed = LaneState("prod", LaneStatus.PAUSED, paused_from=LaneStatus.DEGRADED, paused_by=teardown.FAILED_RUN + "p-1")
    lanes = [
        LaneView("prod", failed._replace(refusal="limit", stranded="p-1")),
        LaneView("drill", LaneState("drill", LaneStatus.CUTTING_OVER, active_run="d-1"), "drill"),
    ]
    found = alerts_of(lanes, [pending], "bad hash", "edge01", LINK)
    names = {alert.name for alert in found.alerts.values()}
    assert len(names) == 6
    sections = set(re.findall(r"^## (\w+)$", (REPO / "docs" / "runbook.md").read_text(), flags=re.MULTILINE))
    assert names <= sections, names - sections
    for alert in found.alerts.values():
        assert dict(alert.annotations)["runbook_url"] == f"docs/runbook.md#{alert.name.lower()}"


async def test_a_post_that_raises_costs_that_round_not_the_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    source = [report(cutover("prod-1"))]
    config = AlertmanagerNotifyConfig(urls=("http://127.0.0.1:9",), resend_every=60, resolve_after=300)
    sender = AlertmanagerNotifier(config, lambda: source[0], evaluate_every=0.01)
    outcomes = [RuntimeError("a bug"), "delivered"]

    async def post(alerts: list[dict[str, object]]) -> str:  # the fault: the first post raises
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(sender, "_post", post)
    monkeypatch.setattr(sender._backoff, "next", lambda: 0.0)
    async with sender:
        for _ in range(200):
            if sender.stats.delivered:
                break
            await asyncio.sleep(0.01)
    assert sender.stats.delivered == 1 and outcomes == []
