"""Cancellation that Python 3.11 can lose, and the one check that finds it.

Two awaits in 3.11 return (or raise something else) although the task was cancelled, and then never see that
cancel again: ``asyncio.wait_for`` when the awaited operation completes in the same loop iteration as the cancel
(aiomqtt wraps its broker round trips in it), and a ``TaskGroup`` whose child failed as the cancel arrived (it
raises the children's ``ExceptionGroup``, and a handler for it carries on). A retry loop that goes on after
either runs forever, and whatever cancelled it (a TaskGroup exit, shutdown) waits forever.

The count of a task's outstanding cancel requests survives the loss: ``Task.cancelling()`` is non-zero until the
request is withdrawn (``uncancel()``, as ``asyncio.timeout`` does for its own). So every retry loop checks it
before it waits.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` if this task was asked to stop and the request was swallowed on the way."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def sleep(delay: float) -> None:
    """``asyncio.sleep`` for retry and polling loops: first re-raises a cancel an earlier await swallowed."""
    raise_if_cancelled()
    await asyncio.sleep(delay)
