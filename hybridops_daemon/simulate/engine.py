"""The replay engine: a trace through the same ObservationStore and decide() the daemon runs, on simulated time.

It reproduces the daemon loop (``Daemon._loop``): every wake (samples at one instant, a trace command, a chain's
end) puts the samples in the store, hands each event to decide() (one call per event), then calls decide()
once more without an event; with nothing to wake it, the loop ticks every ``tick`` seconds. Simulated time is
the trace's ``t``: the clock starts at 0, so a run id's timestamp reads as the offset into the trace
(``prod-19700101T001003-1`` started at 10m03s). Samples at the same ``t`` arrive together (one wake).

A profile's ``drill.schedule`` fires drills (trigger schedule, actor "schedule") on the simulated clock.

A chain "runs" by taking the sum of its steps' ``expected_duration``; then a successful ChainEvent is fed back.
A step with ``approval`` waits (before its own duration) for an ``approve`` command in the trace; as in the
daemon, an approval nobody gives within the profile's ``approval_timeout`` fails the run, and ``reject`` fails
it at once. Commands other than approve/reject become Intents (trigger operator, actor "trace").

Ticks that provably change nothing are skipped: after a tick (or wake) that left the lane state unchanged and
decided a plain hold, decide() returns the same until the time crosses one of the levels it compares ``now``
with (a reading's max age, a rule's ``for``, the cooldown, the action window, the failback window, a drill's
deadline: the policy's ``Horizon``, read from the compiled profile decide() evaluates). The engine runs the first
tick at or after the nearest such level. ``every_tick=True`` runs them
all; the tests check that both give the same result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from hybridops_daemon.config.profile import Profile, Step
from hybridops_daemon.durations import format_duration
from hybridops_daemon.observations import ObservationStore
from hybridops_daemon.policy.decide import decide
from hybridops_daemon.policy.horizon import EPS, Horizon
from hybridops_daemon.policy.types import (
    ChainEvent,
    Command,
    Decision,
    DecisionKind,
    Intent,
    LaneState,
    LaneStatus,
    Observation,
    Trigger,
)
from hybridops_daemon.signals.sample import Sample
from hybridops_daemon.simulate.trace import Trace, TraceCommand

ACTOR = "trace"
_HOLD = DecisionKind.HOLD
_INF = math.inf


@dataclass(frozen=True, slots=True)
class SimDecision:
    t: float
    kind: str
    lane: str
    reason: str
    status: str  # the lane's status after the decision
    status_before: str
    trigger: str
    run_id: str | None


@dataclass
class SimRun:
    run_id: str
    chain: str  # "cutover" or "failback"
    kind: str  # what started it: cutover, drill or failback
    started: float
    ended: float | None = None
    ok: bool | None = None
    detail: str = ""
    approvals: list[tuple[str, float]] = field(default_factory=list)  # (step, t) of each approve from the trace
    waiting_step: str | None = None  # an approval gate still unanswered when the trace ended
    waiting_since: float | None = None


@dataclass
class Replay:
    lane: str
    node: str
    decisions: list[SimDecision] = field(default_factory=list)
    runs: list[SimRun] = field(default_factory=list)
    standby: list[tuple[float, float]] = field(default_factory=list)  # ON_STANDBY (also while paused there)
    billed: list[tuple[float, float]] = field(default_factory=list)  # the cutover chain's capacity is up
    notes: list[str] = field(default_factory=list)
    final_status: str = LaneStatus.PRIMARY.value
    decide_calls: int = 0


class _Chain:
    """One chain run on simulated time: where it is, and when it next ends (done, expired or rejected)."""

    def __init__(self, record: SimRun, steps: Sequence[Step], approval_timeout: float) -> None:
        self.record = record
        self.steps = steps
        self.approval_timeout = approval_timeout
        self.gate: Step | None = None  # the approval step the run waits at (from `gate_at` on)
        self.gate_at = 0.0
        self.due = 0.0
        self.ok = True
        self.detail = ""
        self._walk(0, record.started, approved=False)

    def _walk(self, index: int, at: float, approved: bool) -> None:
        for step in self.steps[index:]:
            if step.approval and not approved:
                self.gate, self.gate_at = step, at
                self.due, self.ok = at + self.approval_timeout, False
                self.detail = f"step {step.id}: approval expired after {format_duration(self.approval_timeout)}"
                return
            at += step.expected_duration
            approved = False
        self.gate, self.due, self.ok = None, at, True
        self.detail = "every step took its expected duration"

    def waiting(self, now: float) -> bool:
        return self.gate is not None and self.gate_at <= now

    def approve(self, now: float) -> None:
        assert self.gate is not None
        self.record.approvals.append((self.gate.id, now))
        self._walk(self.steps.index(self.gate), now, approved=True)

    def reject(self, now: float) -> None:
        assert self.gate is not None
        self.due, self.ok, self.detail = now, False, f"step {self.gate.id}: rejected by {ACTOR}"


def _effective(state: LaneState) -> LaneStatus:
    """What runs, pause or not: a lane paused on standby is still served from the cloud."""
    return (state.paused_from or state.status) if state.status is LaneStatus.PAUSED else state.status


class _Simulation:
    def __init__(self, profile: Profile, trace: Trace, lane: str, node: str, peer: str | None) -> None:
        self.profile = profile
        self.trace = trace
        self.lane = lane
        self.node = node
        self.peer = peer
        self.store = ObservationStore()
        self.state = LaneState(lane=lane, since=0.0)
        self.result = Replay(lane=lane, node=node)
        self.chain: _Chain | None = None
        self.horizon = Horizon(profile, node, peer)
        self._standby_since: float | None = None
        self._billed_since: float | None = None

    def decide(self, event: Intent | ChainEvent, now: float) -> None:
        """One decide() call for an event, as the daemon makes it."""
        before = self.state
        decision, after = decide(before, Observation(self.store.snapshot(), self.node, self.peer, event), self.profile, now)
        self.result.decide_calls += 1
        self.settle(decision, before, after, now)

    def settle(self, decision: Decision, before: LaneState, after: LaneState, now: float) -> bool:
        """Take in what decide() returned; True when it was quiet (a plain hold that changed nothing)."""
        self.state = after
        if after is not before:
            self._track_standby(before, after, now)
        if not decision.notable:
            return after is before or after == before
        self.result.decisions.append(
            SimDecision(
                now,
                decision.kind.value,
                decision.lane,
                decision.reason,
                after.status.value,
                before.status.value,
                decision.trigger.value,
                decision.run_id,
            )
        )
        if decision.chain is not None and decision.run_id is not None:
            self._start_chain(decision, now)
        return False

    def _start_chain(self, decision: Decision, now: float) -> None:
        assert decision.run_id is not None
        assert self.chain is None, "decide() starts a run only while none is active"
        which: Literal["cutover", "failback"] = "cutover" if decision.chain == "cutover" else "failback"
        record = SimRun(decision.run_id, which, decision.kind.value, now)
        self.result.runs.append(record)
        self.chain = _Chain(record, self.profile.chain(which), self.profile.approval_timeout)
        if which == "cutover" and self._billed_since is None:
            self._billed_since = now

    def _track_standby(self, before: LaneState, after: LaneState, now: float) -> None:
        # Not only on notable decisions: a chain ending while the lane is paused changes only `paused_from`.
        was, status = _effective(before), _effective(after)
        if was is status:
            return
        if status is LaneStatus.ON_STANDBY:
            self._standby_since = now
        elif was is LaneStatus.ON_STANDBY and self._standby_since is not None:
            self.result.standby.append((self._standby_since, now))
            self._standby_since = None

    def end_chain(self, now: float) -> None:
        chain = self.chain
        assert chain is not None
        self.chain = None
        record = chain.record
        record.ended, record.ok, record.detail = now, chain.ok, chain.detail
        # The capacity stops when a failback succeeds, or when a cutover fails (the runner compensates it); a failed
        # failback leaves it running.
        stops = chain.ok if record.chain == "failback" else not chain.ok
        if stops and self._billed_since is not None:
            self.result.billed.append((self._billed_since, now))
            self._billed_since = None
        self.decide(ChainEvent(self.lane, record.run_id, chain.ok, chain.detail), now)

    def command(self, command: TraceCommand) -> None:
        if command.lane is not None and command.lane != self.lane:
            self._note(command, f"for lane {command.lane} ignored (simulating {self.lane})")
            return
        if command.command in ("approve", "reject"):
            chain = self.chain
            if chain is None or not chain.waiting(command.t):
                self._note(command, f"ignored: no step of lane {self.lane} waits for approval")
            elif command.command == "approve":
                chain.approve(command.t)
            else:
                chain.reject(command.t)
            return
        self.decide(Intent(command.line, self.lane, Command(command.command), ACTOR, Trigger.OPERATOR), command.t)

    def _note(self, command: TraceCommand, what: str) -> None:
        self.result.notes.append(f"line {command.line} (t={command.t:g}): {command.command} {what}")

    def finish(self) -> Replay:
        result, end = self.result, self.trace.duration
        if self._standby_since is not None:
            result.standby.append((self._standby_since, end))
        if self._billed_since is not None:
            result.billed.append((self._billed_since, end))
        chain = self.chain
        if chain is not None and chain.gate is not None and chain.gate_at <= end:
            chain.record.waiting_step, chain.record.waiting_since = chain.gate.id, chain.gate_at
        result.final_status = self.state.status.value
        return result


def scheduled_drills(profile: Profile, end: float) -> list[float]:
    """When the profile's ``drill.schedule`` fires within [0, end], read on the simulated clock (t=0 is
    1970-01-01T00:00:00Z, a Thursday) the way the daemon's scheduler reads it."""
    if profile.drill.schedule is None or not profile.drill.allowed:
        return []
    from hybridops_daemon.cron import cron_trigger

    trigger = cron_trigger(profile.drill.schedule)
    origin = datetime(1970, 1, 1, tzinfo=UTC)
    times: list[float] = []
    fire = trigger.get_next_fire_time(None, origin)
    while fire is not None and (t := (fire - origin).total_seconds()) <= end:
        times.append(t)
        fire = trigger.get_next_fire_time(fire, fire)
    return times


