"""A real Prometheus that holds weeks of history: a generated series with known outages, a known gap and a minute of
NaN, written as OpenMetrics and turned into TSDB blocks by ``promtool tsdb create-blocks-from openmetrics``.

Every value is a function of time (``History.primary_up`` ...), so a test states what an export must hold from how
the history was built, never from what an export gave.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.testbed.process import ComponentFailed, require
from tests.testbed.prometheus import Prometheus

Span = tuple[int, int]  # [start, end) in Unix seconds

LOOKBACK_S = 300  # Prometheus' default lookback: a range query repeats a series' last sample for up to 5 minutes
OUTAGE_LAG_S = 600.0


@dataclass(frozen=True)
class History:
    start: int  # the first sample (Unix seconds, a multiple of step)
    end: int  # the last sample
    step: int
    outages: tuple[Span, ...]  # primary_up 0 and the replica 10 minutes behind
    gap: Span  # no primary_up samples at all (lost scrapes)
    nans: Span  # replica_lag_seconds is NaN

    @property
    def times(self) -> range:
        return range(self.start, self.end + 1, self.step)

    def down(self, t: int) -> bool:
        return any(a <= t < b for a, b in self.outages)

    def primary_up(self, t: int) -> float | None:
        """The sample at ``t`` (None: there is none)."""
        if self.gap[0] <= t < self.gap[1]:
            return None
        return 0.0 if self.down(t) else 1.0

    def replica_lag(self, t: int) -> float:
        if self.nans[0] <= t < self.nans[1]:
            return math.nan
        return OUTAGE_LAG_S if self.down(t) else round(0.5 + (t // self.step) % 7 / 10, 1)

    def write_openmetrics(self, path: Path) -> int:
        """The whole history, one family after the other (as OpenMetrics wants); returns the number of samples."""
        lines = ["# TYPE primary_up gauge"]
        lines += [f"primary_up {value:g} {t}" for t in self.times if (value := self.primary_up(t)) is not None]
        lines.append("# TYPE replica_lag_seconds gauge")
        lines += [f"replica_lag_seconds {self.replica_lag(t):g} {t}".replace("nan", "NaN") for t in self.times]
        lines.append("# TYPE site_up gauge")
        for site in ("ams", "fra"):  # the profile reads ams only: fra must not reach the trace
            lines += [f'site_up{{site="{site}"}} 1 {t}' for t in self.times]
        lines.append("# EOF")
        path.write_text("\n".join(lines) + "\n")
        return len(lines) - 4


def weeks_of_history(end: int, days: int = 21, step: int = 10) -> History:
    """``days`` of ``step``-second samples up to ``end``: outages of 47 min and 2 h 13 min, a 3-hour gap, a NaN minute."""
    end -= end % step
    start = end - days * 86400
    day = 86400
    return History(
        start=start,
        end=end,
        step=step,
        outages=((start + days // 4 * day + 36000, start + days // 4 * day + 36000 + 47 * 60),
                 (start + days * 7 // 10 * day + 50400, start + days * 7 // 10 * day + 50400 + 133 * 60)),
        gap=(start + days // 2 * day + 7200, start + days // 2 * day + 7200 + 3 * 3600),
        nans=(start + days // 10 * day + 3600, start + days // 10 * day + 3660),
    )


def history_prometheus(workdir: Path, history: History) -> Prometheus:
    """A started Prometheus serving ``history`` (and scraping nothing). The caller stops it."""
    source = workdir / "history.om"
    history.write_openmetrics(source)
    data = workdir / "data"
    # One block per up-to-30 days instead of one per 2 hours: 2 blocks load in a second where 250 took most of a minute.
    done = subprocess.run(
        [require("promtool"), "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=720h", str(source), str(data)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise ComponentFailed(f"promtool tsdb create-blocks-from openmetrics failed: {done.stderr[-2000:]}")
    source.unlink()
    # The default retention (15 days) would delete the older weeks at start.
    server = Prometheus(workdir, [], args=["--storage.tsdb.retention.time=10y"])
    try:
        server.start()
    except ComponentFailed:
        server.stop()
        raise
    return server
