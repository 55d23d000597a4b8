"""Lane leadership and takeover: campaign for each lane, adopt it as its last holding left it, finish what that
holding left unfinished, publish the handover while leading, and let go when the lease is lost.

Two memories of a lane: with etcd, the handover its leader keeps there (state, the decision behind the active run,
the run's plan and progress); with the local lease, or a fresh etcd, this node's own journal. Either way the
interrupted run continues from check() of its first unfinished step, so what already landed is skipped, not repeated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from hybridops_daemon.daemon.chains import ChainSupervisor
from hybridops_daemon.daemon.inbox import Inbox
from hybridops_daemon.daemon.lane import Handover, HandoverInvalid, Lane
from hybridops_daemon.journal.store import RUN_RELEASED, Journal
from hybridops_daemon.lease.base import LeaseLost
from hybridops_daemon.metrics import Metrics
from hybridops_daemon.policy.types import ChainEvent, LaneState

log = structlog.get_logger("hybridops.daemon")


def restore_state(journal: Journal, lane: str, now: float) -> LaneState:
    """The lane's state as its last decision left it (last() also reads the copies a retention cut carries)."""
    record = journal.last("decision", lane=lane)
    return LaneState(lane=lane, since=now) if record is None else LaneState.from_durable(record.body["state"])


