"""The alerting rules shipped in config/prometheus/: promtool checks them and runs their unit tests (every alert fires
on some input and stays silent on another), each has its annotations and a runbook section, and end to end a real
Prometheus scraping a real daemon fires one through a real Alertmanager to a webhook this test serves.

The end-to-end alert is HybridopsChainFailed, whose rule has no ``for:``: the rules file is loaded as shipped, not
templated with shorter durations. The alerts with a ``for:`` are seen there as pending, on the same real data.
"""

from __future__ import annotations

import asyncio
import functools
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from hybridops_daemon.chain.approvals import PendingApproval
from hybridops_daemon.daemon.app import Daemon
from hybridops_daemon.drivers.sandbox import SandboxWorld
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.metrics import last_drill_started
from hybridops_daemon.policy.types import Command
from hybridops_daemon.scheduler import DrillScheduler
from tests.integration.test_metrics import Bed, matching, value
from tests.testbed.alertmanager import Alertmanager, WebhookReceiver
from tests.testbed.inprocess import running, sandbox_daemon
from tests.testbed.process import free_port, require
from tests.testbed.prometheus import Prometheus
from tests.testbed.wait import eventually
from tests.unit.test_scheduler import profile

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "config" / "prometheus" / "hybridops-alerts.yml"
RULE_TESTS = sorted((REPO / "config" / "prometheus" / "tests").glob("*.yml"))
RUNBOOK = REPO / "docs" / "runbook.md"


def promtool(*args: str) -> None:
    done = subprocess.run([require("promtool"), *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, f"promtool {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-") for heading in headings}


# --------------------------------------------------------------------------------------------- the rules file


def test_promtool_checks_the_rules() -> None:
    promtool("check", "rules", str(RULES))


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS
    promtool("test", "rules", *map(str, RULE_TESTS))


