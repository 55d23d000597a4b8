"""The decision loop: the one place that calls decide() and starts chains.

Each pass takes one snapshot of the observations, hands every queued event (a chain's end, an operator's intent)
to decide() for its lane, then gives every led lane a plain tick. Nothing in a pass awaits, so no sample arrives
half-way. Every pass is stamped, idle ones included: the watchdog pings only while the stamps keep coming.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.control.protocol import CommandRefused, Unconfirmed
from hybridops_daemon.daemon import burst
from hybridops_daemon.daemon.chains import ChainSupervisor
from hybridops_daemon.daemon.inbox import Event, Inbox, QueuedIntent
from hybridops_daemon.daemon.lane import Lane, status_line
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.metrics import Metrics
from hybridops_daemon.observations import ObservationStore
from hybridops_daemon.policy.burst_lane import decide_burst_lane
from hybridops_daemon.policy.decide import decide
from hybridops_daemon.policy.types import ChainEvent, Command, Decision, Intent, LaneState, LaneStatus, Observation, Trigger
from hybridops_daemon.sdnotify import Notifier
from hybridops_daemon.signals.sample import Sample

log = structlog.get_logger("hybridops.daemon")

INTENT_REPLY_TIMEOUT = 5.0
Readings = Mapping[tuple[str, str], Sample]


def record_decision(
    journal: Journal,
    decision: Decision,
    profile: Profile,
    state: LaneState,
    fencing_token: int,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Make a notable decision durable, with the lane state it leaves behind (what a restart resumes from), and
    ``extra``: what only its kind of lane knows (a burst lane's sizes and spend)."""
    body = {
        **decision.to_dict(),
        **(extra or {}),
        "profile": {"name": profile.name, "version": profile.version},
        "state": state.durable(),
        "fencing_token": fencing_token,
    }
    journal.append("decision", body, ts=decision.at, lane=decision.lane, run_id=decision.run_id)


def not_leading(node: str, lane: Lane) -> str:
    why = lane.leadership.reason if lane.leadership is not None else "starting"
    return f"{node} does not lead lane {lane.name!r} ({lane.situation or 'starting'}: {why})"


