"""The HTTP probe against a real aiohttp server on a loopback port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from hybridops_daemon.config.sources import HttpProbeSource
from hybridops_daemon.signals.http_probe import HttpProbe
from hybridops_daemon.signals.sample import Sample
from tests.testbed.sources import running


class Target:
    """A health endpoint whose answer (status, delay) the test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.authorization: list[str | None] = []
        self.url = ""
        self._release = asyncio.Event()  # set at teardown so no handler outlives the test
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.authorization.append(request.headers.get("Authorization"))
        if self.delay:
            try:
                async with asyncio.timeout(self.delay):
                    await self._release.wait()
            except TimeoutError:
                pass
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/health"

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    server = Target()
    await server.start()
    yield server
    await server.stop()


def spec(url: str, **overrides: Any) -> HttpProbeSource:
    return HttpProbeSource.model_validate({"type": "http_probe", "signal": "app_up", "url": url, **overrides})


async def probe(target_url: str, **overrides: Any) -> tuple[Sample, str | None]:
    async with HttpProbe(spec(target_url, **overrides), "edge01", clock=lambda: 1234.5) as http:
        sample = await http.probe_once()
        return sample, http.last_error


async def test_expected_status_reads_one(target: Target) -> None:
    sample, error = await probe(target.url)
    assert sample == Sample(signal="app_up", value=1.0, observed_at=1234.5, source=f"http_probe:{target.url}", edge="edge01")
    assert error is None


async def test_wrong_status_reads_zero(target: Target) -> None:
    target.status = 503
    sample, error = await probe(target.url)
    assert sample.value == 0.0
    assert error == "status 503 (expected 200)"


async def test_expect_status_is_configurable_and_redirects_are_not_followed(target: Target) -> None:
    target.status = 302
    assert (await probe(target.url))[0].value == 0.0
    assert (await probe(target.url, expect_status=302))[0].value == 1.0


async def test_timeout_reads_zero_within_the_timeout(target: Target) -> None:
    target.delay = 5.0
    started = time.monotonic()
    sample, error = await probe(target.url, timeout=0.3)
    elapsed = time.monotonic() - started
    assert sample.value == 0.0
    assert error == "timeout after 0.3s"
    assert 0.3 <= elapsed < 0.3 + 0.4


async def test_refused_connection_reads_zero(target: Target) -> None:
    async with HttpProbe(spec(target.url), "edge01") as http:
        assert (await http.probe_once()).value == 1.0
        await target.stop()
        started = time.monotonic()
        sample = await http.probe_once()
        assert sample.value == 0.0
        assert http.last_error == "connection refused"
        assert time.monotonic() - started < 1.0


async def test_too_slow_reads_zero(target: Target) -> None:
    target.delay = 0.2
    sample, error = await probe(target.url, max_latency=0.05)
    assert sample.value == 0.0
    assert error is not None and error.startswith("latency 0.2") and error.endswith("> 0.05s")
    assert (await probe(target.url, max_latency=1.0))[0].value == 1.0


async def test_credentials_are_used_but_never_shown(target: Target) -> None:
    secret_url = target.url.replace("http://", "http://probe:hunter2@") + "?token=abc123"
    target.status = 503
    with capture_logs() as logs:
        async with HttpProbe(spec(secret_url), "edge01") as http:
            sample = await http.probe_once()
    assert target.authorization == ["Basic cHJvYmU6aHVudGVyMg=="]  # probe:hunter2
    assert sample.source == f"http_probe:{target.url}"
    shown = repr(logs) + sample.source + str(http.last_error)
    assert "hunter2" not in shown
    assert "abc123" not in shown


async def test_run_keeps_a_fixed_cadence_and_stops_cleanly_on_cancel(target: Target) -> None:
    target.delay = 0.03  # each probe takes a while: a sleep(interval) loop would drift by this much per probe
    interval = 0.1
    with capture_logs() as logs:
        # running() also fails the test if run() swallows the cancellation that ends the block.
        async with running(HttpProbe(spec(target.url, interval=interval), "edge01")) as seen:
            await asyncio.sleep(1.05)  # the span whose probes are counted, not a wait for something
        emitted = len(seen.samples)
        await asyncio.sleep(0.25)
        assert len(seen.samples) == emitted  # nothing runs after cancellation
    assert 9 <= emitted <= 11
    assert all(sample.value == 1.0 for sample in seen.samples)
    # The n-th sample lands at n × interval after the first, not n × (interval + probe time).
    span = seen.arrived[-1] - seen.arrived[0]
    assert abs(span - (emitted - 1) * interval) < 0.05
    assert logs == []  # a healthy target logs nothing, however many probes


async def test_transitions_are_logged_once_each(target: Target) -> None:
    with capture_logs() as logs:
        async with HttpProbe(spec(target.url, timeout=0.2), "edge01") as http:
            for status, delay in [(200, 0), (200, 0), (503, 0), (503, 0), (200, 5.0), (200, 0), (200, 0), (500, 0)]:
                target.status, target.delay = status, delay
                await http.probe_once()
    assert [(entry["event"], entry["log_level"], entry.get("reason")) for entry in logs] == [
        ("http probe down", "warning", "status 503 (expected 200)"),  # still down on the timeout: no new line
        ("http probe up", "info", None),
        ("http probe down", "warning", "status 500 (expected 200)"),
    ]
    assert logs[0]["edge"] == "edge01"
    assert logs[0]["signal"] == "app_up"


async def test_a_target_down_at_start_is_logged(target: Target) -> None:
    target.status = 503
    with capture_logs() as logs:
        async with HttpProbe(spec(target.url), "edge01") as http:
            await http.probe_once()
            await http.probe_once()
    assert [entry["event"] for entry in logs] == ["http probe down"]


async def test_probe_outside_its_context_is_an_error(target: Target) -> None:
    http = HttpProbe(spec(target.url), "edge01")
    with pytest.raises(RuntimeError, match="outside `async with`"):
        await http.probe_once()


async def test_a_latency_signal_carries_how_long_each_answer_took_and_nothing_for_no_answer(target: Target) -> None:
    target.delay, target.status = 0.2, 503  # slow and wrong: still an answer, and its latency is known
    async with running(HttpProbe(spec(target.url, interval=0.1, timeout=0.5, latency_signal="app_latency"), "edge01")) as seen:
        slow = await seen.until("a latency sample", lambda: seen.latest("app_latency"))
        up = seen.latest("app_up")
        assert up is not None and up.value == 0.0 and up.observed_at == slow.observed_at
        assert slow.value is not None and 0.2 <= slow.value < 0.5
        target.delay = 5.0
        await seen.value("app_latency", 0.5)  # a timeout: the answer took at least the timeout
        target.delay, target.status = 0.0, 200
        await seen.value("app_up", 1.0)
        mark = seen.mark()
        await target.stop()

        def refused() -> int | None:
            count = sum(1 for s in seen.of("app_up", mark) if s.value == 0.0)
            return count if count >= 3 else None

        await seen.until("probes that reach nobody", refused)
    answered = {s.observed_at for s in seen.of("app_up", mark) if s.value == 1.0}
    assert {s.observed_at for s in seen.of("app_latency", mark)} == answered  # none for a refused connection
