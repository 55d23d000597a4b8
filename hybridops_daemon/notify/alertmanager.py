"""Direct notification: the daemon posts its own alerts to Alertmanager's v2 API (``POST /api/v2/alerts``).

A page then waits for no scrape, and does not depend on Prometheus being up. The daemon's loop is never held: the
alerts (``notify/alerts.py``) are computed from memory at most once a second, and every post happens in this
sender's own task, which the daemon's TaskGroup owns.

What is sent, and when (the same protocol Prometheus speaks to Alertmanager):
- a new alert at once, firing, with ``endsAt`` ``resolve_after`` ahead: if no edge re-sends it (the daemon died, its
  successor sees nothing wrong), Alertmanager resolves it by itself then;
- an active alert again every ``resend_every``, and at once when its annotations change (the run's current step);
- an alert that is over at once, with ``endsAt`` = when it ended;
- nothing when this node stops leading a lane: its successor re-sends the same alerts or lets them expire. Resolving
  them here would resolve what the new leader still reports.

While no Alertmanager answers, notices wait in a bounded queue (the oldest dropped first, and counted), retried with
backoff; a firing notice sent late gets a fresh ``endsAt``. Each batch goes to every URL; it is delivered when one
accepts it (an Alertmanager cluster shares what one member received). A 4xx answer is not retried: the same alerts
would be refused again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import aiohttp
import structlog

from hybridops_daemon import cancel
from hybridops_daemon.config.models import AlertmanagerNotifyConfig
from hybridops_daemon.notify.alerts import Alert, Key, Report
from hybridops_daemon.retry import Backoff

log = structlog.get_logger("hybridops.notify")

EVALUATE_EVERY = 1.0  # a page is at most this late; the alerts are a dict built from memory, cheap at this rate
MAX_BATCH = 64  # alerts per POST: Alertmanager takes more, but one bad alert rejects its whole batch
FLUSH_ON_STOP = 2.0  # a stopping daemon tries this long to deliver what is queued (a run's end, say)


@dataclass(frozen=True, slots=True)
class Notice:
    key: Key
    alert: Alert
    starts_at: float
    ends_at: float | None  # None: firing (endsAt set when sent)


@dataclass
class NotifyStats:
    queued: int = 0
    active: int = 0
    dropped: int = 0  # oldest notices pushed out of a full queue
    delivered: int = 0  # notices an Alertmanager accepted
    rejected: int = 0  # notices an Alertmanager refused (4xx): not retried
    failed_posts: int = 0  # posts that found no Alertmanager answering
    reachable: bool | None = None  # how the last post went; None before the first

    def document(self) -> dict[str, int | bool | None]:
        """For ``hyopsctl status``."""
        return {
            "reachable": self.reachable,
            "active": self.active,
            "queued": self.queued,
            "dropped": self.dropped,
            "rejected": self.rejected,
        }


class AlertmanagerNotifier:
    """Owns its sender task and HTTP session: ``async with`` it; ``wake()`` when something may have changed."""

    def __init__(
        self,
        config: AlertmanagerNotifyConfig,
        alerts: Callable[[], Report],
        token: str | None = None,
        clock: Callable[[], float] = time.time,
        evaluate_every: float = EVALUATE_EVERY,
    ) -> None:
        self._config = config
        self._alerts = alerts
        self._token = token
        self._clock = clock
        self._evaluate_every = evaluate_every
        self._active: dict[Key, tuple[Alert, float]] = {}  # alert and when it started
        self._queue: collections.deque[Notice] = collections.deque()
        self._resent_at = 0.0
        self._retry_at = 0.0
        self._backoff = Backoff(1.0, 30.0, jitter=True)
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.stats = NotifyStats()

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout())  # bounded by asyncio.timeout instead
        self._task = asyncio.get_running_loop().create_task(self._run(), name="notify-alertmanager")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            if self._queue:  # the last notices (a run's end) are worth a short wait; the next start re-evaluates
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FLUSH_ON_STOP):
                        await self._deliver(self._clock())
        finally:
            if self._session is not None:
                await self._session.close()

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._evaluate_every):
                    await self._wake.wait()
            self._wake.clear()
            cancel.raise_if_cancelled()
            now = self._clock()
            self.evaluate(now)
            if self._queue and now >= self._retry_at:
                try:
                    await self._deliver(now)
                except Exception:  # a bug in a post must cost this round's pages, never the sender task
                    log.exception("could not post the daemon's alerts; retrying")
                    self._retry_at = now + self._backoff.next()

    def evaluate(self, now: float) -> None:
        """Queue what changed since the last evaluation, and the periodic re-send of what is still active."""
        try:
            report = self._alerts()
        except Exception:  # a bug in building the alerts must cost pages, never the daemon
            log.exception("could not build the daemon's alerts; trying again in a second")
            return
        current = report.alerts
        for key in [key for key in self._active if key not in current]:
            alert, starts = self._active.pop(key)
            if alert.scope in report.scopes:  # over; else led elsewhere now, and not this node's to resolve
                self._enqueue(Notice(key, alert, starts, now))
        for key, alert in current.items():
            known = self._active.get(key)
            if known is None or known[0] != alert:
                starts = known[1] if known is not None else now
                self._active[key] = (alert, starts)
                self._enqueue(Notice(key, alert, starts, None))
        if now - self._resent_at >= self._config.resend_every:
            self._resent_at = now
            queued = {notice.key for notice in self._queue}
            for key, (alert, starts) in self._active.items():
                if key not in queued:  # a backlog already carries it: no need to push older notices out
                    self._enqueue(Notice(key, alert, starts, None))
        self.stats.active, self.stats.queued = len(self._active), len(self._queue)

    def _enqueue(self, notice: Notice) -> None:
        if len(self._queue) >= self._config.queue:
            self._queue.popleft()
            self.stats.dropped += 1
        self._queue.append(notice)

    async def _deliver(self, now: float) -> None:
        while self._queue:
            batch = [self._queue[i] for i in range(min(MAX_BATCH, len(self._queue)))]
            outcome = await self._post([self._document(notice, now) for notice in _latest_per_alert(batch)])
            if outcome == "unreachable":
                self.stats.failed_posts += 1
                self._retry_at = now + self._backoff.next()
                self._note(False)
                break
            for _ in batch:
                self._queue.popleft()
            if outcome == "rejected":
                self.stats.rejected += len(batch)
            else:
                self.stats.delivered += len(batch)
            self._backoff.reset()
            self._note(True)
        self.stats.queued = len(self._queue)

    def _document(self, notice: Notice, now: float) -> dict[str, Any]:
        ends = notice.ends_at if notice.ends_at is not None else now + self._config.resolve_after
        return {**notice.alert.document(), "startsAt": _iso(notice.starts_at), "endsAt": _iso(ends)}

    async def _post(self, alerts: list[dict[str, Any]]) -> str:
        """ "delivered" when one Alertmanager accepted the batch, "rejected" when one refused it (4xx), else
        "unreachable"."""
        assert self._session is not None
        headers = {"Authorization": f"Bearer {self._token}"} if self._token is not None else {}
        outcome = "unreachable"
        for url in self._config.urls:
            try:
                async with (
                    asyncio.timeout(self._config.timeout),
                    self._session.post(f"{url.rstrip('/')}/api/v2/alerts", json=alerts, headers=headers) as response,
                ):
                    if response.status < 300:
                        return "delivered"
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        body = (await response.content.read(500)).decode("utf-8", "replace")
                        log.error("alertmanager refused the daemon's alerts", url=url, status=response.status, answer=body)
                        outcome = "rejected"
                    else:
                        log.debug("alertmanager answered with an error", url=url, status=response.status)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                # The type only: some aiohttp messages quote the URL, which may carry credentials.
                log.debug("alertmanager not reachable", url=url, error=type(exc).__name__)
        return outcome

    def _note(self, reachable: bool) -> None:
        """Log on transitions only: an unreachable Alertmanager is one line, not one per retry."""
        if reachable == self.stats.reachable:
            return
        if not reachable:
            log.warning("no alertmanager reachable; alerts are queued", urls=list(self._config.urls), queued=len(self._queue))
        elif self.stats.reachable is False:
            log.info("alertmanager reachable again; queued alerts delivered")
        self.stats.reachable = reachable


def _latest_per_alert(batch: list[Notice]) -> list[Notice]:
    """One notice per alert and batch, the newest: Alertmanager would merge them anyway, and a firing notice followed
    by its resolution must not arrive as firing last."""
    latest: dict[Key, Notice] = {}
    for notice in batch:
        latest.pop(notice.key, None)
        latest[notice.key] = notice
    return list(latest.values())


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
