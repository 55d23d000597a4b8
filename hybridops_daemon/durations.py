"""Durations as operators write them ("250ms", "30s", "5m", "2h", "1d"), held as float seconds."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
DURATION_HINT = 'must be a duration like "30s"'


def parse_duration(value: object) -> float:
    """Return seconds for a duration string; bare numbers are seconds.

    Raises ValueError with the operator-facing hint on anything else, so config
    errors read the same wherever a duration appears.
    """
    if isinstance(value, bool):
        raise ValueError(DURATION_HINT)
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ValueError(DURATION_HINT)
        return float(value)
    if isinstance(value, str):
        match = DURATION_PATTERN.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(DURATION_HINT)


def format_duration(seconds: float) -> str:
    """Short human form used in decision reasons ("4.0s", "2m30s")."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
