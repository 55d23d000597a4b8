"""Rule confirmation: threshold with direction, `for`, consecutive count, hysteresis, and UNKNOWN handling.

``advance`` moves one (rule, edge) memory forward given the latest reading and ``now``, reading the compiled rule's
levels and timers (the ones the horizon reads too); it is pure and runs on the daemon's hot path, so it returns bare
flags. ``evidence`` turns the same facts into the record a notable decision carries.
"""

from __future__ import annotations

from hybridops_daemon.config.profile import Rule
from hybridops_daemon.policy.compiled import CompiledRule
from hybridops_daemon.policy.types import RuleEvidence, RuleMemory
from hybridops_daemon.signals.sample import Sample


def is_breaching(rule: CompiledRule, value: float) -> bool:
    return value < rule.trip if rule.below else value > rule.trip


def is_clear(rule: CompiledRule, value: float) -> bool:
    """Past the clear level: a tripped rule un-trips. Between trip and clear (the band) a tripped rule stays tripped."""
    return value >= rule.clear if rule.below else value <= rule.clear


def advance(rule: CompiledRule, memory: RuleMemory, reading: Sample | None, now: float) -> tuple[RuleMemory, bool, bool]:
    """Return (memory after seeing ``reading`` at ``now``, whether the signal is UNKNOWN, whether the rule counts as tripped).

    A tripped rule whose signal went UNKNOWN keeps its memory but does not count as tripped under ``unknown: hold``.
    """
    unknown = reading is None or reading.value is None or now - reading.observed_at > rule.max_age
    breaching_since = memory.breaching_since
    consecutive = memory.consecutive
    last_sample_at = memory.last_sample_at
    tripped = memory.tripped

    if unknown:
        if rule.unknown_breaches:
            if not tripped:
                # No samples to count: UNKNOWN is a continuous breach, confirmed by time alone.
                if breaching_since is None:
                    breaching_since = now
                if now - breaching_since >= rule.confirm:
                    tripped = True
            counts = tripped
        else:
            counts = False  # HOLD: memory stays as it was; confirmation neither advances nor resets
    else:
        assert reading is not None and reading.value is not None
        if last_sample_at is None or reading.observed_at > last_sample_at:
            if is_breaching(rule, reading.value):
                # Remembered only for breaching samples, so each is counted once; re-reading a healthy sample is
                # idempotent, which lets a healthy steady state leave the memory (and the lane state) untouched.
                last_sample_at = reading.observed_at
                consecutive += 1
                if breaching_since is None:
                    breaching_since = reading.observed_at
            else:
                consecutive = 0
                breaching_since = None
                if tripped and is_clear(rule, reading.value):
                    tripped = False
        if not tripped and breaching_since is not None and consecutive >= rule.consecutive:
            tripped = now - breaching_since >= rule.confirm
        counts = tripped

    if (
        breaching_since == memory.breaching_since
        and consecutive == memory.consecutive
        and last_sample_at == memory.last_sample_at
        and tripped == memory.tripped
    ):
        return memory, unknown, counts
    return RuleMemory(breaching_since, consecutive, last_sample_at, tripped), unknown, counts


def evidence(
    rule: Rule, edge: str, memory: RuleMemory, reading: Sample | None, unknown: bool, tripped: bool, now: float
) -> RuleEvidence:
    since = memory.breaching_since
    return RuleEvidence(
        rule.name,
        edge,
        rule.signal,
        None if reading is None else reading.value,
        None if reading is None else now - reading.observed_at,
        unknown,
        since is not None,
        memory.consecutive,
        0.0 if since is None else now - since,
        tripped,
    )
