"""Runs a source under test for the length of a block: its ``run`` in a task of a TaskGroup, cancelled at the end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from hybridops_daemon.signals.sample import Sample


@asynccontextmanager
async def running(source: Any, sink: Callable[[Sample], None]) -> AsyncIterator[None]:
    """``source`` (an async context manager with ``run(sink)``) emits into ``sink`` inside the block."""
    async with source, asyncio.TaskGroup() as group:
        task = group.create_task(source.run(sink))
        try:
            yield
        finally:
            task.cancel()  # a cancelled child does not fail the group
