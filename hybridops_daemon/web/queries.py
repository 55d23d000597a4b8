"""The journal view's own reads: the decision timeline (filtered, paged by seq) and the decisions around a run's.

They run on the event loop through a read-only connection of the view's own (the daemon's connection stays the
daemon's), and every query is bounded: a page is ``LIMIT n+1`` records walked from a seq cursor, never an OFFSET, so
the thousandth page of a 100,000-record journal costs what the first does.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hybridops_daemon.journal.records import COLUMNS, Record, record_from_row, sqlite_errors
from hybridops_daemon.policy.types import DecisionKind, Trigger

PAGE_DEFAULT = 50
PAGE_MAX = 200
PARAM_CHARS = 64  # any query parameter longer than this is refused, not truncated
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
# The chart's window either side of a decision, and how many decisions it reads at most.
AROUND_S = 600.0
AROUND_MAX = 300


class BadQuery(ValueError):
    """A query parameter out of its range: answered 400 with this message."""


def valid_name(value: str) -> bool:
    """A lane or run id as the daemon makes them; anything else cannot be in the journal and is refused early."""
    return bool(_NAME.match(value))


@dataclass(frozen=True, slots=True)
class TimelineFilter:
    lane: str | None = None
    kind: str | None = None
    trigger: str | None = None
    since: float | None = None
    until: float | None = None
    before: int | None = None  # the cursor: records with a smaller seq (older)
    limit: int = PAGE_DEFAULT

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> TimelineFilter:
        """From the request's query string; raises BadQuery for an unknown or out-of-range value."""
        for key, value in query.items():
            if len(value) > PARAM_CHARS:
                raise BadQuery(f"{key}: longer than {PARAM_CHARS} characters")
        args = {key: value for key, value in query.items() if value != ""}  # an empty form field: no filter
        lane = args.get("lane")
        if lane is not None and not valid_name(lane):
            raise BadQuery("lane: not a lane name")
        kind = _choice(args, "kind", [k.value for k in DecisionKind])
        trigger = _choice(args, "trigger", [t.value for t in Trigger])
        return cls(
            lane=lane,
            kind=kind,
            trigger=trigger,
            since=_time(args, "since"),
            until=_time(args, "until"),
            before=_int(args, "before", 1, 2**62),
            limit=_int(args, "limit", 1, PAGE_MAX) or PAGE_DEFAULT,
        )

    def query(self, **changes: Any) -> dict[str, str]:
        """This filter as query parameters (for the paging links), with ``changes`` applied."""
        out = {
            "lane": self.lane,
            "kind": self.kind,
            "trigger": self.trigger,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "before": self.before,
            "limit": self.limit if self.limit != PAGE_DEFAULT else None,
        }
        out.update(changes)
        return {key: str(value) for key, value in out.items() if value is not None}


def _choice(args: Mapping[str, str], key: str, allowed: list[str]) -> str | None:
    value = args.get(key)
    if value is not None and value not in allowed:
        raise BadQuery(f"{key}: one of {', '.join(allowed)}")
    return value


def _int(args: Mapping[str, str], key: str, low: int, high: int) -> int | None:
    text = args.get(key)
    if text is None:
        return None
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadQuery(f"{key}: a whole number from {low} to {high}")
    return int(text)


def _time(args: Mapping[str, str], key: str) -> float | None:
    """A UTC time as a browser's datetime-local field sends it (``2024-05-01T12:30``), or epoch seconds."""
    text = args.get(key)
    if text is None:
        return None
    try:
        if text.replace(".", "", 1).isdigit():
            return float(text)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadQuery(f"{key}: a time like 2024-05-01T12:30 (UTC) or epoch seconds") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True, slots=True)
class TimelinePage:
    records: list[Record]
    older: int | None  # the cursor of the next (older) page, None on the last


class JournalReader:
    """The view's queries on a read-only connection (``readonly_connection``), used on the event loop."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _rows(self, sql: str, params: list[Any]) -> list[Record]:
        with sqlite_errors("query"):
            return [record_from_row(row) for row in self._conn.execute(sql, params)]

    def timeline(self, flt: TimelineFilter) -> TimelinePage:
        """One page of decision records, newest first."""
        where, params = ["kind = 'decision'"], []
        for clause, value in (
            ("lane = ?", flt.lane),
            ("json_extract(body, '$.kind') = ?", flt.kind),
            ("json_extract(body, '$.trigger') = ?", flt.trigger),
            ("ts >= ?", flt.since),
            ("ts < ?", flt.until),
            ("seq < ?", flt.before),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = f"SELECT {COLUMNS} FROM records WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
        records = self._rows(sql, [*params, flt.limit + 1])  # one more: is there an older page?
        older = records[flt.limit - 1].seq if len(records) > flt.limit else None
        return TimelinePage(records[: flt.limit], older)

    def decisions_around(self, lane: str | None, ts: float) -> list[Record]:
        """The lane's decision records within ``AROUND_S`` of ``ts``, oldest first: the chart's points."""
        sql = (
            f"SELECT {COLUMNS} FROM records WHERE kind = 'decision' AND lane IS ? AND ts >= ? AND ts <= ?"
            " ORDER BY seq LIMIT ?"
        )
        return self._rows(sql, [lane, ts - AROUND_S, ts + AROUND_S, AROUND_MAX])
