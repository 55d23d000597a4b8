"""The daemon: wires sources, the observation store, decide(), the chain runner, the journal and the control socket.

One TaskGroup owns every task. Signal handlers only set flags and wake the loop. The control socket only
records intent and wakes the loop; only the loop calls decide() and starts chains.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import structlog

from hybridops_daemon.chain.approvals import ApprovalBook, Verdict
from hybridops_daemon.chain.runner import ChainRunner, RunReleased, RunSpec
from hybridops_daemon.config.loader import ConfigInvalid, load_profile
from hybridops_daemon.config.models import (
    DaemonConfig,
    EtcdLeaseConfig,
    LocalLeaseConfig,
    PeerSource,
    Profile,
    RetentionConfig,
)
from hybridops_daemon.config.models import Source as SourceConfig
from hybridops_daemon.control.protocol import Actor, CommandRefused, NotFound
from hybridops_daemon.control.server import ControlServer
from hybridops_daemon.drivers.base import Driver
from hybridops_daemon.drivers.registry import DRIVER_MODULES, build_drivers
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.journal.store import RUN_RELEASED, Journal, JournalError
from hybridops_daemon.lease.base import LeaseLost
from hybridops_daemon.lease.lanes import EtcdLaneLeadership, Handover, LaneLeadership, LocalLaneLeadership
from hybridops_daemon.lease.local import LocalLease
from hybridops_daemon.metrics import Metrics, MetricsServer
from hybridops_daemon.observations import ObservationStore
from hybridops_daemon.policy.decide import decide
from hybridops_daemon.policy.types import (
    ChainEvent,
    Command,
    Decision,
    Intent,
    LaneState,
    LaneStatus,
    Observation,
    Trigger,
)
from hybridops_daemon.scheduler import DrillScheduler
from hybridops_daemon.sdnotify import Notifier
from hybridops_daemon.secrets import SecretUnavailable, referenced, resolve
from hybridops_daemon.signals.base import Source
from hybridops_daemon.signals.registry import build_source
from hybridops_daemon.signals.sample import Sample

log = structlog.get_logger("hybridops.daemon")

INTENT_REPLY_TIMEOUT = 5.0


@dataclass
class _Lane:
    name: str
    profile: Profile
    state: LaneState
    drivers: Mapping[str, Driver]
    last_decision: Decision | None = None
    leadership: LaneLeadership | None = None
    led: bool = False  # this node leads the lane and has adopted its state: only then does the loop decide for it
    situation: str = ""  # leading / following X / no quorum: journaled and logged when it changes
    run_decision: dict[str, Any] | None = None  # the decision that started the active run (a successor rebuilds it)
    run_progress: dict[str, Any] | None = None  # the active run's start, finished steps and end, for the handover
    dirty: asyncio.Event = field(default_factory=asyncio.Event)  # the handover changed: publish it
    chain: asyncio.Task[None] | None = None
    chain_run: str | None = None  # the run ``chain`` works on

    @property
    def leads(self) -> bool:
        return self.led and self.leadership is not None and self.leadership.leading


@dataclass
class _QueuedIntent:
    intent: Intent
    reply: asyncio.Future[Decision] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def record_decision(journal: Journal, decision: Decision, profile: Profile, state: LaneState, fencing_token: int) -> None:
    """Make a notable decision durable, with the lane state it leaves behind (what a restart resumes from)."""
    body = {
        **decision.to_dict(),
        "profile": {"name": profile.name, "version": profile.version},
        "state": state.durable(),
        "fencing_token": fencing_token,
    }
    journal.append("decision", body, ts=decision.at, lane=decision.lane, run_id=decision.run_id)


class Daemon:
    def __init__(self, config: DaemonConfig, profiles: Mapping[str, Profile], clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.redactor = Redactor()
        self.store = ObservationStore()
        self.approvals = ApprovalBook()
        self.notifier = Notifier()
        self._profiles_at_start = dict(profiles)
        self._events: asyncio.Queue[ChainEvent | _QueuedIntent] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._stopping = False
        self._reload = False
        self._chain_tasks: set[asyncio.Task[None]] = set()
        self.lanes: dict[str, _Lane] = {}
        self.sources: dict[str, Source] = {}
        self.drills: DrillScheduler | None = None
        self.journal: Journal | None = None
        self.metrics = Metrics(
            self.store.snapshot,
            self._max_ages,
            lambda: self.sources,
            lambda: self.journal.size_bytes() if self.journal is not None else None,
            clock,
            edges=tuple(edge for edge in (config.node, config.peer) if edge),
        )

    # ------------------------------------------------------------------------------------------ signals

    def request_stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def request_reload(self) -> None:
        self._reload = True
        self._wake.set()

    # ------------------------------------------------------------------------------------------ run

    async def run(self) -> None:
        config = self.config
        local = None
        if isinstance(config.lease, LocalLeaseConfig):
            local = LocalLease(config.lease.path or config.state_dir / "lease.lock").acquire()
        loop = asyncio.get_running_loop()
        for signum, handler in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.request_reload),
        ):
            loop.add_signal_handler(signum, handler)
        try:
            with Journal.open(config.journal_path, self.redactor) as journal:
                self.journal = journal
                await self._serve(journal, local)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if local is not None:
                local.release()

    @property
    def _shared_lease(self) -> bool:
        """Leadership is shared with another node (etcd): lanes are led only after a won campaign."""
        return isinstance(self.config.lease, EtcdLeaseConfig)

    async def _serve(self, journal: Journal, local: LocalLease | None) -> None:
        config = self.config
        unclean = self._previous_stop_was_unclean(journal)
        journal.append(
            "daemon.start",
            {
                "node": config.node,
                "lease": config.lease.type,
                "fencing_token": local.token if local is not None else None,
                "previous_shutdown": "unclean" if unclean else "clean",
                "lanes": {name: profile.ref for name, profile in self._profiles_at_start.items()},
            },
            ts=self.clock(),
        )
        self._register_config_secrets()
        for name, lane_config in config.lanes.items():
            profile = self._profiles_at_start[name]
            self.lanes[name] = _Lane(name, profile, self._restore_state(journal, name), build_drivers(name, lane_config))
        async with contextlib.AsyncExitStack() as stack:
            self._make_leaderships(local, stack)
            runner = ChainRunner(
                journal,
                {name: lane.drivers for name, lane in self.lanes.items()},
                {name: lane.leadership for name, lane in self.lanes.items() if lane.leadership is not None},
                self.approvals,
                self.redactor,
                self.clock,
                on_step=self.metrics.step,
                on_record=self._on_run_record,
            )
            for name, lane in self.lanes.items():
                self.metrics.lane_state(name, lane.state.status.value)
                self.metrics.leadership(name, False, 0)
            group = await stack.enter_async_context(asyncio.TaskGroup())
            await stack.enter_async_context(ControlServer(config.socket_path, _ControlBackend(self), group=config.control.group))
            if config.metrics is not None:
                await stack.enter_async_context(MetricsServer(config.metrics, self.metrics))
            profiles = {name: lane.profile for name, lane in self.lanes.items()}
            self.drills = await stack.enter_async_context(DrillScheduler(profiles, self._scheduled_drill))
            self._warn_of_orphan_runs(journal)
            # Leadership first: with a local lease each lane is taken (and its interrupted run recovered) before any
            # retention cut, which must not remove the ended runs a recovery reads.
            leaders = [group.create_task(self._lead(lane, journal, runner, group)) for lane in self.lanes.values()]
            sources = [group.create_task(self._source(spec)) for spec in config.sources]
            if config.retention is not None:
                sources.append(group.create_task(self._retention(journal, config.retention)))
            if self.notifier.watchdog_interval:
                sources.append(group.create_task(self._watchdog(self.notifier.watchdog_interval)))
            self.notifier.ready(self._status_line())
            log.info("daemon ready", node=config.node, lanes=list(self.lanes), socket=str(config.socket_path))
            try:
                await self._loop(journal, runner, group)
            finally:
                self.notifier.stopping()
                for task in sources:
                    task.cancel()
                self._refuse_queued_intents()
                await self._drain()  # the lease is still kept alive: a draining step may still apply
                for task in leaders:
                    task.cancel()
                await asyncio.wait(leaders)
                for lane in self.lanes.values():
                    if lane.leadership is not None:
                        await lane.leadership.resign()  # a clean stop hands over at once, not after the TTL
                journal.append("daemon.stop", {"node": config.node, "reason": "signal"}, ts=self.clock())
                log.info("daemon stopped")

    def _make_leaderships(self, local: LocalLease | None, stack: contextlib.AsyncExitStack) -> None:
        lease = self.config.lease
        if local is not None:
            for lane in self.lanes.values():
                lane.leadership = LocalLaneLeadership(local, self.config.node)
            return
        assert isinstance(lease, EtcdLeaseConfig)
        from hybridops_daemon.lease.etcd import EtcdLease, EtcdPool

        pool = EtcdPool(lease.endpoints, lease.op_timeout)
        stack.push_async_callback(pool.close)  # closed after every lane resigned
        for lane in self.lanes.values():
            key = f"{lease.prefix}/lanes/{lane.name}"
            etcd = EtcdLease(pool, f"{key}/leader", self.config.node, lease.ttl, handover_key=f"{key}/handover")
            lane.leadership = EtcdLaneLeadership(etcd, functools.partial(self._handover_document, lane))

    def _refuse_queued_intents(self) -> None:
        """Answer intents the loop will never reach; chain ends stay in the journal and are replayed on restart."""
        while not self._events.empty():
            event = self._events.get_nowait()
            if isinstance(event, _QueuedIntent) and not event.reply.done():
                event.reply.set_exception(CommandRefused("the daemon is stopping; the intent was recorded but not acted on"))

    def _register_config_secrets(self) -> None:
        """Teach the redactor every secret the config references (driver tokens, broker passwords), so that one
        echoed by an upstream error is blanked in the journal and the logs even if the driver missed it."""
        for path, ref in referenced(self.config):
            try:
                self.redactor.add_secret(resolve(path, ref))
            except SecretUnavailable as exc:
                log.warning("secret not available yet; the driver or source that needs it will say so", detail=str(exc))

    # ------------------------------------------------------------------------------------------ leadership

    async def _lead(self, lane: _Lane, journal: Journal, runner: ChainRunner, group: asyncio.TaskGroup) -> None:
        """Campaign for the lane, take it over (adopt its state, continue its interrupted run), keep it while the
        lease holds, publish its handover as it changes; on loss stop deciding for it and campaign again."""
        leadership = lane.leadership
        assert leadership is not None
        retry = self.config.lease.campaign_every if isinstance(self.config.lease, EtcdLeaseConfig) else 1.0
        while True:
            if not await leadership.campaign():
                self._note_leadership(journal, lane)
                if leadership.holder is not None:
                    await self._mirror(lane)
                await asyncio.sleep(retry)
                continue
            try:
                handover = await leadership.handover()
            except LeaseLost as exc:
                log.warning("cannot read the lane's handover; giving the lane up", lane=lane.name, reason=str(exc))
                await leadership.resign()
                self._note_leadership(journal, lane)
                await asyncio.sleep(retry)
                continue
            if lane.chain is not None:  # a run of an earlier holding still winding down here: its token is stale
                await asyncio.wait({lane.chain})
            self._take_lane(journal, runner, group, lane, handover)
            try:
                async with asyncio.TaskGroup() as held:
                    publisher = held.create_task(self._publish(lane))
                    await leadership.hold()
                    publisher.cancel()
            finally:
                lane.led = False
                self.metrics.leadership(lane.name, False, leadership.token)
            if self._shared_lease:
                journal.append(
                    "lease.lost",
                    {"lane": lane.name, "node": self.config.node, "fencing_token": leadership.token, "reason": leadership.reason},
                    ts=self.clock(),
                    lane=lane.name,
                )
            log.warning("lane leadership lost", lane=lane.name, fencing_token=leadership.token, reason=leadership.reason)
            self._note_leadership(journal, lane)

    async def _mirror(self, lane: _Lane) -> None:
        """While another node leads, show the lane as its leader last published it (status and metrics only: a
        follower decides nothing), so both edges tell an operator the same state."""
        assert lane.leadership is not None
        try:
            handover = await lane.leadership.handover()
        except LeaseLost:
            return  # etcd away: keep showing the last state seen; the leadership column says why
        if handover is not None and handover.get("state"):
            lane.state = LaneState.from_durable(handover["state"])
            self.metrics.lane_state(lane.name, lane.state.status.value)

    async def _publish(self, lane: _Lane) -> None:
        """Store the lane's handover whenever it changes (fenced: only the current holding's document lands)."""
        assert lane.leadership is not None
        lane.dirty.set()
        while True:
            await lane.dirty.wait()
            lane.dirty.clear()
            try:
                await lane.leadership.publish()
            except LeaseLost as exc:
                # etcd slow or away: keep it marked and retry; a fenced token ends the holding (hold() returns).
                log.warning("handover not stored yet", lane=lane.name, reason=str(exc))
                lane.dirty.set()
                await asyncio.sleep(0.2)

    def _note_leadership(self, journal: Journal, lane: _Lane) -> None:
        """Journal and log the lane's leadership situation when it changes (not on every campaign)."""
        leadership = lane.leadership
        assert leadership is not None
        if lane.leads:
            situation = "leading"
        elif leadership.holder is not None:
            situation = f"following {leadership.holder}"
        else:
            situation = "no quorum"  # etcd did not answer: nobody can be sure who leads, so nobody acts
        if situation == lane.situation:
            return
        lane.situation = situation
        self.notifier.status(self._status_line())
        if not self._shared_lease:
            return
        body = {
            "lane": lane.name,
            "node": self.config.node,
            "situation": situation,
            "fencing_token": leadership.token if situation == "leading" else None,
            "reason": leadership.reason,
        }
        journal.append("lease.status", body, ts=self.clock(), lane=lane.name)
        log.info("lane leadership", **body)
        if leadership.holder is not None and not lane.leads:
            self._release_runs(journal, lane, f"{leadership.holder} leads the lane: the run is its to finish")

    def _release_runs(self, journal: Journal, lane: _Lane, reason: str, keep: str | None = None) -> None:
        """Close, in this journal, the lane's runs this node started and can no longer finish (a crash or a lost lease
        interrupted them and the lane has moved on): so retention and a restart do not wait for them forever."""
        winding_down = lane.chain_run if lane.chain is not None and not lane.chain.done() else None
        for run_id in journal.unfinished_runs():
            records = journal.run_records(run_id)
            if run_id not in (keep, winding_down) and records and records[0].lane == lane.name:  # a live chain ends itself
                body = {"run_id": run_id, "step": None, "reason": reason}
                journal.append(RUN_RELEASED, body, ts=self.clock(), lane=lane.name, run_id=run_id)
                log.info("run released", lane=lane.name, run_id=run_id, reason=reason)

    def _take_lane(
        self, journal: Journal, runner: ChainRunner, group: asyncio.TaskGroup, lane: _Lane, handover: Handover | None
    ) -> None:
        """Adopt the lane as the last holding left it and finish what it left unfinished. Without a handover (a local
        lease, or a fresh etcd) this node's own journal is the lane's memory."""
        leadership = lane.leadership
        assert leadership is not None
        lane.run_decision = lane.run_progress = None
        lane.state = LaneState.from_durable(handover["state"]) if handover else self._restore_state(journal, lane.name)
        previous = {"node": handover.get("node"), "fencing_token": handover.get("fencing_token")} if handover else None
        if self._shared_lease:
            body = {
                "lane": lane.name,
                "node": self.config.node,
                "fencing_token": leadership.token,
                "previous": previous,  # None: etcd had no handover, this node's journal is the lane's memory
                "state": lane.state.durable(),
                "active_run": lane.state.active_run,
            }
            journal.append("lease.acquired", body, ts=self.clock(), lane=lane.name)
        if handover is None or previous is None:
            self._recover_lane(journal, runner, group, lane)
        else:
            self._adopt_handover(journal, runner, group, lane, handover, previous)
        lane.led = True
        self.metrics.leadership(lane.name, True, leadership.token)
        self.metrics.lane_state(lane.name, lane.state.status.value)
        self._note_leadership(journal, lane)
        self._wake.set()

    def _adopt_handover(
        self,
        journal: Journal,
        runner: ChainRunner,
        group: asyncio.TaskGroup,
        lane: _Lane,
        handover: Handover,
        previous: Mapping[str, Any],
    ) -> None:
        active = lane.state.active_run  # the caller adopted the handover's state
        run: Mapping[str, Any] = handover.get("run") or {}
        decision: Mapping[str, Any] = handover.get("decision") or {}
        # Runs this node had started and lost: the lane's handover is the truth now, and it ends or continues them.
        self._release_runs(journal, lane, f"superseded: the lane's handover names run {active}", keep=active)
        if active is None:
            return
        lane.run_decision = dict(decision) if decision.get("run_id") == active else None
        start = run.get("start") or {}
        if start.get("run_id") == active and run.get("end"):
            end = run["end"]
            lane.run_progress = dict(run)
            self._events.put_nowait(ChainEvent(lane.name, active, bool(end["ok"]), str(end["reason"])))
        elif start.get("run_id") == active:
            lane.run_progress = {"start": dict(start), "done": dict(run.get("done") or {}), "end": None}
            log.info("taking over run", lane=lane.name, run_id=active, previous=previous)
            self._spawn_chain(group, lane, active, runner.take_over(start, run.get("done") or {}, previous))
        elif lane.run_decision is not None:
            log.info("starting the run the previous leader decided", lane=lane.name, run_id=active, previous=previous)
            spec = self._spec_from_decision(lane, lane.run_decision)
            self._spawn_chain(group, lane, active, runner.start(spec))
        else:
            log.error("the handover names an active run but neither its plan nor its decision; pausing", run_id=active)
            self._events.put_nowait(ChainEvent(lane.name, active, False, "takeover: the handover lacks the run's plan"))

    def _handover_document(self, lane: _Lane) -> dict[str, Any]:
        """What a successor needs: the lane's durable state, the decision behind its active run, the run's progress."""
        leadership = lane.leadership
        document = {
            "node": self.config.node,
            "fencing_token": leadership.token if leadership is not None else None,
            "state": lane.state.durable(),
            "decision": lane.run_decision,
            "run": lane.run_progress,
            "at": self.clock(),
        }
        # Redacted like the journal (the same records, and a successor resumes from them as a restart does from
        # the journal): no secret reaches etcd.
        redacted = self.redactor.redact(document)
        assert isinstance(redacted, dict)
        return redacted

    def _on_run_record(self, kind: str, spec: RunSpec, body: Mapping[str, Any]) -> None:
        """Keep the lane's handover in step with its run (called for every run record the runner journals)."""
        lane = self.lanes.get(spec.lane)
        if lane is None or lane.state.active_run != spec.run_id:
            return
        progress = lane.run_progress
        if kind == "run.start":
            done = progress["done"] if progress is not None and progress["start"].get("run_id") == spec.run_id else {}
            lane.run_progress = {"start": dict(body), "done": done, "end": None}
        elif progress is None:
            return
        elif kind == "step.done":
            progress["done"][body["step"]] = body.get("outputs") or {}
        elif kind == "run.end":
            progress["end"] = {"ok": body["ok"], "reason": body["reason"]}
        else:
            return
        lane.dirty.set()

    async def _loop(self, journal: Journal, runner: ChainRunner, group: asyncio.TaskGroup) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.tick):
                    await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            if self._reload:
                self._reload = False
                self._reload_profiles(journal)
            # One snapshot serves the whole pass: nothing below awaits, so no sample can arrive in between.
            readings = self.store.snapshot()
            while not self._events.empty():
                event = self._events.get_nowait()
                lane = self.lanes[event.lane if isinstance(event, ChainEvent) else event.intent.lane]
                if not lane.leads:
                    self._drop_event(lane, event)
                elif isinstance(event, ChainEvent):
                    self._step_lane(lane, event, readings, journal, runner, group)
                else:
                    decision = self._step_lane(lane, event.intent, readings, journal, runner, group)
                    if not event.reply.done():
                        event.reply.set_result(decision)
            for lane in self.lanes.values():
                if lane.leads:
                    self._step_lane(lane, None, readings, journal, runner, group)

    def _drop_event(self, lane: _Lane, event: ChainEvent | _QueuedIntent) -> None:
        """An event for a lane this node no longer leads: the lane's next leader decides (from the handover)."""
        if isinstance(event, _QueuedIntent):
            if not event.reply.done():
                event.reply.set_exception(CommandRefused(self._not_leading(lane)))
        else:
            log.info("chain end not decided here: the lane is led elsewhere now", lane=lane.name, run_id=event.run_id)

    def _not_leading(self, lane: _Lane) -> str:
        leadership = lane.leadership
        why = leadership.reason if leadership is not None else "starting"
        return f"{self.config.node} does not lead lane {lane.name!r} ({lane.situation or 'starting'}: {why})"

    def _step_lane(
        self,
        lane: _Lane,
        event: Intent | ChainEvent | None,
        readings: Mapping[tuple[str, str], Sample],
        journal: Journal,
        runner: ChainRunner,
        group: asyncio.TaskGroup,
    ) -> Decision:
        observation = Observation(readings, self.config.node, self.config.peer, event)
        before = lane.state
        decision, lane.state = decide(lane.state, observation, lane.profile, self.clock())
        if isinstance(event, ChainEvent) and event.run_id == before.active_run:
            running = before.paused_from if before.status is LaneStatus.PAUSED else before.status
            if running is LaneStatus.FAILING_BACK and event.ok:
                self._record_drill_cost(journal, lane, event.run_id)
            self.metrics.run(
                lane.name, "cutover" if running is LaneStatus.CUTTING_OVER else "failback", "succeeded" if event.ok else "failed"
            )
        # A chain's end is always on record, even when it leaves the status as it was (a lane paused mid-run).
        if decision.notable or isinstance(event, ChainEvent):
            assert lane.leadership is not None
            record_decision(journal, decision, lane.profile, lane.state, lane.leadership.token)
            lane.dirty.set()
            lane.last_decision = decision
            self.metrics.decision(lane.name, decision.kind.value)
            self.metrics.lane_state(lane.name, lane.state.status.value)
            log.info("decision", lane=lane.name, kind=decision.kind.value, status=lane.state.status.value, reason=decision.reason)
            self.notifier.status(self._status_line())
        if decision.chain is not None and decision.run_id is not None:
            lane.run_decision, lane.run_progress = decision.to_dict(), None
            spec = self._spec_from_decision(lane, lane.run_decision)
            self._spawn_chain(group, lane, spec.run_id, runner.start(spec))
        return decision

    def _spawn_chain(self, group: asyncio.TaskGroup, lane: _Lane, run_id: str, work: Coroutine[Any, Any, ChainEvent]) -> None:
        task = group.create_task(self._chain(lane.name, run_id, work))
        lane.chain, lane.chain_run = task, run_id
        self._chain_tasks.add(task)
        task.add_done_callback(self._chain_tasks.discard)

    async def _chain(self, lane: str, run_id: str, work: Coroutine[Any, Any, ChainEvent]) -> None:
        try:
            event = await work
        except asyncio.CancelledError:
            raise
        except RunReleased:
            return  # the lane's leadership moved on mid-run: its next leader ends the run (the journal says why)
        except Exception as exc:  # a bug in a driver must fail the run, never the daemon
            log.exception("chain crashed", run_id=run_id)
            event = ChainEvent(lane, run_id, ok=False, detail=f"internal error: {type(exc).__name__}")
            if self.journal is not None:
                self.journal.append(
                    "run.end",
                    {"run_id": run_id, "ok": False, "reason": event.detail, "outputs": {}},
                    ts=self.clock(),
                    lane=lane,
                    run_id=run_id,
                )
        self._events.put_nowait(event)
        self._wake.set()

    async def _drain(self) -> None:
        """Let running steps finish for the grace period, then cancel (the journal shows where they stopped)."""
        if self._chain_tasks:
            log.info("waiting for running chains", runs=len(self._chain_tasks), grace_s=self.config.shutdown_grace)
            _, pending = await asyncio.wait(set(self._chain_tasks), timeout=self.config.shutdown_grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def _source(self, spec: SourceConfig) -> None:
        """Run one source for the daemon's lifetime. A source handles its upstream's trouble itself; this
        restarts one that crashed on a bug, so a bad source costs its signals (UNKNOWN by age), not the daemon."""
        backoff = 1.0
        while True:
            try:
                source = self._build_source(spec)
                async with source:
                    self.sources[spec.name] = source
                    await source.run(self.on_sample)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("source crashed; restarting it", source=spec.name, retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)

    def _build_source(self, spec: SourceConfig) -> Source:
        if isinstance(spec, PeerSource):
            from hybridops_daemon.signals.peer import PeerLink

            assert self.config.peer is not None, "check-config requires `peer` with a peer source"
            return PeerLink(spec, self.config.node, self.config.peer, self._published_signals, self.store.snapshot, self.clock)
        return build_source(spec, self.config.node, self.clock)

    def _record_drill_cost(self, journal: Journal, lane: _Lane, teardown_run: str) -> None:
        """When a drill's teardown completes, put what the drill cost into the drill's own run record."""
        starts = journal.records(kinds=("run.start",), lane=lane.name, newest_first=True, limit=2)
        if len(starts) < 2 or starts[0].run_id != teardown_run or starts[1].body.get("kind") != "drill":
            return  # the failback of a real cutover, not a drill's teardown
        drill = starts[1]
        hours = (self.clock() - drill.ts) / 3600
        hourly = float(drill.body.get("hourly_cost_usd", 0.0))
        body = {
            "drill_run": drill.run_id,
            "teardown_run": teardown_run,
            "hourly_cost_usd": hourly,
            "duration_s": round(hours * 3600, 3),
            "cost_usd": round(hours * hourly, 4),
        }
        journal.append("drill.cost", body, ts=self.clock(), lane=lane.name, run_id=drill.run_id)
        log.info("drill cost", lane=lane.name, **body)

    async def _scheduled_drill(self, lane: str) -> None:
        try:
            _, decision = await self.submit(Command.DRILL, lane, "schedule", Trigger.SCHEDULE)
        except (CommandRefused, TimeoutError) as exc:
            log.warning("scheduled drill not submitted", lane=lane, reason=str(exc))
            return
        log.info("scheduled drill", lane=lane, kind=decision.kind.value, reason=decision.reason)

    async def _retention(self, journal: Journal, retention: RetentionConfig) -> None:
        """Cut the journal's oldest records to the configured age/size, one bounded batch at a time, so the loop
        (and the watchdog it feeds) keep running; every cut leaves a summary that verify() proves from."""
        while True:
            before = self.clock() - retention.days * 86400 if retention.days is not None else None
            max_bytes = int(retention.max_mb * 1024 * 1024) if retention.max_mb is not None else None
            try:
                report = journal.prune(before_ts=before, max_bytes=max_bytes, now=self.clock())
                while report is not None:
                    if report.removed:
                        log.info("journal pruned", removed=report.removed, held=report.held)
                    elif report.held:
                        log.warning("journal retention held", held=report.held)
                    if not report.more:
                        break
                    await asyncio.sleep(0)
                    report = journal.prune(before_ts=before, max_bytes=max_bytes, now=self.clock())
            except JournalError:
                log.exception("journal retention failed; the next check retries")
            await asyncio.sleep(retention.check_every)

    def _max_ages(self) -> dict[str, float]:
        """Per signal, the smallest max age of any lane that reads it (the strictest view of "stale")."""
        ages: dict[str, float] = {}
        for lane in self.lanes.values():
            for name, spec in lane.profile.signals.items():
                ages[name] = min(spec.max_age, ages.get(name, spec.max_age))
        return ages

    def _published_signals(self) -> dict[str, dict[str, float]]:
        """Per lane, the signals its profile reads and their max ages: what the peer edge is told about."""
        return {
            name: {signal: spec.max_age for signal, spec in lane.profile.signals.items()} for name, lane in self.lanes.items()
        }

    def on_sample(self, sample: Sample) -> None:
        if self.store.put(sample):
            self._wake.set()

    async def _watchdog(self, interval: float) -> None:
        # Pinged from the loop itself: a blocked loop stops the pings and systemd restarts us.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------------------------------ restart

    @staticmethod
    def _previous_stop_was_unclean(journal: Journal) -> bool:
        # last() also reads the copies a retention cut carries, so this holds after pruning.
        start, stop = journal.last("daemon.start"), journal.last("daemon.stop")
        return start is not None and (stop is None or stop.seq < start.seq)

    def _restore_state(self, journal: Journal, lane: str) -> LaneState:
        record = journal.last("decision", lane=lane)
        if record is None:
            return LaneState(lane=lane, since=self.clock())
        return LaneState.from_durable(record.body["state"])

    def _recover_lane(self, journal: Journal, runner: ChainRunner, group: asyncio.TaskGroup, lane: _Lane) -> None:
        """Finish what a crash interrupted, from this node's journal (the caller restored the lane's state from it):
        resume a started run, start a decided-but-unstarted one, replay an end the loop never decided on."""
        run_id = lane.state.active_run
        if run_id is None:
            return
        records = journal.run_records(run_id)
        end = next((r for r in records if r.kind == "run.end"), None)
        decision = next((r for r in records if r.kind == "decision"), None)
        lane.run_decision = dict(decision.body) if decision is not None else None
        if run_id in journal.unfinished_runs():
            self._spawn_chain(group, lane, run_id, runner.resume(run_id))
        elif end is not None:
            self._events.put_nowait(ChainEvent(lane.name, run_id, bool(end.body["ok"]), str(end.body["reason"])))
        elif decision is not None:
            self._spawn_chain(group, lane, run_id, runner.start(self._spec_from_decision(lane, decision.body)))
        log.info("recovering run", lane=lane.name, run_id=run_id)

    def _warn_of_orphan_runs(self, journal: Journal) -> None:
        for run_id in set(journal.unfinished_runs()) - {lane.state.active_run for lane in self.lanes.values()}:
            log.warning("unfinished run belongs to no lane's state; leaving it for an operator", run_id=run_id)

    def _spec_from_decision(self, lane: _Lane, body: Mapping[str, Any]) -> RunSpec:
        """The run a decision asks for (as journaled, so a restart builds the same run from the record)."""
        chain: Literal["cutover", "failback"] = "cutover" if body["chain"] == "cutover" else "failback"
        return RunSpec(
            run_id=body["run_id"],
            lane=lane.name,
            chain=chain,
            kind=body["kind"],
            trigger=body["trigger"],
            actor=body["actor"],
            reason=body["reason"],
            profile={"name": lane.profile.name, "version": lane.profile.version},
            steps=lane.profile.chain(chain),
            approval_timeout=lane.profile.approval_timeout,
            hourly_cost_usd=lane.profile.hourly_cost(),
        )

    # ------------------------------------------------------------------------------------------ reload

    def _reload_profiles(self, journal: Journal) -> None:
        loaded: dict[str, Profile] = {}
        errors: list[str] = []
        for name, lane_config in self.config.lanes.items():
            try:
                loaded[name] = load_profile(lane_config.profile, DRIVER_MODULES)
            except ConfigInvalid as exc:
                errors.extend(str(error) for error in exc.errors)
        if not errors and self.drills is not None:
            try:
                self.drills.reschedule(loaded)
            except ValueError as exc:
                errors.append(str(exc))
        if errors:
            journal.append("profile.reload_refused", {"errors": errors}, ts=self.clock())
            log.error("profile reload refused; keeping the running profiles", errors=errors)
            return
        for name, profile in loaded.items():
            self.lanes[name].profile = profile
        journal.append("profile.reloaded", {"lanes": {n: p.ref for n, p in loaded.items()}}, ts=self.clock())
        log.info("profiles reloaded", lanes={n: p.ref for n, p in loaded.items()})

    # ------------------------------------------------------------------------------------------ control

    def _status_line(self) -> str:
        return ", ".join(f"{name}: {lane.state.status.value}" for name, lane in self.lanes.items())

    async def submit(self, command: Command, lane: str, actor: str, trigger: Trigger = Trigger.OPERATOR) -> tuple[int, Decision]:
        """Journal the intent (durable first), queue it for the loop, and wait briefly for the loop's decision."""
        if self.journal is None:
            raise CommandRefused("the daemon is starting")
        if self._stopping:  # the loop decides nothing more: refuse before journaling an intent it would never answer
            raise CommandRefused("the daemon is stopping")
        if not self.lanes[lane].leads:  # only the lane's leader decides: send the operator to it, journal nothing here
            raise CommandRefused(self._not_leading(self.lanes[lane]))
        kind = "operator" if trigger is Trigger.OPERATOR else "schedule"
        record = self.journal.append(
            kind, {"command": command.value, "lane": lane, "actor": actor, "trigger": trigger.value}, ts=self.clock(), lane=lane
        )
        queued = _QueuedIntent(Intent(record.seq, lane, command, actor, trigger))
        self._events.put_nowait(queued)
        self._wake.set()
        async with asyncio.timeout(INTENT_REPLY_TIMEOUT):
            return record.seq, await queued.reply


class _ControlBackend:
    """What the control socket may ask of the daemon: read state, record intent, hand over approvals."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def _journal(self) -> Journal:
        if self._daemon.journal is None:
            raise CommandRefused("the daemon is starting")
        return self._daemon.journal

    async def status(self) -> dict[str, Any]:
        daemon = self._daemon
        lanes = []
        next_drills = daemon.drills.next_runs() if daemon.drills is not None else {}
        for lane in daemon.lanes.values():
            last = lane.last_decision
            lanes.append(
                {
                    "lane": lane.name,
                    "status": lane.state.status.value,
                    "since": lane.state.since,
                    "profile": lane.profile.ref,
                    "active_run": lane.state.active_run,
                    "paused_by": lane.state.paused_by,
                    "last_decision": {"kind": last.kind.value, "reason": last.reason, "at": last.at} if last else None,
                    "next_drill": next_drills[lane.name].isoformat() if lane.name in next_drills else None,
                    "leadership": {
                        "leading": lane.leads,
                        "situation": lane.situation or "starting",
                        "holder": lane.leadership.holder if lane.leadership is not None else None,
                        "fencing_token": lane.leadership.token if lane.leadership is not None else None,
                        "reason": lane.leadership.reason if lane.leadership is not None else "starting",
                    },
                }
            )
        pending = [
            {"run_id": p.run_id, "step": p.step, "lane": p.lane, "since": p.since, "expires_at": p.expires_at}
            for p in daemon.approvals.pending()
        ]
        sources = []
        for name, source in daemon.sources.items():
            health = getattr(source, "health", None)
            sources.append(
                {
                    "source": name,
                    "upstream": "down" if health is not None and health.upstream_down else "ok",
                    "malformed": health.malformed if health is not None else 0,
                }
            )
        return {
            "node": daemon.config.node,
            "lease": daemon.config.lease.type,
            "lanes": lanes,
            "pending_approvals": pending,
            "sources": sources,
        }

    async def submit(self, command: str, lane: str | None, actor: Actor) -> dict[str, Any]:
        daemon = self._daemon
        verb = Command(command)
        if lane is not None and lane not in daemon.lanes:
            raise NotFound(f"no lane {lane!r}; lanes: {', '.join(daemon.lanes)}")
        if lane is None and verb not in (Command.PAUSE, Command.RESUME):
            raise CommandRefused(f"{command} needs --lane")
        targets = [lane] if lane is not None else list(daemon.lanes)
        answers = [await daemon.submit(verb, name, str(actor)) for name in targets]
        decisions = [decision for _, decision in answers]
        refused = [d for d in decisions if d.kind.value == "refuse"]
        if refused and len(refused) == len(decisions):
            raise CommandRefused("; ".join(d.reason for d in refused))
        last = decisions[-1]
        return {
            "intent_id": answers[-1][0],
            "decision": {
                "kind": last.kind.value,
                "reason": last.reason,
                "status_after": last.status_after.value,
                "run_id": last.run_id,
            },
            "decisions": [{"lane": d.lane, "kind": d.kind.value, "reason": d.reason} for d in decisions],
        }

    async def approval(self, run_id: str, step: str, approve: bool, actor: Actor) -> dict[str, Any]:
        journal = self._journal()
        book = self._daemon.approvals
        pending = next((p for p in book.pending() if (p.run_id, p.step) == (run_id, step)), None)
        if pending is None:
            raise NotFound(f"no step {step!r} of run {run_id!r} is waiting for approval")
        # Durable first: the operator's word is on record before the step can act on it.
        journal.append(
            "operator",
            {"command": "approve" if approve else "reject", "run_id": run_id, "step": step, "actor": str(actor)},
            ts=self._daemon.clock(),
            lane=pending.lane,
            run_id=run_id,
        )
        book.answer(run_id, step, Verdict(approve, str(actor)))
        return {"run_id": run_id, "step": step, "lane": pending.lane, "approved": approve}

    async def journal_list(self, lane: str | None, limit: int) -> list[dict[str, Any]]:
        return [asdict(run) for run in self._journal().runs(lane=lane, limit=limit)]

    async def journal_show(self, run_id: str) -> list[dict[str, Any]]:
        records = self._journal().run_records(run_id)
        if not records:
            raise NotFound(f"no run {run_id!r} in the journal")
        return [record.to_dict() for record in records]

    async def journal_verify(self) -> dict[str, Any]:
        return asdict(self._journal().verify())
