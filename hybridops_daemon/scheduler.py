"""Scheduled drills: per lane, a cron job (APScheduler 3.x) that asks the daemon for a drill of that lane.

The scheduler only times: at each fire it awaits ``fire(lane)``, and the daemon turns that into an intent
(``Command.DRILL``, ``Trigger.SCHEDULE``, actor ``schedule``) that the loop decides on like any other. Jobs live in
memory: a drill whose time passed while the daemon was down is not run late, and after a loop stall only the latest
missed fire runs (``coalesce``), and only within ``misfire_grace`` seconds of its time. Expressions are five-field
crontab in UTC, read the way cron reads them (see ``hybridops_daemon.cron``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import structlog
from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN  # type: ignore[import-untyped]
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.cron import cron_trigger

log = structlog.get_logger("hybridops.scheduler")

Fire = Callable[[str], Awaitable[object]]


class DrillScheduler:
    """Calls ``fire(lane)`` at each lane's ``drill.schedule`` while inside ``async with``.

    Lanes whose profile has no schedule, or does not allow drills, get no job. One fire per lane at a time: a fire
    still running when the next is due makes that next one skip. Leaving the context stops new fires, lets running
    ones finish for ``drain_timeout`` seconds, then cancels them.
    """

    def __init__(
        self, profiles: Mapping[str, Profile], fire: Fire, *, misfire_grace: float = 300.0, drain_timeout: float = 5.0
    ) -> None:
        self._profiles = profiles
        self._fire = fire
        self._drain_timeout = drain_timeout
        self._running: set[asyncio.Task[Any]] = set()
        # The APScheduler instance (job ids are lane names), for status and tests; start/stop belong to this class.
        self.scheduler = AsyncIOScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": misfire_grace}
        )

    async def __aenter__(self) -> DrillScheduler:
        self.scheduler.start()  # on the running loop
        try:
            self.reschedule(self._profiles)
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.scheduler.pause()  # no new fires while the running ones finish
        if self._running:
            await asyncio.wait(set(self._running), timeout=self._drain_timeout)
        await self._shutdown()

    async def _shutdown(self) -> None:
        left = set(self._running)
        stopped = asyncio.Event()
        self.scheduler.add_listener(lambda _: stopped.set(), EVENT_SCHEDULER_SHUTDOWN)
        self.scheduler.shutdown(wait=False)  # runs on the loop's next turn and cancels the fires still running
        await stopped.wait()
        if left:
            await asyncio.wait(left)

    def reschedule(self, profiles: Mapping[str, Profile]) -> None:
        """Replace every lane's job with what ``profiles`` say (after a reload). Raises ValueError for a bad
        expression, before changing anything: config checking should have refused it already."""
        triggers = {
            lane: cron_trigger(profile.drill.schedule)
            for lane, profile in profiles.items()
            if profile.drill.schedule is not None and profile.drill.allowed
        }
        for job in self.scheduler.get_jobs():
            if job.id not in triggers:
                job.remove()
        for lane, trigger in triggers.items():
            self.scheduler.add_job(self._run, trigger, args=(lane,), id=lane, name=f"drill {lane}", replace_existing=True)
        log.info("drill schedule", next_runs={lane: when.isoformat() for lane, when in self.next_runs().items()})

    def next_runs(self) -> dict[str, datetime]:
        """Per scheduled lane, when its next drill fires (UTC)."""
        return {job.id: job.next_run_time for job in self.scheduler.get_jobs() if job.next_run_time is not None}

    def schedule(self) -> dict[str, tuple[float, float]]:
        """Per scheduled lane, its next fire and the seconds from it to the one after (epoch seconds): the metrics'
        view, from which a drill overdue is judged."""
        found: dict[str, tuple[float, float]] = {}
        for job in self.scheduler.get_jobs():
            at = job.next_run_time
            after = job.trigger.get_next_fire_time(at, at + timedelta(seconds=1)) if at is not None else None
            if at is not None and after is not None:
                found[job.id] = (at.timestamp(), (after - at).total_seconds())
        return found

    async def _run(self, lane: str) -> None:
        task = asyncio.current_task()
        assert task is not None, "APScheduler runs coroutine jobs as tasks"
        self._running.add(task)
        try:
            log.info("scheduled drill due", lane=lane)
            await self._fire(lane)
        except Exception:  # the daemon refusing (stopping, lane busy) must not end the schedule
            log.exception("scheduled drill not submitted", lane=lane)
        finally:
            self._running.discard(task)
