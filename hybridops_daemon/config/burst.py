"""A burst lane's policy (a profile's ``burst:``): the load signal, the capacity levels it steps through, its timing
and its budget. ``policy/burst.py`` decides from it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hybridops_daemon.config.base import Duration, Name, PositiveDuration, SignalName, Strict


class BurstLevel(Strict):
    """Capacity ``size`` once the pressure has passed ``trip`` for ``scale_out_after``; one level down once it has
    stayed on the other side of ``clear`` for ``scale_in_after`` (``clear`` short of ``trip``: the hysteresis band)."""

    size: int = Field(ge=1)
    trip: float
    clear: float


class BurstBudget(Strict):
    hourly_usd: float | None = Field(default=None, gt=0, description="size × unit price may not exceed this")
    monthly_usd: float | None = Field(default=None, gt=0, description="month-to-date spend (UTC months) may not exceed this")
    over_budget: Literal["cap", "refuse"] = Field(
        default="cap", description="a scale-out over budget goes to the largest affordable level (cap) or not at all"
    )


class BurstPolicy(Strict):
    signal: SignalName
    direction: Literal["above", "below"] = Field(default="above", description="which way the signal means pressure")
    levels: tuple[BurstLevel, ...] = Field(min_length=1, max_length=16)
    unit_price_usd_hour: float = Field(ge=0, description="price of one unit of size for an hour")
    scale_out_after: Duration = 120.0
    scale_in_after: Duration = 900.0
    step_cooldown: Duration = 300.0
    max_duration: PositiveDuration | None = Field(default=None, description="a burst this long scales in to zero")
    budget: BurstBudget = BurstBudget()
    yields_to: tuple[Name, ...] = Field(default=(), description="DR lanes whose cutover comes first: no scale-out meanwhile")

    @model_validator(mode="after")
    def _levels_climb(self) -> BurstPolicy:
        above = self.direction == "above"
        for i, level in enumerate(self.levels):
            if (level.clear > level.trip) if above else (level.clear < level.trip):
                raise ValueError(f"levels[{i}]: clear must be on the calm side of trip ({'<=' if above else '>='} trip)")
            if i and level.size <= self.levels[i - 1].size:
                raise ValueError(f"levels[{i}]: sizes must grow level by level")
            if i and ((level.trip <= self.levels[i - 1].trip) if above else (level.trip >= self.levels[i - 1].trip)):
                raise ValueError(f"levels[{i}]: each level's trip must be past the one before it")
        return self

    def passed(self, value: float, level: float) -> bool:
        """``value`` is at or past ``level`` on the pressure side."""
        return value >= level if self.direction == "above" else value <= level

    def cost_per_hour(self, size: int) -> float:
        return size * self.unit_price_usd_hour
