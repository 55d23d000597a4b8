"""Runs a source under test for the length of a block (``running``) and collects what it emits (``Seen``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from hybridops_daemon.signals.sample import Sample
from tests.testbed.wait import eventually

T = TypeVar("T")


class Seen:
    """The sink for a source under test: every sample it emitted, in order, with the monotonic time each arrived.

    ``forward`` also hands each sample on (to an ObservationStore, say). Indexes from ``mark()`` delimit "after this".
    """

    def __init__(self, forward: Callable[[Sample], object] | None = None) -> None:
        self.samples: list[Sample] = []
        self.arrived: list[float] = []
        self._forward = forward

    def __call__(self, sample: Sample) -> None:
        self.samples.append(sample)
        self.arrived.append(time.monotonic())
        if self._forward is not None:
            self._forward(sample)

    def mark(self) -> int:
        return len(self.samples)

    def of(self, signal: str, since: int = 0) -> list[Sample]:
        return [s for s in self.samples[since:] if s.signal == signal]

    def latest(self, signal: str) -> Sample | None:
        return next((s for s in reversed(self.samples) if s.signal == signal), None)

    def arrival(self, sample: Sample) -> float:
        """When ``sample`` (this very object) arrived."""
        return next(t for s, t in zip(self.samples, self.arrived, strict=True) if s is sample)

    async def until(self, what: str, check: Callable[[], T | None], within: float = 15.0) -> T:
        try:
            return await eventually(what, check, within)
        except AssertionError as exc:
            tail = [(s.signal, s.value) for s in self.samples[-6:]]
            raise AssertionError(f"{exc}; last samples: {tail}") from None

    async def value(self, signal: str, value: float | None, within: float = 15.0) -> Sample:
        """The latest sample of ``signal``, once it reads ``value``."""

        def check() -> Sample | None:
            sample = self.latest(signal)
            return sample if sample is not None and sample.value == value else None

        return await self.until(f"{signal} == {value}", check, within)

    async def first(self, signal: str, value: float | None, since: int = 0, within: float = 15.0) -> Sample:
        """The first sample of ``signal`` reading ``value`` at or after index ``since``."""
        return await self.until(
            f"{signal} == {value} after sample #{since}",
            lambda: next((s for s in self.of(signal, since) if s.value == value), None),
            within,
        )


@asynccontextmanager
async def running(source: Any, seen: Seen | None = None) -> AsyncIterator[Seen]:
    """``source`` (an async context manager with ``run(emit)``) emits into ``seen`` (a new one by default) inside the
    block; its ``run`` must neither end by itself nor swallow the cancellation that ends it."""
    sink = Seen() if seen is None else seen
    async with source, asyncio.TaskGroup() as group:
        task = group.create_task(source.run(sink))
        try:
            yield sink
            assert not task.done(), f"the source's run() ended by itself: {task}"
        finally:
            task.cancel()  # a cancelled child does not fail the group
    assert task.cancelled(), "the source's run() swallowed its cancellation"
