"""The journal on real SQLite files: hash chain, tamper detection, read-only verify, queries, durability, export."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hybridops_daemon.journal.export import write_run_folder
from hybridops_daemon.journal.store import GENESIS_HASH, Journal, JournalError, record_hash


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.db"


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    with Journal.open(path) as j:
        yield j


def fill(journal: Journal, n: int) -> None:
    for i in range(n):
        journal.append("decision", {"i": i, "reason": f"tick {i}"}, ts=1000.0 + i, lane="prod")


def tamper(path: Path, *statements: str) -> None:
    """What an attacker with write access does: drop the triggers, then rewrite rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER records_no_update")
    conn.execute("DROP TRIGGER records_no_delete")
    for sql in statements:
        conn.execute(sql)
    conn.close()


def run_records(journal: Journal, run_id: str, *, ok: bool | None, ts: float = 2000.0) -> None:
    """A two-step run as the chain runner writes it; ``ok=None`` leaves it unfinished."""
    journal.append(
        "run.start",
        {
            "run_id": run_id,
            "lane": "prod",
            "chain": "cutover",
            "kind": "cutover",
            "trigger": "automatic",
            "actor": "policy",
            "reason": "primary down for 12s",
            "profile": {"name": "prod", "version": 3},
            "inputs": {"fip": {"ip": "203.0.113.7"}, "db": {"replica": "pg-cloud"}},
            "fencing_token": 41,
            "hourly_cost_usd": 1.5,
            "steps": ["fip", "db", "dns"],
        },
        ts=ts,
        lane="prod",
        run_id=run_id,
    )
    for n, step in enumerate(("fip", "db")):
        at = ts + 1 + n
        journal.append("step.intent", {"step": step, "attempt": 1, "fencing_token": 41}, ts=at, run_id=run_id)
        journal.append("step.apply", {"step": step, "attempt": 1, "ok": True, "log": ["done"]}, ts=at, run_id=run_id)
        journal.append("step.verify", {"step": step, "ok": True, "probe": "readback"}, ts=at, run_id=run_id)
        journal.append("step.done", {"step": step, "outcome": "applied", "outputs": {"n": n}}, ts=at, run_id=run_id)
    if ok is not None:
        reason = "all steps verified" if ok else "dns step failed"
        journal.append(
            "run.end",
            {"run_id": run_id, "ok": ok, "reason": reason, "outputs": None, "elapsed_s": 3.0},
            ts=ts + 5,
            lane="prod",
            run_id=run_id,
        )


# ------------------------------------------------------------------------------------------------ chain


