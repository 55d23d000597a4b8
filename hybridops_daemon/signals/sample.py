"""What every source produces: one observed value of one signal at one edge."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    """``value`` is a number (booleans as 1.0/0.0) or None for "no data". Times are epoch seconds."""

    signal: str
    value: float | None
    observed_at: float
    source: str
    edge: str
