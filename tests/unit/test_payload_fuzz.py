"""Fuzzing the MQTT and peer payload readers with nested, crowded and long-numbered JSON: each answers within a time
limit with a value or its own error type (the limits error as its reason), never anything else."""

from __future__ import annotations

import json
import sys
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from hybridops_daemon import limits
from hybridops_daemon.signals.mqtt import MalformedPayload, parse_payload
from hybridops_daemon.signals.peer import peer_samples, peer_status
from hybridops_daemon.signals.peer_auth import Malformed, PlainCodec

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["value", "ts", "age", "unknown"]), inner),
    max_leaves=20,
)


def deep(depth: int, opener: bytes) -> bytes:
    if opener == b"{":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"[" * depth + b"]" * depth


PAYLOADS = st.one_of(
    JSON.map(lambda doc: json.dumps({"value": doc}).encode()),
    JSON.map(lambda doc: json.dumps({"node": "edge01", "signals": {"s": doc}}).encode()),
    st.builds(lambda d, o: b'{"value":' + deep(d, o) + b"}", st.integers(1, 30_000), st.sampled_from([b"[", b"{"])),
    st.builds(lambda n: b'{"value":[' + b"1," * n + b"1]}", st.integers(0, 20_000)),
    st.builds(lambda n: b'{"value":' + b"7" * n + b"}", st.integers(1, sys.get_int_max_str_digits() + 10)),
    st.text(alphabet='[]{},"\\:1 ', max_size=3000).map(lambda text: b"{" + text.encode()),
)


@settings(max_examples=300, deadline=None)
@given(PAYLOADS)
def test_fuzz_parse_payload_answers_quickly_with_a_value_or_malformed(payload: bytes) -> None:
    began = time.monotonic()
    try:
        parse_payload(payload)
    except MalformedPayload as exc:
        assert exc.reason
    assert time.monotonic() - began < 1


@settings(max_examples=300, deadline=None)
@given(PAYLOADS)
def test_fuzz_peer_readers_answer_quickly_with_samples_or_malformed(payload: bytes) -> None:
    began = time.monotonic()

    def body() -> object:
        return PlainCodec().open("hybridops/peer/prod/edge01", payload, limits.PEER_SUMMARY).body

    for read in (lambda: peer_samples(body(), "edge01", "peer:edge01", 1.0), lambda: peer_status(body(), "edge01")):
        try:
            read()
        except Malformed as exc:
            assert str(exc)
    assert time.monotonic() - began < 1