def test_appended_records_chain_from_genesis_and_verify(journal: Journal) -> None:
    fill(journal, 20)
    records = journal.records()
    assert [r.seq for r in records] == list(range(1, 21))
    assert records[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    first = records[0]
    assert first.hash == record_hash(GENESIS_HASH, 1, 1000.0, "prod", None, "decision", {"i": 0, "reason": "tick 0"})
    report = journal.verify()
    assert report.ok and report.problems == []
    assert (report.count, report.head_seq, report.head_hash) == (20, 20, records[-1].hash)


def test_append_returns_what_a_reader_gets_back(journal: Journal) -> None:
    record = journal.append("operator", {"b": 1, "a": (1, 2), "when": 5}, ts=7, lane="prod", run_id="r1")
    assert record.ts == 7.0 and isinstance(record.ts, float)  # an int ts would hash differently after a read
    assert record.body == {"a": [1, 2], "b": 1, "when": 5}
    assert journal.records() == [record]
    assert record.to_dict()["body"] == record.body


def test_empty_journal_verifies_with_genesis_head(journal: Journal) -> None:
    assert journal.verify() == journal.verify_file(journal.path)
    report = journal.verify()
    assert report.ok and (report.count, report.head_seq, report.head_hash) == (0, 0, GENESIS_HASH)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_values_are_refused_before_writing(journal: Journal, bad: float) -> None:
    with pytest.raises(ValueError):
        journal.append("decision", {"value": bad}, ts=1.0)
    with pytest.raises(ValueError):
        journal.append("decision", {}, ts=bad)
    assert journal.records() == []


def test_altered_body_is_reported(journal: Journal, path: Path) -> None:
    fill(journal, 20)
    tamper(path, """UPDATE records SET body = '{"i":12,"reason":"nothing to see"}' WHERE seq = 12""")
    report = journal.verify()
    assert not report.ok
    assert report.problems == ["record 12 was altered (its hash does not match its content)"]
    assert report.count == 20


def test_rehashed_alteration_breaks_the_link_to_the_next_record(journal: Journal, path: Path) -> None:
    fill(journal, 5)
    prev = journal.records()[1]
    forged_body = {"i": 2, "reason": "forged"}
    forged = record_hash(prev.hash, 3, 1002.0, "prod", None, "decision", forged_body)
    tamper(path, f"UPDATE records SET body = '{json.dumps(forged_body)}', hash = '{forged}' WHERE seq = 3")
    report = journal.verify()
    assert len(report.problems) == 1
    assert report.problems[0].startswith("chain broken between 3 and 4")


def test_deleted_middle_record_is_reported(journal: Journal, path: Path) -> None:
    fill(journal, 20)
    tamper(path, "DELETE FROM records WHERE seq = 13")
    report = journal.verify()
    assert report.problems == ["record 13 is missing: chain broken between 12 and 14"]
    assert report.count == 19 and report.head_seq == 20


def test_every_problem_is_listed(journal: Journal, path: Path) -> None:
    fill(journal, 30)
    tamper(path, "DELETE FROM records WHERE seq BETWEEN 4 AND 6", "UPDATE records SET ts = 0 WHERE seq IN (10, 20)")
    problems = journal.verify().problems
    assert problems == [
        "records 4..6 are missing: chain broken between 3 and 7",
        "record 10 was altered (its hash does not match its content)",
        "record 20 was altered (its hash does not match its content)",
    ]


def test_problem_list_is_capped(journal: Journal, path: Path) -> None:
    fill(journal, 150)
    tamper(path, "UPDATE records SET ts = 0")
    problems = journal.verify().problems
    assert len(problems) == 101
    assert problems[-1] == "... and 50 more problems"


def test_swapped_records_are_reported(journal: Journal, path: Path) -> None:
    fill(journal, 10)
    tamper(
        path,
        "UPDATE records SET seq = -1 WHERE seq = 5",
        "UPDATE records SET seq = 5 WHERE seq = 6",
        "UPDATE records SET seq = 6 WHERE seq = -1",
    )
    problems = journal.verify().problems
    assert "record 5 was altered (its hash does not match its content)" in problems
    assert "record 6 was altered (its hash does not match its content)" in problems
    assert any(p.startswith("chain broken between 4 and 5") for p in problems)
    assert any(p.startswith("chain broken between 6 and 7") for p in problems)


def test_sql_update_and_delete_are_refused_by_triggers(journal: Journal, path: Path) -> None:
    fill(journal, 3)
    raw = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("UPDATE records SET body = '{}' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("DELETE FROM records WHERE seq = 3")
    raw.close()
    assert journal.verify().ok and journal.verify().count == 3


def test_two_connections_extend_one_chain(path: Path) -> None:
    with Journal.open(path) as a, Journal.open(path) as b:
        a.append("decision", {"by": "a"}, ts=1.0)
        b.append("decision", {"by": "b"}, ts=2.0)  # must chain onto a's record, not fork from genesis
        a.append("decision", {"by": "a"}, ts=3.0)
        assert [r.body["by"] for r in b.records()] == ["a", "b", "a"]
        assert a.verify().ok and a.verify().count == 3


# ------------------------------------------------------------------------------------------------ files


def test_verify_file_reads_a_read_only_copy(tmp_path: Path, path: Path) -> None:
    with Journal.open(path) as journal:
        fill(journal, 8)
        head = journal.verify().head_hash
    copy_dir = tmp_path / "evidence"
    copy_dir.mkdir()
    copy = copy_dir / "journal.db"
    shutil.copy(path, copy)
    copy.chmod(0o444)
    copy_dir.chmod(0o555)
    before = copy.read_bytes()
    try:
        report = Journal.verify_file(copy)
    finally:
        copy_dir.chmod(0o755)
    assert report.ok and report.count == 8 and report.head_hash == head
    assert copy.read_bytes() == before


def test_verify_file_sees_records_still_in_the_wal_of_a_running_writer(path: Path) -> None:
    with Journal.open(path) as journal:
        fill(journal, 4)
        assert Path(f"{path}-wal").stat().st_size > 0
        report = Journal.verify_file(path)
        assert report.ok and report.count == 4


def test_verify_file_refuses_what_is_not_a_journal(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Journal.verify_file(tmp_path / "absent.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(JournalError):
        Journal.verify_file(junk)


def test_durability_settings(journal: Journal, path: Path) -> None:
    conn = journal._conn  # the settings must hold on the connection that appends
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert stat.S_IMODE(path.stat().st_mode) & ~0o640 == 0
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"


def test_other_schema_version_is_refused(path: Path) -> None:
    Journal.open(path).close()
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    raw.close()
    with pytest.raises(JournalError, match="schema version 99"):
        Journal.open(path)


def test_size_bytes_grows_with_records(journal: Journal) -> None:
    empty = journal.size_bytes()
    fill(journal, 50)
    assert journal.size_bytes() > empty > 0


# ------------------------------------------------------------------------------------------------ queries


def test_record_filters(journal: Journal) -> None:
    fill(journal, 3)
    journal.append("decision", {"i": 3}, ts=1003.0, lane="drill")
    journal.append("operator", {"cmd": "pause"}, ts=1004.0, lane="prod", run_id="r9")
    assert [r.seq for r in journal.records(lane="drill")] == [4]
    assert [r.seq for r in journal.records(kinds=["operator"])] == [5]
    assert journal.records(kinds=[]) == []
    assert [r.seq for r in journal.records(run_id="r9")] == [5]
    assert [r.seq for r in journal.records(after_seq=3)] == [4, 5]
    assert [r.seq for r in journal.records(lane="prod", kinds=["decision"], newest_first=True, limit=2)] == [3, 2]
    last = journal.last("decision")
    assert last is not None and last.seq == 4
    last_prod = journal.last("decision", lane="prod")
    assert last_prod is not None and last_prod.seq == 3
    assert journal.last("daemon.start") is None


def test_runs_and_unfinished_runs(journal: Journal) -> None:
    run_records(journal, "prod-1", ok=True, ts=100.0)
    run_records(journal, "prod-2", ok=False, ts=200.0)
    run_records(journal, "prod-3", ok=None, ts=300.0)
    run_records(journal, "prod-4", ok=None, ts=400.0)
    runs = journal.runs()
    assert [(r.run_id, r.status) for r in runs] == [
        ("prod-4", "running"),
        ("prod-3", "running"),
        ("prod-2", "failed"),
        ("prod-1", "succeeded"),
    ]
    failed = runs[2]
    assert (failed.lane, failed.kind, failed.chain, failed.trigger, failed.actor) == (
        "prod",
        "cutover",
        "cutover",
        "automatic",
        "policy",
    )
    assert (failed.started_at, failed.ended_at) == (200.0, 205.0)
    assert (failed.reason, failed.outcome) == ("primary down for 12s", "dns step failed")
    assert runs[0].ended_at is None and runs[0].reason == "primary down for 12s" and runs[0].outcome is None
    assert [r.run_id for r in journal.runs(limit=1)] == ["prod-4"]
    assert journal.runs(lane="drill") == []
    assert journal.unfinished_runs() == ["prod-3", "prod-4"]
    assert [r.kind for r in journal.run_records("prod-1")][0::9] == ["run.start", "run.end"]


def test_a_released_run_is_closed_here_and_open_again_once_taken_over(journal: Journal) -> None:
    """A node that lost the lane mid-run releases it (not failed: another node finishes it); if the lane comes back
    to this node still running it, the node's new run.start opens it again."""
    run_records(journal, "prod-1", ok=None, ts=100.0)
    journal.append("run.released", {"run_id": "prod-1", "reason": "lease lost"}, ts=110.0, lane="prod", run_id="prod-1")
    assert journal.unfinished_runs() == []
    assert [(r.run_id, r.status, r.outcome) for r in journal.runs()] == [("prod-1", "released", "lease lost")]

    run_records(journal, "prod-1", ok=True, ts=200.0)  # taken over again later, and finished here
    assert journal.unfinished_runs() == []
    assert [(r.run_id, r.status) for r in journal.runs()] == [("prod-1", "succeeded"), ("prod-1", "released")]
    run_records(journal, "prod-2", ok=None, ts=300.0)
    journal.append("run.released", {"run_id": "prod-2", "reason": "lease lost"}, ts=310.0, lane="prod", run_id="prod-2")
    run_records(journal, "prod-2", ok=None, ts=320.0)
    assert journal.unfinished_runs() == ["prod-2"]


# ------------------------------------------------------------------------------------------------ export


def test_export_writes_a_folder_that_ties_back_to_the_chain(journal: Journal, tmp_path: Path) -> None:
    fill(journal, 2)
    run_records(journal, "prod-1", ok=True)
    records = [r.to_dict() for r in journal.run_records("prod-1")]
    out = tmp_path / "audit" / "prod-1"
    written = write_run_folder(records, out)
    assert sorted(p.name for p in written) == sorted(
        ["meta.json", "inputs.json", "steps.json", "probes.json", "outputs.json", "records.json"]
    )

    def load(name: str) -> object:
        return json.loads((out / name).read_text("utf-8"))

    meta = load("meta.json")
    assert isinstance(meta, dict)
    assert meta["run_id"] == "prod-1" and meta["status"] == "succeeded" and meta["fencing_token"] == 41
    assert meta["profile"] == {"name": "prod", "version": 3}
    assert (meta["first_seq"], meta["last_seq"]) == (3, 12)
    by_seq = {r.seq: r for r in journal.records()}
    assert meta["first_hash"] == by_seq[3].hash and meta["last_hash"] == by_seq[12].hash
    assert journal.verify().ok

    assert load("inputs.json") == {"fip": {"ip": "203.0.113.7"}, "db": {"replica": "pg-cloud"}}
    steps = load("steps.json")
    assert isinstance(steps, list)
    assert [s["step"] for s in steps] == ["fip", "db", "dns"]  # chain order, the unreached step included
    assert [r["kind"] for r in steps[0]["records"]] == ["step.intent", "step.apply", "step.verify", "step.done"]
    assert steps[2]["records"] == []
    probes = load("probes.json")
    assert isinstance(probes, list)
    assert [p["body"]["step"] for p in probes] == ["fip", "db"]
    assert load("outputs.json") == {"fip": {"n": 0}, "db": {"n": 1}}  # run.end had no outputs: merged step.done
    assert load("records.json") == records


def test_export_refuses_a_non_empty_directory(journal: Journal, tmp_path: Path) -> None:
    run_records(journal, "prod-1", ok=None)
    records = [r.to_dict() for r in journal.run_records("prod-1")]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_run_folder(records, out)
    assert sorted(os.listdir(out)) == ["notes.txt"]
    (out / "notes.txt").unlink()
    write_run_folder(records, out)  # an existing empty directory is fine
    meta = json.loads((out / "meta.json").read_text("utf-8"))
    assert meta["status"] == "running" and meta["ended_at"] is None


def test_export_needs_a_run_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"run\.start"):
        write_run_folder([{"seq": 1, "kind": "decision", "ts": 1.0, "body": {}}], tmp_path / "x")
