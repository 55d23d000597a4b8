"""Metrics: the exposition's names, labels and values; a real Prometheus 2.42 scraping ``/metrics`` every second and
answering queries about it; and the Grafana dashboard's PromQL, checked against the names and run on real data."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from hybridops_daemon import __version__
from hybridops_daemon.chain.approvals import PendingApproval
from hybridops_daemon.config.models import MetricsConfig
from hybridops_daemon.journal.verify import JournalCheck
from hybridops_daemon.metrics import Metrics, MetricsServer
from hybridops_daemon.notify.alertmanager import NotifyStats
from hybridops_daemon.policy.types import LaneStatus
from hybridops_daemon.signals.base import InputHealth
from hybridops_daemon.signals.peer_auth import DROP_REASONS
from hybridops_daemon.signals.sample import Sample
from tests.testbed.process import ComponentFailed, free_port
from tests.testbed.prometheus import Prometheus

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana" / "hybridops-daemon.json"
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSource:
    """What the daemon keeps in ``daemon.sources``: anything, with an InputHealth under ``health`` if it counts."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health = InputHealth(name)


class FakePeer(FakeSource):
    """The peer link as metrics see it: drops by reason, and whether it checks messages at all."""

    def __init__(self, name: str, authenticated: bool) -> None:
        super().__init__(name)
        self.health = InputHealth(name, DROP_REASONS)
        self.authenticated = authenticated


class Bed:
    """A Metrics whose providers the test mutates: readings, max ages, sources, journal size and check, and the clock."""

    def __init__(self, edges: tuple[str, ...] = ("edge01",)) -> None:
        self.clock = Clock()
        self.readings: dict[tuple[str, str], Sample] = {}
        self.max_ages: dict[str, float] = {}
        self.sources: dict[str, object] = {}
        self.journal: int | None = 4096
        self.approvals: list[PendingApproval] = []
        self.journal_check = JournalCheck(every=3600.0)
        self.notify = NotifyStats()
        self.metrics = Metrics(
            lambda: self.readings,
            lambda: self.max_ages,
            lambda: self.sources,
            lambda: self.journal,
            self.clock,
            edges,
            approvals=lambda: self.approvals,
            journal_check=self.journal_check,
        )
        self.metrics.notifications(lambda: self.notify)

    def sample(self, signal: str, value: float | None, age: float, edge: str = "edge01") -> None:
        self.readings[(signal, edge)] = Sample(signal, value, self.clock.now - age, "test", edge)

    def scrape(self) -> Series:
        return parse(self.metrics.exposition().decode())


def parse(text: str) -> Series:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float:
    return series[(name, tuple(sorted(labels.items())))]


