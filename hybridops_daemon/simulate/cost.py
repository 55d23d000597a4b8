"""The cost model. Every price comes from the profile; none is written here.

- The policy pays the cutover chain's capacity (the sum of its steps' ``hourly_cost_usd``, ``Profile.hourly_cost()``)
  from the decision that starts a cutover or a drill until a failback run completes (for a drill, the teardown
  its deadline starts), or until the cutover run fails (the runner compensates it), or until the trace ends.
- The always-on baseline pays ``cost.always_on_usd_per_hour`` (default: the same capacity, 24/7) for the whole
  trace.
- ``saving_ratio = 1 - policy / always_on``; undefined (None) when the baseline costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hybridops_daemon.config.profile import Profile


@dataclass(frozen=True, slots=True)
class Cost:
    hourly_usd: float  # the cutover chain's capacity while it runs
    always_on_hourly_usd: float
    billed_s: float  # how long the policy kept that capacity up
    policy_usd: float
    always_on_usd: float
    saving_ratio: float | None


def always_on_rate(profile: Profile) -> float:
    if profile.cost is not None and profile.cost.always_on_usd_per_hour is not None:
        return profile.cost.always_on_usd_per_hour
    return profile.hourly_cost()


def cost_of(profile: Profile, billed: Iterable[tuple[float, float]], duration_s: float) -> Cost:
    hourly, baseline = profile.hourly_cost(), always_on_rate(profile)
    billed_s = sum((end - start for start, end in billed), 0.0)
    policy = hourly * billed_s / 3600
    always_on = baseline * duration_s / 3600
    return Cost(hourly, baseline, billed_s, policy, always_on, 1 - policy / always_on if always_on > 0 else None)
