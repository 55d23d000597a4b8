"""Verification: walk the hash chain and report every record that was altered, removed or moved.

A journal pruned by retention (``journal/retention.py``) no longer starts at record 1. ``verify`` proves it from its
first record onward when:

- the newest summary ends right before the first record, with the hash that record chains from;
- every summary is intact (it is an ordinary chained record), claims only records that are gone, and follows on
  from the summary before it (``first_seq`` = the previous one's ``last_seq + 1``).

A removal no summary explains, and an altered summary, are reported like any other break. A writer able to append a
forged summary could append anything else too: as for every record, the defences are a head hash kept elsewhere
(``expect_head``) and the node's signing key (``key``): see ``journal/signing.py``.

The peer edge keeps such a head: its journal records this one's as ``peer.head`` (``{"node", "seq", "hash"}``,
heard over the peer link), and ``peer_anchor`` reads the newest of them from the peer's file to anchor this walk.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hybridops_daemon.journal.records import (
    COLUMNS,
    GENESIS_HASH,
    PRUNED,
    JournalError,
    canonical_json,
    hash_matches,
    missing,
    sqlite_errors,
)
from hybridops_daemon.journal.signing import Anchor, SignatureCheck, parse_head

MAX_PROBLEMS = 100
PEER_HEAD = "peer.head"  # the peer's journal head as this node last recorded it (body: node, seq, hash)


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
    signed: int = 0  # records carrying a signature
    first_signed: int = 0  # the first of them (0: none); the records before it are covered by its signature
    signatures_checked: bool = False  # a key was given: every signature from first_signed on was checked
    anchored: bool = False  # an expected head was given and checked


@dataclass
class JournalCheck:
    """The running daemon's latest verification of its own journal, every ``every`` seconds: housekeeping writes
    it (``daemon/housekeeping.py``), the metrics and notifications read it.

    ``ok`` is None until the first verification ends. ``problem``: why it failed (the first problem found, or the
    error that stopped the walk). ``at``: when it started; it proved the journal as it was then. ``head``: the
    ``(seq, hash)`` it walked to, None when the walk did not finish.
    """

    every: float
    ok: bool | None = None
    problem: str | None = None
    at: float | None = None
    head: tuple[int, str] | None = None

    def note(self, report: VerifyReport | Exception, at: float) -> None:
        if isinstance(report, Exception):  # a verify that raised is a failed one, its error the problem
            self.ok, self.problem, self.head = False, str(report) or type(report).__name__, None
        else:
            more = " (and more: `hyopsctl journal verify` lists them)" if len(report.problems) > 1 else ""
            self.ok, self.head = report.ok, (report.head_seq, report.head_hash)
            self.problem = report.problems[0] + more if report.problems else None
        self.at = at


def verify_chain(
    conn: sqlite3.Connection, *, key: bytes | None = None, expect_head: tuple[int, str] | None = None
) -> VerifyReport:
    """Walk the chain in seq order and report every record that was altered, removed or moved; with ``key``, every
    signature missing or wrong; with ``expect_head``, whether that record is still there with that hash.

    Reads one consistent snapshot; appends may continue meanwhile. Raises JournalError if SQLite fails.
    """
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
    signatures = SignatureCheck(key)
    anchor = Anchor(*expect_head) if expect_head is not None else None
    anchored_hash: str | None = None
    with sqlite_errors("verify"):
        sig = "sig" if has_signature_column(conn) else "NULL"  # a journal from before signatures has no column
        # One SELECT is one read transaction: the walk sees a single snapshot even while the daemon appends.
        for row in conn.execute(f"SELECT {COLUMNS}, {sig} FROM records ORDER BY seq"):
            seq, kind, body, stored_prev, stored_hash = row[0], row[4], row[5], row[6], row[7]
            count += 1
            if not hash_matches(row[:8]):
                problem(f"record {seq} was altered (its hash does not match its content)")
            if count == 1:
                first_seq, first_prev = seq, stored_prev
                if seq > 1:  # a cut: whether retention made it is for the summaries to prove, after the walk
                    prev_seq, prev_hash = seq - 1, stored_prev
            if seq != prev_seq + 1:
                problem(f"{missing(prev_seq + 1, seq - 1)} missing: chain broken between {prev_seq} and {seq}")
            elif stored_prev != prev_hash:
                follows = f"record {prev_seq}" if prev_seq else "the genesis hash"
                problem(
                    f"chain broken between {prev_seq} and {seq}: record {seq} does not follow {follows}"
                    " (rewritten, replaced or reordered)"
                )
            if kind == PRUNED:
                summaries.append((seq, body))
            signatures.see(seq, stored_hash, row[8])
            if anchor is not None and seq == anchor.seq:
                anchored_hash = str(stored_hash)
            prev_seq, prev_hash = seq, stored_hash
    _check_cuts(first_seq, first_prev, summaries, problem)
    for text in signatures.finish() + (anchor.check(prev_seq, anchored_hash, first_seq, summaries) if anchor else []):
        problem(text)
    if unlisted:
        problems.append(f"... and {unlisted} more problems")
    return VerifyReport(
        ok=not problems,
        count=count,
        head_seq=prev_seq,
        head_hash=prev_hash,
        problems=problems,
        first_seq=first_seq,
        signed=signatures.signed,
        first_signed=signatures.first_signed,
        signatures_checked=key is not None,
        anchored=anchor is not None,
    )


def has_signature_column(conn: sqlite3.Connection) -> bool:
    return any(row[1] == "sig" for row in conn.execute("PRAGMA table_info(records)"))


def verify_file(path: Path, *, key: bytes | None = None, expect_head: tuple[int, str] | None = None) -> VerifyReport:
    """``verify`` on a journal file opened read-only: needs no writer, no running daemon, no write access.

    SQLite needs the -shm file to read a WAL database; where it cannot create one (a read-only directory) and
    no -wal file exists (so no writer has the file open and everything is in the main file), the file is read
    as immutable instead. Raises FileNotFoundError, or JournalError if the file cannot be read as a journal.
    """
    with readonly_connection(path) as conn:
        return verify_chain(conn, key=key, expect_head=expect_head)


def read_head(path: Path) -> tuple[int, str]:
    """The newest record's ``(seq, hash)`` (``(0, GENESIS_HASH)`` when empty), read-only as ``verify_file`` reads.

    No verdict on the chain: run ``verify_file`` for that. Raises FileNotFoundError or JournalError.
    """
    with readonly_connection(path) as conn, sqlite_errors("query"):
        return head_of(conn) or (0, GENESIS_HASH)


def head_of(conn: sqlite3.Connection, skip: str | None = None) -> tuple[int, str] | None:
    """The newest record's ``(seq, hash)``, passing over records of kind ``skip``; None when there is none.

    One walk down the primary key from the end: it stops at the first record that is not ``skip``."""
    row = conn.execute("SELECT seq, hash FROM records WHERE kind IS NOT ? ORDER BY seq DESC LIMIT 1", (skip,)).fetchone()
    return (int(row[0]), str(row[1])) if row else None


@dataclass(frozen=True, slots=True)
class PeerAnchor:
    """The newest ``peer.head`` of ``node`` in the peer's journal: the head the peer last saw, and where it says so."""

    node: str  # whose head it is
    seq: int
    hash: str
    recorded_by: str | None  # the node that wrote the peer's journal (its newest daemon.start), if it says
    record: int  # the peer.head record's seq in the peer's journal