def matching(series: Series, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of ``name`` whose labels include ``labels``."""
    return {key: v for (n, key), v in series.items() if n == name and set(labels.items()) <= set(key)}


# --------------------------------------------------------------------------------------------- exposition


def test_every_metric_has_its_labels_and_values() -> None:
    bed = Bed()
    source = FakeSource("mqtt")
    bed.sources = {"mqtt": source, "probe": object()}
    bed.max_ages = {"primary_http": 3.0}
    bed.sample("primary_http", 1.0, age=1.5)
    m = bed.metrics
    m.lane_state("prod", "ON_STANDBY")
    m.decision("prod", "cutover")
    m.decision("prod", "cutover")
    m.decision("drill", "drill")
    m.step("prod", "database", "applied", 0.3)
    m.step("prod", "database", "applied", 40.0)
    m.step("prod", "dns", "skipped", 0.02)
    m.run("prod", "cutover", "succeeded")
    m.leadership("prod", held=True, token=7)
    source.health.malformed_input("not JSON")
    source.health.malformed_input("not JSON")
    source.health.upstream_failed("connection refused")

    s = bed.scrape()

    assert value(s, "hybridops_decisions_total", lane="prod", kind="cutover") == 2
    assert value(s, "hybridops_decisions_total", lane="drill", kind="drill") == 1
    assert value(s, "hybridops_lane_state", lane="prod", state="ON_STANDBY") == 1
    assert value(s, "hybridops_signal_age_seconds", signal="primary_http", edge="edge01") == 1.5
    assert value(s, "hybridops_signal_unknown", signal="primary_http", edge="edge01") == 0
    assert value(s, "hybridops_source_malformed_total", source="mqtt") == 2
    assert value(s, "hybridops_source_upstream_failures_total", source="mqtt") == 1
    assert value(s, "hybridops_source_up", source="mqtt") == 0
    # The HTTP probe keeps no InputHealth: up while it runs, and no error counters that would claim zero errors.
    assert value(s, "hybridops_source_up", source="probe") == 1
    assert not matching(s, "hybridops_source_malformed_total", source="probe")
    step = {"lane": "prod", "step": "database", "outcome": "applied"}
    assert value(s, "hybridops_chain_step_duration_seconds_count", **step) == 2
    assert value(s, "hybridops_chain_step_duration_seconds_sum", **step) == pytest.approx(40.3)
    assert value(s, "hybridops_chain_step_duration_seconds_bucket", **step, le="0.5") == 1
    assert value(s, "hybridops_chain_step_duration_seconds_bucket", **step, le="30.0") == 1
    assert value(s, "hybridops_chain_step_duration_seconds_bucket", **step, le="60.0") == 2
    assert value(s, "hybridops_chain_step_duration_seconds_count", lane="prod", step="dns", outcome="skipped") == 1
    assert value(s, "hybridops_chain_runs_total", lane="prod", chain="cutover", outcome="succeeded") == 1
    assert value(s, "hybridops_leader", lane="prod") == 1
    assert value(s, "hybridops_fencing_token", lane="prod") == 7
    assert value(s, "hybridops_journal_size_bytes") == 4096
    assert value(s, "hybridops_build_info", version=__version__) == 1

    source.health.upstream_ok()
    m.leadership("prod", held=False, token=8)
    s = bed.scrape()
    assert value(s, "hybridops_source_up", source="mqtt") == 1
    assert value(s, "hybridops_leader", lane="prod") == 0
    assert value(s, "hybridops_fencing_token", lane="prod") == 8


def test_peer_message_drops_are_counted_by_reason_from_zero_and_say_whether_the_link_authenticates() -> None:
    bed = Bed()
    peer, plain = FakePeer("peer", authenticated=True), FakePeer("plain", authenticated=False)
    bed.sources.update(peer=peer, plain=plain, mqtt=FakeSource("mqtt"))
    peer.health.dropped_input("forged", "the MAC does not match")
    peer.health.dropped_input("forged", "the MAC does not match")
    peer.health.dropped_input("replayed", "seq 3 accepted before")
    peer.health.dropped_input("malformed", "not JSON")

    s = bed.scrape()

    counts = {reason: value(s, "hybridops_peer_messages_dropped_total", source="peer", reason=reason) for reason in DROP_REASONS}
    assert counts == {"malformed": 1, "unsigned": 0, "forged": 2, "stale": 0, "replayed": 1, "reordered": 0}
    assert value(s, "hybridops_source_malformed_total", source="peer") == 1  # a malformed drop is malformed input too
    assert value(s, "hybridops_peer_authenticated", source="peer") == 1
    assert value(s, "hybridops_peer_authenticated", source="plain") == 0
    assert not matching(s, "hybridops_peer_messages_dropped_total", source="mqtt")  # only sources that drop by reason
    assert not matching(s, "hybridops_peer_authenticated", source="mqtt")


def test_a_lane_reads_exactly_one_state() -> None:
    bed = Bed()
    bed.metrics.lane_state("prod", "PRIMARY")
    bed.metrics.lane_state("drill", "PAUSED")
    bed.metrics.lane_state("prod", LaneStatus.CUTTING_OVER)

    s = bed.scrape()
    for lane, current in (("prod", "CUTTING_OVER"), ("drill", "PAUSED")):
        states = {dict(key)["state"]: v for key, v in matching(s, "hybridops_lane_state", lane=lane).items()}
        assert states == {status.value: (1.0 if status.value == current else 0.0) for status in LaneStatus}
    with pytest.raises(ValueError):
        bed.metrics.lane_state("prod", "ON_FIRE")


def test_a_lane_counts_from_zero_so_rate_sees_its_first_decision_and_run() -> None:
    bed = Bed()
    bed.metrics.lane_state("prod", "PRIMARY")

    s = bed.scrape()
    assert {dict(k)["kind"] for k in matching(s, "hybridops_decisions_total", lane="prod")} == {
        "hold",
        "cutover",
        "failback",
        "drill",
        "teardown",
        "scale",
        "refuse",
    }
    assert set(matching(s, "hybridops_decisions_total", lane="prod").values()) == {0.0}
    assert len(matching(s, "hybridops_chain_runs_total", lane="prod")) == 6  # {cutover, failback, scale} x {succeeded, failed}
    with pytest.raises(ValueError):
        bed.metrics.decision("prod", "panic")


def test_signal_age_and_unknown_are_computed_at_scrape_time() -> None:
    bed = Bed(edges=("edge01", "edge02"))
    bed.max_ages = {"primary_http": 3.0, "db_up": 10.0}
    bed.sample("primary_http", 1.0, age=0.5)
    bed.sample("db_up", None, age=0.0)  # a source saying "no data": UNKNOWN however fresh
    bed.sample("bgp_prefixes", 12.0, age=2.0)  # no profile reads it: an age, but no UNKNOWN verdict

    s = bed.scrape()
    assert value(s, "hybridops_signal_age_seconds", signal="primary_http", edge="edge01") == 0.5
    assert value(s, "hybridops_signal_unknown", signal="primary_http", edge="edge01") == 0
    assert value(s, "hybridops_signal_unknown", signal="db_up", edge="edge01") == 1
    # Declared but never heard from at the peer edge: UNKNOWN, and no age to show.
    assert value(s, "hybridops_signal_unknown", signal="primary_http", edge="edge02") == 1
    assert not matching(s, "hybridops_signal_age_seconds", edge="edge02")
    assert value(s, "hybridops_signal_age_seconds", signal="bgp_prefixes", edge="edge01") == 2.0
    assert not matching(s, "hybridops_signal_unknown", signal="bgp_prefixes")

    bed.clock.now += 2.5  # exactly max_age old: still known (decide() treats only older as UNKNOWN)
    s = bed.scrape()
    assert value(s, "hybridops_signal_age_seconds", signal="primary_http", edge="edge01") == 3.0
    assert value(s, "hybridops_signal_unknown", signal="primary_http", edge="edge01") == 0

    bed.clock.now += 0.5  # nothing was pushed: the next scrape alone sees the sample go stale
    s = bed.scrape()
    assert value(s, "hybridops_signal_age_seconds", signal="primary_http", edge="edge01") == 3.5
    assert value(s, "hybridops_signal_unknown", signal="primary_http", edge="edge01") == 1

    bed.max_ages = {"primary_http": 30.0}  # a reloaded profile with a longer max age applies to the next scrape
    s = bed.scrape()
    assert value(s, "hybridops_signal_unknown", signal="primary_http", edge="edge01") == 0
    assert not matching(s, "hybridops_signal_unknown", signal="db_up")


def test_journal_size_is_absent_until_the_journal_is_open() -> None:
    bed = Bed()
    bed.journal = None
    assert not matching(bed.scrape(), "hybridops_journal_size_bytes")
    bed.journal = 10
    assert value(bed.scrape(), "hybridops_journal_size_bytes") == 10


def test_each_metrics_owns_its_registry() -> None:
    first, second = Bed(), Bed()  # a second Metrics in one process would raise on duplicate names in a shared registry
    first.metrics.decision("prod", "cutover")
    assert value(first.scrape(), "hybridops_decisions_total", lane="prod", kind="cutover") == 1
    assert not matching(second.scrape(), "hybridops_decisions_total")
    assert REGISTRY.get_sample_value("hybridops_decisions_total", {"lane": "prod", "kind": "cutover"}) is None


async def test_server_serves_metrics_on_an_ephemeral_port_and_nothing_else() -> None:
    bed = Bed()
    bed.metrics.decision("prod", "drill")
    server = MetricsServer(MetricsConfig(listen="127.0.0.1", port=0), bed.metrics)
    async with server, aiohttp.ClientSession() as http:
        assert server.port != 0
        base = f"http://127.0.0.1:{server.port}"
        async with http.get(f"{base}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            assert value(parse(await response.text()), "hybridops_decisions_total", lane="prod", kind="drill") == 1
        for method, path in (("GET", "/"), ("GET", "/metrics/x"), ("POST", "/metrics"), ("DELETE", "/metrics")):
            async with http.request(method, f"{base}{path}") as response:
                assert response.status == 404, (method, path)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"http://127.0.0.1:{server.port}/metrics")


async def test_server_fails_loudly_when_its_port_is_taken() -> None:
    async with MetricsServer(MetricsConfig(port=0), Bed().metrics) as first:
        with pytest.raises(OSError):
            async with MetricsServer(MetricsConfig(port=first.port), Bed().metrics):
                pass


# --------------------------------------------------------------------------------------------- a real Prometheus


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def scraper(metrics_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A real Prometheus scraping the test's MetricsServer at ``metrics_port`` every second (job ``dr``)."""
    server = Prometheus(tmp_path_factory.mktemp("prometheus-metrics"), [f"127.0.0.1:{metrics_port}"])
    try:
        server.start()
    except ComponentFailed:
        server.stop()
        raise
    yield server
    server.stop()


async def until(prometheus: Prometheus, promql: str, expected: float | None = None, within: float = 20.0) -> list[Any]:
    """Poll ``promql`` (in a thread: the served event loop must keep answering scrapes) until it has a result, and
    until its single value equals ``expected`` when given."""

    def ready(result: list[Any]) -> bool:
        return bool(result) and (expected is None or (len(result) == 1 and float(result[0]["value"][1]) == expected))

    result: list[Any] = await asyncio.to_thread(prometheus.wait_for, promql, ready, within)
    return result


def scraped_bed() -> Bed:
    bed = Bed()
    bed.max_ages = {"primary_http": 5.0}
    bed.sample("primary_http", 1.0, age=0.0)
    bed.sources = {"mqtt": FakeSource("mqtt")}
    bed.metrics.lane_state("prod", "PRIMARY")
    bed.metrics.lane_state("drill", "PRIMARY")
    bed.metrics.leadership("prod", held=True, token=3)
    return bed


async def test_prometheus_scrapes_the_values_back(scraper: Prometheus, metrics_port: int) -> None:
    bed = scraped_bed()
    target = f'instance="127.0.0.1:{metrics_port}"'
    async with MetricsServer(MetricsConfig(port=metrics_port), bed.metrics):
        await until(scraper, f"up{{{target}}}", 1)

        bed.metrics.decision("prod", "cutover")
        bed.metrics.lane_state("prod", "ON_STANDBY")
        await until(scraper, f'hybridops_decisions_total{{{target}, lane="prod", kind="cutover"}}', 1)
        await until(scraper, f'hybridops_lane_state{{{target}, lane="prod", state="ON_STANDBY"}}', 1)
        await until(scraper, f'hybridops_lane_state{{{target}, lane="prod", state="PRIMARY"}}', 0)

        unknown = f'hybridops_signal_unknown{{{target}, signal="primary_http", edge="edge01"}}'
        await until(scraper, unknown, 0)
        bed.clock.now += 6.0  # past the 5 s max age, with nothing pushed to the metrics
        await until(scraper, unknown, 1)
        await until(scraper, f'hybridops_signal_age_seconds{{{target}, signal="primary_http"}}', 6.0)


# --------------------------------------------------------------------------------------------- the dashboard


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panel_queries(board: Mapping[str, Any]) -> dict[str, list[str]]:
    return {panel["title"]: [target["expr"] for target in panel["targets"]] for panel in board["panels"]}


def queries(board: Mapping[str, Any]) -> list[str]:
    variables = [variable["definition"] for variable in board["templating"]["list"]]
    return [expr for exprs in panel_queries(board).values() for expr in exprs] + variables


def names_in(expr: str) -> set[str]:
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in re.findall(r"hybridops_[a-z_]+", expr)}


