"""Scheduled drills: jobs fire, coalesce, skip and stop cleanly (no minute waited). Cron parsing: test_cron.py."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apscheduler.events import (  # type: ignore[import-untyped]
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)
from structlog.testing import capture_logs

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.scheduler import DrillScheduler

EVERY_MINUTE = "* * * * *"


def profile(schedule: str | None, *, allowed: bool = True) -> Profile:
    step = {"id": "fip", "module": "network/floating-ip@v1"}
    return Profile.model_validate(
        {
            "name": "prod",
            "version": 1,
            "drill": {"allowed": allowed, "schedule": schedule},
            "chains": {"cutover": [step], "failback": [step]},
        }
    )


class Fires:
    """The daemon's side: records each fire; ``gate`` (when set up) holds a fire until released."""

    def __init__(self, *, hold: bool = False, error: Exception | None = None) -> None:
        self.lanes: list[str] = []
        self.called = asyncio.Event()
        self.gate: asyncio.Event | None = asyncio.Event() if hold else None
        self.cancelled = False
        self.error = error

    async def __call__(self, lane: str) -> None:
        self.lanes.append(lane)
        self.called.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.error is not None:
            raise self.error


class Events:
    """APScheduler's own account of each job run: executed, missed, or skipped for a running instance."""

    def __init__(self, drills: DrillScheduler) -> None:
        self.seen: list[JobEvent] = []
        self.arrived = asyncio.Event()
        drills.scheduler.add_listener(self._on, EVENT_JOB_EXECUTED | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)

    def _on(self, event: JobEvent) -> None:
        self.seen.append(event)
        self.arrived.set()

    async def next(self) -> list[int]:
        async with asyncio.timeout(5):
            await self.arrived.wait()
        self.arrived.clear()
        codes = [event.code for event in self.seen]
        self.seen.clear()
        return codes


@asynccontextmanager
async def scheduled(profiles: Mapping[str, Profile], fires: Fires, **kwargs: Any) -> AsyncIterator[DrillScheduler]:
    async with DrillScheduler(profiles, fires, **kwargs) as drills:
        yield drills


def due(drills: DrillScheduler, lane: str, at: datetime) -> None:
    """Make the lane's job due at ``at``, as if the clock had reached it: APScheduler wakes up and runs what is due."""
    drills.scheduler.modify_job(lane, next_run_time=at)


async def wait(event: asyncio.Event) -> None:
    async with asyncio.timeout(5):
        await event.wait()


# ------------------------------------------------------------------------------------------------ jobs


async def test_a_due_job_fires_for_its_lane_and_is_scheduled_again() -> None:
    fires = Fires()
    lanes = {"prod": profile(EVERY_MINUTE), "drill": profile(None), "staging": profile(EVERY_MINUTE, allowed=False)}
    async with scheduled(lanes, fires) as drills:
        events = Events(drills)
        assert set(drills.next_runs()) == {"prod"}  # no schedule, or drills not allowed: no job
        now = datetime.now(UTC)
        due(drills, "prod", now)
        assert await events.next() == [EVENT_JOB_EXECUTED]
        assert fires.lanes == ["prod"]
        following = drills.next_runs()["prod"]
        assert following > now and following.second == 0 and following - now <= timedelta(minutes=1)


async def test_missed_fires_are_coalesced_into_one() -> None:
    fires = Fires()
    async with scheduled({"prod": profile(EVERY_MINUTE)}, fires) as drills:
        events = Events(drills)
        now = datetime.now(UTC)
        due(drills, "prod", now.replace(second=0, microsecond=0) - timedelta(minutes=4))  # five fire times have passed
        assert await events.next() == [EVENT_JOB_EXECUTED]
        assert fires.lanes == ["prod"]
        assert drills.next_runs()["prod"] > now


