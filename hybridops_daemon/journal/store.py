"""The journal: an append-only, hash-chained SQLite file, one per node.

Every record's ``hash`` is ``sha256_hex(prev_hash + "\\n" + canonical(envelope))`` where ``envelope`` is
``{"seq", "ts", "lane", "run_id", "kind", "body"}`` and ``canonical`` is ``json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False)``; the first record's ``prev_hash`` is 64 zeros. An auditor can recompute
the chain with any SQLite reader and twenty lines of code.

SQLite runs synchronously in the caller's thread on purpose. The daemon calls ``append`` from its event loop thread:
a record is committed whole (WAL + ``synchronous=FULL``: durable when ``append`` returns) or not at all, and no
cancellation or shutdown can interrupt it half-way, which an executor thread could not promise. An append costs one
fsync, well under the loop's time budget.

Triggers make the table append-only at the SQL level; someone who drops them can rewrite rows, and ``verify`` finds
that from the hash chain.

Retention (``Journal.prune``) removes a prefix of the chain: the oldest records, never a record of a run that has
not ended or that continues past the cut (runs go whole or not at all), never the newest record, and never a record
that does not verify or anything after it (a cut must not destroy the evidence of tampering). One transaction
drops the DELETE trigger, deletes the prefix, appends a ``journal.pruned`` summary chained after the head like any
record, and recreates the trigger. The summary's body is ``{count, first_seq, last_seq, first_ts, last_ts,
last_removed_hash, reason, carried}``: it accounts for records ``first_seq..last_seq``, and ``last_removed_hash``
(the hash of record ``last_seq``) is the ``prev_hash`` of the first record that remains. Each prune starts at the
first remaining record, so the summaries still present cover consecutive ranges and the newest one ends right
before the first remaining record. ``verify`` proves a pruned journal from its first record onward when:

- the newest summary ends right before the first record, with the hash that record chains from;
- every summary is intact (it is an ordinary chained record), claims only records that are gone, and follows on
  from the summary before it (``first_seq`` = the previous one's ``last_seq + 1``).

A removal no summary explains, and an altered summary, are reported like any other break. A writer able to append a
forged summary could append anything else too: as for every record, the defence is a head hash kept elsewhere.

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

import hashlib
import json
import math
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

from hybridops_daemon.journal.redact import Redactor

SCHEMA_VERSION = 1
GENESIS_HASH = "0" * 64
RUN_START = "run.start"
RUN_END = "run.end"
# This node stopped working on a run because it lost the lane's leadership: over here, not over (the next leader ends it).
RUN_RELEASED = "run.released"
PRUNED = "journal.pruned"
# What a restart reads back: the newest of each per lane survives a cut as a copy in the summary.
CARRIED_KINDS = ("decision", "daemon.start", "daemon.stop")
PRUNE_BATCH = 2_000  # records one prune call removes at most; each is re-hashed first: ~60 ms of a small VM
MAX_PROBLEMS = 100
BUSY_TIMEOUT_S = 5.0  # how long an append waits for another process's write transaction before failing

# A record's share of the file, roughly: its columns, kind/lane/run id again in the indexes, and 200 bytes for seq, ts, the
# two hex hashes and the cell headers. Page slack and overflow pages are learnt per cut by measuring (see _prune_locked).
_SIZE_ESTIMATE = "length(CAST(body AS BLOB)) + 2 * (length(kind) + ifnull(length(lane), 0) + ifnull(length(run_id), 0)) + 200"

_NO_DELETE_TRIGGER = """CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'journal records are append-only'); END;"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    lane TEXT,
    run_id TEXT,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_run_id ON records (run_id);
