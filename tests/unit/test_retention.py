"""Journal retention on real SQLite files: what a prune removes, what it keeps, and that verify still proves the rest."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.journal import retention
from hybridops_daemon.journal.store import PRUNED, Journal, JournalError, PruneReport, Record, VerifyReport, record_hash
from tests.unit.test_journal import run_records, tamper


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.db"


@pytest.fixture
def journal(path: Path) -> Iterator[Journal]:
    with Journal.open(path) as j:
        yield j


def notes(journal: Journal, n: int, *, ts0: float = 1000.0, size: int = 0) -> list[Record]:
    """``n`` records one second apart from ``ts0``, of kinds no restart reads back (nothing is carried for them)."""
    return [journal.append("note", {"i": i, "pad": "x" * size}, ts=ts0 + i) for i in range(n)]


def pruned(journal: Journal, *, now: float = 9000.0, **kwargs: Any) -> PruneReport:
    report = journal.prune(now=now, **kwargs)
    assert report is not None
    return report


def summary_body(report: PruneReport) -> dict[str, Any]:
    assert report.summary is not None and report.summary.kind == PRUNED
    return report.summary.body


def seqs(journal: Journal) -> list[int]:
    return [r.seq for r in journal.records()]


def rehash_head(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """A forger with write access: rewrite the newest record's body and recompute its hash, so its own hash matches."""
    conn = sqlite3.connect(path, isolation_level=None)
    seq, ts, lane, run_id, kind, body, prev = conn.execute(
        "SELECT seq, ts, lane, run_id, kind, body, prev_hash FROM records ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    data = json.loads(body)
    change(data)
    digest = record_hash(prev, seq, ts, lane, run_id, kind, data)
    conn.execute("DROP TRIGGER records_no_update")
    conn.execute("UPDATE records SET body = ?, hash = ? WHERE seq = ?", (json.dumps(data), digest, seq))
    conn.close()


# ------------------------------------------------------------------------------------------------ when nothing is due


def test_nothing_due_returns_none_and_writes_nothing(journal: Journal) -> None:
    assert journal.prune(before_ts=5000.0, now=9000.0) is None  # empty
    notes(journal, 1)
    assert journal.prune(before_ts=5000.0, max_bytes=1, now=9000.0) is None  # the only record is the newest
    notes(journal, 9, ts0=1001.0)
    assert journal.prune(before_ts=1000.0, max_bytes=journal.live_bytes(), now=9000.0) is None
    assert journal.prune(now=9000.0) is None  # no rule given
    assert seqs(journal) == list(range(1, 11))


def test_a_check_with_nothing_to_cut_does_the_same_work_on_a_large_journal(path: Path, tmp_path: Path) -> None:
    def vm_steps(journal: Journal) -> int:
        # SQLite's progress handler counts virtual-machine steps: a measure of work that no machine load disturbs.
        steps = 0

        def tick() -> int:
            nonlocal steps
            steps += 1
            return 0

        journal._conn.set_progress_handler(tick, 1)
        try:
            assert journal.prune(before_ts=999.0, max_bytes=10**9, now=9000.0) is None
        finally:
            journal._conn.set_progress_handler(None, 1)
        return steps

    with Journal.open(tmp_path / "small.db") as small, Journal.open(path) as large:
        notes(small, 20)
        notes(large, 1500, size=200)
        assert large.live_bytes() > 20 * small.live_bytes()
        small_steps, large_steps = vm_steps(small), vm_steps(large)
    assert large_steps == small_steps
    assert large_steps < 100


def test_bad_arguments_are_refused_before_anything_is_read(journal: Journal) -> None:
    notes(journal, 3)
    with pytest.raises(ValueError, match="finite"):
        journal.prune(before_ts=2000.0, now=float("nan"))
    with pytest.raises(ValueError, match="finite"):
        journal.prune(before_ts=float("inf"), now=9000.0)
    with pytest.raises(ValueError, match="at least 1"):
        journal.prune(max_bytes=0, now=9000.0)
    with pytest.raises(ValueError, match="at least 1"):
        journal.prune(before_ts=2000.0, now=9000.0, batch=0)
    assert seqs(journal) == [1, 2, 3]


# ------------------------------------------------------------------------------------------------ what is cut


def test_prune_by_age_cuts_the_oldest_records_and_summarises_them(journal: Journal) -> None:
    written = notes(journal, 20)
    report = pruned(journal, before_ts=1010.0)
    assert report.removed == 10 and report.held is None and not report.more
    body = summary_body(report)
    assert body == {
        "count": 10,
        "first_seq": 1,
        "last_seq": 10,
        "first_ts": 1000.0,
        "last_ts": 1009.0,
        "last_removed_hash": written[9].hash,
        "reason": "older than 1970-01-01T00:16:50+00:00",
        "carried": [],
    }
    assert seqs(journal) == list(range(11, 22))
    assert report.summary is not None
    assert (report.summary.seq, report.summary.prev_hash, report.summary.ts) == (21, written[-1].hash, 9000.0)
    assert journal.records()[0].prev_hash == body["last_removed_hash"]
    check = journal.verify()
    assert check.ok and (check.count, check.first_seq, check.head_seq) == (11, 11, 21)


def test_the_age_cut_is_a_prefix(journal: Journal) -> None:
    notes(journal, 5)
    journal.append("note", {"clock": "stepped back"}, ts=900.0)  # older than the cut, but after a younger record
    notes(journal, 3, ts0=1005.0)
    report = pruned(journal, before_ts=1003.0)
    assert summary_body(report)["last_seq"] == 3
    assert seqs(journal)[:3] == [4, 5, 6]


@pytest.mark.parametrize(("count", "pad"), [(1500, 500), (300, 2500)], ids=["records-share-pages", "one-record-a-page"])
def test_prune_by_size_gets_the_journal_under_max_bytes(journal: Journal, count: int, pad: int) -> None:
    # Three quiet lanes: the summary carries their decisions, 12 kB it must leave room for.
    for lane in ("prod", "drill", "staging"):
        journal.append("decision", {"state": {"lane": lane}, "evidence": "e" * 4000}, ts=999.0, lane=lane)
    notes(journal, count, size=pad)
    before = journal.live_bytes()
    limit = before // 2
    report = pruned(journal, max_bytes=limit)
    assert report.live_bytes_before == before
    assert report.live_bytes_after == journal.live_bytes() <= limit
    # Planned from estimates but measured: it removes about what it must, whatever the records' page footprint.
    assert report.live_bytes_after > limit * 0.9
    assert report.held is None and not report.more
    body = summary_body(report)
    assert body["first_seq"] == 1 and body["count"] == report.removed == body["last_seq"]
    assert body["reason"] == f"over {limit} bytes ({before} in use)"
    assert [c["lane"] for c in body["carried"]] == ["prod", "drill", "staging"]
    assert seqs(journal) == list(range(report.removed + 1, count + 5))
    assert journal.verify().ok


def test_the_newest_record_is_always_kept(journal: Journal) -> None:
    written = notes(journal, 5)
    report = pruned(journal, before_ts=99999.0)
    assert report.removed == 4 and report.held == "the newest record is always kept"
    assert journal.records()[0].hash == written[-1].hash
    assert journal.verify().ok


def test_an_unfinished_run_stops_the_cut_until_it_ends(journal: Journal) -> None:
    notes(journal, 3)
    run_records(journal, "prod-1", ok=None, ts=1003.0)  # records 4..12: started, two steps done, no end
    notes(journal, 3, ts0=1010.0)
    report = pruned(journal, before_ts=99999.0)
    assert report.removed == 3 and report.held == "run prod-1 has not ended" and not report.more
    assert [r.seq for r in journal.run_records("prod-1")] == list(range(4, 13))
    assert journal.unfinished_runs() == ["prod-1"]
    again = pruned(journal, before_ts=99999.0)
    assert (again.removed, again.summary, again.held) == (0, None, "run prod-1 has not ended")  # no summary of nothing
    assert [r.seq for r in journal.records(kinds=[PRUNED])] == [16]

    journal.append("run.end", {"run_id": "prod-1", "ok": True, "reason": "done"}, ts=1020.0, lane="prod", run_id="prod-1")
    notes(journal, 1, ts0=1021.0)
    report = pruned(journal, before_ts=99999.0)
    assert report.held == "the newest record is always kept"
    assert journal.run_records("prod-1") == []
    assert journal.verify().ok


def test_a_finished_run_is_cut_whole(journal: Journal) -> None:
    notes(journal, 3, size=3000)
    run_records(journal, "prod-1", ok=True, ts=1003.0)  # records 4..13, stamped 1003..1008
    notes(journal, 6, ts0=1010.0, size=3000)
    report = pruned(journal, before_ts=1005.0)  # the age boundary falls inside the run
    assert report.removed == 3 and report.held == "run prod-1 continues past the cut"
    assert len(journal.run_records("prod-1")) == 10
    # The size rule would rather go further than stop short of its goal: it takes the run whole.
    limit = journal.live_bytes() - 1
    report = pruned(journal, max_bytes=limit)
    assert report.held is None and report.live_bytes_after <= limit
    assert journal.run_records("prod-1") == []
    assert seqs(journal)[0] in range(14, 20)  # and then only as many notes as it needs
    assert journal.verify().ok


def test_a_large_backlog_goes_in_batches(journal: Journal) -> None:
    notes(journal, 25)
    reports = [pruned(journal, before_ts=1020.0, batch=8)]
    while reports[-1].more:
        reports.append(pruned(journal, before_ts=1020.0, batch=8))
    assert [r.removed for r in reports] == [8, 8, 4]
    assert [summary_body(r)["first_seq"] for r in reports] == [1, 9, 17]
    assert seqs(journal)[0] == 21
    assert journal.verify().ok


# ------------------------------------------------------------------------------------------------ verify after cuts


def test_verify_proves_the_chain_after_several_prunes(journal: Journal, path: Path, tmp_path: Path) -> None:
    cuts = []

    def cut(before: float, now: float) -> VerifyReport:
        body = summary_body(pruned(journal, before_ts=before, now=now))
        cuts.append((body["first_seq"], body["last_seq"]))
        check = journal.verify()
        assert check.ok, check.problems
        return check

    notes(journal, 10)  # 1..10
    cut(1003.0, 1010.0)
    cut(1006.0, 1011.0)
    notes(journal, 10, ts0=1100.0)
    cut(1102.0, 1111.0)
    check = cut(1105.0, 1112.0)
    # The third cut took the first two summaries with it; the two summaries left cover consecutive ranges.
    assert cuts == [(1, 3), (4, 6), (7, 14), (15, 17)]
    summaries = journal.records(kinds=[PRUNED])
    assert [(s.body["first_seq"], s.body["last_seq"]) for s in summaries] == cuts[2:]
    assert journal.records()[0].prev_hash == summaries[-1].body["last_removed_hash"]
    assert (check.first_seq, check.count) == (18, 7)

    journal.close()  # everything is in the main file now: a plain copy is the whole journal
    copy_dir = tmp_path / "evidence"
    copy_dir.mkdir()
    shutil.copy(path, copy_dir / "journal.db")
    (copy_dir / "journal.db").chmod(0o444)
    copy_dir.chmod(0o555)
    try:
        offline = Journal.verify_file(copy_dir / "journal.db")
    finally:
        copy_dir.chmod(0o755)
    assert offline == check


def test_an_altered_summary_is_reported(journal: Journal, path: Path) -> None:
    notes(journal, 10)
    report = pruned(journal, before_ts=1005.0)
    assert report.summary is not None
    notes(journal, 2, ts0=1100.0)
    seq = report.summary.seq
    tamper(path, f"""UPDATE records SET body = json_set(body, '$.count', 4) WHERE seq = {seq}""")
    assert journal.verify().problems == [
        f"record {seq} was altered (its hash does not match its content)",
        f"summary {seq} counts 4 records in 1..5: some were missing before the cut",
    ]


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        ("DELETE FROM records WHERE seq = 6", "record 6 is missing: the newest summary (11) ends at 5"),
        ("DELETE FROM records WHERE seq = 8", "record 8 is missing: chain broken between 7 and 9"),
        ("DELETE FROM records WHERE seq = 11", "record 11 is missing: chain broken between 10 and 12"),
        ("DELETE FROM records WHERE seq <= 7", "records 6..7 are missing: the newest summary (11) ends at 5"),
    ],
    ids=["first-kept", "middle", "the-summary", "more-than-the-summary-says"],
)
def test_a_removal_after_the_cut_is_reported(journal: Journal, path: Path, statement: str, problem: str) -> None:
    notes(journal, 10)
    assert pruned(journal, before_ts=1005.0).removed == 5  # the summary is record 11
    notes(journal, 2, ts0=1100.0)
    tamper(path, statement)
    assert problem in journal.verify().problems