async def test_a_fire_missed_by_more_than_the_grace_is_skipped() -> None:
    fires = Fires()
    missed = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    daily = f"{missed.minute} {missed.hour} * * *"
    async with scheduled({"prod": profile(daily)}, fires, misfire_grace=300.0) as drills:
        events = Events(drills)
        due(drills, "prod", missed)
        assert await events.next() == [EVENT_JOB_MISSED]
        assert fires.lanes == []
        assert drills.next_runs()["prod"] == missed + timedelta(days=1)


async def test_a_fire_still_running_makes_the_next_one_skip() -> None:
    fires = Fires(hold=True)
    assert fires.gate is not None
    async with scheduled({"prod": profile(EVERY_MINUTE)}, fires) as drills:
        events = Events(drills)
        due(drills, "prod", datetime.now(UTC))
        await wait(fires.called)
        due(drills, "prod", datetime.now(UTC))
        assert await events.next() == [EVENT_JOB_MAX_INSTANCES]
        fires.gate.set()
        assert await events.next() == [EVENT_JOB_EXECUTED]
        due(drills, "prod", datetime.now(UTC))
        assert await events.next() == [EVENT_JOB_EXECUTED]
        assert fires.lanes == ["prod", "prod"]


async def test_a_failing_fire_is_logged_and_the_schedule_goes_on() -> None:
    fires = Fires(error=RuntimeError("the daemon is stopping"))
    async with scheduled({"prod": profile(EVERY_MINUTE)}, fires) as drills:
        events = Events(drills)
        with capture_logs() as logs:
            due(drills, "prod", datetime.now(UTC))
            assert await events.next() == [EVENT_JOB_EXECUTED]  # for APScheduler the job ran: the fire handled it
        assert [(e["event"], e["lane"]) for e in logs if e["log_level"] == "error"] == [("scheduled drill not submitted", "prod")]
        assert "prod" in drills.next_runs()


async def test_reschedule_replaces_the_jobs() -> None:
    fires = Fires()
    async with scheduled(
        {"prod": profile("0 3 * * *"), "drill": profile("*/5 * * * *"), "staging": profile(None)}, fires
    ) as drills:
        assert set(drills.next_runs()) == {"prod", "drill"}
        drills.reschedule({"prod": profile("30 4 * * *"), "drill": profile(None), "staging": profile("0 0 1 * *")})
        runs = drills.next_runs()
        assert set(runs) == {"prod", "staging"}
        assert (runs["prod"].hour, runs["prod"].minute) == (4, 30)
        assert (runs["staging"].day, runs["staging"].hour, runs["staging"].minute) == (1, 0, 0)

        with pytest.raises(ValueError, match="never fires"):
            drills.reschedule({"prod": profile("0 3 * * *"), "staging": profile("0 0 31 4 *")})
        assert drills.next_runs() == runs  # a bad expression changes nothing


# ------------------------------------------------------------------------------------------------ shutdown


async def test_leaving_waits_for_a_running_fire_and_leaves_nothing_behind() -> None:
    fires = Fires(hold=True)
    assert fires.gate is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drills = await DrillScheduler({"prod": profile(EVERY_MINUTE)}, fires).__aenter__()
        due(drills, "prod", datetime.now(UTC))
        await wait(fires.called)
        leaving = asyncio.create_task(drills.__aexit__(None, None, None))
        for _ in range(20):  # the fire is still held: leaving waits for it
            await asyncio.sleep(0)
        assert not leaving.done()
        fires.gate.set()
        await leaving
        gc.collect()  # a coroutine never awaited would warn here
    assert fires.lanes == ["prod"] and not fires.cancelled
    assert not drills.scheduler.running
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert [str(w.message) for w in caught] == []


async def test_a_fire_that_outlives_the_drain_is_cancelled() -> None:
    fires = Fires(hold=True)
    async with scheduled({"prod": profile(EVERY_MINUTE)}, fires, drain_timeout=0.05) as drills:
        due(drills, "prod", datetime.now(UTC))
        await wait(fires.called)
    assert fires.cancelled
    assert not drills.scheduler.running
    assert asyncio.all_tasks() == {asyncio.current_task()}