CREATE INDEX IF NOT EXISTS records_lane_kind ON records (lane, kind);
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'journal records are append-only'); END;
{_NO_DELETE_TRIGGER}
"""

_COLUMNS = "seq, ts, lane, run_id, kind, body, prev_hash, hash"

RunStatus = Literal["running", "succeeded", "failed", "released"]


class JournalError(Exception):
    """The journal file could not be opened, read or written. Nothing was written by the failing call."""


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    ts: float
    lane: str | None
    run_id: str | None
    kind: str
    body: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "lane": self.lane,
            "run_id": self.run_id,
            "kind": self.kind,
            "body": dict(self.body),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One chain run: ``reason`` is why it started (what on-call asks first), ``outcome`` how it ended (None while running)."""

    run_id: str
    lane: str | None
    kind: str | None
    chain: str | None
    trigger: str | None
    actor: str | None
    started_at: float
    ended_at: float | None
    status: RunStatus
    reason: str | None
    outcome: str | None


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Result of walking the chain.

    Removal of the *newest* records leaves a shorter but valid chain, which no walk can tell from a journal that
    never had them. ``head_seq`` and ``head_hash`` are what an operator anchors elsewhere (a ticket, the peer edge,
    an export) so that a later verify can show the chain still reaches that head.
    """

    ok: bool
    count: int
    head_seq: int
    head_hash: str
    problems: list[str]
    first_seq: int = 0  # above 1: retention removed the records before it (proven by its summaries when ok)


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


def canonical_json(obj: object, default: Callable[[object], str] = str) -> str:
    """The one serialisation that is hashed. Raises ValueError for NaN/infinity or keys JSON cannot sort."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=default)
    except TypeError as exc:  # mixed-type keys cannot be sorted
        raise ValueError(f"not writable as canonical JSON: {exc}") from exc


def record_hash(
    prev_hash: str, seq: int, ts: float, lane: str | None, run_id: str | None, kind: str, body: Mapping[str, Any]
) -> str:
    envelope = {"seq": seq, "ts": ts, "lane": lane, "run_id": run_id, "kind": kind, "body": body}
    return hashlib.sha256(f"{prev_hash}\n{canonical_json(envelope)}".encode()).hexdigest()


def _record(row: tuple[Any, ...]) -> Record:
    seq, ts, lane, run_id, kind, body, prev_hash, hash_ = row
    return Record(seq, ts, lane, run_id, kind, json.loads(body), prev_hash, hash_)


def _hash_matches(row: tuple[Any, ...]) -> bool:
    """Whether a stored row's hash is the hash of its content (an unreadable body or a mistyped column is not)."""
    seq, ts, lane, run_id, kind, body, stored_prev, stored_hash = row
    try:
        expected = record_hash(stored_prev, seq, ts, lane, run_id, kind, json.loads(body))
    except (ValueError, TypeError):
        return False
    return expected == str(stored_hash)


def _missing(first: int, last: int) -> str:
    return f"record {first} is" if first == last else f"records {first}..{last} are"