def test_a_cut_no_summary_explains_is_reported(journal: Journal, path: Path) -> None:
    notes(journal, 10)
    tamper(path, "DELETE FROM records WHERE seq <= 4")
    check = journal.verify()
    assert check.problems == ["records 1..4 are missing: chain broken between 0 and 5 (no journal.pruned summary)"]
    assert check.first_seq == 5


@pytest.mark.parametrize(
    ("forgery", "problem"),
    [
        (lambda b: b.update(count=6, last_seq=6), "summary 11 says records 1..6 were pruned, but record 6 is present"),
        (lambda b: b.update(count=4), "summary 11 counts 4 records in 1..5"),
        (lambda b: b.update(last_removed_hash="0" * 64), "chain broken before 6: it does not follow"),
        (lambda b: b["carried"][0]["body"].update(status="PRIMARY"), "summary 11 carries a copy of a record that"),
        (lambda b: b.pop("carried"), "record 11 is not a well-formed journal.pruned summary"),
    ],
    ids=["claims-present-records", "count", "last-hash", "carried-copy", "malformed"],
)
def test_a_forged_summary_is_reported_even_with_a_matching_hash(
    journal: Journal, path: Path, forgery: Callable[[dict[str, Any]], None], problem: str
) -> None:
    journal.append("decision", {"state": {"status": "PAUSED"}}, ts=1000.0, lane="prod")
    notes(journal, 9, ts0=1001.0)
    assert pruned(journal, before_ts=1005.0).summary is not None  # record 11, the head, carries record 1
    rehash_head(path, forgery)
    problems = journal.verify().problems
    assert any(p.startswith(problem) for p in problems), problems


