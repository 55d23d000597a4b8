"""``decide(state, observation, profile, now) -> (Decision, LaneState)``: the whole policy, as a pure function.

No I/O, no clock, no randomness: the daemon and the simulator run this same code, and tests replay it.
Each call handles at most one event (an operator intent or a chain's end) and re-evaluates the rules.
The lane's state machine::

    PRIMARY ⇄ DEGRADED → CUTTING_OVER → ON_STANDBY → FAILING_BACK → PRIMARY,   any ⇄ PAUSED

A failed chain pauses the lane: a half-done cutover wants a human, not an automatic retry loop. The one thing
retried without one is the teardown of paid capacity a failed run may have left running (``policy/teardown.py``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType

from hybridops_daemon.config.profile import Profile, Rule
from hybridops_daemon.durations import format_duration
from hybridops_daemon.policy import teardown
from hybridops_daemon.policy.compiled import CompiledProfile, compile_profile
from hybridops_daemon.policy.readiness import broken_steps, described
from hybridops_daemon.policy.rules import advance, evidence
from hybridops_daemon.policy.types import (
    EMPTY_MEMORY,
    ChainEvent,
    Command,
    Decision,
    DecisionKind,
    Intent,
    LaneState,
    LaneStatus,
    Observation,
    RuleEvidence,
    RuleMemory,
    Trigger,
)
from hybridops_daemon.signals.sample import Sample

S = LaneStatus
K = DecisionKind


def decide(state: LaneState, observation: Observation, profile: Profile, now: float) -> tuple[Decision, LaneState]:
    evaluation = _evaluate(state, observation, compile_profile(profile), now)
    state = evaluation.state
    event = observation.event
    if isinstance(event, ChainEvent):
        return _on_chain_event(state, event, evaluation, now)
    if isinstance(event, Intent):
        return _on_intent(state, event, evaluation, profile, now)
    return _on_tick(state, evaluation, now)


# ------------------------------------------------------------------------------------------------ evaluation


_Fact = tuple[Rule, str, Sample | None, RuleMemory, bool, bool]  # rule, edge, reading, memory, unknown, tripped


class _Evaluation:
    __slots__ = (
        "_evidence",
        "clear",
        "corroborated",
        "degraded",
        "facts",
        "now",
        "observation",
        "plan",
        "state",
        "tripped_rules",
        "unknown",
    )

    def __init__(
        self,
        state: LaneState,
        facts: list[_Fact],
        tripped_rules: tuple[str, ...],
        corroborated: bool,
        degraded: bool,
        clear: bool,
        unknown: tuple[str, ...],
        plan: CompiledProfile,
        now: float,
        observation: Observation,
    ) -> None:
        self.state = state
        self.facts = facts
        self.tripped_rules = tripped_rules
        self.corroborated = corroborated
        self.degraded = degraded
        self.clear = clear
        self.unknown = unknown
        self.plan = plan  # the compiled profile: the outcomes read its timers
        self.observation = observation  # the outcomes read the chain's readiness from it
        self.now = now
        self._evidence: tuple[RuleEvidence, ...] | None = None

    @property
    def evidence(self) -> tuple[RuleEvidence, ...]:
        """Built on demand: only notable decisions carry evidence, and most calls are plain holds."""
        if self._evidence is None:
            self._evidence = tuple(
                evidence(rule, edge, m, reading, u, t, self.now) for rule, edge, reading, m, u, t in self.facts
            )
        return self._evidence


def _evaluate(state: LaneState, observation: Observation, plan: CompiledProfile, now: float) -> _Evaluation:
    self_edge = observation.self_edge
    edges = plan.edges(self_edge, observation.peer_edge)
    readings = observation.readings
    memories = state.rules
    changed: dict[tuple[str, str], RuleMemory] | None = None
    facts: list[_Fact] = []
    tripped_rules: list[str] = []
    unknown: list[str] = []
    degraded = False
    clear = True
    for item in plan.rules:
        rule, counts = item.rule, item.counts
        tripped_everywhere = True
        for edge in edges:
            key, reading_key = item.keys(edge)
            memory = memories.get(key, EMPTY_MEMORY)
            reading = readings.get(reading_key)
            # Fast paths, exact by construction: cases where advance() would return the memory unchanged.
            if (
                reading is not None
                and (value := reading.value) is not None
                and now - reading.observed_at <= item.max_age
                and (
                    # an idle rule reading a healthy value
                    (
                        memory.breaching_since is None
                        and not memory.tripped
                        and (value >= item.trip if item.below else value <= item.trip)
                    )
                    # a breaching sample already counted, with nothing waiting on time
                    or (reading.observed_at == memory.last_sample_at and (memory.tripped or memory.breaching_since is None))
                )
            ):
                is_unknown, tripped = False, memory.tripped
            else:
                new_memory, is_unknown, tripped = advance(item, memory, reading, now)
                if new_memory is not memory:
                    if changed is None:
                        changed = dict(memories)
                    changed[key] = memory = new_memory
            facts.append((rule, edge, reading, memory, is_unknown, tripped))
            if not counts:
                continue
            if is_unknown:
                unknown.append(f"{item.signal}@{edge}")
                clear = False
            tripped_everywhere = tripped_everywhere and tripped
            if tripped or memory.breaching_since is not None:
                clear = False
                if edge == self_edge:
                    degraded = True
        if tripped_everywhere and counts:
            tripped_rules.append(item.name)

    corroborated = bool(plan.rules) and len(tripped_rules) >= plan.profile.corroboration.min_rules
    # Failback stability counts from the first tick on which every rule was known and clear.
    clear_since = (state.clear_since if state.clear_since is not None else now) if clear and plan.rules else None
    if changed is not None or clear_since != state.clear_since:
        state = state.evolved(MappingProxyType(changed) if changed is not None else state.rules, clear_since)
    return _Evaluation(state, facts, tuple(tripped_rules), corroborated, degraded, clear, tuple(unknown), plan, now, observation)


# ------------------------------------------------------------------------------------------------ outcomes


def _decision(
    kind: DecisionKind,
    before: LaneState,
    after: LaneState,
    reason: str,
    evaluation: _Evaluation,
    now: float,
    *,
    trigger: Trigger = Trigger.AUTOMATIC,
    chain: str | None = None,
    intent: Intent | None = None,
) -> tuple[Decision, LaneState]:
    actor = "policy"
    if intent is not None:
        trigger, actor = intent.trigger, intent.actor
    notable = kind is not K.HOLD or before.status is not after.status
    decision = Decision(  # positional: this runs once per sample, and keywords cost a third more
        kind,
        before.lane,
        reason,
        now,
        before.status,
        after.status,
        trigger,
        actor,
        after.active_run if chain else None,
        chain,
        intent.id if intent else None,
        evaluation.evidence if notable else (),
        evaluation.unknown,
    )
    return decision, after


def _moved(state: LaneState, status: LaneStatus, now: float, **changes: object) -> LaneState:
    if status is not state.status:
        changes["since"] = now
    return state._replace(status=status, **changes)  # type: ignore[arg-type]


def start_run(state: LaneState, status: LaneStatus, now: float, **changes: object) -> LaneState:
    seq = state.run_seq + 1
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S")
    return _moved(state, status, now, run_seq=seq, active_run=f"{state.lane}-{stamp}-{seq}", refusal=None, **changes)


def _shown(item: RuleEvidence) -> str:
    return "UNKNOWN" if item.unknown or item.value is None else f"{item.value:g}"


def _tripped_summary(evaluation: _Evaluation) -> str:
    parts = []
    for item in evaluation.evidence:
        if item.tripped and item.rule in evaluation.tripped_rules:
            parts.append(f"{item.rule}@{item.edge} ({item.signal}={_shown(item)}, {item.consecutive} in a row)")
    return ", ".join(parts)


def _broken_path(evaluation: _Evaluation, now: float) -> list[tuple[str, str]]:
    observation = evaluation.observation
    return broken_steps(observation.readings, observation.self_edge, evaluation.plan.profile, "cutover", now)


def _guardrail(state: LaneState, plan: CompiledProfile, now: float) -> tuple[str, str] | None:
    """Why an automatic action may not run now, as (code, reason); None when it may."""
    if state.last_action_at is not None and now - state.last_action_at < plan.cooldown:
        left = plan.cooldown - (now - state.last_action_at)
        return "cooldown", f"cooldown after the last action: {format_duration(left)} left"
    window = plan.action_window
    recent = sum(1 for t in state.automatic_actions if now - t < window)
    if recent >= plan.max_actions:
        return "limit", f"{recent} automatic actions in the last {format_duration(window)} (limit {plan.max_actions})"
    return _cost_guardrail(plan.profile)


def _cost_guardrail(profile: Profile) -> tuple[str, str] | None:
    if profile.cost is not None and profile.hourly_cost() > profile.cost.budget_usd_per_hour:
        return "cost", (
            f"the chain's capacity costs ${profile.hourly_cost():.2f}/h, over the budget of "
            f"${profile.cost.budget_usd_per_hour:.2f}/h"
        )
    return None


def _record_automatic(state: LaneState, plan: CompiledProfile, now: float) -> dict[str, object]:
    window = plan.action_window
    kept = tuple(t for t in state.automatic_actions if now - t < window)
    return {"automatic_actions": (*kept, now), "last_action_at": now}


# ------------------------------------------------------------------------------------------------ tick


def _on_tick(state: LaneState, evaluation: _Evaluation, now: float) -> tuple[Decision, LaneState]:
    status = state.status
    if state.stranded is not None and teardown.due(state, evaluation.clear, now):
        return _teardown(state, evaluation, now, None)
    if status in (S.PRIMARY, S.DEGRADED):
        if evaluation.corroborated:
            return _automatic_cutover(state, evaluation, now)
        if evaluation.degraded:
            reason = "degraded: " + _breaching_summary(evaluation)
            return _decision(K.HOLD, state, _moved(state, S.DEGRADED, now, refusal=None), reason, evaluation, now)
        if status is S.DEGRADED:
            reason = "recovered: no rule is breaching"
            if evaluation.unknown:
                reason += f" (unknown: {', '.join(evaluation.unknown)})"
            return _decision(K.HOLD, state, _moved(state, S.PRIMARY, now, refusal=None), reason, evaluation, now)
        reason = "primary healthy"
        if evaluation.unknown:
            reason += f"; unknown: {', '.join(evaluation.unknown)}"
        return _decision(K.HOLD, state, state, reason, evaluation, now)

    if status is S.ON_STANDBY:
        if state.drill_deadline is not None and now >= state.drill_deadline:
            after = start_run(state, S.FAILING_BACK, now)  # the deadline stays until it succeeds: a drill's failback
            reason = f"drill teardown deadline reached; failing back (run {after.active_run})"
            return _decision(K.FAILBACK, state, after, reason, evaluation, now, trigger=Trigger.SCHEDULE, chain="failback")
        plan = evaluation.plan
        if plan.profile.failback.automatic and state.drill_deadline is None and state.clear_since is not None:
            stable = now - state.clear_since
            if stable >= plan.stable_for:
                blocked = _guardrail(state, plan, now)
                if blocked is None or blocked[0] == "cost":  # failing back saves money: cost never blocks it
                    after = start_run(state, S.FAILING_BACK, now, **_record_automatic(state, plan, now))
                    reason = (
                        f"primary stable for {format_duration(stable)} (window {format_duration(plan.stable_for)}); "
                        f"failing back (run {after.active_run})"
                    )
                    return _decision(K.FAILBACK, state, after, reason, evaluation, now, chain="failback")
                return _hold(state, evaluation, now, f"failback waits: {blocked[1]}")
        return _decision(K.HOLD, state, state, "on standby: " + _standby_reason(state, plan, now), evaluation, now)

    if status in (S.CUTTING_OVER, S.FAILING_BACK):
        return _decision(K.HOLD, state, state, f"run {state.active_run} in progress", evaluation, now)

    # PAUSED
    return _decision(K.HOLD, state, state, f"paused by {state.paused_by}; nothing acts until resume", evaluation, now)


def _hold(state: LaneState, evaluation: _Evaluation, now: float, reason: str) -> tuple[Decision, LaneState]:
    return _decision(K.HOLD, state, state, reason, evaluation, now)


def _standby_reason(state: LaneState, plan: CompiledProfile, now: float) -> str:
    if state.drill_deadline is not None:
        return f"drill teardown in {format_duration(max(0.0, state.drill_deadline - now))}"
    if not plan.profile.failback.automatic:
        return "failback is manual (hyopsctl failback)"
    if state.clear_since is None:
        return "primary not yet healthy on every rule"
    return f"primary stable for {format_duration(now - state.clear_since)} of {format_duration(plan.stable_for)}"


def _breaching_summary(evaluation: _Evaluation) -> str:
    parts = []
    for item in evaluation.evidence:
        if item.breaching or item.tripped:
            state = "tripped" if item.tripped else f"breaching {format_duration(item.breaching_for_s)}"
            parts.append(f"{item.rule}@{item.edge} {state} ({item.signal}={_shown(item)}, {item.consecutive} in a row)")
    return ", ".join(parts) or "no rule"


def _automatic_cutover(state: LaneState, evaluation: _Evaluation, now: float) -> tuple[Decision, LaneState]:
    plan = evaluation.plan
    blocked = _guardrail(state, plan, now)
    if blocked is None and plan.profile.readiness.refuse_broken_cutover and (broken := _broken_path(evaluation, now)):
        # A half-done cutover is worse than none; an UNKNOWN (stale) readiness never gets here.
        blocked = "path", f"the cutover path is reported broken at {described(broken)}"
    tripped = _tripped_summary(evaluation)
    if blocked is not None:
        code, why = blocked
        degraded = _moved(state, S.DEGRADED, now)
        if state.refusal == code:
            # Standing refusal: said once, not once per tick.
            return _decision(K.HOLD, state, degraded, f"cutover still refused: {why}", evaluation, now)
        after = degraded._replace(refusal=code)
        return _decision(K.REFUSE, state, after, f"cutover refused: {why}; tripped: {tripped}", evaluation, now)
    after = start_run(state, S.CUTTING_OVER, now, drill_deadline=None, **_record_automatic(state, plan, now))
    needed = plan.profile.corroboration.min_rules
    reason = f"cutover: {len(evaluation.tripped_rules)} of {needed} required rules tripped: {tripped} (run {after.active_run})"
    return _decision(K.CUTOVER, state, after, reason, evaluation, now, chain="cutover")


# ------------------------------------------------------------------------------------------------ events


def _on_chain_event(state: LaneState, event: ChainEvent, evaluation: _Evaluation, now: float) -> tuple[Decision, LaneState]:
    if event.run_id != state.active_run:
        return _hold(state, evaluation, now, f"ignored the end of run {event.run_id}: not this lane's active run")
    paused = state.status is S.PAUSED
    running = state.paused_from if paused else state.status
    if running is S.CUTTING_OVER:
        ok_status, failed_status, what = S.ON_STANDBY, S.DEGRADED, "cutover"
    else:
        ok_status, failed_status, what = S.PRIMARY, S.ON_STANDBY, "failback"
    if event.ok:
        reason = f"{what} run {event.run_id} succeeded; lane is {ok_status.value}"
        changes: dict[str, object] = {"active_run": None}
        if state.stranded is not None:  # torn down, or (a cutover) put to use: nothing is left behind any more
            changes.update(teardown.ended())
        if ok_status is S.PRIMARY:
            changes["drill_deadline"] = None
        if paused:
            after = state._replace(paused_from=ok_status, **changes)  # type: ignore[arg-type]
            reason += " (still paused)"
        else:
            after = _moved(state, ok_status, now, **changes)
        return _decision(K.HOLD, state, after, reason, evaluation, now)
    reason = f"{what} run {event.run_id} failed: {event.detail}; automation paused until an operator resumes"
    changes = {"active_run": None, "paused_from": failed_status, "paused_by": teardown.FAILED_RUN + event.run_id}
    profile = evaluation.plan.profile
    if teardown.left_behind(state, running, profile):
        stranded, sentence = teardown.stranding(state, event.run_id, profile, now)
        changes.update(stranded)
        reason += f"; {sentence}"
    return _decision(K.HOLD, state, _moved(state, S.PAUSED, now, **changes), reason, evaluation, now)


def _teardown(state: LaneState, evaluation: _Evaluation, now: float, intent: Intent | None) -> tuple[Decision, LaneState]:
    """Run the failback chain as the teardown of stranded capacity; lifts the pause the failure set."""
    after = start_run(state, S.FAILING_BACK, now, paused_from=None, paused_by=None, teardown_at=None)
    reason = f"{teardown.describe(state, evaluation.plan.profile)} (run {after.active_run})"
    if intent is not None:
        reason = f"{reason}, by {intent.actor}"
    return _decision(K.TEARDOWN, state, after, reason, evaluation, now, trigger=Trigger.SCHEDULE, chain="failback", intent=intent)


def pause_or_resume(state: LaneState, intent: Intent, now: float) -> tuple[LaneState | None, str]:
    """An operator's pause or resume, the same on every kind of lane: the state after it and why, or None and why
    it is refused."""
    status = state.status
    if intent.command is Command.PAUSE:
        if status is S.PAUSED:
            return None, f"already paused by {state.paused_by}"
        reason = f"paused by {intent.actor}; automatic actions stop"
        if state.active_run:
            reason += f" (run {state.active_run} finishes its current chain)"
        return _moved(state, S.PAUSED, now, paused_from=status, paused_by=intent.actor), reason
    if status is not S.PAUSED:
        return None, f"lane is {status.value}, not paused"
    back = state.paused_from or S.PRIMARY
    after = _moved(state, back, now, paused_from=None, paused_by=None, refusal=None)
    return after, f"resumed by {intent.actor}; lane is {back.value}"


def _on_intent(
    state: LaneState, intent: Intent, evaluation: _Evaluation, profile: Profile, now: float
) -> tuple[Decision, LaneState]:
    command = intent.command
    status = state.status

    def refuse(why: str) -> tuple[Decision, LaneState]:
        return _decision(K.REFUSE, state, state, f"{command.value} refused: {why}", evaluation, now, intent=intent)

    if command in (Command.PAUSE, Command.RESUME):
        paused, why = pause_or_resume(state, intent, now)
        return refuse(why) if paused is None else _decision(K.HOLD, state, paused, why, evaluation, now, intent=intent)
    if command is Command.TEARDOWN:  # the operator's own command: allowed while paused
        if state.stranded is None:
            return refuse("no failed run left capacity behind on this lane (a lane ON_STANDBY fails back with failback)")
        if state.active_run is not None:
            return refuse(f"run {state.active_run} is in progress")
        return _teardown(state, evaluation, now, intent)
    if status is S.PAUSED:
        return refuse(f"lane is paused by {state.paused_by}; resume first")

    if command is Command.DRILL:
        if not profile.drill.allowed:
            return refuse(f"profile {profile.ref} does not allow drills on this lane")
        if status not in (S.PRIMARY, S.DEGRADED):
            return refuse(f"lane is {status.value}; a drill starts only from PRIMARY")
        cost = _cost_guardrail(profile)
        if cost is not None:
            return refuse(cost[1])
        deadline = now + profile.drill.teardown_after
        after = start_run(state, S.CUTTING_OVER, now, drill_deadline=deadline)
        reason = (
            f"drill by {intent.actor}: running the cutover chain (run {after.active_run}); "
            f"teardown after {format_duration(profile.drill.teardown_after)}"
        )
        return _decision(K.DRILL, state, after, reason, evaluation, now, chain="cutover", intent=intent)
    if command is Command.CUTOVER:
        if status not in (S.PRIMARY, S.DEGRADED):
            return refuse(f"lane is {status.value}")
        after = start_run(state, S.CUTTING_OVER, now, last_action_at=now, drill_deadline=None)  # a real cutover now
        overridden = _guardrail(state, evaluation.plan, now)
        reason = f"cutover forced by {intent.actor} (run {after.active_run})"
        if overridden is not None:
            reason += f"; overrides: {overridden[1]}"
        if broken := _broken_path(evaluation, now):
            reason += f"; runs against a path reported broken at {described(broken)}"
        return _decision(K.CUTOVER, state, after, reason, evaluation, now, chain="cutover", intent=intent)
    # FAILBACK
    if status is not S.ON_STANDBY:
        return refuse(f"lane is {status.value}, not ON_STANDBY")
    after = start_run(state, S.FAILING_BACK, now, last_action_at=now)
    reason = f"failback by {intent.actor} (run {after.active_run})"
    if not evaluation.clear:
        reason += "; note: the primary is not healthy on every rule"
    return _decision(K.FAILBACK, state, after, reason, evaluation, now, chain="failback", intent=intent)
