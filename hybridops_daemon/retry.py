"""The one retry policy: exponential backoff, optional full jitter, and a reset once things have gone well for long
enough. The chain runner's step retries, the polling sources, the MQTT and peer reconnects and the daemon's source
restarts all use it, so "how long until the next try" has one answer and one test.

``healthy_after`` is what makes a flapping upstream different from one that failed once a week: a success resets
the delay only after the upstream has stayed healthy that long (None: any success resets at once). Jitter spreads
the reconnects of both edges after a broker restart; it is I/O timing, never policy.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from hybridops_daemon import cancel


class Backoff:
    """Delays of ``low``, ``2·low``, ``4·low`` … up to ``high`` (with jitter: uniform between ``low`` and that).
    ``high`` is a cap, also over ``low``: a profile's 30 s step backoff does not outlast the runner's 50 ms cap."""

    def __init__(
        self,
        low: float,
        high: float,
        *,
        jitter: bool = False,
        healthy_after: float | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.high = high  # the cap: no delay is ever longer, whatever the floor says
        self.low = min(low, high)
        self.jitter = jitter
        self.healthy_after = healthy_after
        self._rng = rng or random.Random()
        self._clock = clock
        self._ceiling = self.low
        self._healthy_since: float | None = None

    def next(self) -> float:
        """The delay before the next try, after a failure; each call without a reset doubles the next one."""
        if self._healthy_since is not None:
            healthy_for = self._clock() - self._healthy_since
            if self.healthy_after is None or healthy_for >= self.healthy_after:
                self._ceiling = self.low
            self._healthy_since = None
        delay = self._rng.uniform(self.low, self._ceiling) if self.jitter else self._ceiling
        self._ceiling = min(self._ceiling * 2, self.high)
        return delay

    def succeeded(self) -> None:
        """The upstream works again: the delay resets once it has stayed so for ``healthy_after`` seconds."""
        if self._healthy_since is None:
            self._healthy_since = self._clock()

    def reset(self) -> None:
        self._ceiling = self.low
        self._healthy_since = None

    async def wait(self) -> None:
        """Sleep the next delay (re-raising a cancel an earlier await swallowed: see ``cancel``)."""
        await cancel.sleep(self.next())
