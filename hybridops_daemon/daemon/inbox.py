"""What wakes the decision loop: chain ends, operator intents (each with the future its caller waits on), new samples,
signals. Everything that wants the loop to act puts it here; only the loop takes from it."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from hybridops_daemon.policy.types import ChainEvent, Decision, Intent


@dataclass
class QueuedIntent:
    intent: Intent
    reply: asyncio.Future[Decision] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


Event = ChainEvent | QueuedIntent


class Inbox:
    def __init__(self) -> None:
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._wake = asyncio.Event()

    def put(self, event: Event) -> None:
        self._events.put_nowait(event)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def wait(self, within: float) -> None:
        """Until something arrives or ``within`` seconds pass (the loop's tick)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._wake.wait()
        self._wake.clear()

    def take(self) -> list[Event]:
        events = []
        while not self._events.empty():
            events.append(self._events.get_nowait())
        return events