class Takeover:
    def __init__(
        self,
        node: str,
        shared: bool,
        campaign_every: float,
        journal: Journal,
        chains: ChainSupervisor,
        inbox: Inbox,
        metrics: Metrics,
        on_change: Callable[[], None],
        clock: Callable[[], float],
    ) -> None:
        self._node = node
        self._shared = shared  # leadership is shared with another node (etcd): journal its every change
        self._campaign_every = campaign_every
        self._journal = journal
        self._chains = chains
        self._inbox = inbox
        self._metrics = metrics
        self._on_change = on_change  # the lanes' situation or state changed: sd_notify's STATUS
        self._clock = clock

    async def lead(self, lane: Lane) -> None:
        """Campaign for the lane, take it over, keep it while the lease holds, publish its handover as it changes; on
        loss stop deciding for it and campaign again. Runs for the daemon's lifetime."""
        leadership = lane.lease
        while True:
            if not await leadership.campaign():
                self.note(lane)
                if leadership.holder is not None:
                    await self._mirror(lane)
                await asyncio.sleep(self._campaign_every)
                continue
            try:
                handover = await leadership.handover()
            except LeaseLost as exc:
                log.warning("cannot read the lane's handover; giving the lane up", lane=lane.name, reason=str(exc))
                await leadership.resign()
                self.note(lane)
                await asyncio.sleep(self._campaign_every)
                continue
            if lane.chain is not None:  # a run of an earlier holding still winding down here: its token is stale
                await asyncio.wait({lane.chain})
            self.take(lane, self._parse(lane, handover))
            try:
                async with asyncio.TaskGroup() as held:
                    publisher = held.create_task(self._publish(lane))
                    await leadership.hold()
                    publisher.cancel()
            finally:
                lane.led = False
                self._metrics.leadership(lane.name, False, leadership.token)
            self._lost(lane)

    def _parse(self, lane: Lane, document: Mapping[str, Any] | None) -> Handover | None:
        if not document:
            return None
        try:
            return Handover.from_document(document)
        except HandoverInvalid as exc:
            # Not ours to guess at: this node's journal is the lane's memory then, as with a fresh etcd.
            log.error("the lane's handover is unreadable; recovering from this node's journal", lane=lane.name, reason=str(exc))
            return None

    def _lost(self, lane: Lane) -> None:
        leadership = lane.lease
        if self._shared:
            body = {"lane": lane.name, "node": self._node, "fencing_token": leadership.token, "reason": leadership.reason}
            self._journal.append("lease.lost", body, ts=self._clock(), lane=lane.name)
        log.warning("lane leadership lost", lane=lane.name, fencing_token=leadership.token, reason=leadership.reason)
        self.note(lane)

    async def _mirror(self, lane: Lane) -> None:
        """While another node leads, show the lane as its leader last published it (status and metrics only: a
        follower decides nothing), so both edges tell an operator the same state."""
        try:
            document = await lane.lease.handover()
        except LeaseLost:
            return  # etcd away: keep showing the last state seen; the leadership column says why
        handover = self._parse(lane, document)
        if handover is not None:
            lane.state = handover.state
            self._metrics.lane_state(lane.name, lane.state.status.value)

    async def _publish(self, lane: Lane) -> None:
        """Store the lane's handover whenever it changes (fenced: only the current holding's document lands)."""
        lane.dirty.set()
        while True:
            await lane.dirty.wait()
            lane.dirty.clear()
            try:
                await lane.lease.publish()
            except LeaseLost as exc:
                # etcd slow or away: keep it marked and retry; a fenced token ends the holding (hold() returns).
                log.warning("handover not stored yet", lane=lane.name, reason=str(exc))
                lane.dirty.set()
                await asyncio.sleep(0.2)

    def note(self, lane: Lane) -> None:
        """Journal and log the lane's leadership situation when it changes (not on every campaign)."""
        leadership = lane.lease
        if lane.leads:
            situation = "leading"
        elif leadership.holder is not None:
            situation = f"following {leadership.holder}"
        else:
            situation = "no quorum"  # etcd did not answer: nobody can be sure who leads, so nobody acts
        if situation == lane.situation:
            return
        lane.situation = situation
        self._on_change()
        if not self._shared:
            return
        body = {
            "lane": lane.name,
            "node": self._node,
            "situation": situation,
            "fencing_token": leadership.token if situation == "leading" else None,
            "reason": leadership.reason,
        }
        self._journal.append("lease.status", body, ts=self._clock(), lane=lane.name)
        log.info("lane leadership", **body)
        if leadership.holder is not None and not lane.leads:
            self.release_runs(lane, f"{leadership.holder} leads the lane: the run is its to finish")

    def release_runs(self, lane: Lane, reason: str, keep: str | None = None) -> None:
        """Close, in this journal, the lane's runs this node started and can no longer finish (a crash or a lost lease
        interrupted them and the lane has moved on): so retention and a restart do not wait for them forever."""
        winding_down = lane.winding_down  # a live chain ends itself
        for run_id in self._journal.unfinished_runs():
            records = self._journal.run_records(run_id)
            if run_id not in (keep, winding_down) and records and records[0].lane == lane.name:
                body = {"run_id": run_id, "step": None, "reason": reason}
                self._journal.append(RUN_RELEASED, body, ts=self._clock(), lane=lane.name, run_id=run_id)
                log.info("run released", lane=lane.name, run_id=run_id, reason=reason)

    def take(self, lane: Lane, handover: Handover | None) -> None:
        """Adopt the lane as the last holding left it and finish what it left unfinished. Without a handover (a local
        lease, or a fresh etcd) this node's own journal is the lane's memory."""
        leadership = lane.lease
        lane.run_decision = lane.run_progress = None
        lane.state = handover.state if handover is not None else restore_state(self._journal, lane.name, self._clock())
        if self._shared:
            body = {
                "lane": lane.name,
                "node": self._node,
                "fencing_token": leadership.token,
                "previous": handover.previous if handover else None,  # None: this node's journal is the lane's memory
                "state": lane.state.durable(),
                "active_run": lane.state.active_run,
            }
            self._journal.append("lease.acquired", body, ts=self._clock(), lane=lane.name)
        if handover is None:
            self.recover(lane)
        else:
            self._adopt(lane, handover)
        lane.led = True
        self._metrics.leadership(lane.name, True, leadership.token)
        self._metrics.lane_state(lane.name, lane.state.status.value)
        self.note(lane)
        self._inbox.wake()

    def _adopt(self, lane: Lane, handover: Handover) -> None:
        active = lane.state.active_run  # the caller adopted the handover's state
        # Runs this node had started and lost: the lane's handover is the truth now, and it ends or continues them.
        self.release_runs(lane, f"superseded: the lane's handover names run {active}", keep=active)
        if active is None:
            return
        decision = handover.decision or {}
        lane.run_decision = dict(decision) if decision.get("run_id") == active else None
        run = handover.run if handover.run is not None and handover.run.run_id == active else None
        if run is not None and run.end is not None:
            lane.run_progress = run
            self._inbox.put(ChainEvent(lane.name, active, run.end.ok, run.end.reason))
        elif run is not None:
            lane.run_progress = run
            log.info("taking over run", lane=lane.name, run_id=active, previous=handover.previous)
            self._chains.take_over(lane, run, handover.previous)
        elif lane.run_decision is not None:
            log.info("starting the run the previous leader decided", lane=lane.name, run_id=active, previous=handover.previous)
            self._chains.start(lane, lane.run_decision)
        else:
            log.error("the handover names an active run but neither its plan nor its decision; pausing", run_id=active)
            self._inbox.put(ChainEvent(lane.name, active, False, "takeover: the handover lacks the run's plan"))

    def recover(self, lane: Lane) -> None:
        """Finish what a crash interrupted, from this node's journal (the caller restored the lane's state from it):
        resume a started run, start a decided-but-unstarted one, replay an end the loop never decided on."""
        run_id = lane.state.active_run
        if run_id is None:
            return
        records = self._journal.run_records(run_id)
        end = next((r for r in records if r.kind == "run.end"), None)
        decision = next((r for r in records if r.kind == "decision"), None)
        lane.run_decision = dict(decision.body) if decision is not None else None
        if run_id in self._journal.unfinished_runs():
            self._chains.resume(lane, run_id)
        elif end is not None:
            self._inbox.put(ChainEvent(lane.name, run_id, bool(end.body["ok"]), str(end.body["reason"])))
        elif decision is not None:
            self._chains.start(lane, decision.body)
        log.info("recovering run", lane=lane.name, run_id=run_id)
