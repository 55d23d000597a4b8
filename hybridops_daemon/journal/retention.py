"""Retention: ``prune`` (``Journal.prune``) cuts the oldest records and accounts for them in a chained summary.

A cut removes a prefix of the chain: the oldest records, never a record of a run that has not ended or that
continues past the cut (runs go whole or not at all), never the newest record, and never a record that does not
verify or anything after it (a cut must not destroy the evidence of tampering). One transaction drops the DELETE
trigger, deletes the prefix, appends a ``journal.pruned`` summary chained after the head like any record, and
recreates the trigger. The summary's body is ``{count, first_seq, last_seq, first_ts, last_ts,
last_removed_hash, reason, carried}``: it accounts for records ``first_seq..last_seq``, and ``last_removed_hash``
(the hash of record ``last_seq``) is the ``prev_hash`` of the first record that remains. Each prune starts at the
first remaining record, so the summaries still present cover consecutive ranges and the newest one ends right
before the first remaining record: how ``verify`` proves a pruned journal is in ``journal/verify.py``.

``carried``: what a restart reads back must outlive the records around it: each lane's newest ``decision`` (its
state) and the newest ``daemon.start``/``daemon.stop`` (``CARRIED_KINDS``). When a cut removes the newest record of
such a kind in a lane, the summary keeps a verbatim copy, whose hash ``verify`` re-checks, and ``last()`` falls back
to it, so a lane quiet for longer than the retention period restarts where it was.

Size is what the database's pages in use hold (``(page_count - freelist_count) * page_size``: records and
indexes), read in O(1), so a check with nothing to cut costs two indexed reads and three PRAGMAs. The cut is planned
from the records' estimated sizes (``_SIZE_ESTIMATE``), scaled by the bytes the cut has actually freed so far, and
re-measured until the journal, summary included, is under ``max_bytes``. No VACUUM: the file does not shrink, but
SQLite reuses the freed pages for new records, so it stops growing at ``max_bytes`` plus what is written between two
checks (and the write-ahead log); ``VACUUM`` with the daemon stopped gives the space back to the filesystem.

Archive before the cut: ``hyopsctl journal export RUN --dir D`` writes a run as JSON files whose ``meta.json``
carries the run's first and last record hashes, and ``sqlite3 journal.db ".backup copy.db"`` keeps everything
(``hyops-daemon journal verify --db copy.db`` proves it). In that copy, record ``last_seq`` of a later summary has
the summary's ``last_removed_hash`` as its hash: that ties the copy to the pruned chain.
"""

from __future__ import annotations

import json
import math
import sqlite3
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hybridops_daemon.journal.records import (
    COLUMNS,
    GENESIS_HASH,
    NO_DELETE_TRIGGER,
    PRUNED,
    RUN_END,
    RUN_RELEASED,
    Record,
    canonical_json,
    hash_matches,
    insert,
    missing,
    record_from_row,
    sqlite_errors,
    write_transaction,
)

# What a restart reads back: the newest of each per lane survives a cut as a copy in the summary.
CARRIED_KINDS = ("decision", "daemon.start", "daemon.stop")
PRUNE_BATCH = 2_000  # records one prune call removes at most; each is re-hashed first: ~60 ms of a small VM


