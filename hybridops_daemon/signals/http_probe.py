"""The HTTP probe source: GET a URL at a fixed cadence; the signal is 1.0 when it answers as expected, else 0.0.

A refused connection, a timeout, a wrong status or a too-slow answer all read 0.0: the target answered
badly or not at all, which is evidence about the target. UNKNOWN is something else (no fresh sample at
all) and is decided from staleness by the observation store, never here.

With ``latency_signal`` the probe also emits how long the answer took (any status), a load signal for a burst lane;
a timeout emits the timeout (the answer took at least that), and a probe that reached nobody emits no latency: how
slow a service is that does not answer is not known.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import aiohttp
import structlog
from yarl import URL

from hybridops_daemon import cancel
from hybridops_daemon.config.sources import HttpProbeSource
from hybridops_daemon.signals.base import SourceContext
from hybridops_daemon.signals.sample import Sample

log = structlog.get_logger()


def public_url(url: str) -> str:
    """``url`` without user info, query or fragment: the parts that may carry credentials."""
    return str(URL(url).with_user(None).with_query(None).with_fragment(None))


class HttpProbe:
    """One HTTP target. Use as ``async with HttpProbe(spec, edge) as probe``; it owns its client session."""

    @classmethod
    def from_context(cls, spec: HttpProbeSource, context: SourceContext) -> Self:
        return cls(spec, context.node, context.clock)

    def __init__(self, spec: HttpProbeSource, edge: str, clock: Callable[[], float] = time.time) -> None:
        self.name = spec.name
        self.spec = spec
        self.edge = edge
        self.source = f"http_probe:{public_url(spec.url)}"
        self.last_error: str | None = None  # why the last probe read 0.0; None after a good one
        self._clock = clock
        self._up: bool | None = None  # None until the first probe
        self.latency: float | None = None  # the last probe's, for ``latency_signal``; None when it reached nobody
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        # A fresh connection per probe (force_close): a pooled keep-alive connection would hide a listener
        # that no longer accepts, and one closed by the server's idle timeout would read as a false "down".
        # Proxy variables are ignored (trust_env=False, the default): the probe measures the direct path.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe_once(self) -> Sample:
        """One GET, bounded by ``spec.timeout`` end to end (connect, send, response headers)."""
        if self._session is None:
            raise RuntimeError("HttpProbe.probe_once called outside `async with`")
        started = time.monotonic()
        error: str | None
        self.latency = None
        try:
            # Bounded by asyncio.timeout, with aiohttp's own timers off (ClientTimeout()): on Python 3.11 aiohttp's
            # timer, firing in the loop iteration of an outside cancel, turns that cancel into a TimeoutError and
            # withdraws it (uncancel), so the probe loop ran on. No redirects: a 302 to a login page answering 200
            # is not the health the operator asked for.
            async with (
                asyncio.timeout(self.spec.timeout),
                self._session.get(self.spec.url, allow_redirects=False, timeout=aiohttp.ClientTimeout()) as response,
            ):
                self.latency = time.monotonic() - started
                error = self._judge(response.status, self.latency)
        except TimeoutError:
            error = f"timeout after {self.spec.timeout:g}s"
            self.latency = self.spec.timeout
        except aiohttp.ClientConnectorError as exc:
            error = (
                "connection refused"
                if isinstance(exc.os_error, ConnectionRefusedError)
                else f"unreachable ({exc.os_error.strerror or type(exc.os_error).__name__})"
            )
        except aiohttp.ClientError as exc:
            # The type only: some aiohttp messages quote the URL, which may carry credentials.
            error = f"request failed ({type(exc).__name__})"
        observed_at = self._clock()
        self._note(error)
        return Sample(
            signal=self.spec.signal,
            value=1.0 if error is None else 0.0,
            observed_at=observed_at,
            source=self.source,
            edge=self.edge,
        )

    async def run(self, emit: Callable[[Sample], None]) -> None:
        """Probe and emit every ``spec.interval`` until cancelled.

        Ticks are fixed (start + n × interval), so the probe's own duration never accumulates as drift; a
        probe that overruns its slot (timeout > interval) skips the missed ticks rather than bursting.
        """
        loop = asyncio.get_running_loop()
        interval = self.spec.interval
        tick = loop.time()
        while True:
            sample = await self.probe_once()
            emit(sample)
            if self.spec.latency_signal is not None and self.latency is not None:
                emit(sample._replace(signal=self.spec.latency_signal, value=round(self.latency, 6)))
            tick += interval
            now = loop.time()
            if tick < now:
                tick += math.ceil((now - tick) / interval) * interval
            await cancel.sleep(tick - now)  # a cancel the probe's request swallowed is re-raised here

    def _judge(self, status: int, latency: float) -> str | None:
        if status != self.spec.expect_status:
            return f"status {status} (expected {self.spec.expect_status})"
        if self.spec.max_latency is not None and latency > self.spec.max_latency:
            return f"latency {latency:.3f}s > {self.spec.max_latency:g}s"
        return None

    def _note(self, error: str | None) -> None:
        """Keep ``last_error``; log only when the target goes down (or starts down) and when it comes back."""
        self.last_error = error
        up = error is None
        if up == self._up:
            return
        fields = {"signal": self.spec.signal, "edge": self.edge, "source": self.source}
        if not up:
            log.warning("http probe down", reason=error, **fields)
        elif self._up is False:
            log.info("http probe up", **fields)
        self._up = up
