"""What every source shares: the contract, malformed-input accounting, the polling loop, signal labels.

A source turns the outside world into ``Sample``s and never decides. It is an async context manager that
owns its connections; ``run(emit)`` runs until cancelled. When a source loses its upstream it emits nothing:
its signals go UNKNOWN by age, in decide(). Malformed input is counted and dropped, and logged once per
transition (ok → failing, failing → ok), never once per message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

import structlog

from hybridops_daemon import cancel
from hybridops_daemon.retry import Backoff
from hybridops_daemon.signals.sample import Sample

Emit = Callable[[Sample], None]
LaneSignals = Callable[[], Mapping[str, Mapping[str, float]]]  # lane → {signal: max_age}
Snapshot = Callable[[], Mapping[tuple[str, str], Sample]]
JournalHead = Callable[[], tuple[int, str] | None]  # this node's journal head (seq, hash), None: nothing to tell
PeerHead = Callable[[str, int, str], None]  # (peer, seq, hash): the peer's journal head, as the peer link heard it


@dataclass(frozen=True)
class SourceContext:
    """What the daemon hands every source's ``from_context(spec, context)``; each source takes what it needs.

    ``published`` and ``snapshot`` are for the peer link, which tells the other edge what this one observes;
    ``journal_head`` and ``peer_head`` too: it tells the peer this journal's head and hands on the peer's, so each
    edge's journal holds evidence of how far the other's reached (``journal verify --against``).
    """

    node: str
    peer: str | None = None
    clock: Callable[[], float] = time.time
    published: LaneSignals = dict
    snapshot: Snapshot = dict
    journal_head: JournalHead | None = None
    peer_head: PeerHead | None = None


class Source(Protocol):
    name: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def run(self, emit: Emit) -> None:
        """Emit samples until cancelled. Never raises for upstream trouble: it retries with backoff."""
        ...


def labelled(signal: str, labels: Mapping[str, str]) -> str:
    """``db_up`` + {site: ams} → ``db_up{site=ams}``: the name a profile uses for one labelled series."""
    if not labels:
        return signal
    return signal + "{" + ",".join(f"{k}={labels[k]}" for k in sorted(labels)) + "}"


DROP_LOG_EVERY = 60.0  # seconds between log lines about one drop reason: a flood of forgeries is counted, not logged


class InputHealth:
    """Counts malformed inputs and upstream failures of one source; logs only when the state changes.

    A source that refuses inputs for more reasons than malformed (the peer link: forged, replayed...) names them in
    ``drop_reasons``; ``dropped`` counts each, and each is logged at most once per ``DROP_LOG_EVERY``."""

    def __init__(self, source: str, drop_reasons: Sequence[str] = ()) -> None:
        self.source = source
        self.malformed = 0
        self.failures = 0
        self.dropped = dict.fromkeys(drop_reasons, 0)
        self._bad_input: str | None = None
        self._upstream_down: str | None = None
        self._drop_logged: dict[str, float] = {}
        self._log = structlog.get_logger("hybridops.source").bind(source=source)

    def malformed_input(self, reason: str) -> None:
        self.malformed += 1
        if "malformed" in self.dropped:
            self.dropped["malformed"] += 1
        if self._bad_input is None:
            self._log.warning("malformed input dropped (further ones are counted, not logged)", reason=reason)
        self._bad_input = reason

    def dropped_input(self, reason: str, detail: str) -> None:
        """An input refused for ``reason`` (one of ``drop_reasons``); "malformed" counts as malformed input too."""
        if reason == "malformed":
            self.malformed_input(detail)
            return
        self.dropped[reason] += 1
        now = time.monotonic()
        if now - self._drop_logged.get(reason, -DROP_LOG_EVERY) >= DROP_LOG_EVERY:
            self._drop_logged[reason] = now
            self._log.warning(
                "input dropped (counted; logged at most once a minute per reason)",
                reason=reason,
                detail=detail,
                dropped_total=self.dropped[reason],
            )

    def good_input(self) -> None:
        if self._bad_input is not None:
            self._log.info("input well-formed again", malformed_total=self.malformed)
            self._bad_input = None

    def upstream_failed(self, reason: str) -> None:
        self.failures += 1
        if self._upstream_down is None:
            self._log.warning("upstream lost; its signals go UNKNOWN once stale", reason=reason)
        self._upstream_down = reason

    def upstream_ok(self) -> None:
        if self._upstream_down is not None:
            self._log.info("upstream back", failures_total=self.failures)
            self._upstream_down = None

    @property
    def upstream_down(self) -> bool:
        return self._upstream_down is not None


class PollingSource:
    """Base for sources that ask their upstream on an interval (Prometheus, FRR/BIRD, strongSwan).

    Subclasses implement ``poll()``: one bounded fetch returning samples. The loop owns the cadence (fixed
    ticks, no drift), the timeout, backoff after failures (doubling up to ``max_backoff``) and the logging.
    """

    name: str

    def __init__(
        self,
        name: str,
        edge: str,
        interval: float,
        timeout: float,
        clock: Callable[[], float] = time.time,
        max_backoff: float = 30.0,
    ) -> None:
        self.name = name
        self.edge = edge
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.max_backoff = max_backoff
        self.health = InputHealth(name)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    async def poll(self) -> Iterable[Sample]:
        raise NotImplementedError

    def sample(self, signal: str, value: float | None, observed_at: float | None = None) -> Sample:
        return Sample(signal, value, self.clock() if observed_at is None else observed_at, self.name, self.edge)

    async def run(self, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.interval, self.max_backoff)
        while True:
            started = loop.time()
            try:
                async with asyncio.timeout(self.timeout):
                    samples = list(await self.poll())
            except (OSError, TimeoutError, UpstreamError) as exc:
                self.health.upstream_failed(str(exc) or type(exc).__name__)
                await backoff.wait()
                continue
            backoff.succeeded()
            self.health.upstream_ok()
            for sample in samples:
                emit(sample)
            await cancel.sleep(max(0.0, self.interval - (loop.time() - started)))


class UpstreamError(Exception):
    """The upstream answered, but not usefully (an error status, an unparseable reply): retry later."""