# A record's share of the file, roughly: its columns, kind/lane/run id again in the indexes, and 200 bytes for seq, ts, the
# two hex hashes and the cell headers. Page slack and overflow pages are learnt per cut by measuring (see _prune_locked).
_SIZE_ESTIMATE = "length(CAST(body AS BLOB)) + 2 * (length(kind) + ifnull(length(lane), 0) + ifnull(length(run_id), 0)) + 200"


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What one ``Journal.prune`` call removed, and why it removed less than the rules asked for, if it did.

    ``summary`` is the ``journal.pruned`` record appended; None when ``held`` kept every record. ``more``: the call
    stopped at its batch limit with more to cut, so call again (after letting the event loop run).
    """

    removed: int
    summary: Record | None
    held: str | None
    more: bool
    live_bytes_before: int
    live_bytes_after: int
    held_by: str | None = None  # the run that ``held`` names, if a run stopped the cut


def live_bytes(conn: sqlite3.Connection) -> int:
    """Bytes the records and their indexes occupy: the database's pages in use, the size ``prune`` holds under
    ``max_bytes``. Freed pages are reused, so the file stops growing at about this size. Raises JournalError."""
    with sqlite_errors("query"):
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * page_size)


def prune(
    conn: sqlite3.Connection,
    *,
    before_ts: float | None = None,
    max_bytes: int | None = None,
    now: float,
    batch: int = PRUNE_BATCH,
    key: bytes | None = None,
) -> PruneReport | None:
    """Remove the oldest records: those older than ``before_ts`` and/or as many as bring ``live_bytes()`` under
    ``max_bytes``, and account for them in a ``journal.pruned`` record written at ``now`` and signed with ``key``
    if given (module docstring).

    Returns None when neither rule asks for a cut, after two indexed reads and three PRAGMAs: cheap enough to
    call every few minutes. Never removes a record of a run that has not ended or continues past the cut, a
    record that does not verify (nor anything after it), or the newest record; ``held`` says which stopped the
    cut short. At most ``batch`` records go per call, the calling thread blocked meanwhile; ``more`` asks for
    another call. Atomic: if anything fails, nothing is removed. Raises ValueError for a non-finite ``now``
    or ``before_ts`` or a ``max_bytes`` or ``batch`` below 1, JournalError if SQLite fails.
    """
    now = float(now)
    if not math.isfinite(now) or (before_ts is not None and not math.isfinite(before_ts)):
        raise ValueError("now and before_ts must be finite")
    if (max_bytes is not None and max_bytes < 1) or batch < 1:
        raise ValueError("max_bytes and batch must be at least 1")
    with sqlite_errors("prune"):
        if not _prune_due(conn, before_ts, max_bytes):
            return None
        with write_transaction(conn):
            return _prune_locked(conn, before_ts, max_bytes, now, batch, key)


def _prune_due(conn: sqlite3.Connection, before_ts: float | None, max_bytes: int | None) -> bool:
    first = conn.execute("SELECT seq, ts FROM records ORDER BY seq LIMIT 1").fetchone()
    if first is None or first[0] == conn.execute("SELECT MAX(seq) FROM records").fetchone()[0]:
        return False  # the newest record always stays
    return (before_ts is not None and first[1] < before_ts) or (max_bytes is not None and live_bytes(conn) > max_bytes)


def _prune_locked(
    conn: sqlite3.Connection, before_ts: float | None, max_bytes: int | None, now: float, batch: int, key: bytes | None
) -> PruneReport | None:
    # Read again under the write lock: another process may have appended (or pruned) since _prune_due.
    first = conn.execute("SELECT seq, ts FROM records ORDER BY seq LIMIT 1").fetchone()
    head_seq = conn.execute("SELECT MAX(seq) FROM records").fetchone()[0]
    if first is None or first[0] == head_seq:
        return None
    live_before = live = live_bytes(conn)
    reasons: list[str] = []
    age_goal = first[0] - 1  # the last seq the age rule asks to remove
    if before_ts is not None and first[1] < before_ts:
        young = conn.execute("SELECT seq FROM records WHERE ts >= ? ORDER BY seq LIMIT 1", (before_ts,)).fetchone()
        age_goal = young[0] - 1 if young else head_seq  # a prefix: a record stamped earlier after a younger one waits
        reasons.append(f"older than {datetime.fromtimestamp(before_ts, UTC).isoformat(timespec='seconds')}")
    over_size = max_bytes is not None and live > max_bytes
    if over_size:
        reasons.append(f"over {max_bytes} bytes ({live} in use)")
    if not reasons:
        return None
    reason = ", ".join(reasons)
    limit = min(head_seq - 1, first[0] + batch - 1)
    cut = _Cut(conn, first[0], _chain_start(conn, first[0]))
    page_size: int = conn.execute("PRAGMA page_size").fetchone()[0]

    def excess() -> int:
        """Bytes over ``max_bytes`` once the summary is written too (it may need a page of its own)."""
        if max_bytes is None or not over_size:
            return 0
        return live + len(canonical_json(cut.summary(reason))) + page_size - max_bytes

    goal = age_goal  # grows with the size rule's estimates
    held: str | None = None
    held_by: str | None = None
    while True:
        if excess() > 0:
            # Estimated bytes per byte of pages freed, as measured on this cut so far. Before any measurement,
            # assume the pages hold twice the estimate: a first step that falls short is corrected by the next.
            freed = live_before - live
            scale = cut.estimated / freed if cut.estimated and freed > 0 else 0.5
            goal = max(goal, _seq_freeing(conn, cut.end, math.ceil(excess() * scale), limit))
        target, held = cut.intact_through(min(goal, limit))
        end, runs = _clear_of_runs(conn, cut.end + 1, target)
        if end > cut.end:
            cut.take(end)
            live = live_bytes(conn)
        if runs is not None and held is None:
            run_id, unfinished, reach = runs
            if not unfinished and excess() > 0 and reach <= limit:
                goal = reach  # the size rule wants more: take finished runs whole rather than stop before them
                continue
            held = f"run {run_id} has not ended" if unfinished else f"run {run_id} continues past the cut"
            held_by = run_id
        if held is not None or end == limit or excess() <= 0:
            break
    more = False
    if age_goal <= end and excess() <= 0:
        held = held_by = None  # the rules got what they asked for; what stopped the cut went no further than that
    elif held is None and end == head_seq - 1:
        held = "the newest record is always kept"
    elif held is None:
        more = True  # stopped at the batch limit
    summary = None
    if cut.count:
        summary = insert(conn, PRUNED, canonical_json(cut.summary(reason)), ts=now, lane=None, run_id=None, key=key)
        conn.execute(NO_DELETE_TRIGGER)
        live = live_bytes(conn)
    return PruneReport(cut.count, summary, held, more, live_before, live, held_by if held is not None else None)


def _chain_start(conn: sqlite3.Connection, first_seq: int) -> str | None:
    """The ``prev_hash`` the first record must carry: genesis, or what the newest summary says it removed last."""
    if first_seq == 1:
        return GENESIS_HASH
    row = conn.execute("SELECT body FROM records WHERE lane IS NULL AND kind = ? ORDER BY seq DESC LIMIT 1", (PRUNED,))
    newest = row.fetchone()
    if newest is not None:
        with suppress(ValueError, TypeError, KeyError):
            body = json.loads(newest[0])
            if int(body["last_seq"]) == first_seq - 1:
                return str(body["last_removed_hash"])
    return None


def _seq_freeing(conn: sqlite3.Connection, after: int, excess: int, limit: int) -> int:
    """The seq up to which the records after ``after`` are estimated to hold ``excess`` bytes (at most ``limit``)."""
    total = 0
    for seq, size in conn.execute(
        f"SELECT seq, {_SIZE_ESTIMATE} FROM records WHERE seq > ? AND seq <= ? ORDER BY seq", (after, limit)
    ):
        total += size
        if total >= excess:
            return int(seq)
    return limit


def _clear_of_runs(conn: sqlite3.Connection, start: int, end: int) -> tuple[int, tuple[str, bool, int] | None]:
    """Move ``end`` back until no run with a record in ``start..end`` is unfinished or has records after ``end``.

    Returns the new end and, if a run moved it, ``(run, unfinished, reach)``: an unfinished run if one moved it
    (else the last run that did), whether any was unfinished, and the last seq of those runs.
    """
    runs: tuple[str, bool, int] | None = None
    while end >= start:
        row = conn.execute(_OPEN_RUN_SQL, (start, end, end, RUN_END, RUN_RELEASED)).fetchone()
        if row is None:
            break
        end, run_id = row[0] - 1, row[1]
        last, ends = conn.execute(
            "SELECT MAX(seq), SUM(kind IN (?, ?)) FROM records WHERE run_id = ?", (RUN_END, RUN_RELEASED, run_id)
        ).fetchone()
        unfinished = not ends
        if runs is None:
            runs = (run_id, unfinished, last)
        elif not runs[1]:
            runs = (run_id, unfinished, max(last, runs[2]))
    return end, runs


# The first record of the earliest run in a range that has not ended or has records after the range: a cut keeps runs whole.
_OPEN_RUN_SQL = """
SELECT g.first, g.run_id FROM (
    SELECT run_id, MIN(seq) AS first FROM records WHERE seq BETWEEN ? AND ? AND run_id IS NOT NULL GROUP BY run_id
) AS g
WHERE EXISTS (SELECT 1 FROM records x WHERE x.run_id = g.run_id AND x.seq > ?)
   OR NOT EXISTS (SELECT 1 FROM records x WHERE x.run_id = g.run_id AND x.kind IN (?, ?))
