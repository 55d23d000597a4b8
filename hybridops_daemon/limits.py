"""Input limits: every bound on outside input, with its default, and the bounded JSON reader all readers use.

Crossing a bound raises ``InputRejected`` naming the bound and the value; each reader turns it into its own error
(an error reply, a 400, a malformed-payload count, exit 2 with file:line). Python's ``json`` recurses once per
nesting level, so a deep ``[[[[...`` would raise RecursionError from inside the parser: ``loads`` checks depth,
entries per container and number lengths first, without recursing, and parses only input that passed.
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

MAX_CONFIG_BYTES: Final = 1024 * KIB  # a daemon config or a profile; ours are a few KiB
MAX_YAML_DEPTH: Final = 32  # nesting of mappings and sequences; PyYAML's composer recurses per level
MAX_YAML_ALIASES: Final = 100  # `*name` references in one file
MAX_YAML_NODES: Final = 100_000  # nodes once aliases are expanded: a "billion laughs" file is refused here, not built


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
PEER_HEAD: Final = JsonLimits(max_bytes=1 * KIB, max_depth=2, max_items=16)  # {"node", "seq", "hash"}: ~130 bytes
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


# a JSON string, or an unterminated one running to the end: one left-to-right pass, never backtracking (possessive)
_STRING: Final = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"?', re.DOTALL)
_SQUARE: Final = bytes.maketrans(b"{}", b"[]")  # one kind of bracket: mismatched pairs are json's error to report
_NOT_STRUCTURE: Final = bytes(set(range(256)) - set(b"[]{},"))
_INNERMOST: Final = re.compile(rb"\[,*\]")  # a container with no container inside, in the skeleton
_ZEROS: Final = bytes.maketrans(b"123456789", b"000000000")
_OPEN, _CLOSE = b"[]"


def check_json(data: bytes, limits: JsonLimits, what: str) -> None:
    """Raise InputRejected if ``data`` (JSON text, valid or not) is over any of ``limits``. Never recurses.

    Cheap for ordinary input: counts done in C rule out most documents at once; the rest is reduced to its skeleton
    of brackets and commas and peeled one innermost level at a time (C again). Only a skeleton that does not peel
    (deeper than the bound, or not JSON) is walked byte by byte.
    """
    if len(data) > limits.max_bytes:
        raise InputRejected(what, "size in bytes", limits.max_bytes, len(data))
    max_digits = sys.get_int_max_str_digits() or len(data)  # 0: conversion unlimited
    may_nest = data.count(b"[") + data.count(b"{") > limits.max_depth
    may_crowd = data.count(b",") >= limits.max_items
    may_overflow = len(data) > max_digits and _long_number(data, max_digits)
    if not (may_nest or may_crowd or may_overflow):
        return
    bare = _outside_strings(data)  # brackets, commas and digits inside strings are text
    if may_overflow and _long_number(bare, max_digits):
        # int() refuses these with a ValueError that json does not turn into a syntax error
        raise InputRejected(what, "digits in a number", max_digits)
    skeleton = bare.translate(_SQUARE, _NOT_STRUCTURE)
    if not _peels(skeleton, limits, what, count_entries=may_crowd):
        _walk(skeleton, limits, what)


def _outside_strings(data: bytes) -> bytes:
    if b"\\" not in data:  # no escaped quote: every quote opens or closes a string
        return b"".join(data.split(b'"')[::2])
    return _STRING.sub(b"", data)


def _long_number(data: bytes, max_digits: int) -> bool:
    # every digit made "0", then one substring search: far cheaper than a regex trying each position
    return b"0" * (max_digits + 1) in data.translate(_ZEROS)


def _peels(skeleton: bytes, limits: JsonLimits, what: str, *, count_entries: bool) -> bool:
    """True if the skeleton's containers all peel away within ``max_depth`` rounds, each round removing exactly the
    innermost level; their entries (commas + 1) checked on the way when ``count_entries``."""
    for _ in range(limits.max_depth):
        if b"[" not in skeleton and b"]" not in skeleton:
            return True
        if count_entries:
            widest = max(map(len, _INNERMOST.findall(skeleton)), default=2) - 1  # "[,,]": 3 entries
            if widest > limits.max_items:
                raise InputRejected(what, "entries in an array or object", limits.max_items)
        peeled = _INNERMOST.sub(b"", skeleton)
        if len(peeled) == len(skeleton):
            return False  # unbalanced: not JSON
        skeleton = peeled
    return b"[" not in skeleton and b"]" not in skeleton


def _walk(skeleton: bytes, limits: JsonLimits, what: str) -> None:
    """The exact check, byte by byte: depth, and entries of each array or object (commas + 1)."""
    entries: list[int] = []  # per open container: its entries so far
    for char in skeleton:
        if char == _OPEN:
            if len(entries) == limits.max_depth:
                raise InputRejected(what, "nesting depth", limits.max_depth)
            entries.append(1)
        elif char == _CLOSE:
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
