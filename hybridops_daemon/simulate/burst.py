"""Replaying a burst lane: a trace of the pressure signal through the same ``decide_burst`` the lane's policy is, on
simulated time, with the cost model and the two baselines a team weighs a burst policy against.

The model, stated so the figures can be judged:
- The trace is the pressure on-prem would see *without* added capacity (open loop: what the burst adds does not
  lower the replayed signal). Its pressure "needs" the size of the highest level whose trip it has passed.
- A decision is taken at every sample of the signal on the simulated node, and once more when that sample grows older
  than the signal's ``max_age`` (it turns UNKNOWN there). A scale step takes the scale chain's summed
  ``expected_duration``; no decision is taken while one runs, and the new size covers pressure once it has finished.
- Cost is the policy's own accounting: size × unit price × time from each decision (``accrue``), so the simulator
  and the lane's budget guardrail agree to the cent. Peak-provisioned pays the largest level for the whole trace.
- Uncovered pressure is time the pressure needed more than the size in service: for the burst policy, and for no
  burst at all (any pressure past the lowest trip).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.policy.burst import BurstDecision, BurstState, decide_burst
from hybridops_daemon.policy.burst import reading as pressure_reading
from hybridops_daemon.simulate.trace import Trace


@dataclass
class BurstReplay:
    lane: str
    node: str
    decisions: list[BurstDecision] = field(default_factory=list)
    seconds_at: dict[int, float] = field(default_factory=lambda: defaultdict(float))  # size in service → seconds
    uncovered_s: float = 0.0
    uncovered_without_burst_s: float = 0.0
    spent_usd: float = 0.0  # summed over months
    state: BurstState = field(default_factory=BurstState)


def _needed(profile: Profile, pressure: float | None) -> int:
    burst = profile.burst
    assert burst is not None
    if pressure is None:
        return 0
    return max((level.size for level in burst.levels if burst.passed(pressure, level.trip)), default=0)


def replay_burst(profile: Profile, trace: Trace, *, lane: str, node: str) -> BurstReplay:
    burst = profile.burst
    assert burst is not None, "replay_burst needs a burst profile"
    signal = burst.signal
    max_age = profile.signals[signal].max_age
    step_s = sum(step.expected_duration for step in profile.chains.scale)
    ids = {name: i for i, name in enumerate(trace.signal_names)}
    edges = {name: i for i, name in enumerate(trace.edge_names)}
    own = {edges.get(None, -1), edges.get(node, -1)}
    wanted = ids.get(signal)
    points = [
        (trace.times[i], trace.values[i])
        for i in range(len(trace.times))
        if trace.signals[i] == wanted and trace.edges[i] in own
    ]
    out = BurstReplay(lane, node)
    state = BurstState()
    in_service, pending_at, pending_size = 0, math.inf, 0
    last_t, last_value, seen_at = 0.0, math.nan, -math.inf  # the latest sample of the signal, and when it came
    month_spent: dict[str, float] = {}

    def reading(at: float) -> float | None:
        """The pressure as the lane sees it at ``at`` (the daemon's own reading of its latest sample)."""
        return pressure_reading(last_value, seen_at, max_age, at)

    def advance(until: float) -> None:
        """Time in service from ``last_t`` to ``until``: sizes, and pressure the size in service left uncovered."""
        nonlocal last_t, in_service, pending_at
        while last_t < until:
            edge = min(until, pending_at)
            span = edge - last_t
            need = _needed(profile, reading(last_t))
            out.seconds_at[in_service] += span
            out.uncovered_s += span if need > in_service else 0.0
            out.uncovered_without_burst_s += span if need > 0 else 0.0
            last_t = edge
            if edge == pending_at:
                in_service, pending_at = pending_size, math.inf

    moments = []
    for i, (t, value) in enumerate(points):
        moments.append((t, value, True))
        following = points[i + 1][0] if i + 1 < len(points) else trace.duration
        if following - t > max_age:
            moments.append((t + max_age + 1e-6, value, False))  # the sample goes stale here: decide on UNKNOWN
    for t, value, fresh in moments:
        advance(t)
        if fresh:
            last_value, seen_at = value, t
        pressure = reading(t)
        if pending_at < math.inf:
            continue  # a scale step is under way: the lane decides again once it is done
        decision, state = decide_burst(state, pressure, burst, t)
        month_spent[state.month] = state.spent_usd
        if decision.notable:
            out.decisions.append(decision)
        if decision.size_after != decision.size_before:
            pending_at, pending_size = t + step_s, decision.size_after
    advance(trace.duration)
    if moments:  # bill up to the end of the trace
        _, state = decide_burst(state, None, burst, max(trace.duration, state.accrued_at or 0.0))
        month_spent[state.month] = state.spent_usd
    out.state = state
    out.spent_usd = sum(month_spent.values())
    return out


def burst_result(profile: Profile, trace: Trace, replayed: BurstReplay) -> dict[str, Any]:
    burst = profile.burst
    assert burst is not None
    peak = max(level.size for level in burst.levels)
    hours = trace.duration / 3600
    steps = [d for d in replayed.decisions if d.action in ("scale_out", "scale_in")]
    return {
        "profile": {"name": profile.name, "version": profile.version},
        "trace": trace.path,
        "lane": replayed.lane,
        "node": replayed.node,
        "kind": "burst",
        "duration_s": trace.duration,
        "decisions": [d._asdict() for d in replayed.decisions],
        "scale_outs": sum(1 for d in steps if d.action == "scale_out"),
        "scale_ins": sum(1 for d in steps if d.action == "scale_in"),
        "refusals": sum(1 for d in replayed.decisions if d.action == "refuse"),
        "max_size": max((d.size_after for d in steps), default=0),
        "hours_at_size": {str(size): round(s / 3600, 4) for size, s in sorted(replayed.seconds_at.items())},
        "policy_usd": round(replayed.spent_usd, 4),
        "peak_provisioned_usd": round(burst.cost_per_hour(peak) * hours, 4),
        "uncovered_pressure_min": round(replayed.uncovered_s / 60, 2),
        "no_burst_uncovered_pressure_min": round(replayed.uncovered_without_burst_s / 60, 2),
    }


def render_burst(out: dict[str, Any]) -> str:
    profile = out["profile"]
    lines = [
        f"profile {profile['name']}@v{profile['version']} (burst), lane {out['lane']} on {out['node']}, trace {out['trace']}",
        f"{out['duration_s'] / 86400:.2f} days; {out['scale_outs']} scale-outs, {out['scale_ins']} scale-ins, "
        f"{out['refusals']} refusals; largest size {out['max_size']}",
        "hours at each size: " + ", ".join(f"{size}: {hours:g}" for size, hours in out["hours_at_size"].items()),
        f"cost: ${out['policy_usd']:.2f} bursting vs ${out['peak_provisioned_usd']:.2f} provisioned for the peak",
        f"pressure uncovered: {out['uncovered_pressure_min']:g} min bursting vs {out['no_burst_uncovered_pressure_min']:g} min"
        " with no burst",
    ]
    return "\n".join(lines)


def render_burst_table(outs: list[dict[str, Any]]) -> str:
    """One row per (variant, trace): cost against uncovered pressure, what a sweep trades."""
    rows = [("variant", "trace", "outs", "ins", "refused", "policy $", "peak $", "uncovered min", "no-burst min")]
    for out in outs:
        variant = " ".join(f"{key}={value}" for key, value in out.get("variant", {}).items()) or "(profile as is)"
        rows.append(
            (
                variant,
                out["trace"].rsplit("/", 1)[-1],
                str(out["scale_outs"]),
                str(out["scale_ins"]),
                str(out["refusals"]),
                f"{out['policy_usd']:.2f}",
                f"{out['peak_provisioned_usd']:.2f}",
                f"{out['uncovered_pressure_min']:g}",
                f"{out['no_burst_uncovered_pressure_min']:g}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows)
