"""Process lifecycle: signals that only set flags, and a systemd watchdog fed by the decision loop's progress.

The watchdog is the unit's promise that a stuck daemon is restarted. A timer that pings on its own proves only that
the event loop runs; the decision loop can sit on an await that never returns while the timer keeps systemd happy.
So the loop stamps every pass (idle ticks included) and the ping goes out only while the last stamp is recent.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterator

from hybridops_daemon.journal.store import Journal
from hybridops_daemon.sdnotify import Notifier


class Watchdog:
    """Pings ``WATCHDOG=1`` every ``interval`` (half systemd's WatchdogSec) while the decision loop stamps its passes
    at least that often; ``tick`` is how long the loop may idle between passes so that an idle loop still stamps."""

    def __init__(self, notifier: Notifier, clock: Callable[[], float] = time.monotonic) -> None:
        self._notifier = notifier
        self._clock = clock
        self.interval = notifier.watchdog_interval
        self._last_pass = clock()
        self.skipped = 0  # pings withheld because the loop made no progress

    def stamp(self) -> None:
        self._last_pass = self._clock()

    def tick(self, tick: float) -> float:
        return tick if self.interval is None else min(tick, self.interval / 2)

    async def run(self) -> None:
        if self.interval is None:
            return
        while True:
            if self._clock() - self._last_pass <= self.interval:
                self._notifier.watchdog()
            else:
                self.skipped += 1  # systemd restarts us once WatchdogSec passes without a ping
            await asyncio.sleep(self.interval)


@contextlib.contextmanager
def signal_flags(on_stop: Callable[[], None], on_reload: Callable[[], None]) -> Iterator[None]:
    """SIGTERM/SIGINT ask the loop to stop, SIGHUP to reload: handlers set flags and wake the loop, nothing more."""
    loop = asyncio.get_running_loop()
    handlers = ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop), (signal.SIGHUP, on_reload))
    for signum, handler in handlers:
        loop.add_signal_handler(signum, handler)
    try:
        yield
    finally:
        for signum, _ in handlers:
            loop.remove_signal_handler(signum)


def previous_stop_was_unclean(journal: Journal) -> bool:
    # last() also reads the copies a retention cut carries, so this holds after pruning.
    start, stop = journal.last("daemon.start"), journal.last("daemon.stop")
    return start is not None and (stop is None or stop.seq < start.seq)
