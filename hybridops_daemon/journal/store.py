"""The journal: an append-only, hash-chained SQLite file, one per node.

The record format and its hash chain are in ``journal/records.py``; retention (``prune``) in ``journal/retention.py``;
verification in ``journal/verify.py``; signatures and head anchors in ``journal/signing.py``. This module opens the
file, appends (redacting first, signing when given a key) and answers queries.

SQLite runs synchronously in the caller's thread on purpose. The daemon calls ``append`` from its event loop thread:
a record is committed whole (WAL + ``synchronous=FULL``: durable when ``append`` returns) or not at all, and no
cancellation or shutdown can interrupt it half-way, which an executor thread could not promise. An append costs one
fsync, well under the loop's time budget.

Triggers make the table append-only at the SQL level; someone who drops them can rewrite rows, and ``verify`` finds
that from the hash chain.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from hybridops_daemon.journal import retention
from hybridops_daemon.journal.records import (
    COLUMNS,
    GENESIS_HASH,
    NO_DELETE_TRIGGER,
    PRUNED,
    RUN_END,
    RUN_RELEASED,
    RUN_START,
    JournalError,
    Record,
    canonical_json,
    insert,
    record_from_row,
    record_hash,
    sqlite_errors,
    write_transaction,
)
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.journal.retention import CARRIED_KINDS, PRUNE_BATCH, PruneReport
from hybridops_daemon.journal.verify import (
    MAX_PROBLEMS,
    PEER_HEAD,
    VerifyReport,
    has_signature_column,
    head_of,
    newest_carried,
    read_head,
    verify_chain,
    verify_file,
)

# The journal's public names, wherever they are defined: callers import them from the store.
__all__ = [
    "BUSY_TIMEOUT_S",
    "CARRIED_KINDS",
    "GENESIS_HASH",
    "MAX_PROBLEMS",
    "PEER_HEAD",
    "PRUNED",
    "PRUNE_BATCH",
    "RUN_END",
    "RUN_RELEASED",
    "RUN_START",
    "SCHEMA_VERSION",
    "Journal",
    "JournalError",
    "PruneReport",
    "Record",
    "RunStatus",
    "RunSummary",
    "VerifyReport",
    "canonical_json",
    "record_hash",
]

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 5.0  # how long an append waits for another process's write transaction before failing

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
    hash TEXT NOT NULL,
    sig TEXT
);
CREATE INDEX IF NOT EXISTS records_run_id ON records (run_id);
-- (lane, kind, ts): a lane's records of a kind, and those in a time window (the decisions around a run, on its web
-- page: 20 ms on 100,000 records with (lane, kind) alone, which it replaces).
DROP INDEX IF EXISTS records_lane_kind;
CREATE INDEX IF NOT EXISTS records_lane_kind_ts ON records (lane, kind, ts);
-- The newest records of a kind across lanes (the runs list of `journal list` and the web overview): without it, a
-- walk back through every record (20 ms on 100,000 records, on the event loop). (kind) holds seq as the rowid.
CREATE INDEX IF NOT EXISTS records_kind ON records (kind);
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'journal records are append-only'); END;
{NO_DELETE_TRIGGER}
"""

RunStatus = Literal["running", "succeeded", "failed", "released"]


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


