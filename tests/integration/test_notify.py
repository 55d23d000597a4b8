"""Direct notification against a real Alertmanager (0.25) that delivers to the test's webhook: what arrives, and when.

The daemons run in the test's event loop with sandbox drivers; Alertmanager is a real process (tests/testbed).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from hybridops_daemon.config.models import AlertmanagerNotifyConfig
from hybridops_daemon.daemon.app import Daemon
from hybridops_daemon.drivers.sandbox import SandboxWorld
from hybridops_daemon.notify.alertmanager import AlertmanagerNotifier
from hybridops_daemon.notify.alerts import LaneView, Report, alerts_of
from hybridops_daemon.policy.types import Command, LaneState, LaneStatus
from tests.integration.test_metrics import parse, value
from tests.testbed.alertmanager import Alertmanager, WebhookReceiver
from tests.testbed.inprocess import daemon_from, running
from tests.testbed.process import free_port
from tests.testbed.wait import eventually
from tests.unit.test_journal_check import rewrite_body

REPO = Path(__file__).resolve().parents[2]
NOTIFY = "notify: {{alertmanager: {{urls: [{urls}], timeout: 500ms, resend_every: 2s, resolve_after: 10s, link: {link}}}}}"
LINK = "https://hyops.example.net"


@contextlib.contextmanager
def drill_config(alertmanager_url: str, latency: str = "300ms") -> Iterator[Path]:
    """A one-lane daemon config (the drill lane on the sandbox, each driver call ``latency`` long) notifying the URL."""
    with tempfile.TemporaryDirectory(prefix="hyops-") as tmp:  # short: the control socket's path
        state = Path(tmp)
        (state / "drill.yaml").write_text((REPO / "policies" / "drill.yaml").read_text())
        config = state / "daemon.yaml"
        config.write_text(
            f"node: edge01\nstate_dir: {state}\ntick: 200ms\nsources: []\n"
            f"metrics: {{listen: 127.0.0.1, port: {free_port()}}}\n"
            + NOTIFY.format(urls=alertmanager_url, link=LINK)
            + f"\nlanes:\n  drill:\n    profile: {state / 'drill.yaml'}\n"
            f"    drivers:\n      sandbox: {{latency: {latency}}}\n    readiness: {{enabled: false}}\n"
        )
        yield config


def arrived(receiver: WebhookReceiver, name: str, status: str) -> list[dict[str, Any]]:
    return [a for a in receiver.alerts if a["labels"]["alertname"] == name and a["status"] == status]


async def drill(daemon: Daemon) -> str:
    assert daemon.loop is not None
    _, decision = await daemon.loop.submit(Command.DRILL, "drill", "test")
    assert decision.kind.value == "drill" and decision.run_id is not None, decision.reason
    return decision.run_id


def metric(daemon: Daemon, name: str) -> float:
    return value(parse(daemon.metrics.exposition().decode()), name)


@contextlib.asynccontextmanager
async def paging_daemon(
    alertmanager_factory: Callable[..., Alertmanager], settings: str = ""
) -> AsyncIterator[tuple[Daemon, WebhookReceiver]]:
    """A drill-lane daemon leading its lane, notifying a real Alertmanager that delivers to the test's webhook."""
    receiver = WebhookReceiver()
    async with receiver.serving() as hook:
        manager = await asyncio.to_thread(alertmanager_factory, hook)
        with drill_config(manager.url) as config:
            config.write_text(config.read_text() + settings)
            daemon = daemon_from(config)
            async with running(daemon):
                await eventually("the lane led", lambda: daemon.loop is not None and daemon.lanes["drill"].leads)
                yield daemon, receiver


