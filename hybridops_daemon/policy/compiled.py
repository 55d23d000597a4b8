"""A profile compiled once for the policy: its rules with their lookups done, and the timers ``now`` is compared with.

decide() evaluates this form and the horizon (``policy/horizon.py``) reads its levels from it, so the daemon and the
simulator cannot disagree about a signal's max age, a rule's ``for`` or the length of a window.
"""

from __future__ import annotations

from types import MappingProxyType

from hybridops_daemon.config.profile import Direction, Profile, Rule, UnknownMeans


class CompiledRule:
    """A rule with its lookups done once: the signal's max age, its levels and timers, whether it counts for
    corroboration. Confirmation (``policy/rules.py``) reads these, not the rule."""

    __slots__ = (
        "_keys",
        "below",
        "clear",
        "confirm",
        "consecutive",
        "counts",
        "max_age",
        "name",
        "rule",
        "signal",
        "trip",
        "unknown_breaches",
    )

    def __init__(self, rule: Rule, max_age: float, counts: bool) -> None:
        self.rule = rule
        self.name = rule.name
        self.signal = rule.signal
        self.max_age = max_age  # a reading older than this is UNKNOWN
        self.confirm = rule.for_  # how long a breach lasts before the rule trips
        self.counts = counts
        self.trip = rule.trip
        self.clear = rule.clear_level  # a tripped rule un-trips only past this level (hysteresis)
        self.below = rule.direction is Direction.BELOW
        self.consecutive = rule.consecutive  # breaching samples in a row before the rule trips
        self.unknown_breaches = rule.unknown is UnknownMeans.BREACH
        self._keys: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {}

    def keys(self, edge: str) -> tuple[tuple[str, str], tuple[str, str]]:
        """(memory key, reading key) for ``edge``, built once per edge rather than twice per call."""
        keys = self._keys.get(edge)
        if keys is None:
            keys = self._keys[edge] = ((self.name, edge), (self.signal, edge))
        return keys


class CompiledProfile:
    """The compiled rules (in the profile's order, and by name) and the lane's timers, in seconds."""

    __slots__ = ("action_window", "both_edges", "by_name", "cooldown", "max_actions", "profile", "rules", "stable_for")

    def __init__(self, profile: Profile) -> None:
        counted = profile.corroboration.rules
        self.profile = profile
        self.rules = tuple(
            CompiledRule(rule, profile.signals[rule.signal].max_age, counted is None or rule.name in counted)
            for rule in profile.rules
        )
        self.by_name = MappingProxyType({rule.name: rule for rule in self.rules})
        self.both_edges = profile.corroboration.both_edges
        self.cooldown = profile.cooldown  # after any action, before the next automatic one
        self.action_window = profile.action_limit.window  # an automatic action counts against the limit this long
        self.max_actions = profile.action_limit.max_actions
        self.stable_for = profile.failback.stable_for  # every rule clear this long before an automatic failback

    def edges(self, self_edge: str, peer_edge: str | None) -> tuple[str, ...]:
        """The edges every rule is evaluated on: the peer's too when corroboration wants both edges to agree."""
        return (self_edge, peer_edge or "peer") if self.both_edges else (self_edge,)


_COMPILED: dict[int, CompiledProfile] = {}


def compile_profile(profile: Profile) -> CompiledProfile:
    """Memoized per profile object (the compiled form holds the profile, so its id cannot be reused while cached):
    still pure, since a profile is frozen."""
    compiled = _COMPILED.get(id(profile))
    if compiled is not None and compiled.profile is profile:
        return compiled
    compiled = CompiledProfile(profile)
    if len(_COMPILED) > 64:  # profiles change only on reload; a small bound is plenty
        _COMPILED.clear()
    _COMPILED[id(profile)] = compiled
    return compiled
