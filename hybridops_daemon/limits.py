"""Input limits: every bound on outside input, with its default, and the bounded JSON reader all readers use.

Crossing a bound raises ``InputRejected`` naming the bound and the value; each reader turns it into its own error
(an error reply, a 400, a malformed-payload count, exit 2 with file:line). Python's ``json`` recurses once per
nesting level, so a deep ``[[[[...`` would raise RecursionError from inside the parser: ``loads`` checks depth,
container sizes and number lengths with a flat scan first, and parses only input that passed.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Any, Final

KIB: Final = 1024
MAX_JSON_DEPTH: Final = 32  # far below the interpreter's recursion limit (1000), far above any document of ours
MAX_JSON_ITEMS: Final = 10_000  # entries in any one array or object

MAX_TRACE_LINE_BYTES: Final = 64 * KIB  # a trace line is ~60 bytes; a file without newlines is refused at this
MAX_TRACE_SAMPLES: Final = 20_000_000  # ~500 MB of columns: a year of 10-second samples of six signals
MAX_TRACE_NAMES: Final = 10_000  # distinct signal and edge names in one trace
MAX_PEER_SIGNALS: Final = 1_000  # signals in one peer summary
MAX_WEBHOOK_ALERTS: Final = 5_000  # alerts in one Alertmanager webhook


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """Bounds for one kind of JSON document."""

    max_bytes: int
    max_depth: int = MAX_JSON_DEPTH
    max_items: int = MAX_JSON_ITEMS


CONTROL_REQUEST: Final = JsonLimits(max_bytes=64 * KIB, max_depth=8, max_items=100)
CONTROL_REPLY: Final = JsonLimits(max_bytes=64 * KIB * KIB, max_items=1_000_000)  # a whole run's records
MQTT_PAYLOAD: Final = JsonLimits(max_bytes=64 * KIB, max_depth=8, max_items=100)
PEER_SUMMARY: Final = JsonLimits(max_bytes=256 * KIB, max_depth=8)
TRACE_LINE: Final = JsonLimits(max_bytes=MAX_TRACE_LINE_BYTES, max_depth=8, max_items=1_000)
WEBHOOK: Final = JsonLimits(max_bytes=1024 * KIB)  # the receiver's max_body_bytes (config) replaces max_bytes


class InputRejected(Exception):
    """Input over one of the bounds. Deliberately not a ValueError: no reader may mistake it for a syntax error."""

    def __init__(self, what: str, bound: str, limit: int, value: int | None = None) -> None:
        shown = "" if value is None else f" {value}"
        super().__init__(f"{what}: {bound}{shown} over the limit of {limit}")
        self.what = what
        self.bound = bound
        self.limit = limit
        self.value = value


def check_size(size: int, limit: int, what: str) -> None:
    if size > limit:
        raise InputRejected(what, "size in bytes", limit, size)


def check_count(count: int, limit: int, what: str, bound: str) -> None:
    if count > limit:
        raise InputRejected(what, bound, limit, count)


# a JSON string, or an unterminated one running to the end: one left-to-right pass, never backtracking (possessive)
_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*+"?', re.DOTALL)
_STRUCTURE: Final = re.compile(rb"[\[\]{},]")
_OPEN: Final = frozenset(b"[{")
_CLOSE: Final = frozenset(b"]}")


def check_json(data: bytes, limits: JsonLimits, what: str) -> None:
    """Raise InputRejected if ``data`` (JSON text, valid or not) is over any of ``limits``. Never recurses.

    Cheap for ordinary input: when the whole text has too few brackets, commas and digits to break a bound, counts
    done in C decide it; only otherwise are strings blanked out and the structure walked.
    """
    check_size(len(data), limits.max_bytes, what)
    max_digits = sys.get_int_max_str_digits() or len(data)  # 0: conversion unlimited
    long_number = re.compile(rb"[0-9]{%d}" % (max_digits + 1))
    may_nest = data.count(b"[") + data.count(b"{") > limits.max_depth
    may_crowd = data.count(b",") >= limits.max_items
    may_overflow = len(data) > max_digits and long_number.search(data) is not None
    if not (may_nest or may_crowd or may_overflow):
        return
    bare = _STRING.sub(b'""', data)  # brackets, commas and digits inside strings are text
    if may_overflow and long_number.search(bare):
        # int() refuses these with a ValueError that json does not turn into a syntax error
        raise InputRejected(what, "digits in a number", max_digits)
    entries: list[int] = []  # per open container: its entries so far (commas + 1)
    for match in _STRUCTURE.finditer(bare):
        char = bare[match.start()]
        if char in _OPEN:
            if len(entries) == limits.max_depth:
                raise InputRejected(what, "nesting depth", limits.max_depth)
            entries.append(1)
        elif char in _CLOSE:
            if entries:
                entries.pop()
        elif entries:
            entries[-1] += 1
            if entries[-1] > limits.max_items:
                raise InputRejected(what, "entries in an array or object", limits.max_items)


def loads(data: bytes, limits: JsonLimits, what: str, **options: Any) -> Any:
    """``json.loads`` of UTF-8 input that passed ``check_json``. Raises InputRejected, UnicodeDecodeError, or what
    json.loads raises for malformed text (JSONDecodeError) or ``options``' hooks raise."""
    check_json(data, limits, what)
    return json.loads(data.decode("utf-8"), **options)
