"""Rule confirmation: threshold with direction, `for`, consecutive count, hysteresis, and UNKNOWN handling.

One function, ``advance``, moves one (rule, edge) memory forward given the latest reading and ``now``.
It is pure and cheap: it runs once per rule and edge for every sample the daemon sees.
"""

from __future__ import annotations

from hybridops_daemon.config.models import Direction, Rule, UnknownMeans
from hybridops_daemon.policy.types import EMPTY_MEMORY, RuleEvidence, RuleMemory
from hybridops_daemon.signals.sample import Sample


def is_breaching(rule: Rule, value: float) -> bool:
    return value < rule.trip if rule.direction is Direction.BELOW else value > rule.trip


def is_clear(rule: Rule, value: float) -> bool:
    """Past the clear level: a tripped rule un-trips. Between trip and clear (the band) a tripped rule stays tripped."""
    level = rule.clear_level
    return value >= level if rule.direction is Direction.BELOW else value <= level


def advance(
    rule: Rule, edge: str, memory: RuleMemory, reading: Sample | None, max_age: float, now: float
) -> tuple[RuleMemory, RuleEvidence]:
    """Return the rule's memory after seeing ``reading`` at ``now``, and the evidence for the decision."""
    unknown = reading is None or reading.value is None or now - reading.observed_at > max_age
    breaching_since = memory.breaching_since
    consecutive = memory.consecutive
    last_sample_at = memory.last_sample_at
    tripped = memory.tripped
    value = None if reading is None else reading.value

    if unknown:
        if rule.unknown is UnknownMeans.BREACH and not tripped:
            # No samples to count: UNKNOWN is a continuous breach, confirmed by time alone.
            if breaching_since is None:
                breaching_since = now
            if now - breaching_since >= rule.for_:
                tripped = True
        # HOLD: memory stays as it was; confirmation neither advances nor resets.
    else:
        assert reading is not None and value is not None
        if last_sample_at is None or reading.observed_at > last_sample_at:
            last_sample_at = reading.observed_at
            if is_breaching(rule, value):
                consecutive += 1
                if breaching_since is None:
                    breaching_since = reading.observed_at
            else:
                consecutive = 0
                breaching_since = None
                if tripped and is_clear(rule, value):
                    tripped = False
        if not tripped and breaching_since is not None and consecutive >= rule.consecutive and now - breaching_since >= rule.for_:
            tripped = True

    if (
        breaching_since == memory.breaching_since
        and consecutive == memory.consecutive
        and last_sample_at == memory.last_sample_at
        and tripped == memory.tripped
    ):
        new_memory = memory
    elif breaching_since is None and consecutive == 0 and not tripped and last_sample_at is None:
        new_memory = EMPTY_MEMORY
    else:
        new_memory = RuleMemory(breaching_since, consecutive, last_sample_at, tripped)

    evidence = RuleEvidence(
        rule=rule.name,
        edge=edge,
        signal=rule.signal,
        value=value,
        age_s=None if reading is None else round(now - reading.observed_at, 3),
        unknown=unknown,
        breaching=breaching_since is not None,
        consecutive=consecutive,
        breaching_for_s=0.0 if breaching_since is None else round(now - breaching_since, 3),
        tripped=tripped and (not unknown or rule.unknown is UnknownMeans.BREACH),
    )
    return new_memory, evidence