ORDER BY g.first LIMIT 1
"""


class _Cut:
    """The prefix one prune removes, grown in steps inside its transaction; what the summary says about it."""

    def __init__(self, conn: sqlite3.Connection, start: int, start_prev: str | None) -> None:
        self._conn = conn
        self.start = start
        self.end = start - 1  # the last seq removed so far
        self.count = 0
        self.estimated = 0  # the removed records' estimated size
        self.first_ts = 0.0
        self.last_ts = 0.0
        self.last_hash = start_prev  # what the next record must chain from; None: the chain's start is unaccounted for
        self._carried: dict[tuple[str, str | None], dict[str, Any]] = {}

    def intact_through(self, target: int) -> tuple[int, str | None]:
        """The last seq up to ``target`` through which the records after the cut so far verify (seqs, links and
        hashes), and the first problem found: retention never destroys the evidence of tampering."""
        expected, prev_hash = self.end + 1, self.last_hash
        if prev_hash is None:
            return self.end, f"no summary accounts for the records before {self.start}; run `journal verify`"
        for row in self._conn.execute(
            f"SELECT {COLUMNS} FROM records WHERE seq > ? AND seq <= ? ORDER BY seq", (self.end, target)
        ):
            seq, stored_prev = row[0], row[6]
            if seq != expected:
                return expected - 1, f"{missing(expected, seq - 1)} missing; run `journal verify`"
            if stored_prev != prev_hash or not hash_matches(row):
                return seq - 1, f"record {seq} does not verify; run `journal verify`"
            expected, prev_hash = seq + 1, row[7]
        return target, None

    def take(self, end: int) -> None:
        """Remove ``end`` and every record before it, noting what the summary must carry."""
        conn, start = self._conn, self.end + 1
        if self.count == 0:
            conn.execute("DROP TRIGGER IF EXISTS records_no_delete")  # recreated by prune in the same transaction
            self.first_ts = conn.execute("SELECT ts FROM records WHERE seq = ?", (start,)).fetchone()[0]
        self.last_ts, self.last_hash = conn.execute("SELECT ts, hash FROM records WHERE seq = ?", (end,)).fetchone()
        kinds = ", ".join("?" * len(CARRIED_KINDS))
        newest = conn.execute(
            f"SELECT {COLUMNS} FROM records WHERE seq IN (SELECT MAX(seq) FROM records"
            f" WHERE seq BETWEEN ? AND ? AND kind IN ({kinds}) GROUP BY kind, lane)",
            (start, end, *CARRIED_KINDS),
        )
        copies = [record_from_row(row).to_dict() for row in newest]
        summaries = conn.execute(
            "SELECT body FROM records WHERE lane IS NULL AND kind = ? AND seq BETWEEN ? AND ?", (PRUNED, start, end)
        )
        copies += [item for (body,) in summaries for item in json.loads(body).get("carried", ())]
        for item in copies:
            key = (item["kind"], item["lane"])
            if key not in self._carried or self._carried[key]["seq"] < item["seq"]:
                self._carried[key] = item
        self.estimated += conn.execute(
            f"SELECT ifnull(SUM({_SIZE_ESTIMATE}), 0) FROM records WHERE seq BETWEEN ? AND ?", (start, end)
        ).fetchone()[0]
        self.count += conn.execute("DELETE FROM records WHERE seq BETWEEN ? AND ?", (start, end)).rowcount
        self.end = end

    def summary(self, reason: str) -> dict[str, Any]:
        # A copy is needed only while no record of its kind and lane remains.
        carried = [
            item
            for item in self._carried.values()
            if not self._conn.execute(
                "SELECT 1 FROM records WHERE lane IS ? AND kind = ? LIMIT 1", (item["lane"], item["kind"])
            ).fetchone()
        ]
        return {
            "count": self.count,
            "first_seq": self.start,
            "last_seq": self.end,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "last_removed_hash": self.last_hash,
            "reason": reason,
            "carried": sorted(carried, key=lambda item: int(item["seq"])),
        }