class Journal:
    """Append-only, hash-chained record store. Use ``Journal.open``; one instance per process, one thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path, redactor: Redactor | None, key: bytes | None = None) -> None:
        self._conn = conn
        self.path = path
        self._redactor = redactor
        self._key = key  # signs every record appended (journal/signing.py); never written anywhere

    # ------------------------------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, path: Path, redactor: Redactor | None = None, *, key: bytes | None = None) -> Journal:
        """Open or create the journal at ``path``: WAL, ``synchronous=FULL``, schema created if missing.

        With ``key``, every record appended is signed with it (``journal/signing.py``). A journal written before
        signatures existed gains the ``sig`` column here (its old records stay unsigned and verify as before).

        A new file is created with mode 0640 (its -wal and -shm files inherit that mode). Idempotent and safe
        against another process opening the same file at the same moment. Raises JournalError if the file is not a
        journal, has another schema version, or cannot be put in WAL mode.
        """
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        with suppress(FileExistsError):  # SQLite would create it with the umask's mode, often world-readable
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
        with sqlite_errors("open"):
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
                _add_signature_column(conn)
            except BaseException:
                conn.close()
                raise
        return cls(conn, path, redactor, key)

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
        with sqlite_errors("append"), write_transaction(self._conn):
            return insert(self._conn, kind, text, ts=ts, lane=lane, run_id=run_id, key=self._key)

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
        sql = f"SELECT {COLUMNS} FROM records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC" if newest_first else " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with sqlite_errors("query"):
            return [record_from_row(row) for row in self._conn.execute(sql, params)]

    def last(self, kind: str, lane: str | None = None) -> Record | None:
        """The newest record of ``kind`` (in ``lane`` if given), or None. Raises JournalError.

        If retention removed every such record, the copy a ``journal.pruned`` summary carries of the newest one
        (kinds in ``CARRIED_KINDS``; see ``journal/retention.py``): the record as it was written, hash included.
        """
        found = self.records(kinds=[kind], lane=lane, limit=1, newest_first=True)
        if found:
            return found[0]
        with sqlite_errors("query"):  # this runs only when no live record answers: a start-up path
            carried = newest_carried(self._conn, kind, lane)
        return Record(**carried) if carried is not None else None

    def head(self, *, skip: str | None = None) -> tuple[int, str] | None:
        """The newest record's ``(seq, hash)``, passing over records of kind ``skip``; None if there is none.
        An indexed read from the end (``verify.head_of``), cheap enough to ask every second. Raises JournalError."""
        with sqlite_errors("query"):
            return head_of(self._conn, skip)

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
        with sqlite_errors("query"):
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
        with sqlite_errors("query"):
            return [row[0] for row in self._conn.execute(sql, (RUN_START, RUN_END, RUN_RELEASED, RUN_START))]

    def size_bytes(self) -> int:
        """Bytes on disk: the database file plus its write-ahead log."""
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    def live_bytes(self) -> int:
        """Bytes the records and their indexes occupy: ``retention.live_bytes``. Raises JournalError."""
        return retention.live_bytes(self._conn)

    # ------------------------------------------------------------------------------------------ retention

    def prune(
        self,
        *,
        before_ts: float | None = None,
        max_bytes: int | None = None,
        now: float,
        batch: int = PRUNE_BATCH,
    ) -> PruneReport | None:
        """Remove the oldest records and account for them in a ``journal.pruned`` summary: ``retention.prune``."""
        return retention.prune(self._conn, before_ts=before_ts, max_bytes=max_bytes, now=now, batch=batch, key=self._key)

    # ------------------------------------------------------------------------------------------ verification

    def verify(self, *, expect_head: tuple[int, str] | None = None) -> VerifyReport:
        """Walk the chain and report every record that was altered, removed or moved, checking signatures with this
        journal's key (if it has one) and that the chain still holds ``expect_head``: ``verify.verify_chain``."""
        return verify_chain(self._conn, key=self._key, expect_head=expect_head)

    def verify_readonly(self) -> VerifyReport:
        """``verify`` through a read-only connection of its own: safe to call from another thread."""
        return verify_file(self.path, key=self._key)

    @staticmethod
    def verify_file(path: Path, *, key: bytes | None = None, expect_head: tuple[int, str] | None = None) -> VerifyReport:
        """``verify`` on a journal file opened read-only, without a writer: ``verify.verify_file``."""
        return verify_file(path, key=key, expect_head=expect_head)

    @staticmethod
    def head_of_file(path: Path) -> tuple[int, str]:
        """The newest record's ``(seq, hash)`` of a journal file opened read-only (no verdict on the chain)."""
        return read_head(path)


def _add_signature_column(conn: sqlite3.Connection) -> None:
    """The migration to signed records: a ``sig`` column beside ``hash``, NULL for the records already there."""
    with write_transaction(conn):
        if not has_signature_column(conn):
            conn.execute("ALTER TABLE records ADD COLUMN sig TEXT")