class DecisionLoop:
    def __init__(
        self,
        lanes: Mapping[str, Lane],
        store: ObservationStore,
        journal: Journal,
        chains: ChainSupervisor,
        inbox: Inbox,
        metrics: Metrics,
        notifier: Notifier,
        node: str,
        peer: str | None,
        clock: Callable[[], float],
    ) -> None:
        self.lanes = lanes
        self._store = store
        self._journal = journal
        self._chains = chains
        self._inbox = inbox
        self._metrics = metrics
        self._notifier = notifier
        self._node = node
        self._peer = peer
        self._clock = clock
        self.stopping = False
        self.reload_requested = False
        self._passed_at: float | None = None  # the previous pass, for the seconds stranded capacity ran
        self._stranded_idle: set[str] = set()  # lanes whose stranded capacity no run worked on at that pass

    async def run(self, tick: float, stamp: Callable[[], None], reload: Callable[[], Awaitable[None]] | None = None) -> None:
        """Pass after pass until ``stop()``; ``reload`` (when a reload was asked for) runs between passes."""
        while not self.stopping:
            await self._inbox.wait(tick)
            stamp()
            if self.stopping:
                break
            if self.reload_requested and reload is not None:
                self.reload_requested = False
                await reload()
            self.step()

    def stop(self) -> None:
        self.stopping = True
        self._inbox.wake()

    def request_reload(self) -> None:
        self.reload_requested = True
        self._inbox.wake()

    def step(self) -> None:
        """One pass. One snapshot serves it whole: nothing below awaits, so no sample can arrive in between."""
        readings = self._store.snapshot()
        for event in self._inbox.take():
            lane = self.lanes[event.lane if isinstance(event, ChainEvent) else event.intent.lane]
            if not lane.leads:
                self._drop(lane, event)
            elif isinstance(event, ChainEvent):
                self.step_lane(lane, event, readings)
            else:
                decision = self.step_lane(lane, event.intent, readings)
                if not event.reply.done():
                    event.reply.set_result(decision)
        for lane in self.lanes.values():
            if lane.leads:
                self.step_lane(lane, None, readings)
        self._count_stranded(self._clock())

    def _count_stranded(self, now: float) -> None:
        """The outside-window capacity metric: time a failed run's capacity waited with no run at work on it, counted
        from one pass to the next for the lanes that were in that state at the earlier pass."""
        elapsed = now - self._passed_at if self._passed_at is not None else 0.0
        self._passed_at = now
        idle_before, self._stranded_idle = self._stranded_idle, set()
        for lane in self.lanes.values():
            if lane.leads:
                state = lane.state
                if state.stranded is not None and state.active_run is None:
                    self._stranded_idle.add(lane.name)
                outside = elapsed if lane.name in idle_before else 0.0
                self._metrics.capacity(lane.name, state.stranded is not None, outside)

    def _drop(self, lane: Lane, event: Event) -> None:
        """An event for a lane this node no longer leads: the lane's next leader decides (from the handover)."""
        if isinstance(event, QueuedIntent):
            if not event.reply.done():
                event.reply.set_exception(CommandRefused(not_leading(self._node, lane)))
        else:
            log.info("chain end not decided here: the lane is led elsewhere now", lane=lane.name, run_id=event.run_id)

    def step_lane(self, lane: Lane, event: Intent | ChainEvent | None, readings: Readings) -> Decision:
        observation = Observation(readings, self._node, self._peer, event)
        before, now = lane.state, self._clock()
        ended = event if isinstance(event, ChainEvent) and event.run_id == before.active_run else None  # the lane's run
        if lane.profile.burst is not None:
            decision, lane.state = decide_burst_lane(before, observation, lane.profile, now, burst.yielding(self.lanes, lane))
        else:
            decision, lane.state = decide(before, observation, lane.profile, now)
            if ended is not None:
                self._chain_ended(lane, before, ended)
        starts = decision.chain is not None and decision.run_id is not None
        # A chain's end is always on record, even when it leaves the status as it was (a lane paused mid-run).
        recorded = decision.notable or isinstance(event, ChainEvent)
        extra = burst.decision_body(lane, before, observation, now) if lane.profile.burst and (recorded or starts) else {}
        if recorded:
            record_decision(self._journal, decision, lane.profile, lane.state, lane.lease.token, extra)
            lane.dirty.set()
            lane.last_decision = decision
            self._metrics.decision(lane.name, decision.kind.value)
            self._metrics.lane_state(lane.name, lane.state.status.value)
            log.info("decision", lane=lane.name, kind=decision.kind.value, status=lane.state.status.value, reason=decision.reason)
            self._notifier.status(status_line(self.lanes))
        if ended is not None and lane.profile.burst is not None:
            burst.record_scale(self._journal, lane, before, ended, decision)
            self._metrics.run(lane.name, "scale", "succeeded" if ended.ok else "failed")
        if starts:
            lane.run_decision, lane.run_progress = {**decision.to_dict(), **extra}, None
            self._chains.start(lane, lane.run_decision)
        return decision

    def _chain_ended(self, lane: Lane, before: LaneState, event: ChainEvent) -> None:
        running = before.paused_from if before.status is LaneStatus.PAUSED else before.status
        if running is LaneStatus.FAILING_BACK and event.ok:
            self._record_drill_cost(lane, event.run_id)
        self._metrics.run(
            lane.name, "cutover" if running is LaneStatus.CUTTING_OVER else "failback", "succeeded" if event.ok else "failed"
        )

    def _record_drill_cost(self, lane: Lane, teardown_run: str) -> None:
        """When a drill's teardown completes, put what the drill cost into the drill's own run record."""
        starts = self._journal.records(kinds=("run.start",), lane=lane.name, newest_first=True, limit=2)
        if len(starts) < 2 or starts[0].run_id != teardown_run or starts[1].body.get("kind") != "drill":
            return  # the failback of a real cutover, not a drill's teardown
        drill = starts[1]
        hours = (self._clock() - drill.ts) / 3600
        hourly = float(drill.body.get("hourly_cost_usd", 0.0))
        body = {
            "drill_run": drill.run_id,
            "teardown_run": teardown_run,
            "hourly_cost_usd": hourly,
            "duration_s": round(hours * 3600, 3),
            "cost_usd": round(hours * hourly, 4),
        }
        self._journal.append("drill.cost", body, ts=self._clock(), lane=lane.name, run_id=drill.run_id)
        log.info("drill cost", lane=lane.name, **body)

    async def submit(self, command: Command, lane: str, actor: str, trigger: Trigger = Trigger.OPERATOR) -> tuple[int, Decision]:
        """Journal the intent (durable first), queue it for the loop, and wait briefly for the loop's decision."""
        if self.stopping:  # the loop decides nothing more: refuse before journaling an intent it would never answer
            raise CommandRefused("the daemon is stopping")
        if not self.lanes[lane].leads:  # only the lane's leader decides: send the operator to it, journal nothing here
            raise CommandRefused(not_leading(self._node, self.lanes[lane]))
        kind = "operator" if trigger is Trigger.OPERATOR else "schedule"
        body = {"command": command.value, "lane": lane, "actor": actor, "trigger": trigger.value}
        record = self._journal.append(kind, body, ts=self._clock(), lane=lane)
        queued = QueuedIntent(Intent(record.seq, lane, command, actor, trigger))
        self._inbox.put(queued)
        async with asyncio.timeout(INTENT_REPLY_TIMEOUT):
            decision = await queued.reply
        await self._handed_over(self.lanes[lane], decision)
        return record.seq, decision

    async def _handed_over(self, lane: Lane, decision: Decision) -> None:
        """Answer a run's start only once the run is in the lane's handover: a leader deposed before that takes the
        run with it (its successor never hears of it), and the operator must hear so, not "started"."""
        stored = lane.chain_stored if decision.run_id is not None and lane.chain_run == decision.run_id else None
        if stored is None:
            return
        try:
            async with asyncio.timeout(INTENT_REPLY_TIMEOUT):
                why = await asyncio.shield(stored)
        except TimeoutError:
            raise Unconfirmed(
                f"run {decision.run_id} was decided, but its handover is not stored yet after {INTENT_REPLY_TIMEOUT:g}s"
                " (etcd is slow to answer): it runs only if this node keeps the lane; check hyopsctl status before"
                " asking again"
            ) from None
        if why is not None:
            holder = lane.leadership.holder if lane.leadership is not None else None
            elsewhere = f"; {holder} leads the lane now: ask there" if holder not in (None, self._node) else ""
            raise CommandRefused(f"run {decision.run_id} was decided but not started: {why}{elsewhere}")

    def refuse_queued(self) -> None:
        """Answer intents the loop will never reach; chain ends stay in the journal and are replayed on restart."""
        for event in self._inbox.take():
            if isinstance(event, QueuedIntent) and not event.reply.done():
                event.reply.set_exception(CommandRefused("the daemon is stopping; the intent was recorded but not acted on"))
