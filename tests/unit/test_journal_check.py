"""The daemon verifies its own journal while it runs (``keep_journal_verified``): the verdict is in
``Daemon.journal_check`` and the metrics, checked with the node's key, logged once when it turns failing and once when
it passes again; a verify that raises is a failed verification, and the checks go on."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from hybridops_daemon.daemon.app import Daemon
from hybridops_daemon.daemon.housekeeping import keep_journal_verified
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.journal.verify import JournalCheck
from tests.integration.test_metrics import Series, matching, parse, value
from tests.testbed.inprocess import running, sandbox_daemon
from tests.testbed.wait import eventually
from tests.unit.test_journal_proof import KEY, forge_append

EVERY = 0.1  # journal_verify_every in the config below


def signing_daemon(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    monkeypatch.setenv("HYOPS_TEST_JOURNAL_KEY", KEY.decode())
    settings = "node: edge01\ntick: 200ms\njournal_verify_every: 100ms\njournal_key: {env: HYOPS_TEST_JOURNAL_KEY}\n"
    return sandbox_daemon(directory, settings)


def scrape(daemon: Daemon) -> Series:
    return parse(daemon.metrics.exposition().decode())


def rewrite_body(path: Path, seq: int, body: str) -> str:
    """What someone with write access to the file does: drop the no-update trigger and rewrite a record's body.
    Returns the body it replaced."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        conn.execute("DROP TRIGGER IF EXISTS records_no_update")
        (was,) = conn.execute("SELECT body FROM records WHERE seq = ?", (seq,)).fetchone()
        conn.execute("UPDATE records SET body = ? WHERE seq = ?", (body, seq))
    finally:
        conn.close()
    return str(was)


async def more_rounds(check: JournalCheck) -> None:
    """Until a verification started at least one full interval from now: two more rounds, at least."""
    mark = time.time() + EVERY
    await eventually("two more verifications", lambda: check.at is not None and check.at > mark)


def transitions(logs: list[dict[str, object]]) -> list[object]:
    return [entry["event"] for entry in logs if str(entry["event"]).startswith("journal verification")]


async def test_a_record_altered_under_the_running_daemon_fails_its_next_verification_until_it_is_restored(
    sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = signing_daemon(sock_path.parent, monkeypatch)  # a short directory: the control socket's path
    check = daemon.journal_check
    before = scrape(daemon)
    assert not matching(before, "hybridops_journal_verify_ok")  # no verdict before the first verification
    assert not matching(before, "hybridops_journal_verified_timestamp_seconds")
    assert value(before, "hybridops_journal_verify_interval_seconds") == EVERY
    path = daemon.config.journal_path
    with capture_logs() as logs:
        async with running(daemon):
            await eventually("the first verification", lambda: check.ok)
            assert daemon.journal is not None and check.head is not None
            assert check.head[0] >= 1 and check.problem is None
            verified = scrape(daemon)
            assert value(verified, "hybridops_journal_verify_ok") == 1.0
            assert value(verified, "hybridops_journal_verified_timestamp_seconds") == check.at

            assert daemon.journal.records(limit=1)[0].body["node"] == "edge01"
            original = rewrite_body(path, 1, '{"node":"edge09"}')
            await eventually("a failed verification", lambda: check.ok is False)
            assert check.problem == "record 1 was altered (its hash does not match its content)"
            failed = scrape(daemon)
            assert value(failed, "hybridops_journal_verify_ok") == 0.0
            assert value(failed, "hybridops_journal_verified_timestamp_seconds") == check.at
            await more_rounds(check)
            assert check.ok is False  # still failing, and not logged again (below)

            rewrite_body(path, 1, original)
            await eventually("a verification that passes again", lambda: check.ok)
            await more_rounds(check)
            assert value(scrape(daemon), "hybridops_journal_verify_ok") == 1.0
    assert transitions(logs) == ["journal verification failed", "journal verification passes again"]


async def test_a_record_forged_without_the_nodes_key_fails_verification(sock_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = signing_daemon(sock_path.parent, monkeypatch)
    check = daemon.journal_check
    async with running(daemon):
        await eventually("the first verification", lambda: check.ok)
        # Chained with a correct hash: only the key tells it from the daemon's own records.
        forge_append(daemon.config.journal_path, {"reason": "nothing happened"})
        await eventually("a failed verification", lambda: check.ok is False)
        assert check.problem is not None and "is not signed, but records before it are" in check.problem


async def test_a_verify_that_raises_is_a_failed_verification_and_the_checks_go_on(tmp_path: Path) -> None:
    path, away = tmp_path / "journal.db", tmp_path / "moved.db"
    check = JournalCheck(every=0.05)
    with Journal.open(path) as journal, capture_logs() as logs:
        journal.append("decision", {"reason": "quiet"}, ts=1000.0, lane="prod")
        task = asyncio.create_task(keep_journal_verified(journal, check, time.time))
        try:
            await eventually("the first verification", lambda: check.ok)
            os.rename(path, away)
            await eventually("a failed verification", lambda: check.ok is False)
            assert check.problem == f"no journal at {path}" and check.head is None
            os.rename(away, path)
            await eventually("a verification that passes again", lambda: check.ok)
            assert not task.done()
        finally:
            task.cancel()
    assert transitions(logs) == ["journal verification failed", "journal verification passes again"]
