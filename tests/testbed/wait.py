"""Waiting for something to happen, for tests and testbed alike: poll a check until it returns something truthy.

Never sleep a fixed time and hope: ``eventually`` returns as soon as the check holds, and when it never does, it fails
naming what it waited for and what the check last gave (a falsy value, or the exception it raised: a check that raises
is "not yet", as a component that refuses connections is not ready yet).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from tests.testbed.process import ComponentFailed

if TYPE_CHECKING:
    from tests.testbed.process import Process

T = TypeVar("T")


def _timed_out(what: str, within: float, last: object) -> str:
    return f"timed out after {within}s waiting for {what} (last seen: {last!r})"


@overload
async def eventually(what: str, check: Callable[[], Awaitable[T | None]], within: float = ..., every: float = ...) -> T: ...


@overload
async def eventually(what: str, check: Callable[[], T | None], within: float = ..., every: float = ...) -> T: ...


async def eventually(what: str, check: Callable[[], object], within: float = 10.0, every: float = 0.05) -> Any:
    """Await ``check()`` (sync or async) every ``every`` s until it is truthy, and return it; fail after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: object = None
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        if loop.time() >= deadline:
            raise AssertionError(_timed_out(what, within, last))
        await asyncio.sleep(every)


def eventually_sync(
    what: str, check: Callable[[], T | None], within: float = 20.0, every: float = 0.1, proc: Process | None = None
) -> T:
    """``eventually`` for blocking code, mostly the testbed's readiness waits: hence the longer defaults (components
    start slowly on a busy machine, and a check often runs a client process). With ``proc``, fails at once, with its
    log, if that process exits."""
    deadline = time.monotonic() + within
    last: object = None
    while True:
        if proc is not None and not proc.alive():
            raise ComponentFailed(f"{proc.name} exited ({proc.popen.returncode}) before {what}:\n{proc.log_tail()}")
        try:
            result = check()
        except Exception as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            tail = f"\n{proc.log_tail()}" if proc is not None else ""
            raise ComponentFailed(_timed_out(what, within, last) + tail)
        time.sleep(every)
