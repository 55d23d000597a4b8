"""The ``mqtt`` source: subscribe to topic filters on a broker and turn each message into a ``Sample``.

A topic entry maps a filter (``site/+/health/db``) to a signal; its ``+`` levels become labels
(``db_up{site=ams}``). Payloads are small: JSON ``{"value": ..., "ts": ...}``, a bare number, or
true/false/up/down/1/0. Anything else is malformed: counted, logged once per transition, dropped.

When the broker is lost the source emits nothing (its signals go UNKNOWN by age) and reconnects with
exponential backoff and full jitter, resubscribing each time. Sessions are clean: what was published while
we were away is stale by definition and not wanted.

A retained message without ``ts`` is dropped (counted in ``retained_dropped``): the broker replays it on every
subscribe, and with no timestamp a long-dead publisher's last "up" would read as fresh.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import aiomqtt

from hybridops_daemon import limits
from hybridops_daemon.config.sources import MqttSource
from hybridops_daemon.secrets import SecretUnavailable
from hybridops_daemon.signals.base import Emit, InputHealth, SourceContext, labelled
from hybridops_daemon.signals.mqtt_connection import connection, reconnect_backoff
from hybridops_daemon.signals.sample import Sample

MAX_PAYLOAD = limits.MQTT_PAYLOAD.max_bytes
MAX_FUTURE_SKEW = 60.0  # a ts further ahead than this is not clock skew (milliseconds sent as seconds?)
ROUTE_CACHE_SIZE = 4096  # topic → signal name; bounded, since publishers choose the topics

_WORDS = {"true": 1.0, "up": 1.0, "1": 1.0, "false": 0.0, "down": 0.0, "0": 0.0}
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # ASCII only, unlike float()
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_FORBIDDEN = frozenset("{}=,")  # would make labelled() names ambiguous: `a,b=c` could forge a second label


class MalformedPayload(ValueError):
    """A payload that is not one of the accepted shapes. ``reason`` never quotes the payload itself."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------------------------------------ broker


# ------------------------------------------------------------------------------------------------ payloads


def parse_payload(payload: bytes) -> tuple[float | None, float | None]:
    """``(value, ts)`` from a payload; ``value`` None means "no data", ``ts`` None means "use the receive time".

    Pure. Raises ``MalformedPayload`` and nothing else, for any bytes.
    """
    if len(payload) > MAX_PAYLOAD:
        raise MalformedPayload(f"payload over 64 KiB ({len(payload)} bytes)")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise MalformedPayload("payload is not UTF-8") from None
    if not text:
        raise MalformedPayload("empty payload")
    if len(text) <= 5:
        word = _WORDS.get(text.lower())
        if word is not None:
            return word, None
    if text[0] == "{":
        try:
            limits.check_json(payload, limits.MQTT_PAYLOAD, "payload")
        except limits.InputRejected as exc:
            raise MalformedPayload(str(exc)) from None
        return _parse_object(text)
    if _NUMBER.fullmatch(text):
        return _finite(float(text), "value"), None
    raise MalformedPayload("not a number, true/false/up/down or a JSON object")


def _parse_object(text: str) -> tuple[float | None, float | None]:
    try:
        doc = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except MalformedPayload:
        raise
    except ValueError:  # syntax (depth and digits were bounded before: check_json)
        raise MalformedPayload("invalid JSON") from None
    unknown = doc.keys() - {"value", "ts"}
    if unknown:
        raise MalformedPayload(f"unknown JSON keys: {', '.join(_short(k) for k in sorted(unknown)[:3])}")
    if "value" not in doc:
        raise MalformedPayload("JSON object without 'value'")
    raw = doc["value"]
    value: float | None
    if raw is None:
        value = None
    elif isinstance(raw, bool):  # before int: bool is an int
        value = 1.0 if raw else 0.0
    elif isinstance(raw, int | float):
        value = _finite(raw, "value")
    elif isinstance(raw, str) and raw.strip().lower() in ("up", "down"):
        value = 1.0 if raw.strip().lower() == "up" else 0.0
    else:
        raise MalformedPayload(f'\'value\' must be a number, boolean, "up", "down" or null, not {_kind(raw)}')
    if "ts" not in doc:
        return value, None
    raw_ts = doc["ts"]
    if isinstance(raw_ts, bool) or not isinstance(raw_ts, int | float):
        raise MalformedPayload(f"'ts' must be epoch seconds, not {_kind(raw_ts)}")
    ts = _finite(raw_ts, "ts")
    if ts <= 0:
        raise MalformedPayload("'ts' must be positive epoch seconds")
    return value, ts


