"""The peer edge: publish this node's observation summary per lane, and turn the peer's into samples.

Each node publishes on ``<prefix>/<lane>/<node>`` every ``publish_interval``: per signal the lane's profile
reads, its value, its age and whether it is UNKNOWN here. It reads ``<prefix>/+/<peer>`` and emits the
peer's values as samples of ``edge=<peer>``, so a rule with ``both_edges: true`` can ask whether both edges
agree.

A node that cannot hear its peer must know it, never assume health:
- ages, not clocks, cross the wire: a received value is dated ``now - age`` on the receiver, so skewed
  clocks between the edges do not make stale data look fresh;
- nothing is retained on the broker: a restarted node never reads an old summary as a new one;
- the broker announces the peer's death (MQTT last will on ``<prefix>/_status/<node>``): every peer
  signal is then emitted as None (UNKNOWN) at once instead of waiting for max age;
- if this node loses the broker, the peer's samples stop and go UNKNOWN by age in decide().

The link also carries each journal's head: every ``publish_interval`` a node publishes ``{"node", "seq", "hash"}``
(not retained) on ``<prefix>/_head/<node>``, and hands the peer's to the daemon, which journals it now and then as
``peer.head``. A truncation of one edge's journal is then caught against the other's (``journal verify --against``).

With ``auth`` every message on every one of these topics, the will included, is signed and checked end to end
(``peer_auth``): a dropped message (forged, replayed, reordered, stale, unsigned, malformed) is counted by reason and
produces no sample, so the peer's signals go UNKNOWN by age, never "down". An authenticated summary is dated by the
earlier of its send time and its arrival: a message held back reads as old as it is.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self

import aiomqtt
import structlog

from hybridops_daemon import cancel, limits
from hybridops_daemon.config.sources import PeerSource
from hybridops_daemon.journal.signing import parse_head
from hybridops_daemon.secrets import SecretUnavailable, resolve
from hybridops_daemon.signals.base import Emit, InputHealth, JournalHead, LaneSignals, PeerHead, Snapshot, SourceContext
from hybridops_daemon.signals.mqtt_connection import connection, reconnect_backoff
from hybridops_daemon.signals.peer_auth import DROP_REASONS, Codec, Dropped, HmacCodec, Malformed, PlainCodec
from hybridops_daemon.signals.sample import Sample

MAX_SUMMARY_BYTES = limits.PEER_SUMMARY.max_bytes
log = structlog.get_logger("hybridops.source")


def summary(
    node: str, lane: str, signals: Mapping[str, float], readings: Mapping[tuple[str, str], Sample], now: float
) -> dict[str, Any]:
    """What this node tells its peer about one lane: only its own observations, never what it heard from the peer."""
    entries: dict[str, dict[str, Any]] = {}
    for signal, max_age in signals.items():
        reading = readings.get((signal, node))
        if reading is None:
            entries[signal] = {"value": None, "age": None, "unknown": True}
            continue
        age = max(0.0, now - reading.observed_at)
        unknown = reading.value is None or age > max_age
        entries[signal] = {"value": None if unknown else reading.value, "age": round(age, 3), "unknown": unknown}
    return {"node": node, "lane": lane, "signals": entries}


def peer_samples(data: Any, peer: str, source: str, now: float) -> list[Sample]:
    """The peer's summary (parsed, bounded) as samples dated on this node's clock. Raises Malformed on anything off."""
    if not isinstance(data, dict) or data.get("node") != peer or not isinstance(data.get("signals"), dict):
        raise Malformed("not a summary from the configured peer (node, lane, signals)")
    if len(data["signals"]) > limits.MAX_PEER_SIGNALS:
        raise Malformed(str(limits.InputRejected("summary", "signals", limits.MAX_PEER_SIGNALS, len(data["signals"]))))
    samples = []
    for signal, entry in data["signals"].items():
        if not isinstance(entry, dict) or not isinstance(signal, str):
            raise Malformed(f"signal {signal!r}: not an object")
        value, age, unknown = entry.get("value"), entry.get("age"), entry.get("unknown")
        if not isinstance(unknown, bool):
            raise Malformed(f"signal {signal!r}: 'unknown' must be true or false")
        if unknown or value is None:
            samples.append(Sample(signal, None, now, source, peer))
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise Malformed(f"signal {signal!r}: value must be a finite number")
        if isinstance(age, bool) or not isinstance(age, int | float) or not math.isfinite(age) or age < 0:
            raise Malformed(f"signal {signal!r}: age must be a finite number >= 0")
        samples.append(Sample(signal, float(value), now - float(age), source, peer))
    return samples


def peer_status(data: Any, peer: str) -> bool:
    """True when the peer says it is online, False for its last will. Raises Malformed otherwise."""
    if not isinstance(data, dict) or data.get("node") != peer or not isinstance(data.get("online"), bool):
        raise Malformed("not a status message from the configured peer")
    return bool(data["online"])


def peer_journal_head(data: Any, peer: str) -> tuple[int, str]:
    """The peer's journal head ``(seq, hash)``. Raises Malformed on anything off."""
    if not isinstance(data, dict) or data.get("node") != peer:
        raise Malformed("not a journal head from the configured peer (node, seq, hash)")
    seq, digest = data.get("seq"), data.get("hash")
    if isinstance(seq, bool) or not isinstance(seq, int) or not isinstance(digest, str):
        raise Malformed("journal head: 'seq' must be an integer and 'hash' a string")
    try:
        return parse_head(f"{seq}:{digest}")  # the one check of SEQ:HASH, as `journal verify --expect-head` reads it
    except ValueError as exc:
        raise Malformed(f"journal head: {exc}") from None