@contextmanager
def _sqlite_errors(action: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise JournalError(f"journal {action} failed: {exc}") from exc


class Journal:
    """Append-only, hash-chained record store. Use ``Journal.open``; one instance per process, one thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path, redactor: Redactor | None) -> None:
        self._conn = conn
        self.path = path
        self._redactor = redactor

    # ------------------------------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, path: Path, redactor: Redactor | None = None) -> Journal:
        """Open or create the journal at ``path``: WAL, ``synchronous=FULL``, schema created if missing.

        A new file is created with mode 0640 (its -wal and -shm files inherit that mode). Idempotent and safe
        against another process opening the same file at the same moment. Raises JournalError if the file is not a
        journal, has another schema version, or cannot be put in WAL mode.
        """
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        with suppress(FileExistsError):  # SQLite would create it with the umask's mode, often world-readable
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
        with _sqlite_errors("open"):
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so nothing opens a transaction behind our back.
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode != "wal":
                    raise JournalError(f"{path}: cannot use WAL mode (got {mode!r}); is it on a network filesystem?")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
                version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
                if version != str(SCHEMA_VERSION):
                    raise JournalError(f"{path}: schema version {version}, this daemon reads {SCHEMA_VERSION}")
            except BaseException:
                conn.close()
                raise
        return cls(conn, path, redactor)

    def close(self) -> None:
        """Close the connection. The last connection to close checkpoints the WAL into the main file."""
        self._conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ writing

    def append(
        self,
        kind: str,
        body: Mapping[str, Any],
        *,
        ts: float,
        lane: str | None = None,
        run_id: str | None = None,
    ) -> Record:
        """Redact ``body``, chain it to the newest record and commit it durably; returns the record as stored.

        Atomic: one IMMEDIATE transaction, so the record is written whole or not at all and two processes on one
        file cannot fork the chain. Raises ValueError (NaN/infinite ``ts`` or body values, unsortable keys) before
        touching the file, JournalError if SQLite fails (e.g. another writer held the lock past the busy timeout).
        """
        ts = float(ts)  # the column is REAL: an int would read back as a float and hash differently
        if not math.isfinite(ts):
            raise ValueError(f"ts must be finite, got {ts}")
        redactor = self._redactor
        redacted = redactor.redact(body) if redactor else body

        def stringify(value: object) -> str:  # a non-JSON value is written as its text, which may hold a secret too
            return redactor.redact_text(str(value)) if redactor else str(value)

        text = canonical_json(redacted, default=stringify)
        with _sqlite_errors("append"), self._write_transaction():
            return self._insert(kind, text, ts=ts, lane=lane, run_id=run_id)

    @contextmanager
    def _write_transaction(self) -> Iterator[None]:
        """One IMMEDIATE transaction: committed whole or rolled back, and no other process writes meanwhile."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:  # a failed COMMIT may already have rolled back
                self._conn.execute("ROLLBACK")
            raise

    def _insert(self, kind: str, text: str, *, ts: float, lane: str | None, run_id: str | None) -> Record:
        """Chain a serialised record onto the head. Call inside ``_write_transaction``."""
        stored = json.loads(text)  # what a reader gets back, and therefore what is hashed
        # Read the head inside the write lock: another process may have appended since our last write.
        head = self._conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        prev_seq, prev_hash = head if head else (0, GENESIS_HASH)
        seq = prev_seq + 1
        digest = record_hash(prev_hash, seq, ts, lane, run_id, kind, stored)
        self._conn.execute(
            f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, ts, lane, run_id, kind, text, prev_hash, digest),
        )
        return Record(seq, ts, lane, run_id, kind, stored, prev_hash, digest)

    # ------------------------------------------------------------------------------------------ reading

    def records(
        self,
        *,
        run_id: str | None = None,
        lane: str | None = None,
        kinds: Iterable[str] | None = None,
        after_seq: int | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[Record]:
        """Records matching every given filter (None: no filter on that field), in seq order. Raises JournalError."""
        where: list[str] = []
        params: list[Any] = []
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if lane is not None:
            where.append("lane = ?")
            params.append(lane)
        if kinds is not None:
            kind_list = list(kinds)
            if not kind_list:
                return []
            where.append(f"kind IN ({', '.join('?' * len(kind_list))})")
            params.extend(kind_list)
        if after_seq is not None:
            where.append("seq > ?")
            params.append(after_seq)
        sql = f"SELECT {_COLUMNS} FROM records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC" if newest_first else " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with _sqlite_errors("query"):
            return [_record(row) for row in self._conn.execute(sql, params)]

    def last(self, kind: str, lane: str | None = None) -> Record | None:
        """The newest record of ``kind`` (in ``lane`` if given), or None. Raises JournalError.

        If retention removed every such record, the copy a ``journal.pruned`` summary carries of the newest one
        (kinds in ``CARRIED_KINDS``; see the module docstring): the record as it was written, hash included.
        """
        found = self.records(kinds=[kind], lane=lane, limit=1, newest_first=True)
        return found[0] if found else self._carried(kind, lane)

    def _carried(self, kind: str, lane: str | None) -> Record | None:
        best: dict[str, Any] | None = None
        # Summaries are few (one per prune) and this runs only when no live record answers: a start-up path.
        with _sqlite_errors("query"):
            summaries = self._conn.execute("SELECT body FROM records WHERE lane IS NULL AND kind = ?", (PRUNED,))
            for (body,) in summaries:
                for item in json.loads(body).get("carried", ()):
                    wanted = item["kind"] == kind and (lane is None or item["lane"] == lane)
                    if wanted and (best is None or item["seq"] > best["seq"]):
                        best = item
        return Record(**best) if best is not None else None

    def run_records(self, run_id: str) -> list[Record]:
        """Every record of one run, in seq order. Raises JournalError."""
        return self.records(run_id=run_id)

    def runs(self, lane: str | None = None, limit: int = 50) -> list[RunSummary]:
        """The newest ``limit`` runs (``run.start`` records), newest first, with their ``run.end`` if any.

        Relies on the runner appending ``run.start`` and ``run.end`` with ``run_id=``. Raises JournalError.
        """
        sql = (
            "SELECT s.run_id, s.lane, s.ts, s.body, e.ts, e.body, e.kind FROM records s"
            " LEFT JOIN records e ON e.seq ="
            " (SELECT MIN(seq) FROM records WHERE run_id = s.run_id AND kind IN (?, ?) AND seq > s.seq)"
            " WHERE s.kind = ?"
        )
        params: list[Any] = [RUN_END, RUN_RELEASED, RUN_START]
        if lane is not None:
            sql += " AND s.lane = ?"
            params.append(lane)
        sql += " ORDER BY s.seq DESC LIMIT ?"
        params.append(limit)
        with _sqlite_errors("query"):
            rows = self._conn.execute(sql, params).fetchall()
        summaries: list[RunSummary] = []
        for run_id, run_lane, started_at, start_text, ended_at, end_text, end_kind in rows:
            start = json.loads(start_text)
            end = json.loads(end_text) if end_text is not None else None
            status: RunStatus = "running" if end is None else ("succeeded" if end.get("ok") else "failed")
            if end_kind == RUN_RELEASED:
                status = "released"
            summaries.append(
                RunSummary(
                    run_id=run_id if run_id is not None else start.get("run_id"),
                    lane=run_lane if run_lane is not None else start.get("lane"),
                    kind=start.get("kind"),
                    chain=start.get("chain"),
                    trigger=start.get("trigger"),
                    actor=start.get("actor"),
                    started_at=started_at,
                    ended_at=ended_at,
                    status=status,
                    reason=start.get("reason"),
                    outcome=end.get("reason") if end is not None else None,
                )
            )
        return summaries

    def unfinished_runs(self) -> list[str]:
        """Run ids whose newest ``run.start`` has no ``run.end`` or ``run.released`` after it, oldest first: what a
        restart must resume (a run taken over again after a release is open again). Raises JournalError.
        """
        sql = (
            "SELECT run_id FROM records WHERE run_id IS NOT NULL AND kind IN (?, ?, ?) GROUP BY run_id"
            " HAVING MAX(CASE WHEN kind = ? THEN seq END) = MAX(seq) ORDER BY MIN(seq)"
        )
        with _sqlite_errors("query"):
            return [row[0] for row in self._conn.execute(sql, (RUN_START, RUN_END, RUN_RELEASED, RUN_START))]

    def size_bytes(self) -> int:
        """Bytes on disk: the database file plus its write-ahead log."""
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    def live_bytes(self) -> int:
        """Bytes the records and their indexes occupy: the database's pages in use, the size ``prune`` holds under
        ``max_bytes``. Freed pages are reused, so the file stops growing at about this size. Raises JournalError."""
        with _sqlite_errors("query"):
            pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
            free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * page_size)

    # ------------------------------------------------------------------------------------------ retention

    def prune(
        self,
        *,
        before_ts: float | None = None,
        max_bytes: int | None = None,
        now: float,
        batch: int = PRUNE_BATCH,
    ) -> PruneReport | None:
        """Remove the oldest records: those older than ``before_ts`` and/or as many as bring ``live_bytes()`` under
        ``max_bytes``, and account for them in a ``journal.pruned`` record written at ``now`` (module docstring).

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
        with _sqlite_errors("prune"):
            if not self._prune_due(before_ts, max_bytes):
                return None
            with self._write_transaction():
                return self._prune_locked(before_ts, max_bytes, now, batch)

    def _prune_due(self, before_ts: float | None, max_bytes: int | None) -> bool:
        first = self._conn.execute("SELECT seq, ts FROM records ORDER BY seq LIMIT 1").fetchone()
        if first is None or first[0] == self._conn.execute("SELECT MAX(seq) FROM records").fetchone()[0]:
            return False  # the newest record always stays
        return (before_ts is not None and first[1] < before_ts) or (max_bytes is not None and self.live_bytes() > max_bytes)

    def _prune_locked(self, before_ts: float | None, max_bytes: int | None, now: float, batch: int) -> PruneReport | None:
        conn = self._conn
        # Read again under the write lock: another process may have appended (or pruned) since _prune_due.
        first = conn.execute("SELECT seq, ts FROM records ORDER BY seq LIMIT 1").fetchone()
        head_seq = conn.execute("SELECT MAX(seq) FROM records").fetchone()[0]
        if first is None or first[0] == head_seq:
            return None
        live_before = live = self.live_bytes()
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
        cut = _Cut(conn, first[0], self._chain_start(first[0]))
        page_size: int = conn.execute("PRAGMA page_size").fetchone()[0]

        def excess() -> int:
            """Bytes over ``max_bytes`` once the summary is written too (it may need a page of its own)."""
            if max_bytes is None or not over_size:
                return 0
            return live + len(canonical_json(cut.summary(reason))) + page_size - max_bytes

        goal = age_goal  # grows with the size rule's estimates
        held: str | None = None
        while True:
            if excess() > 0:
                # Estimated bytes per byte of pages freed, as measured on this cut so far. Before any measurement,
                # assume the pages hold twice the estimate: a first step that falls short is corrected by the next.
                freed = live_before - live
                scale = cut.estimated / freed if cut.estimated and freed > 0 else 0.5
                goal = max(goal, self._seq_freeing(cut.end, math.ceil(excess() * scale), limit))
            target, held = cut.intact_through(min(goal, limit))
            end, runs = self._clear_of_runs(cut.end + 1, target)
            if end > cut.end:
                cut.take(end)
                live = self.live_bytes()
            if runs is not None and held is None:
                run_id, unfinished, reach = runs
                if not unfinished and excess() > 0 and reach <= limit:
                    goal = reach  # the size rule wants more: take finished runs whole rather than stop before them
                    continue
                held = f"run {run_id} has not ended" if unfinished else f"run {run_id} continues past the cut"
            if held is not None or end == limit or excess() <= 0:
                break
        more = False
        if age_goal <= end and excess() <= 0:
            held = None  # the rules got what they asked for; what stopped the cut went no further than that
        elif held is None and end == head_seq - 1:
            held = "the newest record is always kept"
        elif held is None:
            more = True  # stopped at the batch limit
        summary = None
        if cut.count:
            summary = self._insert(PRUNED, canonical_json(cut.summary(reason)), ts=now, lane=None, run_id=None)
            conn.execute(_NO_DELETE_TRIGGER)
            live = self.live_bytes()
        return PruneReport(cut.count, summary, held, more, live_before, live)

    def _chain_start(self, first_seq: int) -> str | None:
        """The ``prev_hash`` the first record must carry: genesis, or what the newest summary says it removed last."""
        if first_seq == 1:
            return GENESIS_HASH
        row = self._conn.execute("SELECT body FROM records WHERE lane IS NULL AND kind = ? ORDER BY seq DESC LIMIT 1", (PRUNED,))
        newest = row.fetchone()
        if newest is not None:
            with suppress(ValueError, TypeError, KeyError):
                body = json.loads(newest[0])
                if int(body["last_seq"]) == first_seq - 1:
                    return str(body["last_removed_hash"])
        return None

    def _seq_freeing(self, after: int, excess: int, limit: int) -> int:
        """The seq up to which the records after ``after`` are estimated to hold ``excess`` bytes (at most ``limit``)."""
        total = 0
        for seq, size in self._conn.execute(
            f"SELECT seq, {_SIZE_ESTIMATE} FROM records WHERE seq > ? AND seq <= ? ORDER BY seq", (after, limit)
        ):
            total += size
            if total >= excess:
                return int(seq)
        return limit

    def _clear_of_runs(self, start: int, end: int) -> tuple[int, tuple[str, bool, int] | None]:
        """Move ``end`` back until no run with a record in ``start..end`` is unfinished or has records after ``end``.

        Returns the new end and, if a run moved it, ``(run, unfinished, reach)``: an unfinished run if one moved it
        (else the last run that did), whether any was unfinished, and the last seq of those runs.
        """
        runs: tuple[str, bool, int] | None = None
        while end >= start:
            row = self._conn.execute(_OPEN_RUN_SQL, (start, end, end, RUN_END, RUN_RELEASED)).fetchone()
            if row is None:
                break
            end, run_id = row[0] - 1, row[1]
            last, ends = self._conn.execute(
                "SELECT MAX(seq), SUM(kind IN (?, ?)) FROM records WHERE run_id = ?", (RUN_END, RUN_RELEASED, run_id)
            ).fetchone()
            unfinished = not ends
            if runs is None:
                runs = (run_id, unfinished, last)
            elif not runs[1]:
                runs = (run_id, unfinished, max(last, runs[2]))
        return end, runs

    # ------------------------------------------------------------------------------------------ verification

    def verify(self) -> VerifyReport:
        """Walk the chain in seq order and report every record that was altered, removed or moved.

        Reads one consistent snapshot; appends may continue meanwhile. Raises JournalError if SQLite fails.
        """
        return _verify(self._conn)

    @staticmethod
    def verify_file(path: Path) -> VerifyReport:
        """``verify`` on a journal file opened read-only: needs no writer, no running daemon, no write access.

        SQLite needs the -shm file to read a WAL database; where it cannot create one (a read-only directory) and
        no -wal file exists (so no writer has the file open and everything is in the main file), the file is read
        as immutable instead. Raises FileNotFoundError, or JournalError if the file cannot be read as a journal.
        """
        if not path.exists():
            raise FileNotFoundError(f"no journal at {path}")
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        with _sqlite_errors("open"):
            conn = _connect_ro(uri)
            if conn is None and not Path(f"{path}-wal").exists():
                conn = _connect_ro(uri + "&immutable=1")
        if conn is None:
            raise JournalError(f"cannot open {path} read-only (a writer may hold its WAL; run as its owner)")
        try:
            return _verify(conn)
        finally:
            conn.close()


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
            f"SELECT {_COLUMNS} FROM records WHERE seq > ? AND seq <= ? ORDER BY seq", (self.end, target)
        ):
            seq, stored_prev = row[0], row[6]
            if seq != expected:
                return expected - 1, f"{_missing(expected, seq - 1)} missing; run `journal verify`"
            if stored_prev != prev_hash or not _hash_matches(row):
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
            f"SELECT {_COLUMNS} FROM records WHERE seq IN (SELECT MAX(seq) FROM records"
            f" WHERE seq BETWEEN ? AND ? AND kind IN ({kinds}) GROUP BY kind, lane)",
            (start, end, *CARRIED_KINDS),
        )
        copies = [_record(row).to_dict() for row in newest]
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


def _connect_ro(uri: str) -> sqlite3.Connection | None:
    """A read-only connection that has actually read the schema (opening alone is lazy), or None."""
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, sqlite3.OperationalError):  # cannot open this way; not a verdict on the content
            return None
        raise
    return conn


def _verify(conn: sqlite3.Connection) -> VerifyReport:
    problems: list[str] = []
    unlisted = 0

    def problem(text: str) -> None:
        nonlocal unlisted
        if len(problems) < MAX_PROBLEMS:
            problems.append(text)
        else:
            unlisted += 1

    count = 0
    first_seq, first_prev = 0, GENESIS_HASH
    prev_seq, prev_hash = 0, GENESIS_HASH
    summaries: list[tuple[int, str]] = []
    with _sqlite_errors("verify"):
        # One SELECT is one read transaction: the walk sees a single snapshot even while the daemon appends.
        for row in conn.execute(f"SELECT {_COLUMNS} FROM records ORDER BY seq"):
            seq, kind, body, stored_prev, stored_hash = row[0], row[4], row[5], row[6], row[7]
            count += 1
            if not _hash_matches(row):
                problem(f"record {seq} was altered (its hash does not match its content)")
            if count == 1:
                first_seq, first_prev = seq, stored_prev
                if seq > 1:  # a cut: whether retention made it is for the summaries to prove, after the walk
                    prev_seq, prev_hash = seq - 1, stored_prev
            if seq != prev_seq + 1:
                problem(f"{_missing(prev_seq + 1, seq - 1)} missing: chain broken between {prev_seq} and {seq}")
            elif stored_prev != prev_hash:
                follows = f"record {prev_seq}" if prev_seq else "the genesis hash"
                problem(
                    f"chain broken between {prev_seq} and {seq}: record {seq} does not follow {follows}"
                    " (rewritten, replaced or reordered)"
                )
            if kind == PRUNED:
                summaries.append((seq, body))
            prev_seq, prev_hash = seq, stored_hash
    _check_cuts(first_seq, first_prev, summaries, problem)
    if unlisted:
        problems.append(f"... and {unlisted} more problems")
    return VerifyReport(
        ok=not problems, count=count, head_seq=prev_seq, head_hash=prev_hash, problems=problems, first_seq=first_seq
    )


def _check_cuts(first_seq: int, first_prev: str, summaries: list[tuple[int, str]], problem: Callable[[str], None]) -> None:
    """Check the retention summaries against the chain that remains (the rules are in the module docstring)."""
    newest: tuple[int, int, str] | None = None  # (summary seq, last_seq, last_removed_hash) of the newest summary
    for seq, text in summaries:
        try:
            body = json.loads(text)
            start, end, count = int(body["first_seq"]), int(body["last_seq"]), int(body["count"])
            last_hash = str(body["last_removed_hash"])
            carried = list(body["carried"])
        except (ValueError, TypeError, KeyError):
            problem(f"record {seq} is not a well-formed {PRUNED} summary")
            continue
        if count != end - start + 1:
            problem(f"summary {seq} counts {count} records in {start}..{end}: some were missing before the cut")
        if end >= first_seq:
            problem(f"summary {seq} says records {start}..{end} were pruned, but record {first_seq} is present")
        if newest is not None and start != newest[1] + 1:
            problem(f"summary {seq} starts its cut at {start}, but summary {newest[0]} ended at {newest[1]}")
        for item in carried:
            try:
                fields = [item[key] for key in ("seq", "ts", "lane", "run_id", "kind", "body", "prev_hash", "hash")]
                intact = int(item["seq"]) <= end and _hash_matches((*fields[:5], canonical_json(fields[5]), *fields[6:]))
            except (ValueError, TypeError, KeyError):
                intact = False
            if not intact:
                problem(f"summary {seq} carries a copy of a record that does not match its hash")
        newest = (seq, end, last_hash)
    if first_seq <= 1:
        return
    if newest is None:
        problem(f"{_missing(1, first_seq - 1)} missing: chain broken between 0 and {first_seq} (no {PRUNED} summary)")
    elif newest[1] < first_seq - 1:
        problem(f"{_missing(newest[1] + 1, first_seq - 1)} missing: the newest summary ({newest[0]}) ends at {newest[1]}")
    elif newest[1] == first_seq - 1 and newest[2] != first_prev:
        problem(f"chain broken before {first_seq}: it does not follow the last record summary {newest[0]} removed")
