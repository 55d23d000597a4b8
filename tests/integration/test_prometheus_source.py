"""The Prometheus source against a real Prometheus 2.42 scraping an exporter the test controls (job "dr", 1 s)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from hybridops_daemon.config.sources import PrometheusSource
from hybridops_daemon.signals.prometheus import PrometheusPoller
from tests.testbed.prometheus import Exporter, Prometheus
from tests.testbed.sources import running


@pytest.fixture
def bed(exporter: Exporter, prometheus: Prometheus) -> Iterator[Exporter]:
    """The module's exporter and Prometheus, running, with ``up_metric 1`` and nothing else exported."""
    exporter.start()
    prometheus.start()
    exporter.clear()
    exporter.set("up_metric", 1)
    yield exporter


def spec(url: str, *queries: dict[str, Any]) -> PrometheusSource:
    return PrometheusSource.model_validate(
        {"type": "prometheus", "url": url, "interval": 0.2, "timeout": 1.0, "queries": queries}
    )


async def test_values_track_the_exporter(bed: Exporter, prometheus: Prometheus) -> None:
    poller = PrometheusPoller(spec(prometheus.url, {"signal": "primary_up", "query": 'up_metric{job="dr"}'}), "edge01")
    async with running(poller) as seen:
        first = await seen.value("primary_up", 1.0)
        bed.set("up_metric", 0)
        await seen.value("primary_up", 0.0)
        bed.set("up_metric", 1)
        await seen.value("primary_up", 1.0)
    assert (first.source, first.edge) == ("prometheus", "edge01")
    # observed_at is Prometheus' own timestamp for the result (its evaluation time), not our clock's reading.
    assert abs(first.observed_at - time.time()) < 5
    assert poller.health.malformed == 0 and poller.health.failures == 0


async def test_a_dead_target_reads_down_or_unknown_as_configured(bed: Exporter, prometheus: Prometheus) -> None:
    poller = PrometheusPoller(
        spec(
            prometheus.url,
            {"signal": "primary_up", "query": 'up_metric{job="dr"}', "empty": "down"},
            {"signal": "primary_up_or_unknown", "query": 'up_metric{job="dr"}', "empty": "unknown"},
            {"signal": "scrape_up", "query": 'up{job="dr"}', "empty": "unknown"},
        ),
        "edge01",
    )
    async with running(poller) as seen:
        for signal in ("primary_up", "primary_up_or_unknown", "scrape_up"):
            await seen.value(signal, 1.0)
        bed.stop()
        # The failed scrape stale-marks up_metric (the instant query comes back empty), while `up` stays, at 0.
        await seen.value("primary_up", 0.0)
        await seen.value("primary_up_or_unknown", None)
        await seen.value("scrape_up", 0.0)
        bed.start()
        for signal in ("primary_up", "primary_up_or_unknown", "scrape_up"):
            await seen.value(signal, 1.0)
    assert poller.health.malformed == 0  # an empty result is an answer, not malformed input


async def test_a_malformed_query_is_counted_and_the_others_still_flow(bed: Exporter, prometheus: Prometheus) -> None:
    bed.set("ratio", "NaN")
    prometheus.wait_for('ratio{job="dr"}')  # before its first scrape the query is (validly) empty
    with capture_logs() as logs:
        poller = PrometheusPoller(
            spec(
                prometheus.url,
                {"signal": "bad_syntax", "query": 'up{job="dr"'},
                # Valid PromQL that fails to execute (HTTP 422): dropping __name__ leaves duplicate label sets.
                {"signal": "bad_execution", "query": 'abs({job="dr"})'},
                {"signal": "not_a_number", "query": 'ratio{job="dr"}'},
                {"signal": "scrape_up", "query": 'up{job="dr"}'},
            ),
            "edge01",
        )
        async with poller:
            polls = [await poller.poll() for _ in range(3)]  # poll() directly: whole polls, nothing cut off
    assert [[(s.signal, s.value) for s in samples] for samples in polls] == [[("scrape_up", 1.0)]] * 3
    assert poller.health.malformed == 9  # every poll: bad syntax (400), bad execution (422), NaN
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1, "logged once, however many polls"
    assert warnings[0]["reason"].startswith("query for 'bad_syntax' rejected (HTTP 400: ")
    assert "parse error" in warnings[0]["reason"]
    assert not poller.health.upstream_down and poller.health.failures == 0


async def test_label_splits_series_into_labelled_signals(bed: Exporter, prometheus: Prometheus) -> None:
    bed.set("site_up", 1, {"site": "ams"})
    bed.set("site_up", 0, {"site": "fra"})
    bed.set("site_up", 1)  # no `site` label: malformed for the split, dropped
    prometheus.wait_for('site_up{job="dr"}', lambda result: len(result) == 3)
    poller = PrometheusPoller(
        spec(
            prometheus.url,
            {"signal": "site_up", "query": 'site_up{job="dr"}', "label": "site", "empty": "down"},
            {"signal": "any_site", "query": 'site_up{job="dr"}'},  # several series, no label: malformed
        ),
        "edge01",
    )
    async with running(poller) as seen:
        await seen.value("site_up{site=ams}", 1.0)
        await seen.value("site_up{site=fra}", 0.0)
        bed.set("site_up", 1, {"site": "fra"})
        await seen.value("site_up{site=fra}", 1.0)
        bed.remove("site_up", {"site": "fra"})  # the series vanishes (stale-marked): that site reads down
        await seen.value("site_up{site=fra}", 0.0)
        assert seen.latest("site_up{site=ams}").value == 1.0  # type: ignore[union-attr]
    assert {s.signal for s in seen.samples} == {"site_up{site=ams}", "site_up{site=fra}"}
    assert poller.health.malformed >= 2  # the label-less series and the unaggregated query, every poll


# Last in the module: the restarted Prometheus needs ~5 s for its first scrape again.
async def test_prometheus_down_emits_nothing_then_recovers(bed: Exporter, prometheus: Prometheus) -> None:
    with capture_logs() as logs:
        poller = PrometheusPoller(spec(prometheus.url, {"signal": "primary_up", "query": 'up_metric{job="dr"}'}), "edge01")
        poller.max_backoff = 1.0  # the default 30 s cap would outlast the test
        async with running(poller) as seen:
            await seen.value("primary_up", 1.0)
            prometheus.stop()
            await seen.until("upstream down", lambda: poller.health.upstream_down)
            count, failures = len(seen.samples), poller.health.failures
            await seen.until("two more failed polls", lambda: poller.health.failures >= failures + 2)
            assert len(seen.samples) == count, "nothing is emitted while Prometheus is down"
            assert poller.health.failures >= 2
            prometheus.start()
            await seen.until("samples again", lambda: len(seen.samples) > count, within=20)
            assert not poller.health.upstream_down
            await seen.value("primary_up", 1.0)
    events = [(entry["event"], entry["log_level"]) for entry in logs]
    assert events == [("upstream lost; its signals go UNKNOWN once stale", "warning"), ("upstream back", "info")]
    assert logs[0]["reason"].startswith("Prometheus ") and str(prometheus.port) not in logs[0]["reason"]
