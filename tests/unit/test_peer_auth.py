"""End-to-end authentication of peer messages: what edge01 lets through of what claims to be edge02, and why it drops
the rest (forged, unsigned, stale, replayed, reordered, malformed), a restart of either edge, and the last will."""

from __future__ import annotations

import hashlib
import hmac
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridops_daemon import limits
from hybridops_daemon.signals.peer_auth import (
    FORGED,
    MALFORMED,
    REORDERED,
    REPLAYED,
    STALE,
    UNSIGNED,
    WINDOW,
    Dropped,
    HmacCodec,
    PlainCodec,
)

KEY = b"k" * 64
TOPIC = "hybridops/peer/prod/edge02"
STATUS = "hybridops/peer/_status/edge02"
BODY = {"node": "edge02", "lane": "prod", "signals": {"primary_http": {"value": 1.0, "age": 0.2, "unknown": False}}}
BOUND = limits.PEER_SUMMARY


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pair(clock: Clock, key: bytes = KEY, boot: str | None = None) -> tuple[HmacCodec, HmacCodec]:
    """edge02's codec (the sender here) and edge01's (the receiver)."""
    return HmacCodec(key, "edge02", "edge01", 10.0, clock, boot), HmacCodec(KEY, "edge01", "edge02", 10.0, clock)


def dropped(codec: HmacCodec, payload: bytes, topic: str = TOPIC) -> str:
    with pytest.raises(Dropped) as caught:
        codec.open(topic, payload, BOUND)
    return caught.value.reason


def test_a_signed_message_opens_to_its_body_stamped_with_its_send_time() -> None:
    clock = Clock()
    edge02, edge01 = pair(clock)
    payload = edge02.seal(TOPIC, BODY)
    assert json.loads(payload)["msg"]["body"] == BODY  # readable on the wire (mosquitto_sub), only not forgeable
    clock.now += 0.5
    opened = edge01.open(TOPIC, payload, BOUND)
    assert opened.body == BODY and opened.sent_at == pytest.approx(clock.now - 0.5)


def test_another_key_an_altered_byte_or_another_topic_is_forged() -> None:
    clock = Clock()
    forger, edge01 = pair(clock, key=b"f" * 64)
    assert dropped(edge01, forger.seal(TOPIC, BODY)) == FORGED

    edge02, _ = pair(clock)
    genuine = edge02.seal(TOPIC, BODY)
    altered = genuine.replace(b'"value":1.0', b'"value":0.0')
    assert altered != genuine
    assert dropped(edge01, altered) == FORGED
    assert dropped(edge01, genuine, STATUS) == FORGED  # a summary replayed as a status
    assert edge01.open(TOPIC, genuine, BOUND).body == BODY  # none of these used up the genuine message


def test_a_plain_message_is_unsigned_and_garbage_is_malformed() -> None:
    edge01 = pair(Clock())[1]
    assert dropped(edge01, json.dumps(BODY).encode()) == UNSIGNED
    assert dropped(edge01, b"not json") == MALFORMED
    assert dropped(edge01, b'{"mac": "00", "msg": {}}') == MALFORMED  # signed-looking, not our layout
    assert dropped(edge01, b"{" + b" " * (BOUND.max_bytes + 1) + b"}") == MALFORMED  # bounded before it is hashed


def signed(msg: dict[str, object], topic: str = TOPIC, key: bytes = KEY) -> bytes:
    """The wire format, written out independently of the codec: the MAC covers the topic and the exact msg bytes."""
    raw = json.dumps(msg, separators=(",", ":")).encode()
    name = topic.encode()
    mac = hmac.new(key, b"hybridops-peer-v1\0" + struct.pack(">I", len(name)) + name + raw, hashlib.sha256).hexdigest()
    return b'{"mac":"' + mac.encode() + b'","msg":' + raw + b"}"


def test_the_wire_format_is_as_documented() -> None:
    clock = Clock()
    edge02, edge01 = pair(clock, boot="00aa")
    edge02.seal_will(STATUS, {"node": "edge02", "online": False})
    msg = {"node": "edge02", "boot": "00aa", "seq": 2, "ts": clock.now, "will": 1, "body": BODY}
    assert edge02.seal(TOPIC, BODY) == signed(msg)
    assert edge01.open(TOPIC, signed({**msg, "seq": 3}), BOUND).body == BODY


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"node": "edge03"}, "not a message from the configured peer"),
        ({"boot": "XYZ"}, "'boot' must be"),
        ({"seq": 0}, "'seq' must be an integer >= 1"),
        ({"seq": True}, "'seq' must be an integer >= 1"),
        ({"will": -1}, "'will' one >= 0"),
        ({"ts": "now"}, "'ts' must be a finite number"),
    ],
)
def test_a_genuine_but_malformed_message_is_malformed(change: dict[str, object], detail: str) -> None:
    clock = Clock()
    edge01 = pair(clock)[1]
    msg = {"node": "edge02", "boot": "00aa", "seq": 1, "ts": clock.now, "will": 0, "body": BODY, **change}
    with pytest.raises(Dropped, match=detail) as caught:
        edge01.open(TOPIC, signed(msg), BOUND)  # as a buggy peer with the right key would send it
    assert caught.value.reason == MALFORMED


