"""The peer edge's wire format: what a node says about itself, and how the other node reads it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridops_daemon import limits
from hybridops_daemon.signals.peer import peer_samples, peer_status, summary
from hybridops_daemon.signals.peer_auth import Malformed, PlainCodec
from hybridops_daemon.signals.sample import Sample

NOW = 1_800_000_000.0


def read(payload: bytes, what: str = "summary") -> object:
    """A message as the link reads it without a key: bounded, parsed."""
    return PlainCodec().open("hybridops/peer/prod/edge01", payload, limits.PEER_SUMMARY, what).body


def test_summary_carries_ages_not_timestamps_and_marks_unknowns() -> None:
    readings = {
        ("primary_http", "edge01"): Sample("primary_http", 0.0, NOW - 1.5, "http_probe", "edge01"),
        ("wan_loss", "edge01"): Sample("wan_loss", 3.0, NOW - 60, "mqtt", "edge01"),  # stale: max age 10 s
        ("primary_http", "edge02"): Sample("primary_http", 1.0, NOW, "peer:edge02", "edge02"),  # heard, not ours
    }
    body = summary("edge01", "prod", {"primary_http": 5.0, "wan_loss": 10.0, "db_up": 5.0}, readings, NOW)
    assert body == {
        "node": "edge01",
        "lane": "prod",
        "signals": {
            "primary_http": {"value": 0.0, "age": 1.5, "unknown": False},
            "wan_loss": {"value": None, "age": 60.0, "unknown": True},
            "db_up": {"value": None, "age": None, "unknown": True},
        },
    }


def test_received_values_are_dated_on_the_receivers_clock() -> None:
    body = summary(
        "edge01",
        "prod",
        {"primary_http": 5.0},
        {("primary_http", "edge01"): Sample("primary_http", 0.0, 100.0, "x", "edge01")},
        102.0,
    )
    # The receiver's clock is an hour ahead: the value is still 2 s old there, not an hour.
    samples = peer_samples(read(json.dumps(body).encode()), "edge01", "peer:edge01", NOW)
    assert samples == [Sample("primary_http", 0.0, NOW - 2.0, "peer:edge01", "edge01")]


def test_unknown_on_the_peer_is_unknown_here() -> None:
    body = summary("edge01", "prod", {"db_up": 5.0}, {}, NOW)
    assert peer_samples(read(json.dumps(body).encode()), "edge01", "peer:edge01", NOW) == [
        Sample("db_up", None, NOW, "peer:edge01", "edge01")
    ]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not JSON"),
        (json.dumps({"node": "edge03", "signals": {}}).encode(), "configured peer"),
        (json.dumps({"node": "edge01", "signals": {"a": {"value": 1, "age": -1, "unknown": False}}}).encode(), "age"),
        (json.dumps({"node": "edge01", "signals": {"a": {"value": "up", "age": 1, "unknown": False}}}).encode(), "finite"),
        (json.dumps({"node": "edge01", "signals": {"a": {"value": 1, "age": 1}}}).encode(), "'unknown'"),
        (b"{" + b" " * 300_000 + b"}", "over"),
        (b'{"node": "edge01", "signals": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "nesting depth over the limit of 8"),
        (b'{"node": "edge01", "signals": {"a": ' + b"9" * 5000 + b"}}", "digits in a number over the limit"),
        (
            json.dumps({"node": "edge01", "signals": {f"s{i}": {"value": None, "unknown": True} for i in range(1001)}}).encode(),
            "summary: signals 1001 over the limit of 1000",
        ),
    ],
)
def test_malformed_summaries_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(Malformed, match=reason):
        peer_samples(read(payload), "edge01", "peer:edge01", NOW)


def test_status_messages() -> None:
    assert peer_status(read(b'{"node": "edge01", "online": true}', "status"), "edge01") is True
    assert peer_status(read(b'{"node": "edge01", "online": false}', "status"), "edge01") is False
    with pytest.raises(Malformed):
        peer_status(read(b'{"node": "edge02", "online": false}', "status"), "edge01")
    with pytest.raises(Malformed, match="status: nesting depth over the limit of 8"):
        peer_status(read(b"[" * 30_000 + b"]" * 30_000, "status"), "edge01")
    with pytest.raises(Malformed, match="status: size in bytes"):
        peer_status(read(b" " * 300_000, "status"), "edge01")


@given(st.binary(max_size=2048))
def test_any_bytes_are_samples_or_malformed(payload: bytes) -> None:
    try:
        samples = peer_samples(read(payload), "edge01", "peer:edge01", NOW)
    except Malformed:
        return
    assert all(s.edge == "edge01" and (s.value is None or s.value == s.value) for s in samples)
