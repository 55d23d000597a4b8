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
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

from hybridops_daemon.journal.redact import Redactor

SCHEMA_VERSION = 1
GENESIS_HASH = "0" * 64
RUN_START = "run.start"
RUN_END = "run.end"
MAX_PROBLEMS = 100
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
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_run_id ON records (run_id);
CREATE INDEX IF NOT EXISTS records_lane_kind ON records (lane, kind);
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'journal records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'journal records are append-only'); END;
"""

_COLUMNS = "seq, ts, lane, run_id, kind, body, prev_hash, hash"

RunStatus = Literal["running", "succeeded", "failed"]


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
        stored = json.loads(text)  # what a reader gets back, and therefore what is hashed
        with _sqlite_errors("append"):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                # Read the head inside the write lock: another process may have appended since our last write.
                head = self._conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
                prev_seq, prev_hash = head if head else (0, GENESIS_HASH)
                seq = prev_seq + 1
                digest = record_hash(prev_hash, seq, ts, lane, run_id, kind, stored)
                self._conn.execute(
                    f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, ts, lane, run_id, kind, text, prev_hash, digest),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # a failed COMMIT may already have rolled back
                    self._conn.execute("ROLLBACK")
                raise
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
        """The newest record of ``kind`` (in ``lane`` if given), or None. Raises JournalError."""
        found = self.records(kinds=[kind], lane=lane, limit=1, newest_first=True)
        return found[0] if found else None

    def run_records(self, run_id: str) -> list[Record]:
        """Every record of one run, in seq order. Raises JournalError."""
        return self.records(run_id=run_id)

    def runs(self, lane: str | None = None, limit: int = 50) -> list[RunSummary]:
        """The newest ``limit`` runs (``run.start`` records), newest first, with their ``run.end`` if any.

        Relies on the runner appending ``run.start`` and ``run.end`` with ``run_id=``. Raises JournalError.
        """
        sql = (
            "SELECT s.run_id, s.lane, s.ts, s.body, e.ts, e.body FROM records s"
            " LEFT JOIN records e ON e.seq ="
            " (SELECT MAX(seq) FROM records WHERE run_id = s.run_id AND kind = ?)"
            " WHERE s.kind = ?"
        )
        params: list[Any] = [RUN_END, RUN_START]
        if lane is not None:
            sql += " AND s.lane = ?"
            params.append(lane)
        sql += " ORDER BY s.seq DESC LIMIT ?"
        params.append(limit)
        with _sqlite_errors("query"):
            rows = self._conn.execute(sql, params).fetchall()
        summaries: list[RunSummary] = []
        for run_id, run_lane, started_at, start_text, ended_at, end_text in rows:
            start = json.loads(start_text)
            end = json.loads(end_text) if end_text is not None else None
            status: RunStatus = "running" if end is None else ("succeeded" if end.get("ok") else "failed")
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
        """Run ids with a ``run.start`` but no ``run.end``, oldest first: what a restart must resume.

        Raises JournalError.
        """
        sql = (
            "SELECT s.run_id FROM records s WHERE s.kind = ? AND s.run_id IS NOT NULL AND NOT EXISTS"
            " (SELECT 1 FROM records e WHERE e.run_id = s.run_id AND e.kind = ?) ORDER BY s.seq"
        )
        with _sqlite_errors("query"):
            return [row[0] for row in self._conn.execute(sql, (RUN_START, RUN_END))]

    def size_bytes(self) -> int:
        """Bytes on disk: the database file plus its write-ahead log."""
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

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
    prev_seq, prev_hash = 0, GENESIS_HASH
    with _sqlite_errors("verify"):
        # One SELECT is one read transaction: the walk sees a single snapshot even while the daemon appends.
        for seq, ts, lane, run_id, kind, body, stored_prev, stored_hash in conn.execute(
            f"SELECT {_COLUMNS} FROM records ORDER BY seq"
        ):
            count += 1
            try:
                expected = record_hash(stored_prev, seq, ts, lane, run_id, kind, json.loads(body))
            except (ValueError, TypeError):
                expected = None  # unreadable body, or a column of the wrong type: altered either way
            if expected != stored_hash:
                problem(f"record {seq} was altered (its hash does not match its content)")
            if seq != prev_seq + 1:
                missing = f"record {seq - 1} is" if seq == prev_seq + 2 else f"records {prev_seq + 1}..{seq - 1} are"
                problem(f"{missing} missing: chain broken between {prev_seq} and {seq}")
            elif stored_prev != prev_hash:
                follows = f"record {prev_seq}" if prev_seq else "the genesis hash"
                problem(
                    f"chain broken between {prev_seq} and {seq}: record {seq} does not follow {follows}"
                    " (rewritten, replaced or reordered)"
                )
            prev_seq, prev_hash = seq, stored_hash
    if unlisted:
        problems.append(f"... and {unlisted} more problems")
    return VerifyReport(ok=not problems, count=count, head_seq=prev_seq, head_hash=prev_hash, problems=problems)