class PeerLink:
    """The ``peer`` source. Owns one MQTT connection that both publishes and subscribes."""

    @classmethod
    def from_context(cls, spec: PeerSource, context: SourceContext) -> Self:
        if context.peer is None:  # check-config refuses this (PeerSource.needs_peer); a context built by hand may not
            raise ValueError("a `peer` source needs `peer:` (the other edge's node name)")
        return cls(
            spec,
            context.node,
            context.peer,
            context.published,
            context.snapshot,
            context.clock,
            journal_head=context.journal_head,
            on_peer_head=context.peer_head,
        )

    def __init__(
        self,
        spec: PeerSource,
        node: str,
        peer: str,
        lanes: LaneSignals,
        snapshot: Snapshot,
        clock: Callable[[], float] = time.time,
        *,
        journal_head: JournalHead | None = None,
        on_peer_head: PeerHead | None = None,
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self.node = node
        self.peer = peer
        self.health = InputHealth(spec.name, DROP_REASONS)
        self.authenticated = spec.auth is not None
        self.codec: Codec | None = None  # built once the key is read; its sequence and the peer's it keeps across reconnects
        self.published = 0
        self.received = 0
        self._lanes = lanes
        self._snapshot = snapshot
        self._clock = clock
        self._journal_head = journal_head
        self._on_peer_head = on_peer_head
        self._heard: set[str] = set()  # peer signals seen, to mark UNKNOWN when it dies
        self._source = f"peer:{peer}"

    def _topic(self, lane: str, node: str) -> str:
        return f"{self.spec.topic_prefix}/{lane}/{node}"

    def _status_topic(self, node: str) -> str:
        return f"{self.spec.topic_prefix}/_status/{node}"

    def _head_topic(self, node: str) -> str:
        # Under the subscription to <prefix>/+/<peer> like _status: lane names cannot start with "_" (config Name).
        return f"{self.spec.topic_prefix}/_head/{node}"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def _codec(self) -> Codec:
        """The codec, built on first use. Raises SecretUnavailable (the key file is not there yet) or ValueError."""
        if self.codec is None:
            auth = self.spec.auth
            if auth is None:
                self.codec = PlainCodec()
            else:
                key = resolve("peer auth key", auth.key).encode()
                self.codec = HmacCodec(key, self.node, self.peer, auth.max_skew, self._clock)
        return self.codec

    async def run(self, emit: Emit) -> None:
        broker = self.spec.broker
        backoff = reconnect_backoff(broker)
        client_id = broker.client_id or f"hybridops-{self.node}-{self.name}"
        if self.spec.auth is None:
            log.warning("peer messages are not authenticated (no `auth`): whoever may publish on the broker speaks for the peer")
        while True:
            try:
                codec = self._codec()  # never unsigned when told to sign: without its key the link waits
                status = self._status_topic(self.node)
                will = aiomqtt.Will(status, codec.seal_will(status, {"node": self.node, "online": False}), qos=1)
                async with connection(broker, client_id, will=will) as client:
                    await self._connected(client, codec)
                    backoff.succeeded()
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._publish_forever(client, codec))
                        await self._read_forever(client, codec, emit)
            except* (SecretUnavailable, ValueError) as group_error:
                # e.g. the password file is not there yet: keep trying
                self.health.upstream_failed(str(group_error.exceptions[0]))
            except* (aiomqtt.MqttError, TimeoutError) as group_error:
                # While we cannot hear the peer, its samples simply stop: UNKNOWN by age in decide().
                self.health.upstream_failed(str(group_error.exceptions[0]) or "connect/publish timed out")
            # A cancel that arrived as a child failed was turned into the children's ExceptionGroup: see cancel.
            await backoff.wait()

    async def _connected(self, client: aiomqtt.Client, codec: Codec) -> None:
        timeout = self.spec.broker.connect_timeout
        status = self._status_topic(self.node)
        async with asyncio.timeout(timeout):
            await client.subscribe(f"{self.spec.topic_prefix}/+/{self.peer}", qos=1)
            await client.subscribe(self._status_topic(self.peer), qos=1)
            await client.publish(status, codec.seal(status, {"node": self.node, "online": True}), qos=1)
        self.health.upstream_ok()

    async def _publish_forever(self, client: aiomqtt.Client, codec: Codec) -> None:
        while True:
            now = self._clock()
            readings = self._snapshot()
            for lane, signals in self._lanes().items():
                topic = self._topic(lane, self.node)
                await self._publish(client, topic, codec.seal(topic, summary(self.node, lane, signals, readings, now)))
                self.published += 1
            head = self._journal_head() if self._journal_head is not None else None
            if head is not None:
                topic = self._head_topic(self.node)
                await self._publish(client, topic, codec.seal(topic, {"node": self.node, "seq": head[0], "hash": head[1]}))
            await cancel.sleep(self.spec.publish_interval)

    async def _publish(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        async with asyncio.timeout(self.spec.broker.connect_timeout):
            await client.publish(topic, payload, qos=0)

    async def _read_forever(self, client: aiomqtt.Client, codec: Codec, emit: Emit) -> None:
        status_topic, head_topic = self._status_topic(self.peer), self._head_topic(self.peer)
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            topic = message.topic.value
            try:
                if topic == status_topic:
                    online = peer_status(codec.open(topic, payload, limits.PEER_SUMMARY, "status").body, self.peer)
                    samples = [] if online else list(self._all_unknown())
                elif topic == head_topic:
                    samples = []
                    seq, digest = peer_journal_head(codec.open(topic, payload, limits.PEER_HEAD, "journal head").body, self.peer)
                    if self._on_peer_head is not None:
                        self._on_peer_head(self.peer, seq, digest)
                else:
                    opened = codec.open(topic, payload, limits.PEER_SUMMARY, "summary")
                    now = self._clock()
                    as_of = now if opened.sent_at is None else min(now, opened.sent_at)  # held back: as old as it is
                    samples = peer_samples(opened.body, self.peer, self._source, as_of)
            except Dropped as exc:  # no sample: the peer's signals age out to UNKNOWN
                self.health.dropped_input(exc.reason, exc.detail)
                continue
            self.health.good_input()
            self.received += 1
            for sample in samples:
                self._heard.add(sample.signal)
                emit(sample)

    def _all_unknown(self) -> Iterator[Sample]:
        now = self._clock()
        for signal in sorted(self._heard):
            yield Sample(signal, None, now, self._source, self.peer)
