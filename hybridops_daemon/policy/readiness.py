"""Readiness in the pure core: which steps of a chain a recent preflight reported broken, read from the samples.

Each preflight result reaches the observation store as a sample of ``ready_<chain>_<step>`` (1.0 ready, 0.0 not, its
reason as the sample's ``detail``) on this edge, so decide() and the simulator read it like any other signal. A step
with no sample, or one older than the profile's ``readiness.max_age`` (UNKNOWN), never counts as broken.
"""

from __future__ import annotations

from collections.abc import Mapping

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.signals.sample import Sample


def signal_name(chain: str, step: str) -> str:
    return f"ready_{chain}_{step.replace('-', '_')}"


def broken_steps(
    readings: Mapping[tuple[str, str], Sample], edge: str, profile: Profile, chain: str, now: float
) -> list[tuple[str, str]]:
    """``(step, reason)`` for each step of ``chain`` whose fresh readiness on ``edge`` is 0, in chain order."""
    max_age = profile.readiness.max_age
    broken = []
    for step in profile.chain("cutover" if chain == "cutover" else "failback"):
        reading = readings.get((signal_name(chain, step.id), edge))
        if reading is not None and reading.value == 0.0 and now - reading.observed_at <= max_age:
            broken.append((step.id, reading.detail or "no reason given"))
    return broken


def described(broken: list[tuple[str, str]]) -> str:
    return "; ".join(f"{step}: {reason}" for step, reason in broken)