def test_summaries_left_in_the_journal_must_cover_consecutive_cuts(journal: Journal, path: Path) -> None:
    notes(journal, 10)
    pruned(journal, before_ts=1003.0, now=1010.0)  # 1..3, summary 11
    pruned(journal, before_ts=1006.0, now=1011.0)  # 4..6, summary 12
    rehash_head(path, lambda b: b.update(first_seq=5, count=2))  # as if record 4 had gone without a word
    assert journal.verify().problems == ["summary 12 starts its cut at 5, but summary 11 ended at 3"]


def test_prune_never_removes_the_evidence_of_tampering(journal: Journal, path: Path) -> None:
    notes(journal, 10)
    tamper(path, """UPDATE records SET body = '{"i":4,"pad":"forged"}' WHERE seq = 5""", "DELETE FROM records WHERE seq = 8")
    # The triggers are gone: the cut must not depend on them, and must put the DELETE one back.
    report = pruned(journal, before_ts=99999.0)
    assert report.removed == 4 and report.held == "record 5 does not verify; run `journal verify`"
    assert journal.verify().problems == [
        "record 5 was altered (its hash does not match its content)",
        "record 8 is missing: chain broken between 7 and 9",
    ]
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        sqlite3.connect(path, isolation_level=None).execute("DELETE FROM records WHERE seq = 9")


