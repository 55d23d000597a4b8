"""The journal's records and the hash chain they form: what the store, retention and verification share.

Every record's ``hash`` is ``sha256_hex(prev_hash + "\\n" + canonical(envelope))`` where ``envelope`` is
``{"seq", "ts", "lane", "run_id", "kind", "body"}`` and ``canonical`` is ``json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False)``; the first record's ``prev_hash`` is 64 zeros. An auditor can recompute
the chain with any SQLite reader and twenty lines of code. The ``sig`` column beside ``hash`` holds the record's
signature when the node has a journal key (``journal/signing.py``); it is not part of the hash.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hybridops_daemon.journal.signing import sign

GENESIS_HASH = "0" * 64
RUN_START = "run.start"
RUN_END = "run.end"
# This node stopped working on a run because it lost the lane's leadership: over here, not over (the next leader ends it).
RUN_RELEASED = "run.released"
PRUNED = "journal.pruned"

COLUMNS = "seq, ts, lane, run_id, kind, body, prev_hash, hash"

# Part of the schema; retention drops it and recreates it inside the transaction of its cut.
NO_DELETE_TRIGGER = """CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'journal records are append-only'); END;"""


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


def record_from_row(row: tuple[Any, ...]) -> Record:
    seq, ts, lane, run_id, kind, body, prev_hash, hash_ = row
    return Record(seq, ts, lane, run_id, kind, json.loads(body), prev_hash, hash_)


def hash_matches(row: tuple[Any, ...]) -> bool:
    """Whether a stored row's hash is the hash of its content (an unreadable body or a mistyped column is not)."""
    seq, ts, lane, run_id, kind, body, stored_prev, stored_hash = row
    try:
        expected = record_hash(stored_prev, seq, ts, lane, run_id, kind, json.loads(body))
    except (ValueError, TypeError):
        return False
    return expected == str(stored_hash)


def missing(first: int, last: int) -> str:
    return f"record {first} is" if first == last else f"records {first}..{last} are"


@contextmanager
def sqlite_errors(action: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise JournalError(f"journal {action} failed: {exc}") from exc


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One IMMEDIATE transaction: committed whole or rolled back, and no other process writes meanwhile."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # a failed COMMIT may already have rolled back
            conn.execute("ROLLBACK")
        raise


def insert(
    conn: sqlite3.Connection,
    kind: str,
    text: str,
    *,
    ts: float,
    lane: str | None,
    run_id: str | None,
    key: bytes | None = None,
) -> Record:
    """Chain a serialised record onto the head, signed with ``key`` if given. Call inside ``write_transaction``."""
    stored = json.loads(text)  # what a reader gets back, and therefore what is hashed
    # Read the head inside the write lock: another process may have appended since our last write.
    head = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    prev_seq, prev_hash = head if head else (0, GENESIS_HASH)
    seq = prev_seq + 1
    digest = record_hash(prev_hash, seq, ts, lane, run_id, kind, stored)
    conn.execute(
        f"INSERT INTO records ({COLUMNS}, sig) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, ts, lane, run_id, kind, text, prev_hash, digest, sign(key, digest) if key is not None else None),
    )
    return Record(seq, ts, lane, run_id, kind, stored, prev_hash, digest)