def _finite(number: float, what: str) -> float:
    try:
        value = float(number)
    except OverflowError:  # an int too large for a float
        raise MalformedPayload(f"{what} out of range") from None
    if not math.isfinite(value):
        raise MalformedPayload(f"{what} is not finite")
    return value


def _no_constant(name: str) -> None:
    raise MalformedPayload(f"{name} is not a number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise MalformedPayload("duplicate JSON keys")
    return doc


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return "a string" if isinstance(value, str) else type(value).__name__


def _short(text: str) -> str:
    return repr(text if len(text) <= 32 else text[:32] + "…")


# ------------------------------------------------------------------------------------------------ topics


class TopicFilter:
    """A compiled MQTT subscription filter: matches a topic and captures its ``+`` levels in order."""

    __slots__ = ("_levels", "_multi", "_wild_first", "text")

    def __init__(self, text: str) -> None:
        levels = text.split("/")
        if (
            not text
            or len(text) > 65535
            or "\0" in text
            or any(("+" in level or "#" in level) and len(level) > 1 for level in levels)
            or "#" in levels[:-1]
        ):
            raise ValueError(f"invalid MQTT topic filter {text!r}")
        if levels[0] == "$share" and len(levels) >= 3:  # $share/<group>/<filter>: the broker matches <filter>
            levels = levels[2:]
        self.text = text
        self._multi = levels[-1] == "#"
        self._levels = tuple(levels[:-1] if self._multi else levels)
        # MQTT: a filter starting with a wildcard does not match topics starting with '$' ($SYS/...)
        self._wild_first = levels[0] in ("+", "#")

    @property
    def wildcards(self) -> int:
        return self._levels.count("+")

    def match(self, topic: str) -> list[str] | None:
        parts = topic.split("/")
        if len(parts) != len(self._levels) and not (self._multi and len(parts) >= len(self._levels)):
            return None
        if self._wild_first and topic.startswith("$"):
            return None
        captured: list[str] = []
        for want, got in zip(self._levels, parts, strict=False):
            if want == "+":
                captured.append(got)
            elif want != got:
                return None
        return captured


def match_topic(filter: str, topic: str) -> list[str] | None:
    """The values of ``filter``'s ``+`` wildcards in ``topic``, in order; None when it does not match."""
    return TopicFilter(filter).match(topic)


# ------------------------------------------------------------------------------------------------ source


class MqttIngest:
    """The ``mqtt`` source. ``async with MqttIngest(spec, edge, node) as source: await source.run(emit)``."""

    @classmethod
    def from_context(cls, spec: MqttSource, context: SourceContext) -> Self:
        return cls(spec, context.node, context.node, context.clock)

    def __init__(self, spec: MqttSource, edge: str, node: str, clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.name = spec.name
        self.edge = edge
        self.client_id = spec.broker.client_id or f"hybridops-{node}-{spec.name}"
        self.health = InputHealth(spec.name)
        self.received = 0
        self.emitted = 0
        self.retained_dropped = 0
        self._clock = clock
        self._source = f"mqtt:{spec.name}"
        if spec.broker.password is not None and spec.broker.username is None:
            raise ValueError(f"mqtt source {spec.name!r}: a broker password needs a username")
        self._backoff = reconnect_backoff(spec.broker)
        self._routes: list[tuple[TopicFilter, str, tuple[str, ...]]] = []
        for topic in spec.topics:
            matcher = TopicFilter(topic.filter)
            if len(topic.labels) > matcher.wildcards:
                raise ValueError(
                    f"mqtt source {spec.name!r}: filter {topic.filter!r} has {matcher.wildcards} '+' wildcard(s) "
                    f"for {len(topic.labels)} labels"
                )
            bad = [label for label in topic.labels if not _LABEL_NAME.fullmatch(label)]
            if bad or len(set(topic.labels)) != len(topic.labels):
                raise ValueError(f"mqtt source {spec.name!r}: filter {topic.filter!r}: bad or duplicate label names")
            self._routes.append((matcher, topic.signal, topic.labels))
        self._subscriptions: list[tuple[str, int]] = [(topic.filter, spec.qos) for topic in spec.topics]
        # topic → (signal, None) or (None, why it is dropped): most deployments publish a few topics, often.
        self._cache: dict[str, tuple[str | None, str | None]] = {}
        self._emit: Emit | None = None
        self._connected = False
        self._queue_type = _handoff_queue(self._on_message)

    @property
    def connected(self) -> bool:
        """Connected and subscribed (status, tests)."""
        return self._connected

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None  # run() owns the connection and closes it on its way out

    async def run(self, emit: Emit) -> None:
        """Connect, subscribe, emit until cancelled; reconnect with backoff after any broker trouble."""
        self._emit = emit
        while True:
            try:
                await self._session()
                reason = "session ended"  # not reached: a session ends by an error or by cancellation
            except (aiomqtt.MqttError, OSError, TimeoutError, SecretUnavailable, ValueError) as exc:
                reason = _reason(exc)
            self.health.upstream_failed(reason)
            await self._backoff.wait()

    async def _session(self) -> None:
        """One connection: connect and subscribe within ``connect_timeout``, then handle messages until the broker
        goes away (MqttError) or the task is cancelled (a clean DISCONNECT)."""
        broker = self.spec.broker
        async with connection(broker, self.client_id, queue_type=self._queue_type) as client:
            async with asyncio.timeout(broker.connect_timeout):
                granted = await client.subscribe(self._subscriptions)
            refused = [t.filter for t, code in zip(self.spec.topics, granted, strict=False) if _code(code) >= 0x80]
            if refused:
                raise aiomqtt.MqttError(f"broker refused the subscription to {', '.join(refused)}")
            self._backoff.succeeded()
            self.health.upstream_ok()
            self._connected = True
            try:
                # Messages are handled as paho decodes them (see _handoff_queue): this iterator never yields, it
                # only waits for the connection to drop, and then raises MqttError.
                async for _ in client.messages:
                    pass
            finally:
                self._connected = False

    def _on_message(self, message: aiomqtt.Message) -> None:
        """The per-message path: route (cached per topic), parse, emit. Never raises for bad input."""
        self.received += 1
        topic = message.topic.value
        route = self._cache.get(topic)
        if route is None:
            route = self._route(topic)
        signal, problem = route
        if signal is None:
            self.health.malformed_input(problem or "unroutable topic")
            return
        try:
            value, ts = parse_payload(message.payload)
        except MalformedPayload as exc:
            self.health.malformed_input(f"{_short(topic)}: {exc.reason}")
            return
        now = self._clock()
        if ts is None:
            if message.retain:
                self.retained_dropped += 1
                return
            ts = now
        elif ts > now + MAX_FUTURE_SKEW:
            self.health.malformed_input(f"{_short(topic)}: 'ts' is {ts - now:.0f}s in the future (milliseconds?)")
            return
        elif ts > now:
            ts = now  # small clock skew: a sample from the future would never age
        assert self._emit is not None
        self._emit(Sample(signal, value, ts, self._source, self.edge))
        self.emitted += 1
        self.health.good_input()

    def _route(self, topic: str) -> tuple[str | None, str | None]:
        route: tuple[str | None, str | None] = (None, f"no topic filter matches {_short(topic)}")
        for matcher, signal, labels in self._routes:
            captured = matcher.match(topic)
            if captured is None:
                continue
            values = dict(zip(labels, captured, strict=False))
            bad = next((v for v in values.values() if not v or not v.isprintable() or _LABEL_FORBIDDEN & set(v)), None)
            if bad is not None:
                route = (None, f"topic level {_short(bad)} of {_short(topic)} cannot be a label value")
            else:
                route = (labelled(signal, values), None)
            break
        if len(self._cache) >= ROUTE_CACHE_SIZE:
            self._cache.clear()
        self._cache[topic] = route
        return route


def _handoff_queue(handler: Callable[[aiomqtt.Message], None]) -> type[asyncio.Queue[aiomqtt.Message]]:
    """aiomqtt's incoming queue, replaced by a direct call: each message is handled in the loop thread as paho
    decodes it, with no task, future or queue hop per message (this path is benchmarked)."""

    class Handoff(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            handler(item)

    return Handoff


def _code(code: object) -> int:
    value = getattr(code, "value", code)
    return value if isinstance(value, int) else 0


def _reason(exc: BaseException) -> str:
    """A short, secret-free account of why a connection failed (messages name references, never values)."""
    if isinstance(exc, TimeoutError):
        return "connect/subscribe timed out"
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None:
        text += f" ({cause})" if str(cause) else f" ({type(cause).__name__})"
    return text
