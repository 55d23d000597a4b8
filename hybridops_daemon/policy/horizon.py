"""The horizon: how long decide() keeps answering the same, so the simulator may skip the ticks in between.

Between two wakes the readings do not change, so neither does a value's side of a trip or clear level, nor a
consecutive count: only ``now`` moves. decide() compares ``now`` with these levels, and nothing else:

- a reading's expiry: older than its signal's max age it reads UNKNOWN;
- a breaching rule's ``for``: from ``breaching_since`` on (also a breach of UNKNOWN under ``unknown: breach``);
- the cooldown after the last action, and each automatic action leaving the action-limit window;
- the failback stability window, from ``clear_since``;
- a drill's teardown deadline.

Every length is read from the compiled profile decide() evaluates (``policy/compiled.py``), never from the profile
itself, so a rule feature that the compiled form carries reaches both.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.policy.compiled import CompiledProfile, compile_profile
from hybridops_daemon.policy.types import LaneState
from hybridops_daemon.signals.sample import Sample

EPS = 1e-6  # a level this close before ``now`` still counts: an extra identical tick is harmless, a missed one is not


class Horizon:
    """The earliest time, at or after ``now``, at which decide() may answer differently with the same state and readings
    (``math.inf`` when nothing but a new reading or event can change its answer). Rule evaluation happens on the edges
    decide() evaluates for ``self_edge`` and ``peer_edge``."""

    __slots__ = ("_levels", "_plan", "_state", "readings")

    def __init__(self, profile: Profile, self_edge: str, peer_edge: str | None) -> None:
        plan = compile_profile(profile)
        edges = plan.edges(self_edge, peer_edge)
        # A signal's max age is the same for every rule reading it: one expiry per (signal, edge).
        expiries = {rule.keys(edge)[1]: rule.max_age for rule in plan.rules for edge in edges}
        self.readings = tuple(expiries.items())
        self._plan: CompiledProfile = plan
        self._state: LaneState | None = None
        self._levels: tuple[float, ...] = ()

    def __call__(self, state: LaneState, readings: Mapping[tuple[str, str], Sample], now: float) -> float:
        if state is not self._state:  # the simulator asks again and again with one state between its changes
            self._state, self._levels = state, self.state_levels(state)
        floor = now - EPS
        levels = self._levels
        at = bisect_left(levels, floor)
        horizon = levels[at] if at < len(levels) else math.inf
        for key, max_age in self.readings:
            reading = readings.get(key)
            if reading is not None and floor <= reading.observed_at + max_age < horizon:
                horizon = reading.observed_at + max_age
        return horizon

    def state_levels(self, state: LaneState) -> tuple[float, ...]:
        """The levels the lane's state sets (past ones included), sorted."""
        plan = self._plan
        by_name = plan.by_name
        levels = [
            memory.breaching_since + by_name[name].confirm
            for (name, _), memory in state.rules.items()
            if memory.breaching_since is not None and name in by_name
        ]
        levels.extend(t + plan.action_window for t in state.automatic_actions)
        if state.last_action_at is not None:
            levels.append(state.last_action_at + plan.cooldown)
        if state.clear_since is not None:
            levels.append(state.clear_since + plan.stable_for)
        if state.drill_deadline is not None:
            levels.append(state.drill_deadline)
        return tuple(sorted(levels))