def test_a_message_once_accepted_is_a_replay_and_an_older_unseen_one_is_reordered() -> None:
    clock = Clock()
    edge02, edge01 = pair(clock)
    first, second, third = (edge02.seal(TOPIC, BODY) for _ in range(3))
    edge01.open(TOPIC, first, BOUND)
    edge01.open(TOPIC, third, BOUND)
    assert dropped(edge01, first) == REPLAYED
    assert dropped(edge01, third) == REPLAYED
    assert dropped(edge01, second) == REORDERED  # never accepted, but older than one that was
    assert dropped(edge01, second) == REORDERED


def test_beyond_the_window_a_sequence_number_cannot_be_told_apart_and_is_refused_as_a_replay() -> None:
    clock = Clock()
    edge02, edge01 = pair(clock)
    old = edge02.seal(TOPIC, BODY)
    edge01.open(TOPIC, old, BOUND)
    for _ in range(WINDOW):
        latest = edge02.seal(TOPIC, BODY)
    edge01.open(TOPIC, latest, BOUND)
    assert dropped(edge01, old) == REPLAYED


def test_a_message_stamped_outside_the_skew_either_way_is_stale() -> None:
    clock = Clock()
    edge02, edge01 = pair(clock)
    held = edge02.seal(TOPIC, BODY)
    clock.now += 10.5
    assert dropped(edge01, held) == STALE
    early = edge02.seal(TOPIC, BODY)
    clock.now -= 21  # the receiver's clock far behind the sender's
    assert dropped(edge01, early) == STALE


def test_a_restarted_peer_starts_a_new_boot_and_its_earlier_boot_is_then_a_replay() -> None:
    clock = Clock()
    edge02, edge01 = pair(clock)
    for _ in range(5):
        before = edge02.seal(TOPIC, BODY)
        edge01.open(TOPIC, before, BOUND)
    clock.now += 1
    restarted, _ = pair(clock)  # its sequence starts again at 1
    edge01.open(TOPIC, restarted.seal(TOPIC, BODY), BOUND)
    assert dropped(edge01, before) == REPLAYED
    edge01.open(TOPIC, restarted.seal(TOPIC, BODY), BOUND)


def test_a_restarted_receiver_accepts_the_peers_current_sequence() -> None:
    clock = Clock()
    edge02, edge01 = pair(clock)
    for _ in range(57):
        payload = edge02.seal(TOPIC, BODY)
    assert edge01.open(TOPIC, payload, BOUND).body == BODY
    assert edge01.heard is not None and edge01.heard.high == 57


def test_the_current_will_is_accepted_once_however_old_and_an_earlier_one_never() -> None:
    clock = Clock()
    edge02, edge01 = pair(clock)
    offline = {"node": "edge02", "online": False}
    will = edge02.seal_will(STATUS, offline)
    edge01.open(STATUS, edge02.seal(STATUS, {"node": "edge02", "online": True}), BOUND)  # announces that will
    clock.now += 3600  # the broker sends it an hour later, when the connection dies
    assert edge01.open(STATUS, will, BOUND).body == offline
    assert dropped(edge01, will, STATUS) == REPLAYED  # once

    reconnected = edge02.seal_will(STATUS, offline)
    edge01.open(TOPIC, edge02.seal(TOPIC, BODY), BOUND)  # announces the new will
    assert dropped(edge01, will, STATUS) == REPLAYED
    assert edge01.open(STATUS, reconnected, BOUND).body == offline


def test_a_will_of_a_peer_not_heard_yet_or_of_an_earlier_boot_is_refused() -> None:
    clock = Clock()
    edge02, edge01 = pair(clock)
    will = edge02.seal_will(STATUS, {"node": "edge02", "online": False})
    assert dropped(edge01, will, STATUS) == REPLAYED  # nothing heard: nothing for it to mark UNKNOWN either
    edge01.open(TOPIC, edge02.seal(TOPIC, BODY), BOUND)
    clock.now += 1
    restarted, _ = pair(clock)
    restarted.seal_will(STATUS, {"node": "edge02", "online": False})
    edge01.open(TOPIC, restarted.seal(TOPIC, BODY), BOUND)
    assert dropped(edge01, will, STATUS) == REPLAYED


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="shorter than 32 characters"):
        HmacCodec(b"secret", "edge01", "edge02", 10.0)


def test_without_a_key_a_signed_message_is_read_unchecked_so_edges_can_get_the_key_one_at_a_time() -> None:
    edge02, _ = pair(Clock())
    assert PlainCodec().open(TOPIC, edge02.seal(TOPIC, BODY), BOUND).body == BODY
    assert PlainCodec().open(TOPIC, json.dumps(BODY).encode(), BOUND).body == BODY


@given(st.binary(max_size=4096))
def test_any_bytes_open_or_are_dropped_with_a_reason(payload: bytes) -> None:
    edge01 = pair(Clock())[1]
    try:
        edge01.open(TOPIC, payload, BOUND)
    except Dropped as exc:
        assert exc.reason in (MALFORMED, UNSIGNED, FORGED)
    else:
        raise AssertionError("random bytes were let through")
