"""The Alertmanager webhook receiver: real webhooks from a real Alertmanager 0.25, and hostile direct POSTs."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from hybridops_daemon.config.sources import AlertmanagerSource
from hybridops_daemon.limits import MAX_WEBHOOK_ALERTS
from hybridops_daemon.secrets import SecretUnavailable
from hybridops_daemon.signals.alertmanager import AlertmanagerReceiver
from hybridops_daemon.signals.sample import Sample
from tests.testbed.alertmanager import Alertmanager
from tests.testbed.sources import Seen, running

TOKEN = "test-only-webhook-token"
TOKEN_ENV = "HYOPS_TEST_ALERTMANAGER_TOKEN"
AMS = {"alertname": "PrimaryDown", "site": "ams", "severity": "critical"}
FRA = {"alertname": "PrimaryDown", "site": "fra", "severity": "critical"}
LINK = {"alertname": "LinkDown", "link": "ipsec-dr"}


@pytest.fixture(autouse=True)
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


def spec(**overrides: Any) -> AlertmanagerSource:
    return AlertmanagerSource.model_validate(
        {
            "type": "alertmanager",
            "port": 0,
            "token": {"env": TOKEN_ENV},
            "alerts": [
                {"signal": "primary_db_ok", "match": {"alertname": "PrimaryDown", "site": "ams"}},  # firing 0, resolved 1
                {"signal": "wan_degraded", "match": {"alertname": "LinkDown"}, "firing": 1.0, "resolved": 0.0},
            ],
            **overrides,
        }
    )


@asynccontextmanager
async def receiving(source: AlertmanagerSource, refresh: float = 60.0) -> AsyncIterator[tuple[AlertmanagerReceiver, Seen, str]]:
    """A running receiver (a long ``refresh`` by default, so every sample seen comes from a webhook) and its URL."""
    receiver = AlertmanagerReceiver(source, "edge01", clock=lambda: 1000.0, refresh=refresh)
    async with running(receiver) as seen:
        yield receiver, seen, f"http://127.0.0.1:{receiver.port}{source.path}"


def webhook(*alerts: tuple[str, dict[str, str]]) -> dict[str, Any]:
    """A version-4 webhook body as Alertmanager sends it (the fields we read, and some we don't)."""
    return {
        "version": "4",
        "status": "firing",
        "receiver": "hook",
        "groupKey": "{}:{}",
        "alerts": [{"status": status, "labels": labels, "annotations": {}} for status, labels in alerts],
    }


async def test_real_alertmanager_webhooks_drive_the_routes(alertmanager_factory: Callable[..., Alertmanager]) -> None:
    async with receiving(spec()) as (receiver, seen, url):
        manager = await asyncio.to_thread(alertmanager_factory, url, token=TOKEN)
        assert seen.samples == []  # no webhook yet: every route is absent (UNKNOWN), not "resolved"

        await asyncio.to_thread(manager.fire, AMS)
        await seen.value("primary_db_ok", 0.0)
        assert seen.of("primary_db_ok")[0] == Sample("primary_db_ok", 0.0, 1000.0, "alertmanager", "edge01")

        # A non-matching alert: its webhook re-emits the known route unchanged and makes no other route known.
        before = len(seen.of("primary_db_ok"))
        await asyncio.to_thread(manager.fire, FRA)
        await seen.until("the FRA webhook", lambda: len(seen.of("primary_db_ok")) > before)
        assert seen.of("primary_db_ok")[-1].value == 0.0
        assert seen.of("wan_degraded") == []

        # Resolving AMS resolves the route although FRA (which it does not match) still fires.
        await asyncio.to_thread(manager.resolve, AMS)
        await seen.value("primary_db_ok", 1.0)

        # Route values are the route's own (here firing=1, resolved=0).
        await asyncio.to_thread(manager.fire, LINK)
        await seen.value("wan_degraded", 1.0)
        assert seen.of("primary_db_ok")[-1].value == 1.0
        await asyncio.to_thread(manager.resolve, LINK)
        await seen.value("wan_degraded", 0.0)
    assert receiver.health.malformed == 0


async def test_known_routes_are_re_emitted_and_unknown_ones_stay_absent() -> None:
    async with receiving(spec(token=None), refresh=0.1) as (receiver, seen, url), aiohttp.ClientSession() as http:
        # The receiver keeps no count of its refresh ticks: count the calls of the method each tick makes.
        ticks = 0
        emit_known = receiver._emit_known

        def counted() -> None:
            nonlocal ticks
            ticks += 1
            emit_known()

        receiver._emit_known = counted  # type: ignore[method-assign]
        await seen.until("three refresh ticks", lambda: ticks >= 3)
        assert seen.samples == [], "before any webhook nothing is emitted, however many refresh ticks"
        async with http.post(url, json=webhook(("firing", AMS)), timeout=aiohttp.ClientTimeout(total=5)) as response:
            assert response.status == 200  # no token configured: none needed
        await seen.until("five re-emissions", lambda: len(seen.of("primary_db_ok")) >= 6)
        assert {s.value for s in seen.of("primary_db_ok")} == {0.0}
        assert seen.of("wan_degraded") == []  # no webhook has spoken about it


async def test_bad_requests_are_refused_and_the_receiver_keeps_serving() -> None:
    limit = 2048
    big = json.dumps(webhook(*[("firing", {"alertname": f"Noise{i}"}) for i in range(100)])).encode()
    assert len(big) > limit

    async def trickle() -> AsyncIterator[bytes]:  # chunked: no Content-Length to refuse on
        for start in range(0, len(big), 512):
            yield big[start : start + 512]

    auth = {"Authorization": f"Bearer {TOKEN}"}
    json_type = {"Content-Type": "application/json"}
    cases: list[tuple[str, dict[str, str], Any, int, str]] = [
        ("oversized", auth, big, 413, "body over 2048 bytes"),
        ("oversized chunked", auth, trickle(), 413, ""),
        ("malformed JSON", auth, b'{"version": "4", "alerts": [', 400, "malformed JSON"),
        ("not an object", auth, b"[1, 2]", 400, "body is not a JSON object"),
        ("wrong version", auth, json.dumps({**webhook(), "version": "3"}).encode(), 400, "unsupported webhook version"),
        ("alert without labels", auth, json.dumps({"version": "4", "alerts": [{"status": "firing"}]}).encode(), 400, "labels"),
        ("wrong token", {"Authorization": "Bearer guess"}, json.dumps(webhook(("firing", AMS))).encode(), 401, ""),
        ("no token", {}, json.dumps(webhook(("firing", AMS))).encode(), 401, ""),
    ]
    with capture_logs() as logs:
        async with receiving(spec(max_body_bytes=limit)) as (receiver, seen, url), aiohttp.ClientSession() as http:
            for name, headers, body, status, reason in cases:
                async with http.post(
                    url, data=body, headers={**json_type, **headers}, timeout=aiohttp.ClientTimeout(total=5)
                ) as response:
                    text = await response.text()
                    assert (name, response.status) == (name, status), text
                    assert reason in text, (name, text)
            assert seen.samples == []  # nothing refused changed any state
            assert receiver.health.malformed == len(cases)

            async with http.post(
                url, json=webhook(("firing", AMS)), headers=auth, timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                assert response.status == 200
            await seen.value("primary_db_ok", 0.0)
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1, "refusals are counted; only the first is logged"
    assert TOKEN not in repr(logs) and "guess" not in repr(logs)
    assert [entry["event"] for entry in logs if entry["log_level"] == "info"] == ["input well-formed again"]


async def test_a_missing_token_secret_fails_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(SecretUnavailable, match=TOKEN_ENV):
        async with AlertmanagerReceiver(spec(), "edge01"):
            pass


async def test_webhooks_over_a_limit_are_a_400_naming_it_and_the_receiver_keeps_serving() -> None:
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    crowded = webhook(*[("firing", {"alertname": f"Noise{i}"}) for i in range(MAX_WEBHOOK_ALERTS + 1)])
    deep = b'{"version": "4", "alerts": [{"status": "firing", "labels": ' + b"[" * 30_000 + b"]" * 30_000 + b"}]}"
    cases: list[tuple[bytes, str]] = [
        (json.dumps(crowded).encode(), f"webhook: alerts {MAX_WEBHOOK_ALERTS + 1} over the limit of {MAX_WEBHOOK_ALERTS}"),
        (deep, "webhook: nesting depth over the limit of 32"),
        (
            b'{"version": "4", "alerts": [], "x": ' + b"7" * 5000 + b"}",
            f"webhook: digits in a number over the limit of {sys.get_int_max_str_digits()}",
        ),
    ]
    with capture_logs() as logs:
        async with receiving(spec(max_body_bytes=4 << 20)) as (receiver, seen, url), aiohttp.ClientSession() as http:
            for body, reason in cases:
                async with http.post(url, data=body, headers=auth, timeout=aiohttp.ClientTimeout(total=10)) as response:
                    assert (response.status, await response.text()) == (400, f"{reason}\n")
            assert receiver.health.malformed == len(cases)
            async with http.post(url, json=webhook(("firing", AMS)), headers=auth, timeout=aiohttp.ClientTimeout(total=5)) as ok:
                assert ok.status == 200
            await seen.value("primary_db_ok", 0.0)
    assert not [entry for entry in logs if entry["log_level"] == "error"]