def test_prune_refuses_a_journal_whose_start_no_summary_explains(journal: Journal, path: Path) -> None:
    notes(journal, 10)
    tamper(path, "DELETE FROM records WHERE seq <= 3")
    report = pruned(journal, before_ts=99999.0)
    assert report.removed == 0 and report.summary is None
    assert report.held == "no summary accounts for the records before 4; run `journal verify`"
    assert seqs(journal)[0] == 4


def test_a_failed_prune_removes_nothing_and_keeps_the_table_append_only(
    journal: Journal, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notes(journal, 10)

    def failing_insert(conn: sqlite3.Connection, kind: str, text: str, **kwargs: Any) -> Record:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(retention, "insert", failing_insert)  # the summary's append, after the cut's DELETE
    with pytest.raises(JournalError, match="prune failed: disk I/O error"):
        journal.prune(before_ts=1005.0, now=9000.0)
    monkeypatch.undo()
    assert seqs(journal) == list(range(1, 11))
    raw = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("DELETE FROM records WHERE seq = 1")
    assert pruned(journal, before_ts=1005.0).removed == 5
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("DELETE FROM records WHERE seq = 6")
    raw.close()


# ------------------------------------------------------------------------------------------------ what a restart reads


def test_a_lane_quiet_for_longer_than_the_retention_keeps_its_state(journal: Journal) -> None:
    paused = journal.append("decision", {"state": {"status": "PAUSED", "run_seq": 7}}, ts=1000.0, lane="prod")
    drill = journal.append("decision", {"state": {"status": "PRIMARY", "run_seq": 2}}, ts=1001.0, lane="drill")
    start = journal.append("daemon.start", {"node": "edge01"}, ts=1002.0)
    notes(journal, 10, ts0=1003.0)
    newer_drill = journal.append("decision", {"state": {"status": "PRIMARY", "run_seq": 3}}, ts=1013.0, lane="drill")
    pruned(journal, before_ts=1010.0, now=1020.0)
    assert journal.records(kinds=["decision", "daemon.start"]) == [newer_drill]
    assert journal.last("decision", lane="prod") == paused  # the copy, exactly as written: seq, hash and all
    assert journal.last("daemon.start") == start
    assert journal.last("decision", lane="drill") == newer_drill  # a live record wins over a copy
    assert journal.last("decision") == newer_drill

    notes(journal, 5, ts0=2000.0)
    report = pruned(journal, before_ts=2003.0, now=2010.0)  # this cut removes the first summary too: its copies move on
    assert report.summary is not None
    carried = {(c["kind"], c["lane"]): c["seq"] for c in report.summary.body["carried"]}
    assert carried == {
        ("decision", "prod"): paused.seq,
        ("daemon.start", None): start.seq,
        ("decision", "drill"): newer_drill.seq,
    }
    assert journal.last("decision", lane="prod") == paused
    assert journal.last("decision", lane="drill") == newer_drill
    assert journal.last("decision", lane="staging") is None
    assert drill.seq not in carried.values()
    assert journal.verify().ok