def replay(
    profile: Profile,
    trace: Trace,
    *,
    lane: str,
    node: str = "edge01",
    peer: str | None = "edge02",
    tick: float = 1.0,
    every_tick: bool = False,
) -> Replay:
    """Replay ``trace`` for one lane of ``profile``, as the daemon on ``node`` would have decided it."""
    if not tick > 0:
        raise ValueError("tick must be positive")
    sim = _Simulation(profile, trace, lane, node, peer)
    store, horizon = sim.store, sim.horizon
    times, signal_ids, values, edge_ids = trace.times, trace.signals, trace.values, trace.edges
    names = trace.signal_names
    edges = [node if edge is None else edge for edge in trace.edge_names]
    # Trace commands, then the profile's scheduled drills (at one instant, in that order); None marks a scheduled drill.
    timed: list[tuple[float, TraceCommand | None]] = [(command.t, command) for command in trace.commands]
    timed.extend((t, None) for t in scheduled_drills(profile, trace.duration))
    commands = sorted(timed, key=lambda item: item[0])
    n, n_commands, end = len(times), len(commands), trace.duration
    i = c = calls = 0
    next_command = commands[0][0] if commands else _INF
    next_tick = tick  # the daemon started at t=0 and waits one tick for its first wake
    while True:
        wake = times[i] if i < n else _INF
        if next_command < wake:
            wake = next_command
        chain = sim.chain
        t_chain = chain.due if chain is not None and chain.due <= end else _INF
        if t_chain < wake:
            wake = t_chain
        if wake == _INF:
            break
        if next_tick < wake:
            now = next_tick
        else:
            now = wake
            while i < n and times[i] == now:
                value = values[i]
                store.put(Sample(names[signal_ids[i]], None if value != value else value, now, "trace", edges[edge_ids[i]]))
                i += 1
            if t_chain == now:
                sim.end_chain(now)
            while next_command == now:
                command = commands[c][1]
                if command is None:
                    sim.decide(Intent(0, lane, Command.DRILL, "schedule", Trigger.SCHEDULE), now)
                else:
                    sim.command(command)
                c += 1
                next_command = commands[c][0] if c < n_commands else _INF
        # The plain decide() of every iteration, inlined: it runs once per sample.
        before = sim.state
        readings = store.snapshot()
        decision, after = decide(before, Observation(readings, node, peer, None), profile, now)
        calls += 1
        next_tick = now + tick
        quiet = (after is before and decision.kind is _HOLD) or sim.settle(decision, before, after, now)
        if every_tick or not quiet:
            continue
        if i < n and times[i] <= next_tick:
            continue  # the next sample comes first anyway
        # Quiet: decide() answers the same until the time reaches a level; run the first tick at or after it.
        level = horizon(after, readings, now)
        if level == _INF or (i < n and level >= times[i]):
            next_tick = level  # no tick before the next sample: the exact tick is computed after it
        else:
            next_tick = now + max(1, math.ceil((level - EPS - now) / tick)) * tick
    sim.result.decide_calls += calls
    return sim.finish()