async def test_a_drill_pages_at_once_with_its_run_and_is_resolved_when_it_ends(
    alertmanager_factory: Callable[..., Alertmanager],
) -> None:
    async with paging_daemon(alertmanager_factory) as (daemon, receiver):
        asked = time.monotonic()
        run_id = await drill(daemon)
        (alert,) = await eventually("the page", lambda: arrived(receiver, "HybridopsRunActive", "firing"))
        paged_after = time.monotonic() - asked
        assert alert["labels"] == {
            "alertname": "HybridopsRunActive",
            "lane": "drill",
            "kind": "drill",
            "run": run_id,
            "severity": "info",
        }
        notes = alert["annotations"]
        assert notes["run_id"] == run_id and notes["node"] == "edge01"
        assert notes["reason"].startswith(f"drill by test: running the cutover chain (run {run_id})")
        assert alert["generatorURL"] == f"{LINK}/runs/{run_id}"
        assert daemon.lanes["drill"].state.active_run is not None  # paged while the run was still under way
        await eventually("the run's end", lambda: daemon.lanes["drill"].state.active_run is None, within=30)
        ended = time.monotonic()
        (done,) = await eventually("the resolution", lambda: arrived(receiver, "HybridopsRunActive", "resolved"))
        resolved_after = time.monotonic() - ended
        assert done["labels"] == alert["labels"]
        print(f"\npaged {paged_after:.2f}s after the drill was asked for; resolved {resolved_after:.2f}s after its end")
        assert metric(daemon, "hybridops_notify_delivered_total") >= 2
        assert metric(daemon, "hybridops_notify_queue_length") == 0


async def test_alerts_wait_in_the_queue_while_alertmanager_is_down_and_arrive_when_it_is_up(
    alertmanager_factory: Callable[..., Alertmanager],
) -> None:
    receiver = WebhookReceiver()
    port = free_port()
    async with receiver.serving() as hook:
        with drill_config(f"http://127.0.0.1:{port}", latency="0s") as config:
            daemon = daemon_from(config)
            async with running(daemon):
                await eventually("the lane led", lambda: daemon.loop is not None and daemon.lanes["drill"].leads)
                # The drill starts its capacity, then its database step fails for good: the run fails and the lane
                # pauses with the capacity left running, two alerts that stay active.
                SandboxWorld(config.parent / "world-drill.json").inject_fault(
                    "database/primary@v1", "apply", message="no replica", permanent=True
                )
                run_id = await drill(daemon)
                await eventually("the run failed", lambda: daemon.lanes["drill"].state.stranded == run_id, within=30)
                await eventually("a failed post", lambda: metric(daemon, "hybridops_notify_failed_posts_total") >= 1)
                assert metric(daemon, "hybridops_notify_queue_length") >= 2
                assert daemon.alerting is not None and daemon.alerting.stats.document()["reachable"] is False
                assert receiver.alerts == []
                await asyncio.to_thread(alertmanager_factory, hook, port=port)
                # The retry backoff is at most 30 s (jittered): what was queued arrives once Alertmanager is up.
                failed = await eventually("the page", lambda: arrived(receiver, "HybridopsRunFailed", "firing"), within=45)
                assert failed[0]["labels"]["run"] == run_id and failed[0]["labels"]["kind"] == "drill"
                left = arrived(receiver, "HybridopsCapacityLeftRunning", "firing")
                assert left and left[0]["labels"]["run"] == run_id
                # The drill's own run alert fired and was resolved while no one listened: Alertmanager receives it
                # resolved and sends no page for an alert it never saw firing.
                assert not arrived(receiver, "HybridopsRunActive", "firing")
                assert metric(daemon, "hybridops_notify_queue_length") == 0
                assert metric(daemon, "hybridops_notify_dropped_total") == 0
                assert daemon.alerting.stats.document()["reachable"] is True


