"""The journal view against a real journal, a real control backend and a real aiohttp server: what the pages say,
how the timeline filters and pages, and what the server refuses (no token, a write, an out-of-range parameter)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hybridops_daemon.chain.approvals import ApprovalBook
from hybridops_daemon.cli.ctl import render_status
from hybridops_daemon.config.base import SecretRef
from hybridops_daemon.config.models import WebConfig
from hybridops_daemon.control.backend import DaemonBackend
from hybridops_daemon.journal.export import write_run_folder
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.journal.verify import readonly_connection
from hybridops_daemon.policy.types import Command, Decision, DecisionKind, LaneStatus, RuleEvidence, Trigger
from hybridops_daemon.web.queries import PAGE_MAX, BadQuery, JournalReader, TimelineFilter
from hybridops_daemon.web.server import WebServer
from hybridops_daemon.web.views import build_run

HOSTILE = '<script>window.pwned=1</script><img src=x onerror="alert(1)">'
TOKEN = "s3cret-token"


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path / "journal.db") as opened:
        yield opened


def decision(i: int, lane: str, kind: DecisionKind, trigger: Trigger, run_id: str | None = None) -> dict[str, Any]:
    evidence = (RuleEvidence("primary_down", "edge01", "primary_http", 0.0, 0.4, False, True, 3, 2.0, True),)
    made = Decision(kind, lane, f"reason {i}", 1000.0 + i, LaneStatus.PRIMARY, LaneStatus.PRIMARY, trigger, "policy", run_id)
    return {**made._replace(evidence=evidence).to_dict(), "profile": {"name": lane, "version": 1}, "fencing_token": 1}


def fill(journal: Journal, count: int) -> list[tuple[int, str, str, str]]:
    """``count`` decisions over two lanes, kinds and triggers; returns (seq, lane, kind, trigger) of each."""
    kinds, triggers = [DecisionKind.HOLD, DecisionKind.DRILL, DecisionKind.REFUSE], list(Trigger)
    made = []
    for i in range(count):
        lane, kind, trigger = ("prod", "drill")[i % 2], kinds[i % 3], triggers[i % 5 % 3]
        record = journal.append("decision", decision(i, lane, kind, trigger), ts=1000.0 + i, lane=lane)
        journal.append("operator", {"noise": i}, ts=1000.0 + i, lane=lane)  # not a decision: never on the timeline
        made.append((record.seq, lane, kind.value, trigger.value))
    return made


def hostile_run(journal: Journal, run_id: str = "prod-1", lane: str = "prod", at: float = 10.0) -> None:
    """A run whose step name and values carry HTML, as a journal written by someone else could."""
    body = decision(0, lane, DecisionKind.CUTOVER, Trigger.AUTOMATIC, run_id)
    journal.append("decision", body, ts=at, lane=lane, run_id=run_id)
    start = {"run_id": run_id, "lane": lane, "chain": "cutover", "kind": "cutover", "trigger": "automatic",
             "actor": HOSTILE, "reason": HOSTILE, "profile": {"name": "prod", "version": 3}, "steps": [HOSTILE, "dns"]}
    journal.append("run.start", {**start, "fencing_token": 7}, ts=at + 1, lane=lane, run_id=run_id)
    for kind, ts, extra in (
        ("step.intent", 11.0, {"attempt": 1, "fencing_token": 7, "module": "m@v1"}),
        ("step.check", 11.1, {"satisfied": False, "observed": {"x": HOSTILE}}),
        ("step.apply", 11.2, {"attempt": 1, "ok": False, "error": "boom", "retryable": True}),
        ("step.apply", 11.5, {"attempt": 2, "ok": True, "log": [HOSTILE, "password=[REDACTED]"], "outputs": {}}),
        ("step.verify", 11.6, {"ok": True, "probe": "read-back", "observed": {}, "detail": ""}),
        ("step.done", 12.0, {"outcome": "applied", "outputs": {"id": HOSTILE}, "fencing_token": 7}),
        ("step.intent", 12.0, {"step": "dns", "attempt": 1, "fencing_token": 7}),
        ("step.failed", 12.5, {"step": "dns", "error": "no answer"}),
    ):
        journal.append(kind, {"step": HOSTILE, **extra}, ts=at + ts - 10, lane=lane, run_id=run_id)
    end = {"run_id": run_id, "ok": False, "reason": "dns failed", "outputs": {}}
    journal.append("run.end", end, ts=at + 3, lane=lane, run_id=run_id)


def backend_for(journal: Journal) -> DaemonBackend:
    async def submit(command: Command, lane: str, actor: str) -> tuple[int, Decision]:
        raise AssertionError("the view never submits")

    return DaemonBackend("edge01", "local", {}, journal, ApprovalBook(), {}, submit, clock=lambda: 5000.0)


@pytest.fixture
async def view(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, Journal]]:
    monkeypatch.setenv("HYOPS_TEST_WEB_TOKEN", TOKEN)
    config = WebConfig(port=0, token=SecretRef(env="HYOPS_TEST_WEB_TOKEN"))
    async with WebServer(config, backend_for(journal), journal) as server:
        assert server.url is not None
        yield server.url.rstrip("/"), journal


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, str, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.request(method, url, headers=AUTH if headers is None else headers) as answer,
    ):
        return answer.status, await answer.text(errors="replace"), answer.headers


def test_filter_parsing_refuses_what_the_journal_cannot_hold() -> None:
    assert TimelineFilter.parse({"lane": "prod", "kind": "drill", "limit": "10", "before": "99"}).limit == 10
    assert TimelineFilter.parse({"since": "2024-05-01T12:30", "kind": ""}).since == 1714566600.0
    for bad in ({"kind": "nuke"}, {"trigger": "x"}, {"limit": "0"}, {"limit": str(PAGE_MAX + 1)}, {"before": "-1"},
                {"lane": "<b>"}, {"since": "yesterday"}, {"lane": "a" * 65}, {"limit": "1e3"}):
        with pytest.raises(BadQuery):
            TimelineFilter.parse(bad)


def test_timeline_filters_and_pages_match_a_plain_scan(journal: Journal) -> None:
    made = fill(journal, 300)
    with readonly_connection(journal.path) as conn:
        reader = JournalReader(conn)
        for query, keep in (
            ({}, lambda m: True),
            ({"lane": "drill"}, lambda m: m[1] == "drill"),
            ({"kind": "refuse", "trigger": "operator"}, lambda m: m[2] == "refuse" and m[3] == "operator"),
            ({"since": "1100", "until": "1150", "lane": "prod"}, lambda m: m[1] == "prod" and 1100 <= m[0] // 2 + 1000 < 1150),
        ):
            expected = [m[0] for m in reversed(made) if keep(m)]
            seen: list[int] = []
            flt = TimelineFilter.parse({**query, "limit": "7"})
            while True:
                page = reader.timeline(flt)
                assert len(page.records) <= 7
                seen += [r.seq for r in page.records]
                if page.older is None:
                    break
                flt = TimelineFilter.parse(flt.query(before=page.older))
            assert seen == expected, query
            assert expected, f"the filter {query} matched nothing: a vacuous check"


def test_run_view_reads_steps_attempts_durations_and_evidence(journal: Journal) -> None:
    hostile_run(journal)
    view = build_run([r.to_dict() for r in journal.run_records("prod-1")])
    assert view is not None and view.status == "failed" and view.end_reason == "dns failed"
    first, dns = view.steps
    assert (first.step, first.status, first.attempts, first.duration, first.fencing_token) == (HOSTILE, "applied", 1, 1.0, 7)
    assert [a["ok"] for a in first.applies] == [False, True] and first.logs == [HOSTILE, "password=[REDACTED]"]
    assert (dns.status, dns.error, dns.duration) == ("failed", "no answer", 0.5)
    assert view.decision is not None and view.decision["evidence"][0]["signal"] == "primary_http"


async def test_pages_escape_what_the_journal_holds_and_send_strict_headers(view: tuple[str, Journal]) -> None:
    base, journal = view
    hostile_run(journal)
    fill(journal, 3)
    for path in ("/", "/timeline", "/runs/prod-1", "/journal", "/timeline?lane=prod&limit=1"):
        status, text, headers = await get(base + path)
        assert status == 200, (path, text)
        assert "<script>window" not in text and "<img src=x" not in text, path
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "'unsafe-inline'" not in csp
        assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
    _, run_page, _ = await get(base + "/runs/prod-1")
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in run_page and "password=[REDACTED]" in run_page
    assert "primary_http" in run_page and "prod v3" in run_page


async def test_requests_without_the_token_writes_and_bad_parameters_are_refused(view: tuple[str, Journal]) -> None:
    base, journal = view
    hostile_run(journal)
    head = journal.head()
    for path in ("/", "/timeline", "/runs/prod-1", "/runs/prod-1/export.zip", "/journal", "/static/style.css", "/nope"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            status, _, answer_headers = await get(base + path, headers)
            assert status == 401 and answer_headers["WWW-Authenticate"] == "Bearer", (path, headers)
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert (await get(base + path, method=method))[0] == 405, (path, method)
    assert (await get(base + "/timeline?kind=nuke"))[0] == 400
    assert (await get(base + "/timeline?lane=" + "a" * 2000))[0] == 414
    assert (await get(base + "/runs/%3Cb%3E"))[0] == 404
    assert (await get(base + "/runs/nope-1"))[0] == 404
    assert journal.head() == head, "a request wrote to the journal"


async def test_export_holds_the_files_hyopsctl_writes(view: tuple[str, Journal], tmp_path: Path) -> None:
    base, journal = view
    hostile_run(journal)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(base + "/runs/prod-1/export.zip", headers=AUTH) as answer,
    ):
        assert answer.status == 200 and answer.headers["Content-Disposition"] == 'attachment; filename="prod-1.zip"'
        archive = zipfile.ZipFile(io.BytesIO(await answer.read()))
    written = write_run_folder([r.to_dict() for r in journal.run_records("prod-1")], tmp_path / "cli")
    assert sorted(archive.namelist()) == sorted(f"prod-1/{path.name}" for path in written)
    for path in written:
        assert json.loads(archive.read(f"prod-1/{path.name}")) == json.loads(path.read_text())


def test_status_renders_the_view_url() -> None:
    status = {"node": "edge01", "lease": "local", "lanes": [], "web": "http://127.0.0.1:9465/"}
    assert "journal view: http://127.0.0.1:9465/" in render_status(status, 0.0)
    assert "journal view" not in render_status({**status, "web": None}, 0.0)