def test_every_alert_is_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group["alert_rule_test"]:
                (firing if case["exp_alerts"] else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - firing == set(), "never seen firing"
    assert names - silent == set(), "never seen silent"


def test_every_alert_has_a_summary_a_description_naming_its_lane_and_a_runbook_section() -> None:
    sections = anchors(RUNBOOK.read_text())
    lane_alerts = set()
    for path in RULE_TESTS:  # the alerts whose firing labels carry a lane must name it
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group["alert_rule_test"]:
                if any("lane" in alert["exp_labels"] for alert in case["exp_alerts"]):
                    lane_alerts.add(case["alertname"])
    assert lane_alerts
    for rule in alerts():
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        url = notes["runbook_url"]
        assert url.startswith("docs/runbook.md#") and url.split("#")[1] in sections, (rule["alert"], url)
        if rule["alert"] in lane_alerts:
            assert "{{ $labels.lane }}" in notes["description"], rule["alert"]


# --------------------------------------------------------------------------------------------- the metrics they read


def test_approval_wait_is_per_lane_and_step_and_absent_when_none_waits() -> None:
    bed = Bed()
    assert not matching(bed.scrape(), "hybridops_approval_waiting_seconds")
    bed.approvals = [
        PendingApproval("prod-1", "database", "prod", since=900.0, expires_at=4500.0),
        PendingApproval("prod-0", "database", "prod", since=400.0, expires_at=4000.0),  # a leftover: the oldest wins
        PendingApproval("drill-1", "dns", "drill", since=990.0, expires_at=4590.0),
    ]
    s = bed.scrape()
    assert value(s, "hybridops_approval_waiting_seconds", lane="prod", step="database") == 600.0
    assert value(s, "hybridops_approval_waiting_seconds", lane="drill", step="dns") == 10.0
    bed.clock.now += 5
    assert value(bed.scrape(), "hybridops_approval_waiting_seconds", lane="drill", step="dns") == 15.0


def test_start_time_says_how_the_previous_run_ended() -> None:
    bed = Bed()
    assert not matching(bed.scrape(), "hybridops_start_time_seconds")
    bed.metrics.started(1000.0, unclean=True)
    bed.metrics.started(1001.0, unclean=False)  # one series per process, never both
    assert matching(bed.scrape(), "hybridops_start_time_seconds") == {(("previous_shutdown", "clean"),): 1001.0}


async def test_drill_schedule_and_the_last_drill_from_the_journal(tmp_path: Path) -> None:
    bed = Bed()
    profiles = {"drill": profile("0 3 * * *"), "weekly": profile("0 4 * * 1"), "manual": profile(None)}
    with Journal.open(tmp_path / "journal.db") as journal:
        journal.append("run.start", {"kind": "drill"}, ts=500.0, lane="drill", run_id="d-1")
        journal.append("run.start", {"kind": "teardown"}, ts=600.0, lane="drill", run_id="d-2")
        journal.append("run.start", {"kind": "drill"}, ts=700.0, lane="weekly", run_id="n-1")
        journal.append("run.start", {"kind": "cutover"}, ts=800.0, lane="weekly", run_id="n-2")
        async with DrillScheduler(profiles, lambda lane: asyncio.sleep(0)) as drills:
            bed.metrics.drills(drills.schedule, functools.partial(last_drill_started, journal))
            s = bed.scrape()
            next_fire = drills.next_runs()["drill"].timestamp()
    assert value(s, "hybridops_drill_next_run_timestamp_seconds", lane="drill") == next_fire
    assert value(s, "hybridops_drill_interval_seconds", lane="drill") == 86400.0
    assert value(s, "hybridops_drill_interval_seconds", lane="weekly") == 7 * 86400.0
    assert value(s, "hybridops_drill_last_run_timestamp_seconds", lane="drill") == 500.0  # not the teardown after it
    assert value(s, "hybridops_drill_last_run_timestamp_seconds", lane="weekly") == 700.0
    assert not matching(s, "hybridops_drill_next_run_timestamp_seconds", lane="manual")  # no schedule: no series


# --------------------------------------------------------------------------------------------- end to end


def drill_daemon(directory: Path, metrics_port: int) -> Daemon:
    settings = f"node: edge01\ntick: 200ms\nsources: []\nmetrics: {{listen: 127.0.0.1, port: {metrics_port}}}\n"
    return sandbox_daemon(directory, settings, lane="drill")


async def query(prometheus: Prometheus, promql: str, expected: float | None = None, within: float = 20.0) -> list[Any]:
    """In a thread: the daemon answering the scrapes runs on this event loop."""

    def ready(result: list[Any]) -> bool:
        return bool(result) and (expected is None or float(result[0]["value"][1]) == expected)

    found: list[Any] = await asyncio.to_thread(prometheus.wait_for, promql, ready, within)
    return found


async def test_a_failed_drill_fires_through_prometheus_and_alertmanager_to_the_webhook(
    alertmanager_factory: Callable[..., Alertmanager], tmp_path: Path
) -> None:
    receiver = WebhookReceiver()
    with tempfile.TemporaryDirectory(prefix="hyops-") as tmp:  # short: the control socket's path
        state = Path(tmp)
        daemon = drill_daemon(state, metrics_port := free_port())
        target = f"127.0.0.1:{metrics_port}"
        async with receiver.serving() as hook, running(daemon):
            manager = await asyncio.to_thread(alertmanager_factory, hook)
            prometheus = Prometheus(
                tmp_path, [target], job="hybridops", rule_files=[RULES], alertmanagers=[f"127.0.0.1:{manager.port}"]
            )
            try:
                await asyncio.to_thread(prometheus.start)
                # The failed-run counter scraped at 0 first: increase() needs the step from 0 to 1.
                await query(prometheus, 'hybridops_chain_runs_total{lane="drill",chain="cutover",outcome="failed"}', 0)
                await query(prometheus, 'hybridops_leader{lane="drill"}', 1)
                assert daemon.loop is not None
                # The drill starts its paid capacity, then its database step fails for good: the run fails, the lane
                # pauses with the capacity stranded.
                world = SandboxWorld(state / "world-drill.json")
                world.inject_fault("database/primary@v1", "apply", message="no replica", permanent=True)
                _, decision = await daemon.loop.submit(Command.DRILL, "drill", "test")
                assert decision.kind.value == "drill", decision.reason

                await eventually("the alert at the webhook", lambda: receiver.firing("HybridopsChainFailed"), within=30)
                alert = receiver.firing("HybridopsChainFailed")[0]
                assert alert["labels"] == {
                    "alertname": "HybridopsChainFailed",
                    "severity": "critical",
                    "job": "hybridops",
                    "instance": target,
                    "lane": "drill",
                    "chain": "cutover",
                    "outcome": "failed",
                }
                notes = alert["annotations"]
                assert notes["summary"] == "A cutover run failed on lane drill; the lane is paused"
                assert f"lane drill on {target} failed" in notes["description"]
                assert notes["runbook_url"] == "docs/runbook.md#hybridopschainfailed"
                # The alerts with a `for:` match the same real data, pending; a drill is not a cutover.
                for name in ("HybridopsCapacityStranded", "HybridopsLanePaused"):
                    await query(prometheus, f'ALERTS{{alertname="{name}", alertstate="pending", lane="drill"}}', 1)
                assert {a["labels"]["alertname"] for a in receiver.alerts} == {"HybridopsChainFailed"}
            finally:
                await asyncio.to_thread(prometheus.stop)