def exported_names() -> set[str]:
    """What a PromQL query can name: ``<name>_total`` for counters, the family name for gauges and histograms."""
    return {f"{f.name}_total" if f.type == "counter" else f.name for f in Bed().metrics.registry.collect()}


def test_dashboard_queries_name_only_exported_metrics_and_cover_them_all() -> None:
    board = dashboard()
    used = set().union(*(names_in(expr) for expr in queries(board)))
    assert used <= exported_names(), f"not exported: {used - exported_names()}"
    assert used == exported_names(), f"not on the dashboard: {exported_names() - used}"


def test_dashboard_is_importable_with_a_prometheus_input() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert [(i["name"], i["type"], i["pluginId"]) for i in board["__inputs"]] == [("DS_PROMETHEUS", "datasource", "prometheus")]
    source = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"] and all(target["datasource"] == source for target in panel["targets"]), panel["title"]
    for variable in board["templating"]["list"]:
        assert variable["datasource"] == source
    by_title = panel_queries(board)
    lane_state = next(p for p in board["panels"] if p["type"] == "state-timeline")
    assert "hybridops_lane_state" in lane_state["targets"][0]["expr"]
    mapped = lane_state["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {entry["text"] for entry in mapped.values()} == {status.value for status in LaneStatus}
    durations = by_title["Chain step durations (dashboard range)"]
    assert any("histogram_quantile(0.5," in e for e in durations) and any("histogram_quantile(0.95," in e for e in durations)


# The values Grafana would substitute; anything else left with a "$" fails the test rather than reaching Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$instance": ".*", "$lane": ".*"}


def rendered(expr: str) -> str:
    for variable, replacement in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(variable, replacement)
    assert "$" not in expr, expr
    return expr


async def test_dashboard_queries_run_on_real_data(scraper: Prometheus, metrics_port: int) -> None:
    """Every panel's PromQL parses, and returns series once Prometheus has scraped a daemon with every metric set."""
    bed = scraped_bed()
    bed.metrics.decision("prod", "cutover")
    bed.metrics.lane_state("prod", "ON_STANDBY")
    bed.metrics.step("prod", "database", "applied", 0.4)
    bed.metrics.run("prod", "cutover", "succeeded")
    bed.metrics.step_ready("prod", "cutover", "database", "ready", {"replica_lag_bytes": 120.0, "replica_lag_seconds": 0.2})
    bed.metrics.readiness_checked("prod", bed.clock.now)
    bed.approvals = [PendingApproval("prod-1", "database", "prod", bed.clock.now - 60, bed.clock.now + 3540)]
    bed.metrics.drills(lambda: {"drill": (bed.clock.now + 3600, 86400.0)}, lambda lane: bed.clock.now - 82800)
    bed.metrics.started(bed.clock.now, unclean=False)
    bed.journal_check.ok, bed.journal_check.at = True, bed.clock.now
    bed.sources["peer"] = FakePeer("peer", authenticated=True)
    bed.sources["peer"].health.dropped_input("forged", "the MAC does not match")
    bed.notify.active, bed.notify.queued, bed.notify.delivered = 1, 2, 3
    board = dashboard()
    async with MetricsServer(MetricsConfig(port=metrics_port), bed.metrics):
        for title, exprs in panel_queries(board).items():
            for expr in exprs:
                assert await until(scraper, rendered(expr)), title
        # The lane-state panel encodes each lane's state as one number its value mappings name.
        lane_state = next(p for p in board["panels"] if p["type"] == "state-timeline")
        codes = lane_state["fieldConfig"]["defaults"]["mappings"][0]["options"]
        expr = rendered(lane_state["targets"][0]["expr"])
        for lane, status in (("prod", "ON_STANDBY"), ("drill", "PRIMARY")):
            result = await until(scraper, f'({expr}) and on (lane) hybridops_lane_state{{lane="{lane}"}}', within=5)
            assert codes[result[0]["value"][1]]["text"] == status, lane
