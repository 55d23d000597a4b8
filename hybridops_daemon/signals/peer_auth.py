"""End-to-end authentication of the peer link, independent of the broker: whoever holds broker credentials can
publish on the peer's topics, so a message counts only if it proves it came from the peer, now, once, and in order.

Wire format with a key (HMAC-SHA256, the key shared by the two edges), the exact bytes::

    {"mac":"<64 hex>","msg":{"node":N,"boot":B,"seq":S,"ts":T,"will":W,"body":{...}}}

The MAC covers the topic (length-prefixed) and the ``msg`` bytes exactly as sent, so the receiver checks the MAC
before it parses anything the sender wrote, and parses exactly the bytes it checked (no canonical re-encoding that
two parsers could read differently). A message moved to another topic (a summary replayed as a status) fails it.

- ``boot``: random per sender instance, so a restarted sender's sequence starting again at 1 is not a replay.
- ``seq``: one counter per boot across all topics; the receiver accepts only increasing ones. It remembers the last
  ``WINDOW`` sequence numbers it accepted to tell a replay (accepted before) from a late one (never seen, older).
- ``ts``: the sender's clock. Further than ``max_skew`` from the receiver's clock either way: stale. A new boot is
  accepted only with a fresh timestamp later than every message of the boot it replaces, so a replayed message of
  an earlier boot is refused. A receiver that restarts knows no boot: it accepts the peer's current one on its first
  fresh message.
- ``will``: the sequence number of the sender's current MQTT last will. The broker publishes a will on the sender's
  behalf long after it was signed (at connect), so a will skips the timestamp and order checks; instead it is
  accepted only if it is the will the peer's latest accepted message announced, once. A will replayed after the
  peer reconnected (new will) or restarted (new boot) is refused. A will only ever makes the peer's signals UNKNOWN.

Without a key (``PlainCodec``) messages are plain JSON bodies, as before; a signed message is read without a check,
so that edges can be given the key one at a time.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import secrets
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeGuard

from hybridops_daemon import limits

# Why a message was dropped; each is counted (status, metrics).
MALFORMED: Final = "malformed"  # not JSON, over a bound, or not the shape of a peer message
UNSIGNED: Final = "unsigned"  # no MAC, while the link requires one
FORGED: Final = "forged"  # the MAC does not match: another key, or altered on the way
STALE: Final = "stale"  # its timestamp is further than max_skew from this node's clock
REPLAYED: Final = "replayed"  # accepted before, of an earlier boot of the peer, or a will that is not current
REORDERED: Final = "reordered"  # older than one already accepted, never seen: delivered late or held back
DROP_REASONS: Final = (MALFORMED, UNSIGNED, FORGED, STALE, REPLAYED, REORDERED)

WINDOW: Final = 1024  # accepted sequence numbers remembered, to tell a replay from a late message
_WINDOW_MASK: Final = (1 << WINDOW) - 1
MIN_KEY_CHARS: Final = 32  # e.g. `openssl rand -hex 32` (64 characters)
_DOMAIN: Final = b"hybridops-peer-v1\0"
_PREFIX: Final = b'{"mac":"'
_MID: Final = b'","msg":'
_MSG_AT: Final = len(_PREFIX) + 64 + len(_MID)
_BOOT: Final = re.compile(r"[0-9a-f]{1,64}")


class Dropped(Exception):
    """A message refused: ``reason`` is one of DROP_REASONS, ``detail`` says what was off (never a secret)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Malformed(Dropped):
    """Not JSON, over a bound, or not the shape of a peer message (the same whether or not the link has a key)."""

    def __init__(self, detail: str) -> None:
        super().__init__(MALFORMED, detail)


@dataclass(frozen=True, slots=True)
class Opened:
    """A message let through: its body, parsed; when the sender stamped it (None: unauthenticated, not known)."""

    body: Any
    sent_at: float | None = None


class Codec(Protocol):
    authenticated: bool

    def seal(self, topic: str, body: Mapping[str, Any]) -> bytes: ...

    def seal_will(self, topic: str, body: Mapping[str, Any]) -> bytes: ...

    def open(self, topic: str, payload: bytes, bound: limits.JsonLimits, what: str = "peer message") -> Opened:
        """The body of a message from the peer (``what``, for errors), or Dropped."""
        ...


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def _parse(data: bytes, bound: limits.JsonLimits, what: str) -> Any:
    try:
        return limits.loads(data, bound, what)
    except limits.InputRejected as exc:
        raise Malformed(str(exc)) from None
    except ValueError as exc:  # also UnicodeDecodeError
        raise Malformed(f"{what} is not JSON: {exc}") from None


def _signed_layout(payload: bytes) -> bool:
    return payload.startswith(_PREFIX) and payload[_MSG_AT - len(_MID) : _MSG_AT] == _MID and payload.endswith(b"}")


class PlainCodec:
    """No key: bodies travel as they are. A signed message (a peer given the key first) is unwrapped unchecked."""

    authenticated = False

    def seal(self, topic: str, body: Mapping[str, Any]) -> bytes:
        return _dumps(body)

    def seal_will(self, topic: str, body: Mapping[str, Any]) -> bytes:
        return _dumps(body)

    def open(self, topic: str, payload: bytes, bound: limits.JsonLimits, what: str = "peer message") -> Opened:
        if _signed_layout(payload):
            msg = _parse(payload[_MSG_AT:-1], bound, what)
            if not isinstance(msg, dict) or "body" not in msg:
                raise Malformed(f"a signed {what} without a body")
            return Opened(msg["body"])
        return Opened(_parse(payload, bound, what))