@contextlib.asynccontextmanager
async def silent_alertmanager() -> AsyncIterator[str]:
    """Accepts connections and never answers: the worst Alertmanager for a daemon that must not wait for it."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_silent_alertmanager_does_not_hold_the_decision_loop_or_the_run() -> None:
    async with silent_alertmanager() as url:
        with drill_config(url, latency="0s") as config:
            daemon = daemon_from(config)
            async with running(daemon):
                await eventually("the lane led", lambda: daemon.loop is not None and daemon.lanes["drill"].leads)
                asked = time.monotonic()
                await drill(daemon)
                await eventually("the run's end", lambda: daemon.lanes["drill"].state.active_run is None, within=10)
                took = time.monotonic() - asked
                await eventually("a timed-out post", lambda: metric(daemon, "hybridops_notify_failed_posts_total") >= 1)
                print(f"\nthe drill ran in {took:.2f}s while every post to Alertmanager hung until its 0.5 s timeout")
                assert took < 5.0, took  # eight sandbox steps, no latency: well under a second when nothing waits


def report_of(node: str, status: LaneStatus) -> Report:
    state = LaneState("prod", status, active_run="prod-9" if status is LaneStatus.CUTTING_OVER else None)
    return alerts_of([LaneView("prod", state, "cutover", "primary down")], (), "hash mismatch", node, LINK)


async def test_both_edges_reporting_one_run_page_once_and_resolve_it_once(
    alertmanager_factory: Callable[..., Alertmanager],
) -> None:
    """During a takeover both edges report the lane's run (the deposed leader until it stops, the new one after):
    Alertmanager must see one alert. Its node's own alert (the journal) stays one per node."""
    receiver = WebhookReceiver()
    async with receiver.serving() as hook:
        manager = await asyncio.to_thread(alertmanager_factory, hook)
        config = AlertmanagerNotifyConfig(urls=(manager.url,), resend_every=1, resolve_after=10)
        reports = {"edge01": report_of("edge01", LaneStatus.CUTTING_OVER), "edge02": report_of("edge02", LaneStatus.CUTTING_OVER)}
        async with (
            AlertmanagerNotifier(config, lambda: reports["edge01"], evaluate_every=0.2),
            AlertmanagerNotifier(config, lambda: reports["edge02"], evaluate_every=0.2) as edge02,
        ):
            both = lambda: len(arrived(receiver, "HybridopsJournalVerifyFailed", "firing")) == 2  # noqa: E731
            await eventually("both journals' alerts", both)
            await asyncio.sleep(3)  # several re-sends from each edge
            runs = arrived(receiver, "HybridopsRunActive", "firing")
            assert len(runs) == 1, runs
            assert {a["labels"]["node"] for a in arrived(receiver, "HybridopsJournalVerifyFailed", "firing")} == {
                "edge01",
                "edge02",
            }
            # edge02 loses the lane (it forgets the run's alert, resolving nothing), then the run ends on edge01, which
            # resolves it. In that order, as leadership is exclusive: a re-send edge02 still had on the wire after
            # edge01's resolution would fire the alert again until resolve_after.
            reports["edge02"] = alerts_of([], (), "hash mismatch", "edge02", LINK)
            await eventually("edge02 to forget the run", lambda: edge02.stats.active == 1 and edge02.stats.queued == 0)
            reports["edge01"] = report_of("edge01", LaneStatus.ON_STANDBY)
            await eventually("the resolution", lambda: arrived(receiver, "HybridopsRunActive", "resolved"))
            await asyncio.sleep(2)
            assert len(arrived(receiver, "HybridopsRunActive", "resolved")) == 1
            assert len(arrived(receiver, "HybridopsRunActive", "firing")) == 1


async def test_a_journal_altered_under_the_daemon_pages_with_the_node_and_the_problem(
    alertmanager_factory: Callable[..., Alertmanager],
) -> None:
    async with paging_daemon(alertmanager_factory, "journal_verify_every: 200ms\n") as (daemon, receiver):
        await eventually("a passing verification", lambda: daemon.journal_check.ok)
        rewrite_body(daemon.config.journal_path, 1, '{"node": "edge99"}')
        (alert,) = await eventually("the page", lambda: arrived(receiver, "HybridopsJournalVerifyFailed", "firing"))
        assert alert["labels"] == {
            "alertname": "HybridopsJournalVerifyFailed",
            "node": "edge01",
            "kind": "journal",
            "severity": "critical",
        }
        assert "record 1" in alert["annotations"]["description"], alert["annotations"]
        assert alert["generatorURL"] == f"{LINK}/journal"
