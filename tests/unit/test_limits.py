"""The input limits module: the bounded JSON reader refuses what would exhaust the parser, and only that."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridops_daemon.limits import InputRejected, JsonLimits, check_json, loads

SMALL = JsonLimits(max_bytes=64 * 1024, max_depth=4, max_items=3)


def rejected(data: bytes, limits: JsonLimits = SMALL) -> InputRejected:
    with pytest.raises(InputRejected) as caught:
        loads(data, limits, "doc")
    return caught.value


def test_a_python_json_parse_of_deep_nesting_overflows_the_stack() -> None:
    """Why the scan exists."""
    with pytest.raises(RecursionError):
        json.loads("[" * 100_000 + "]" * 100_000)


def test_deep_nesting_is_refused_before_parsing_naming_the_bound() -> None:
    error = rejected(b"[" * 100_000 + b"]" * 100_000, JsonLimits(max_bytes=1 << 20))
    assert str(error) == "doc: nesting depth over the limit of 32"
    assert (error.bound, error.limit) == ("nesting depth", 32)


def test_depth_and_entries_at_the_bound_pass() -> None:
    assert loads(b'{"a": [[[1, 2, 3]]]}', SMALL, "doc") == {"a": [[[1, 2, 3]]]}
    assert rejected(b'{"a": [[[[1]]]]}').bound == "nesting depth"
    assert rejected(b"[1, 2, [3], 4]").bound == "entries in an array or object"
    assert rejected(b'{"a": 1, "b": 2, "c": 3, "d": 4}').bound == "entries in an array or object"


def test_brackets_commas_and_digits_inside_strings_are_text() -> None:
    text = json.dumps(["[[[[[{{{{{,,,,,", 'a \\" [[[[[ ",,,,', "9" * 5000])
    assert loads(text.encode(), SMALL, "doc") == json.loads(text)


def test_size_is_checked_first() -> None:
    error = rejected(b" " * 70_000)
    assert str(error) == "doc: size in bytes 70000 over the limit of 65536"
    assert error.value == 70_000


def test_a_number_too_long_for_int_is_refused_not_a_value_error() -> None:
    digits = sys.get_int_max_str_digits()
    assert rejected(b"[" + b"7" * (digits + 1) + b"]").bound == "digits in a number"
    assert loads(b"[" + b"7" * digits + b"]", SMALL, "doc") == [int("7" * digits)]


def test_an_unterminated_string_of_escaped_quotes_scans_in_linear_time() -> None:
    check_json(b'["' + b'\\"[' * 20_000, JsonLimits(max_bytes=1 << 20), "doc")  # a quadratic scan would not finish


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=30,
)


def depth(doc: Any) -> int:
    if isinstance(doc, list):
        return 1 + max(map(depth, doc), default=0)
    if isinstance(doc, dict):
        return 1 + max(map(depth, doc.values()), default=0)
    return 0


def widest(doc: Any) -> int:
    children = doc if isinstance(doc, list) else list(doc.values()) if isinstance(doc, dict) else []
    return max([len(children), *map(widest, children)])


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_documents_are_refused_exactly_when_over_a_bound(doc: Any) -> None:
    data = json.dumps(doc).encode()
    over = depth(doc) > SMALL.max_depth or widest(doc) > SMALL.max_items
    if over:
        with pytest.raises(InputRejected):
            loads(data, SMALL, "doc")
    else:
        assert loads(data, SMALL, "doc") == json.loads(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000) | st.text(alphabet='[]{},"\\:1 ', max_size=2000).map(str.encode))
def test_any_bytes_raise_only_the_documented_errors(data: bytes) -> None:
    with contextlib.suppress(InputRejected, ValueError):  # ValueError: JSONDecodeError, UnicodeDecodeError
        loads(data, SMALL, "doc")


DEPTH_ONLY = JsonLimits(max_bytes=1 << 20, max_depth=4, max_items=1_000_000)
TRICKY_TEXT = st.text(alphabet='[]{}",\\ab', max_size=8)  # strings full of brackets, quotes and escapes
TRICKY = st.recursive(
    st.integers() | TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY_TEXT, inner, max_size=3),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(TRICKY)
def test_depth_alone_is_judged_exactly_whatever_the_strings_hold(doc: Any) -> None:
    data = json.dumps(doc).encode()
    if depth(doc) > DEPTH_ONLY.max_depth:
        with pytest.raises(InputRejected):
            loads(data, DEPTH_ONLY, "doc")
    else:
        assert loads(data, DEPTH_ONLY, "doc") == doc


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":[' * 20 + b"1" + b"]}" * 20,  # alternating kinds of bracket: each level is counted once
        b'[[[["]]]]", [[[[1]]]]]]]]',  # a string that closes brackets does not hide the levels after it
        b'[[[["\\"]]]]", [[[[1]]]]]]]]',  # nor with an escaped quote in it
    ],
)
def test_nesting_hidden_by_kinds_of_bracket_or_by_strings_is_found(data: bytes) -> None:
    assert rejected(data, DEPTH_ONLY).bound == "nesting depth"