@dataclass(slots=True)
class _Heard:
    """What the receiver remembers of the peer's current boot."""

    boot: str
    high: int  # the highest sequence number accepted
    seen: int  # bit i: high - i was accepted (i < WINDOW)
    last_ts: float  # the latest timestamp accepted
    will: int  # the will the latest accepted message announced (0: none, or already used)


class HmacCodec:
    """Signs this node's messages and checks the peer's with one shared key (HMAC-SHA256)."""

    authenticated = True

    def __init__(
        self,
        key: bytes,
        node: str,
        peer: str,
        max_skew: float,
        clock: Callable[[], float] = time.time,
        boot: str | None = None,
    ) -> None:
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(f"the peer auth key is shorter than {MIN_KEY_CHARS} characters (make one: openssl rand -hex 32)")
        self._key = key
        self.node = node
        self.peer = peer
        self.max_skew = max_skew
        self._clock = clock
        self.boot = boot or secrets.token_hex(8)
        self._seq = 0
        self._will = 0
        self.heard: _Heard | None = None

    # -- sending -------------------------------------------------------------------------------------------------
    def seal(self, topic: str, body: Mapping[str, Any]) -> bytes:
        self._seq += 1
        return self._sealed(topic, body, self._seq)

    def seal_will(self, topic: str, body: Mapping[str, Any]) -> bytes:
        """The last will for the next connection; every message after it announces it (its seq)."""
        self._seq += 1
        self._will = self._seq
        return self._sealed(topic, body, self._seq)

    def _sealed(self, topic: str, body: Mapping[str, Any], seq: int) -> bytes:
        msg = {"node": self.node, "boot": self.boot, "seq": seq, "ts": round(self._clock(), 3), "will": self._will}
        raw = _dumps({**msg, "body": body})
        return _PREFIX + self._mac(topic, raw) + _MID + raw + b"}"

    def _mac(self, topic: str, raw: bytes) -> bytes:
        name = topic.encode()
        data = _DOMAIN + struct.pack(">I", len(name)) + name + raw
        return hmac.digest(self._key, data, "sha256").hex().encode()  # one-shot: C all the way (hmac.new is not)

    # -- receiving -----------------------------------------------------------------------------------------------
    def open(self, topic: str, payload: bytes, bound: limits.JsonLimits, what: str = "peer message") -> Opened:
        if len(payload) > bound.max_bytes:  # before the MAC: never hash an unbounded input
            raise Malformed(str(limits.InputRejected(what, "size in bytes", bound.max_bytes, len(payload))))
        if not _signed_layout(payload):
            data = _parse(payload, bound, what)
            if isinstance(data, dict) and "mac" not in data:
                raise Dropped(UNSIGNED, f"a {what} without a MAC (the link requires one: `auth` is configured)")
            raise Malformed(f"not a signed {what}")
        raw = payload[_MSG_AT:-1]
        if not hmac.compare_digest(self._mac(topic, raw), payload[len(_PREFIX) : len(_PREFIX) + 64]):
            raise Dropped(FORGED, f"the MAC does not match (another key, or altered) on {topic[:200]}")  # logged: bounded
        msg = _parse(raw, bound, what)
        boot, seq, ts, will, body = _fields(msg, self.peer)
        if seq == will:
            return self._will_of(boot, seq, body)
        now = self._clock()
        if abs(now - ts) > self.max_skew:
            raise Dropped(STALE, f"stamped {now - ts:+.1f} s from this node's clock (max skew {self.max_skew:g} s)")
        heard = self.heard
        if heard is None or boot != heard.boot:
            if heard is not None and ts <= heard.last_ts:
                raise Dropped(REPLAYED, f"of boot {boot}, older than the peer's current boot {heard.boot}")
            self.heard = _Heard(boot, seq, 1, ts, will)  # the peer's first boot heard, or it restarted
            return Opened(body, ts)
        if seq > heard.high:
            ahead = seq - heard.high
            heard.seen = ((heard.seen << ahead) | 1) & _WINDOW_MASK if ahead < WINDOW else 1
            heard.high = seq
        elif heard.high - seq >= WINDOW or (heard.seen >> (heard.high - seq)) & 1:
            raise Dropped(REPLAYED, f"seq {seq} accepted before (the latest is {heard.high})")
        else:
            raise Dropped(REORDERED, f"seq {seq} came after seq {heard.high}")
        heard.last_ts = max(heard.last_ts, ts)
        heard.will = will
        return Opened(body, ts)

    def _will_of(self, boot: str, seq: int, body: Any) -> Opened:
        heard = self.heard
        if heard is None or heard.boot != boot or heard.will != seq:
            raise Dropped(REPLAYED, f"a last will (seq {seq}) that is not the peer's current one")
        heard.will = 0  # once
        return Opened(body, None)  # signed at connect: its timestamp says nothing about now


def _fields(msg: Any, peer: str) -> tuple[str, int, float, int, Any]:
    if not isinstance(msg, dict) or msg.get("node") != peer or "body" not in msg:
        raise Malformed("not a message from the configured peer (node, body)")
    boot, seq, ts, will = msg.get("boot"), msg.get("seq"), msg.get("ts"), msg.get("will")
    if not isinstance(boot, str) or not _BOOT.fullmatch(boot):
        raise Malformed("'boot' must be 1 to 64 lowercase hex digits")
    if not _count(seq) or seq < 1 or not _count(will):
        raise Malformed("'seq' must be an integer >= 1 and 'will' one >= 0")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise Malformed("'ts' must be a finite number")
    return boot, seq, float(ts), will, msg["body"]


def _count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
