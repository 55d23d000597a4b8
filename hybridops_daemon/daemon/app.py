"""The daemon: builds the rooms and wires them (sources → observation store → decision loop → chains → journal,
leadership per lane, the control socket, housekeeping), and owns every task in one TaskGroup.

Signal handlers only set flags and wake the loop. The control socket only records intent and wakes the loop; only
the loop calls decide() and starts chains.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from hybridops_daemon.chain.approvals import ApprovalBook
from hybridops_daemon.chain.runner import ChainRunner, RunSpec
from hybridops_daemon.config.models import AlertmanagerNotifyConfig, DaemonConfig, EtcdLeaseConfig, LocalLeaseConfig
from hybridops_daemon.config.profile import Profile
from hybridops_daemon.config.sources import SourceSpec
from hybridops_daemon.control.backend import DaemonBackend
from hybridops_daemon.control.server import ControlServer
from hybridops_daemon.daemon.alerting import daemon_alerts
from hybridops_daemon.daemon.burst import lane_figures as burst_figures
from hybridops_daemon.daemon.chains import ChainSupervisor
from hybridops_daemon.daemon.decisions import DecisionLoop
from hybridops_daemon.daemon.housekeeping import (
    RetentionHold,
    keep_journal_verified,
    keep_retention,
    reload_profiles,
    scheduled_drill,
)
from hybridops_daemon.daemon.inbox import Inbox
from hybridops_daemon.daemon.lane import Lane, status_line
from hybridops_daemon.daemon.lifecycle import Watchdog, previous_stop_was_unclean, signal_flags
from hybridops_daemon.daemon.readiness import Readiness
from hybridops_daemon.daemon.sources import SourceSupervisor
from hybridops_daemon.daemon.takeover import Takeover, restore_state
from hybridops_daemon.drivers.registry import build_drivers
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.journal.store import PEER_HEAD, Journal, JournalError
from hybridops_daemon.journal.verify import JournalCheck
from hybridops_daemon.lease.lanes import EtcdLaneLeadership, LocalLaneLeadership
from hybridops_daemon.lease.local import LocalLease
from hybridops_daemon.metrics import Metrics, MetricsServer, last_drill_started
from hybridops_daemon.notify.alertmanager import AlertmanagerNotifier
from hybridops_daemon.observations import ObservationStore
from hybridops_daemon.scheduler import DrillScheduler
from hybridops_daemon.sdnotify import Notifier
from hybridops_daemon.secrets import SecretUnavailable, referenced, resolve
from hybridops_daemon.signals.base import Source, SourceContext
from hybridops_daemon.signals.registry import build_source
from hybridops_daemon.signals.sample import Sample
from hybridops_daemon.web.server import WebServer

if TYPE_CHECKING:
    from hybridops_daemon.lease.etcd import EtcdPool

log = structlog.get_logger("hybridops.daemon")

# How often, at most, the peer's journal head is journaled. The peer publishes it every second; a record per second
# would outgrow everything else in an idle journal. A minute bounds that to 1440 small records a day at worst, and a
# truncation of the peer's journal is still caught for all but its last minute of records.
PEER_HEAD_EVERY = 60.0


class Daemon:
    def __init__(
        self, config: DaemonConfig, profiles: Mapping[str, Profile], path: Path, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.path = path  # the daemon config file: a reload checks it (and the profiles it names) again
        self.clock = clock
        self.redactor = Redactor()
        self.store = ObservationStore()
        self.approvals = ApprovalBook()
        self.notifier = Notifier()
        self.watchdog = Watchdog(self.notifier)
        self.inbox = Inbox()
        self.lanes: dict[str, Lane] = {}
        self.sources = SourceSupervisor(self._build_source, self.on_sample)
        self.loop: DecisionLoop | None = None
        self._profiles_at_start = dict(profiles)
        self._stop_requested = self._reload_requested = False
        self.journal_check = JournalCheck(config.journal_verify_every)
        self.metrics = Metrics(
            self.store.snapshot,
            self._max_ages,
            lambda: self.sources.sources,
            lambda: None if self.journal is None else self.journal.size_bytes(),
            clock,
            edges=tuple(edge for edge in (config.node, config.peer) if edge),
            approvals=self.approvals.pending,
            journal_check=self.journal_check,
        )
        self.journal: Journal | None = None
        self.peer_heads = PeerHeads(clock)
        self.alerting: AlertmanagerNotifier | None = None

    # Signal handlers and tests: flags and a wake-up, nothing more.
    def request_stop(self) -> None:
        self._stop_requested = True
        if self.loop is not None:
            self.loop.stop()

    def request_reload(self) -> None:
        if self.loop is not None:
            self.loop.request_reload()

    def on_sample(self, sample: Sample) -> None:
        if self.store.put(sample):
            self.inbox.wake()

    async def run(self) -> None:
        config = self.config
        local = None
        if isinstance(config.lease, LocalLeaseConfig):
            local = LocalLease(config.lease.path or config.state_dir / "lease.lock").acquire()
        try:
            with (
                signal_flags(self.request_stop, self.request_reload),
                Journal.open(config.journal_path, self.redactor, key=self._journal_key()) as journal,
            ):
                self.journal = journal
                await self._serve(journal, local)
        finally:
            if local is not None:
                local.release()

    def _journal_key(self) -> bytes | None:
        """The key every record is signed with, if configured. Raises SecretUnavailable: a node told to sign does
        not start unsigned (its records would fail `journal verify --key-file` as forged)."""
        ref = self.config.journal_key
        return resolve("journal_key", ref).encode() if ref is not None else None

    def _start_record(self, journal: Journal, local: LocalLease | None) -> None:
        body = {
            "node": self.config.node,
            "lease": self.config.lease.type,
            "fencing_token": local.token if local is not None else None,
            "previous_shutdown": "unclean" if previous_stop_was_unclean(journal) else "clean",
            "lanes": {name: profile.ref for name, profile in self._profiles_at_start.items()},
        }
        journal.append("daemon.start", body, ts=self.clock())
        self.metrics.started(self.clock(), body["previous_shutdown"] == "unclean")

    async def _serve(self, journal: Journal, local: LocalLease | None) -> None:
        config = self.config
        self._start_record(journal, local)
        self._register_config_secrets()
        for name, lane_config in config.lanes.items():
            state = restore_state(journal, name, self.clock())
            self.lanes[name] = Lane(name, self._profiles_at_start[name], state, build_drivers(name, lane_config))
        async with contextlib.AsyncExitStack() as stack:
            etcd = self._make_leaderships(local, stack)
            runner = self._runner(journal)
            for name, lane in self.lanes.items():
                self.metrics.lane_state(name, lane.state.status.value)
                self.metrics.leadership(name, False, 0)
            if any(lane.profile.burst for lane in self.lanes.values()):
                self.metrics.bursts(lambda: burst_figures(self.lanes, self.clock()))
            group = await stack.enter_async_context(asyncio.TaskGroup())
            chains = ChainSupervisor(runner, group, journal, self.inbox, self.clock)
            loop = self.loop = DecisionLoop(
                self.lanes,
                self.store,
                journal,
                chains,
                self.inbox,
                self.metrics,
                self.notifier,
                config.node,
                config.peer,
                self.clock,
            )
            if self._stop_requested:  # a signal before the loop existed
                loop.stop()
            drills: list[DrillScheduler] = []
            retention, readiness = RetentionHold(), self._readiness(journal)
            backend = self._backend(journal, loop, drills, retention, readiness)
            backend.journal_check = self.journal_check
            await stack.enter_async_context(ControlServer(config.socket_path, backend, group=config.control.group))
            if config.metrics is not None:
                await stack.enter_async_context(MetricsServer(config.metrics, self.metrics))
            if config.web is not None:
                view = WebServer(config.web, backend, journal, group=config.control.group)
                backend.web_url = (await stack.enter_async_context(view)).url
            if config.notify.alertmanager is not None:
                self.alerting = await stack.enter_async_context(self._alerting(config.notify.alertmanager, backend))
            profiles = {name: lane.profile for name, lane in self.lanes.items()}
            drills.append(await stack.enter_async_context(DrillScheduler(profiles, scheduled_drill(loop.submit))))
            self.metrics.drills(drills[0].schedule, functools.partial(last_drill_started, journal))
            self._warn_of_orphan_runs(journal)
            takeover = Takeover(
                config.node,
                isinstance(config.lease, EtcdLeaseConfig),
                config.lease.campaign_every if isinstance(config.lease, EtcdLeaseConfig) else 1.0,
                journal,
                chains,
                self.inbox,
                self.metrics,
                lambda: self.notifier.status(status_line(self.lanes)),
                self.clock,
            )
            # Leadership first: with a local lease each lane is taken (and its interrupted run recovered) before any
            # retention cut, which must not remove the ended runs a recovery reads.
            leaders = [group.create_task(takeover.lead(lane)) for lane in self.lanes.values()]
            housekeeping = [group.create_task(self.sources.run(spec)) for spec in config.sources]
            if config.retention is not None:
                housekeeping.append(group.create_task(keep_retention(journal, config.retention, self.clock, retention)))
            housekeeping.append(group.create_task(keep_journal_verified(journal, self.journal_check, self.clock)))
            housekeeping.append(group.create_task(self.watchdog.run()))
            housekeeping.append(group.create_task(readiness.run()))
            # Start-up objects (modules, config, profiles) live as long as the daemon: out of the collector's sight, its
            # young-generation passes stop re-walking them (status at 500 clients: 165 → 145 µs of CPU per request).
            gc.freeze()
            self.notifier.ready(status_line(self.lanes))
            log.info("daemon ready", node=config.node, lanes=list(self.lanes), socket=str(config.socket_path))
            reload = functools.partial(reload_profiles, self.path, config, self.lanes, drills[0], journal, self.clock, etcd)
            try:
                await loop.run(self.watchdog.tick(config.tick), self.watchdog.stamp, reload)
            finally:
                await self._shutdown(journal, loop, chains, housekeeping, leaders)

    def _alerting(self, config: AlertmanagerNotifyConfig, backend: DaemonBackend) -> AlertmanagerNotifier:
        """Direct notification. Run links go to ``link``, else to the web view (known once it listens), else nowhere."""
        token = resolve("notify.alertmanager.token", config.token) if config.token is not None else None
        check = self.journal_check
        alerts = daemon_alerts(
            self.lanes,
            self.approvals,
            lambda: (check.problem or "verification failed") if check.ok is False else None,
            self.config.node,
            lambda: config.link or backend.web_url or "",
        )
        notifier = AlertmanagerNotifier(config, alerts, token, self.clock)
        self.metrics.notifications(lambda: notifier.stats)
        backend.notify = notifier.stats.document
        return notifier

    def _readiness(self, journal: Journal) -> Readiness:
        return Readiness(
            self.config.node,
            self.lanes,
            {name: lane_config.readiness for name, lane_config in self.config.lanes.items()},
            journal,
            self.on_sample,
            self.metrics,
            self.redactor,
            self.clock,
            lambda: self.notifier.status(status_line(self.lanes)),
        )

    def _backend(
        self, journal: Journal, loop: DecisionLoop, drills: list[DrillScheduler], retention: RetentionHold, readiness: Readiness
    ) -> DaemonBackend:
        return DaemonBackend(
            self.config.node,
            self.config.lease.type,
            self.lanes,
            journal,
            self.approvals,
            self.sources.sources,
            loop.submit,
            self.clock,
            lambda: drills[0] if drills else None,  # started after the control socket: a status call may come first
            retention,
            readiness,
        )

    async def _shutdown(
        self,
        journal: Journal,
        loop: DecisionLoop,
        chains: ChainSupervisor,
        housekeeping: list[asyncio.Task[None]],
        leaders: list[asyncio.Task[None]],
    ) -> None:
        self.notifier.stopping()
        for task in housekeeping:
            task.cancel()
        loop.refuse_queued()
        await chains.drain(self.config.shutdown_grace)  # the lease is still kept alive: a draining step may still apply
        for task in leaders:
            task.cancel()
        await asyncio.wait(leaders)
        for lane in self.lanes.values():
            await lane.lease.resign()  # a clean stop hands over at once, not after the TTL
        journal.append("daemon.stop", {"node": self.config.node, "reason": "signal"}, ts=self.clock())
        log.info("daemon stopped")

    def _runner(self, journal: Journal) -> ChainRunner:
        return ChainRunner(
            journal,
            {name: lane.drivers for name, lane in self.lanes.items()},
            {name: lane.lease for name, lane in self.lanes.items()},
            self.approvals,
            self.redactor,
            self.clock,
            on_step=self.metrics.step,
            on_record=self._track,
        )

    def _track(self, kind: str, spec: RunSpec, body: Mapping[str, Any]) -> None:
        """Every run record the runner journals keeps its lane's handover in step."""
        lane = self.lanes.get(spec.lane)
        if lane is not None:
            lane.track(kind, spec.run_id, body)
        if self.alerting is not None:  # a run started, moved on or ended: page now, not at the next evaluation
            self.alerting.wake()

    def _make_leaderships(self, local: LocalLease | None, stack: contextlib.AsyncExitStack) -> EtcdPool | None:
        lease = self.config.lease
        if local is not None:
            for lane in self.lanes.values():
                lane.leadership = LocalLaneLeadership(local, self.config.node)
            return None
        assert isinstance(lease, EtcdLeaseConfig)
        from hybridops_daemon.lease.etcd import EtcdLease, EtcdPool
        from hybridops_daemon.lease.etcd_credentials import load_credentials

        pool = EtcdPool(lease.endpoints, lease.op_timeout, load_credentials(lease))
        stack.push_async_callback(pool.close)  # closed after every lane resigned
        for lane in self.lanes.values():
            key = f"{lease.prefix}/lanes/{lane.name}"
            etcd = EtcdLease(pool, f"{key}/leader", self.config.node, lease.ttl, handover_key=f"{key}/handover")
            lane.leadership = EtcdLaneLeadership(etcd, functools.partial(self._handover_document, lane))
        return pool

    def _handover_document(self, lane: Lane) -> dict[str, object]:
        # Redacted like the journal (the same records, and a successor resumes from them as a restart does from the
        # journal): no secret reaches etcd.
        redacted = self.redactor.redact(lane.handover(self.config.node, self.clock()).document())
        assert isinstance(redacted, dict)
        return redacted

    def _register_config_secrets(self) -> None:
        """Teach the redactor every secret the config references (driver tokens, broker passwords), so that one
        echoed by an upstream error is blanked in the journal and the logs even if the driver missed it."""
        for path, ref in referenced(self.config):
            try:
                self.redactor.add_secret(resolve(path, ref))
            except SecretUnavailable as exc:
                log.warning("secret not available yet; the driver or source that needs it will say so", detail=str(exc))

    def _warn_of_orphan_runs(self, journal: Journal) -> None:
        for run_id in set(journal.unfinished_runs()) - {lane.state.active_run for lane in self.lanes.values()}:
            log.warning("unfinished run belongs to no lane's state; leaving it for an operator", run_id=run_id)

    def _build_source(self, spec: SourceSpec) -> Source:
        assert self.journal is not None  # sources start in _serve, with the journal open
        journal = self.journal
        context = SourceContext(
            self.config.node,
            self.config.peer,
            self.clock,
            self._published_signals,
            self.store.snapshot,
            journal_head=functools.partial(self.peer_heads.own, journal),
            peer_head=functools.partial(self.peer_heads.record, journal),
        )
        return build_source(spec, context)

    def _max_ages(self) -> dict[str, float]:
        """Per signal, the smallest max age of any lane that reads it (the strictest view of "stale")."""
        ages: dict[str, float] = {}
        for lane in self.lanes.values():
            for name, spec in lane.profile.signals.items():
                ages[name] = min(spec.max_age, ages.get(name, spec.max_age))
        return ages

    def _published_signals(self) -> dict[str, dict[str, float]]:
        """Per lane, the signals its profile reads and their max ages: what the peer edge is told about."""
        return {name: {s: spec.max_age for s, spec in lane.profile.signals.items()} for name, lane in self.lanes.items()}


