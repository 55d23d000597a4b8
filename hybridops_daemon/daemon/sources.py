"""Source supervision: each configured source runs for the daemon's lifetime, each in its own task.

A source handles its upstream's trouble itself (reconnects, backoff, UNKNOWN by age). This only restarts one that
crashed on a bug, so a bad source costs its signals, not the daemon; the restart delay doubles while it keeps
crashing and starts over once it has run healthily for ``healthy_after`` (one flaky week must not leave a minute's
backoff for the rest of the daemon's life).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from hybridops_daemon import cancel
from hybridops_daemon.config.sources import SourceSpec
from hybridops_daemon.retry import Backoff
from hybridops_daemon.signals.base import Emit, Source

log = structlog.get_logger("hybridops.daemon")

RESTART_MIN = 1.0
RESTART_MAX = 60.0
HEALTHY_AFTER = 60.0


class SourceSupervisor:
    def __init__(
        self,
        build: Callable[[SourceSpec], Source],
        emit: Emit,
        backoff: Callable[[], Backoff] = lambda: Backoff(RESTART_MIN, RESTART_MAX, healthy_after=HEALTHY_AFTER),
    ) -> None:
        self._build = build
        self._emit = emit
        self._backoff = backoff
        self.sources: dict[str, Source] = {}  # the running instance per source name (status shows its health)

    async def run(self, spec: SourceSpec) -> None:
        backoff = self._backoff()
        while True:
            # A run() that ended normally may have lost this task's cancel on the way (see cancel): not a restart.
            cancel.raise_if_cancelled()
            try:
                source = self._build(spec)
                async with source:
                    self.sources[spec.name] = source
                    backoff.succeeded()  # running: a crash after the healthy period restarts at once
                    await source.run(self._emit)
            except Exception:
                delay = backoff.next()
                log.exception("source crashed; restarting it", source=spec.name, retry_in_s=delay)
                await cancel.sleep(delay)
