"""Ground truth as intervals of time: the fault windows a replay is scored against, and files of intervals.

A fault is an interval of time, not a run of lines. In a multi-signal trace the samples of signals a fault did not
touch are interleaved with those it did; counting runs of consecutive labelled lines split one outage into as many
"faults" as there were interleaved samples. Here:

- the window of one series' fault-labelled samples (a series: a signal on one edge) runs from its first labelled
  sample to that series' next sample that is not labelled a fault (or to the end of the trace, when none follows):
  a sample's state holds until the series says otherwise, as a reading does in the observation store;
- explicit ``{"t": …, "fault": "start" | "end"}`` lines of a trace and the intervals of a ``--faults`` file are
  windows as they are;
- windows that overlap or touch merge into one fault.

A file of intervals (``simulate --faults``, ``history --incidents``) is text, one interval a line:
``START END [description]``; blank lines and lines starting with ``#`` are skipped. What START and END are depends on
the reader (seconds from the trace start, or wall-clock times); see ``offset_seconds`` and ``wall_clock``.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Final

from hybridops_daemon import limits
from hybridops_daemon.durations import parse_duration
from hybridops_daemon.limits import InputRejected

Interval = tuple[float, float]

MAX_INTERVAL_FILE_BYTES: Final = 1024 * limits.KIB  # a year of incidents is a few KiB
MAX_INTERVALS: Final = 100_000


class IntervalError(Exception):
    """A file of intervals (or a time given on the command line) that cannot be read; names the file and line."""

    def __init__(self, file: str, line: int | None, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}" if line is not None else f"{file}: {message}")


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, with every pair that overlaps or touches merged into one."""
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def sample_windows(times: array[float], signals: array[int], edges: array[int], faults: bytearray, end: float) -> list[Interval]:
    """Each series' labelled samples as windows (module docstring), unmerged. Only the samples from a labelled one
    to the end of its window are visited: ``bytearray.find`` skips the healthy stretches in C."""
    windows: list[Interval] = []
    opened: dict[tuple[int, int], float] = {}  # series (signal id, edge id) → start of its open window
    i = faults.find(1)
    count = len(faults)
    while 0 <= i < count:
        series = (signals[i], edges[i])
        if faults[i]:
            opened.setdefault(series, times[i])
        elif series in opened:
            windows.append((opened.pop(series), times[i]))
        i += 1
        if not opened:
            i = faults.find(1, i)
    windows.extend((start, end) for start in opened.values())
    return windows


def load_intervals(path: Path, parse_time: Callable[[str], float], display: str | None = None) -> list[tuple[Interval, int]]:
    """Every interval of the file with its line number, in file order. Raises IntervalError.

    ``parse_time`` turns one field into seconds and raises ValueError with a message for the operator."""
    shown = display if display is not None else str(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_INTERVAL_FILE_BYTES + 1)  # never more, whatever the file is (a device, say)
    except FileNotFoundError:
        raise IntervalError(shown, None, "file not found") from None
    except OSError as exc:
        raise IntervalError(shown, None, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_INTERVAL_FILE_BYTES:
        raise IntervalError(shown, None, str(InputRejected("file", "size in bytes", MAX_INTERVAL_FILE_BYTES)))
    found: list[tuple[Interval, int]] = []
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise IntervalError(shown, lineno, "not UTF-8 text") from None
        if not text or text.startswith("#"):
            continue
        fields = text.split(maxsplit=2)
        if len(fields) < 2:
            raise IntervalError(shown, lineno, "expected START END [description]")
        try:
            start, end = parse_time(fields[0]), parse_time(fields[1])
        except ValueError as exc:
            raise IntervalError(shown, lineno, str(exc)) from None
        if not start < end:
            raise IntervalError(shown, lineno, f"START {fields[0]} must be before END {fields[1]}")
        if len(found) >= MAX_INTERVALS:
            raise IntervalError(shown, lineno, str(InputRejected("file", "intervals", MAX_INTERVALS)))
        found.append(((start, end), lineno))
    return found


def offset_seconds(text: str) -> float:
    """Seconds from the trace start: a number (``900``) or a duration (``15m``)."""
    try:
        value = float(text)
    except ValueError:
        try:
            return parse_duration(text)
        except ValueError:
            raise ValueError(f"{text!r} is not seconds from the trace start (900, 15m, 2h)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} is not seconds from the trace start (900, 15m, 2h)")
    return value


def wall_clock(text: str) -> float:
    """Unix seconds from an RFC 3339 time with its zone (``2026-11-03T14:05:00Z``) or a number of Unix seconds."""
    try:
        value = float(text)
    except ValueError:
        return _rfc3339(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} is not a time: give RFC 3339 (2026-11-03T14:05:00Z) or Unix seconds")
    return value


def _rfc3339(text: str) -> float:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give RFC 3339 (2026-11-03T14:05:00Z) or Unix seconds") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no zone: end it with Z or an offset (+01:00)")
    return when.timestamp()