class PeerHeads:
    """This node's journal head for the peer link to publish, and the peer's, journaled as ``peer.head`` records.

    The head published passes over this journal's own ``peer.head`` records: otherwise recording the peer's head
    would change this head, which the peer would record, and so on, a record a minute on each edge forever. Appended
    on the loop like every other record (the link's callback runs there). Never raises: a journal that cannot be read
    or written costs this evidence, not the peer link.
    """

    def __init__(self, clock: Callable[[], float], every: float = PEER_HEAD_EVERY) -> None:
        self._clock = clock
        self._every = every
        self._last: dict[str, tuple[int, str, float]] = {}  # per peer: the head last journaled, and when

    @staticmethod
    def own(journal: Journal) -> tuple[int, str] | None:
        try:
            return journal.head(skip=PEER_HEAD)
        except JournalError:
            return None  # nothing to tell the peer this round; the failing append elsewhere says why

    def record(self, journal: Journal, peer: str, seq: int, digest: str) -> None:
        now = self._clock()
        last = self._last.get(peer)
        if last is not None:
            if (seq, digest) == last[:2]:
                return
            if seq <= last[0]:  # journaled at once: it is the evidence
                log.warning("the peer's journal head went back (restored, rewritten or cut?)", peer=peer, seq=seq, was=last[0])
            elif now - last[2] < self._every:
                return
        try:
            journal.append(PEER_HEAD, {"node": peer, "seq": seq, "hash": digest}, ts=now)
        except JournalError as exc:
            log.warning("could not journal the peer's journal head; the next one retries", peer=peer, error=str(exc))
            return
        self._last[peer] = (seq, digest, now)
