"""The one retry policy (chain runner, polling sources, MQTT and peer reconnects, the daemon's source restarts)."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from hybridops_daemon.retry import Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_up_to_the_ceiling() -> None:
    backoff = Backoff(1.0, 10.0)
    assert [backoff.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_the_ceiling_caps_the_floor_too() -> None:
    backoff = Backoff(30.0, 0.05)
    assert [backoff.next(), backoff.next()] == [0.05, 0.05]


def test_a_success_resets_at_once_without_a_healthy_period() -> None:
    backoff = Backoff(0.5, 30.0)
    backoff.next(), backoff.next(), backoff.next()
    backoff.succeeded()
    assert backoff.next() == 0.5


def test_a_flapping_upstream_keeps_its_backoff_a_healthy_one_resets_it() -> None:
    clock = Clock()
    backoff = Backoff(1.0, 60.0, healthy_after=30.0, clock=clock)
    assert [backoff.next() for _ in range(3)] == [1.0, 2.0, 4.0]
    backoff.succeeded()
    clock.now += 5.0  # up for 5 s, then down again: still flapping
    assert backoff.next() == 8.0
    backoff.succeeded()
    clock.now += 30.0  # up for the whole healthy period: the next failure starts over
    assert backoff.next() == 1.0
    assert backoff.next() == 2.0


def test_jitter_stays_between_the_floor_and_the_current_ceiling() -> None:
    backoff = Backoff(0.1, 1.0, jitter=True, rng=random.Random(7))
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for ceiling in ceilings:
        assert 0.1 <= backoff.next() <= ceiling


async def test_wait_re_raises_a_cancel_an_earlier_await_swallowed() -> None:
    async def swallowing() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        # What a lost cancel looks like from here: the request stays counted, the error is gone.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(1)
        await Backoff(30.0, 30.0).wait()

    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await asyncio.create_task(swallowing())