def peer_anchor(path: Path, node: str) -> PeerAnchor | None:
    """The newest ``peer.head`` record naming ``node`` in the journal at ``path`` (read-only), or None.

    Raises FileNotFoundError, or JournalError if the file is not a journal or that record is malformed."""
    with readonly_connection(path) as conn, sqlite_errors("query"):
        rows = conn.execute("SELECT seq, body FROM records WHERE kind = ? ORDER BY seq DESC", (PEER_HEAD,))
        for seq, text in rows:  # one peer per edge, so the first record is nearly always the one
            body = _body(seq, text)
            if body.get("node") != node:
                continue
            try:
                head = parse_head(f"{body['seq']}:{body['hash']}")
            except (KeyError, ValueError):
                raise JournalError(f"record {seq} is not a well-formed {PEER_HEAD} (node, seq, hash)") from None
            return PeerAnchor(node, *head, _node_of(conn), int(seq))
    return None


def journal_node(path: Path) -> str | None:
    """The node that writes the journal at ``path``, as its newest ``daemon.start`` says (read-only), or None."""
    with readonly_connection(path) as conn, sqlite_errors("query"):
        return _node_of(conn)


def _node_of(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT seq, body FROM records WHERE kind = 'daemon.start' ORDER BY seq DESC LIMIT 1").fetchone()
    if row is not None:
        start = _body(*row)
    else:  # retention cut every start record: the newest summary that carried one
        carried = newest_carried(conn, "daemon.start")
        start = carried["body"] if carried is not None else {}
    node = start.get("node")
    return node if isinstance(node, str) else None


def newest_carried(conn: sqlite3.Connection, kind: str, lane: str | None = None) -> dict[str, Any] | None:
    """The newest copy of a ``kind`` record (in ``lane`` if given) that a retention summary carries, or None."""
    best: dict[str, Any] | None = None
    # Summaries are few (one per prune): reading them all is cheap.
    for (body,) in conn.execute("SELECT body FROM records WHERE lane IS NULL AND kind = ?", (PRUNED,)):
        for item in json.loads(body).get("carried", ()):
            wanted = item["kind"] == kind and (lane is None or item["lane"] == lane)
            if wanted and (best is None or item["seq"] > best["seq"]):
                best = item
    return best


def _body(seq: int, text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise JournalError(f"record {seq}'s body is not a JSON object")
    return body


@contextmanager
def readonly_connection(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the journal at ``path``, opened as ``verify_file`` says; closed on leaving.

    Raises FileNotFoundError, or JournalError if it cannot be opened read-only."""
    if not path.exists():
        raise FileNotFoundError(f"no journal at {path}")
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    with sqlite_errors("open"):
        conn = _connect_ro(uri)
        if conn is None and not Path(f"{path}-wal").exists():
            conn = _connect_ro(uri + "&immutable=1")
    if conn is None:
        raise JournalError(f"cannot open {path} read-only (a writer may hold its WAL; run as its owner)")
    try:
        yield conn
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
                intact = int(item["seq"]) <= end and hash_matches((*fields[:5], canonical_json(fields[5]), *fields[6:]))
            except (ValueError, TypeError, KeyError):
                intact = False
            if not intact:
                problem(f"summary {seq} carries a copy of a record that does not match its hash")
        newest = (seq, end, last_hash)
    if first_seq <= 1:
        return
    if newest is None:
        problem(f"{missing(1, first_seq - 1)} missing: chain broken between 0 and {first_seq} (no {PRUNED} summary)")
    elif newest[1] < first_seq - 1:
        problem(f"{missing(newest[1] + 1, first_seq - 1)} missing: the newest summary ({newest[0]}) ends at {newest[1]}")
    elif newest[1] == first_seq - 1 and newest[2] != first_prev:
        problem(f"chain broken before {first_seq}: it does not follow the last record summary {newest[0]} removed")
