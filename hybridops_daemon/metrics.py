"""Prometheus metrics: what the daemon decided, the state of each lane, how fresh its signals are, how its
sources, chains, lease and journal are doing, served on ``/metrics`` from the event loop (no threads).

The daemon pushes events (``decision``, ``lane_state``, ``step``, ``run``, ``leadership``); everything that is a
reading of current state (signal ages and UNKNOWN flags, source health, the journal's size and last verification)
is computed at scrape time from providers, so a scrape never sees a stale age and nothing runs in the background to
keep it fresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Literal, Self

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from hybridops_daemon import __version__
from hybridops_daemon.chain.approvals import PendingApproval
from hybridops_daemon.config.models import MetricsConfig
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.journal.verify import JournalCheck
from hybridops_daemon.notify.alertmanager import NotifyStats
from hybridops_daemon.policy.burst_lane import BurstFigures
from hybridops_daemon.policy.types import DecisionKind, LaneStatus
from hybridops_daemon.signals.base import InputHealth
from hybridops_daemon.signals.sample import Sample

Chain = Literal["cutover", "failback", "scale"]
StepOutcome = Literal["applied", "skipped", "failed"]
RunOutcome = Literal["succeeded", "failed"]
CHAINS: tuple[Chain, ...] = ("cutover", "failback", "scale")
RUN_OUTCOMES: tuple[RunOutcome, ...] = ("succeeded", "failed")

# Chain steps range from a sandbox write (ms) to a Terraform apply or an approval wait (tens of minutes).
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class _SignalCollector:
    """``hybridops_signal_age_seconds`` and ``hybridops_signal_unknown``, from the observation store at scrape time.

    UNKNOWN is judged exactly as ``decide()`` judges it (``policy/rules.py``): no sample, a null value, or older
    than the signal's max age. A declared signal never seen at an expected edge reads UNKNOWN with no age.
    """

    def __init__(
        self,
        snapshot: Callable[[], Mapping[tuple[str, str], Sample]],
        max_ages: Callable[[], Mapping[str, float]],
        edges: Sequence[str],
        clock: Callable[[], float],
    ) -> None:
        self._snapshot = snapshot
        self._max_ages = max_ages
        self._edges = edges
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        age = GaugeMetricFamily(
            "hybridops_signal_age_seconds",
            "Seconds since the latest sample of the signal at the edge.",
            labels=["signal", "edge"],
        )
        unknown = GaugeMetricFamily(
            "hybridops_signal_unknown",
            "1 while the signal reads UNKNOWN at the edge (absent, null, or older than its max age).",
            labels=["signal", "edge"],
        )
        return age, unknown

    def collect(self) -> Iterable[Metric]:
        now = self._clock()
        readings = self._snapshot()
        max_ages = self._max_ages()
        age, unknown = self._families()
        for (signal, edge), sample in sorted(readings.items()):
            age.add_metric([signal, edge], now - sample.observed_at)
        expected = {(signal, edge) for signal in max_ages for edge in self._edges}
        expected.update(key for key in readings if key[0] in max_ages)
        for signal, edge in sorted(expected):
            reading = readings.get((signal, edge))
            stale = reading is None or reading.value is None or now - reading.observed_at > max_ages[signal]
            unknown.add_metric([signal, edge], 1.0 if stale else 0.0)
        return age, unknown


class _SourceCollector:
    """Source health from each source's ``InputHealth`` counters. A source without one (the HTTP probe: every
    answer is evidence, nothing is malformed) is reported up while it runs, with no error counters. A source that
    drops inputs by reason (the peer link) has its drops counted per reason, every reason from 0."""

    def __init__(self, sources: Callable[[], Mapping[str, object]]) -> None:
        self._sources = sources

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(
        self,
    ) -> tuple[CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily, CounterMetricFamily, GaugeMetricFamily]:
        malformed = CounterMetricFamily(
            "hybridops_source_malformed", "Malformed inputs the source counted and dropped.", labels=["source"]
        )
        failures = CounterMetricFamily(
            "hybridops_source_upstream_failures", "Times the source failed to reach its upstream.", labels=["source"]
        )
        up = GaugeMetricFamily("hybridops_source_up", "1 while the source reaches its upstream.", labels=["source"])
        dropped = CounterMetricFamily(
            "hybridops_peer_messages_dropped",
            "Peer messages dropped, by reason: forged, unsigned, stale, replayed, reordered, malformed.",
            labels=["source", "reason"],
        )
        authenticated = GaugeMetricFamily(
            "hybridops_peer_authenticated",
            "1 while the peer link checks every message end to end (auth configured), 0 if it trusts the broker.",
            labels=["source"],
        )
        return malformed, failures, up, dropped, authenticated

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        malformed, failures, up, dropped, authenticated = families
        for name, source in sorted(self._sources().items()):
            health = getattr(source, "health", None)
            if isinstance(health, InputHealth):
                malformed.add_metric([name], health.malformed)
                failures.add_metric([name], health.failures)
                up.add_metric([name], 0.0 if health.upstream_down else 1.0)
                for reason, count in health.dropped.items():
                    dropped.add_metric([name, reason], count)
            else:
                up.add_metric([name], 1.0)
            checked = getattr(source, "authenticated", None)
            if isinstance(checked, bool):
                authenticated.add_metric([name], 1.0 if checked else 0.0)
        return families


class _JournalCollector:
    """The journal's size, and the daemon's latest verification of it (``JournalCheck``), if it runs one."""

    def __init__(self, journal_size: Callable[[], int | None], check: JournalCheck | None) -> None:
        self._journal_size = journal_size
        self._check = check

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("hybridops_journal_size_bytes", "Bytes the journal takes on disk (database and write-ahead log)."),
            GaugeMetricFamily(
                "hybridops_journal_verify_ok", "1 if the daemon's latest verification of its journal passed, 0 if it failed."
            ),
            GaugeMetricFamily(
                "hybridops_journal_verified_timestamp_seconds",
                "When the daemon's latest verification of its journal started, whatever its verdict (epoch seconds).",
            ),
            GaugeMetricFamily(
                "hybridops_journal_verify_interval_seconds", "Seconds between the daemon's verifications of its journal."
            ),
        )

    def collect(self) -> Iterable[Metric]:
        size, ok, verified, interval = families = self._families()
        journal_size = self._journal_size()
        if journal_size is not None:  # None: the journal is not open yet, and 0 bytes would be a lie
            size.add_metric([], journal_size)
        check = self._check
        if check is not None:
            interval.add_metric([], check.every)
            if check.ok is not None and check.at is not None:  # absent before the first verification
                ok.add_metric([], 1.0 if check.ok else 0.0)
                verified.add_metric([], check.at)
        return families


class _ApprovalCollector:
    """``hybridops_approval_waiting_seconds{lane,step}``: how long each gated step has waited, at scrape time.

    No run id label (one series per run would grow without bound): a lane runs one chain at a time, so lane and
    step name the gate, and ``hyopsctl status`` names the run."""

    def __init__(self, pending: Callable[[], Iterable[PendingApproval]], clock: Callable[[], float]) -> None:
        self._pending = pending
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "hybridops_approval_waiting_seconds",
            "Seconds the step has waited for an operator's approval; absent while none waits.",
            labels=["lane", "step"],
        )

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        now = self._clock()
        waited: dict[tuple[str, str], float] = {}
        for pending in self._pending():  # a duplicate series would make the whole exposition invalid: keep the oldest
            key = (pending.lane, pending.step)
            waited[key] = max(waited.get(key, 0.0), now - pending.since)
        for (lane, step), seconds in sorted(waited.items()):
            family.add_metric([lane, step], seconds)
        return [family]


class _NotifyCollector:
    """Direct notification to Alertmanager (``notify/alertmanager.py``): its queue and what became of its notices."""

    COUNTERS = (
        ("delivered", "Alert notices an Alertmanager accepted."),
        ("rejected", "Alert notices an Alertmanager refused (4xx); not retried."),
        ("dropped", "Alert notices pushed out of the full queue while no Alertmanager answered, oldest first."),
        ("failed_posts", "Posts of alert notices that found no Alertmanager answering; retried with backoff."),
    )

    def __init__(self, stats: Callable[[], NotifyStats]) -> None:
        self._stats = stats

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        families: list[GaugeMetricFamily | CounterMetricFamily] = [
            GaugeMetricFamily("hybridops_notify_queue_length", "Alert notices waiting for an Alertmanager."),
            GaugeMetricFamily("hybridops_notify_active_alerts", "Alerts this node reports as active now."),
        ]
        families += [CounterMetricFamily(f"hybridops_notify_{name}", text) for name, text in self.COUNTERS]
        return families

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        families = self._families()
        values = [stats.queued, stats.active, *(getattr(stats, name) for name, _ in self.COUNTERS)]
        for family, value in zip(families, values, strict=True):
            family.add_metric([], value)
        return families


DrillSchedule = Callable[[], Mapping[str, tuple[float, float]]]


class _BurstCollector:
    """Each burst lane's size, spend this month and monthly budget left, read at scrape time (spend grows between
    decisions while capacity runs). No budget-left series for a lane without a monthly budget."""

    def __init__(self, figures: Callable[[], Mapping[str, BurstFigures]]) -> None:
        self._figures = figures

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("hybridops_burst_size", "The burst lane's cloud capacity (units), as decided.", labels=["lane"]),
            GaugeMetricFamily(
                "hybridops_burst_spend_usd", "The burst lane's spend this UTC month, to now (USD).", labels=["lane"]
            ),
            GaugeMetricFamily(
                "hybridops_burst_budget_left_usd", "What is left of the burst lane's monthly budget (USD).", labels=["lane"]
            ),
        )

    def collect(self) -> Iterable[Metric]:
        size, spend, left = self._families()
        for lane, shown in self._figures().items():
            size.add_metric([lane], shown.size)
            spend.add_metric([lane], shown.spent_usd)
            if shown.budget_left_usd is not None:
                left.add_metric([lane], shown.budget_left_usd)
        return (size, spend, left)


class _DrillCollector:
    """Per lane with a drill schedule: when the next drill fires, the schedule's interval, and when the lane's last
    drill started (from the journal, so that it survives a restart). A drill overdue is a last drill older than the
    interval: a fire refused, skipped, or missed while the daemon was down, alike."""

    def __init__(self, schedule: DrillSchedule, last_drill: Callable[[str], float | None]) -> None:
        self.schedule = schedule
        self.last_drill = last_drill

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "hybridops_drill_next_run_timestamp_seconds", "When the lane's next scheduled drill fires.", labels=["lane"]
            ),
            GaugeMetricFamily(
                "hybridops_drill_interval_seconds", "Seconds between the lane's next two scheduled drills.", labels=["lane"]
            ),
            GaugeMetricFamily(
                "hybridops_drill_last_run_timestamp_seconds",
                "When the lane's last drill run started (any trigger); absent if it never drilled.",
                labels=["lane"],
            ),
        )

    def collect(self) -> Iterable[Metric]:
        following, interval, last = families = self._families()
        for lane, (at, every) in sorted(self.schedule().items()):
            following.add_metric([lane], at)
            interval.add_metric([lane], every)
            started = self.last_drill(lane)
            if started is not None:
                last.add_metric([lane], started)
        return families


def last_drill_started(journal: Journal, lane: str, look_back: int = 50) -> float | None:
    """When the lane's newest drill run started, among its newest ``look_back`` runs (an indexed read: drills and
    their teardowns alternate, so a drill is found within the first two unless the lane ran many other chains since)."""
    for record in journal.records(kinds=["run.start"], lane=lane, newest_first=True, limit=look_back):
        if record.body.get("kind") == "drill":
            return record.ts
    return None


class Metrics:
    """Every metric of one daemon, in a registry of its own (never prometheus_client's global one).

    ``edges``: where every signal a profile declares is expected (this node, and its peer when it has one), so a
    signal that never arrived there reads UNKNOWN rather than being missing from the exposition.
    ``max_ages``: per signal, the max age after which it is UNKNOWN (a signal read by several lanes: the smallest).
    ``journal_size`` may return None while the journal is not open. ``approvals``: the steps waiting for approval.
    ``journal_check``: the daemon's verifications of its journal, read at scrape time.
    """

    def __init__(
        self,
        snapshot: Callable[[], Mapping[tuple[str, str], Sample]],
        max_ages: Callable[[], Mapping[str, float]],
        sources: Callable[[], Mapping[str, object]],
        journal_size: Callable[[], int | None],
        clock: Callable[[], float] = time.time,
        edges: Sequence[str] = (),
        approvals: Callable[[], Iterable[PendingApproval]] = tuple,
        journal_check: JournalCheck | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self._lanes: set[str] = set()
        self._decisions = Counter(
            "hybridops_decisions_total", "Notable decisions, by lane and kind.", ["lane", "kind"], registry=self.registry
        )
        self._lane_state = Gauge(
            "hybridops_lane_state", "1 for the lane's current state, 0 for the others.", ["lane", "state"], registry=self.registry
        )
        self._step_seconds = Histogram(
            "hybridops_chain_step_duration_seconds",
            "Duration of a chain step from its intent to done or failed, approval waits included.",
            ["lane", "step", "outcome"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self._runs = Counter(
            "hybridops_chain_runs_total",
            "Chain runs that ended, by outcome.",
            ["lane", "chain", "outcome"],
            registry=self.registry,
        )
        self._stranded = Gauge(
            "hybridops_capacity_stranded",
            "1 while paid capacity a failed run may have left running waits for its teardown.",
            ["lane"],
            registry=self.registry,
        )
        self._outside = Counter(
            "hybridops_capacity_outside_window_seconds",
            "Seconds paid capacity may have run outside a cutover or a drill: left by a failed run, no run at work on it.",
            ["lane"],
            registry=self.registry,
        )
        self._step_ready = Gauge(
            "hybridops_step_ready",
            "The step's last preflight: 1 ready, 0 not ready, -1 not checked (its driver has no preflight).",
            ["lane", "chain", "step"],
            registry=self.registry,
        )
        self._readiness_checked = Gauge(
            "hybridops_readiness_checked_timestamp_seconds",
            "When the lane's preflights last ran (epoch seconds).",
            ["lane"],
            registry=self.registry,
        )
        self._lag = {
            name: Gauge(
                f"hybridops_{name}",
                f"The database step's replica lag ({unit}) at its last preflight: the recovery point a cutover would give.",
                ["lane", "chain", "step"],
                registry=self.registry,
            )
            for name, unit in (("replica_lag_bytes", "bytes"), ("replica_lag_seconds", "seconds"))
        }
        self._leader = Gauge("hybridops_leader", "1 while this node holds the lane's lease.", ["lane"], registry=self.registry)
        self._fencing_token = Gauge(
            "hybridops_fencing_token",
            "The fencing token of this node's current (or last) holding of the lane.",
            ["lane"],
            registry=self.registry,
        )
        self._started = self._process_gauges()
        self.registry.register(_SignalCollector(snapshot, max_ages, edges, clock))
        self.registry.register(_SourceCollector(sources))
        self.registry.register(_JournalCollector(journal_size, journal_check))
        self.registry.register(_ApprovalCollector(approvals, clock))
        self._drills = _DrillCollector(dict, lambda lane: None)  # no schedule until drills() is told one
        self.registry.register(self._drills)

    def _process_gauges(self) -> Gauge:
        """The build info, set; and the start time, returned, set once the journal says how the last run ended."""
        build_info = Gauge(
            "hybridops_build_info", "Always 1; the daemon's version as a label.", ["version"], registry=self.registry
        )
        build_info.labels(__version__).set(1)
        # prometheus_client's process collector lives on the global registry, not this one: a start time of our own,
        # labelled with how the previous run ended (unclean: killed by the watchdog, crashed, or lost power).
        return Gauge(
            "hybridops_start_time_seconds",
            "When this daemon process started (epoch seconds); previous_shutdown says how the one before it ended.",
            ["previous_shutdown"],
            registry=self.registry,
        )

    def _lane(self, lane: str) -> None:
        """Create a lane's decision and run counters at 0: a counter first exported at 1 would hide its first
        increase from rate() and increase(), and the first cutover is the one that matters."""
        if lane not in self._lanes:
            self._lanes.add(lane)
            for kind in DecisionKind:
                self._decisions.labels(lane, kind.value)
            self._outside.labels(lane)
            self._stranded.labels(lane)
            for chain in CHAINS:
                for outcome in RUN_OUTCOMES:
                    self._runs.labels(lane, chain, outcome)

    def started(self, at: float, unclean: bool) -> None:
        """The daemon started at ``at``, after a stop that was ``unclean`` or not (as its ``daemon.start`` record says)."""
        self._started.clear()
        self._started.labels("unclean" if unclean else "clean").set(at)

    def drills(self, schedule: DrillSchedule, last_drill: Callable[[str], float | None]) -> None:
        """Export the drill schedule: ``schedule()`` gives per scheduled lane (next fire, interval) in epoch seconds,
        ``last_drill(lane)`` when its last drill started. Told once the scheduler runs (it starts after the metrics)."""
        self._drills.schedule, self._drills.last_drill = schedule, last_drill

    def bursts(self, figures: Callable[[], Mapping[str, BurstFigures]]) -> None:
        """Export the burst lanes' figures (``policy.burst_lane.figures`` per lane), once the lanes exist."""
        self.registry.register(_BurstCollector(figures))

    def notifications(self, stats: Callable[[], NotifyStats]) -> None:
        """Export direct notification's figures (``NotifyStats``), once a notifier runs."""
        self.registry.register(_NotifyCollector(stats))

    def decision(self, lane: str, kind: str) -> None:
        """A notable decision was journaled. Raises ValueError for a kind that is not a DecisionKind."""
        self._lane(lane)
        self._decisions.labels(lane, DecisionKind(kind).value).inc()

    def lane_state(self, lane: str, state: str) -> None:
        """The lane is now in ``state``: it reads 1, the other five 0. Raises ValueError for an unknown state."""
        current = LaneStatus(state)
        self._lane(lane)
        for status in LaneStatus:
            self._lane_state.labels(lane, status.value).set(1.0 if status is current else 0.0)

    def capacity(self, lane: str, stranded: bool, outside_seconds: float) -> None:
        """Whether a failed run's capacity may be running, and seconds it ran since the last call with no run on it."""
        self._lane(lane)
        self._stranded.labels(lane).set(1.0 if stranded else 0.0)
        if outside_seconds > 0:
            self._outside.labels(lane).inc(outside_seconds)

    def step_ready(self, lane: str, chain: str, step: str, state: str, measured: Mapping[str, float]) -> None:
        """A step's preflight answered ``state`` (ready / not ready / not checked); ``measured`` may hold its lag."""
        self._step_ready.labels(lane, chain, step).set({"ready": 1.0, "not ready": 0.0}.get(state, -1.0))
        for name, gauge in self._lag.items():
            if name in measured:
                gauge.labels(lane, chain, step).set(measured[name])

    def readiness_checked(self, lane: str, at: float) -> None:
        self._readiness_checked.labels(lane).set(at)

    def step(self, lane: str, step: str, outcome: StepOutcome, seconds: float) -> None:
        self._step_seconds.labels(lane, step, outcome).observe(seconds)

    def run(self, lane: str, chain: Chain, outcome: RunOutcome) -> None:
        self._lane(lane)
        self._runs.labels(lane, chain, outcome).inc()

    def leadership(self, lane: str, held: bool, token: int) -> None:
        self._leader.labels(lane).set(1.0 if held else 0.0)
        self._fencing_token.labels(lane).set(token)

    def exposition(self) -> bytes:
        """The text exposition format, as served on ``/metrics``."""
        return generate_latest(self.registry)


class MetricsServer:
    """``GET /metrics`` on ``config.listen:config.port`` (port 0: an ephemeral one, see ``port``); anything else 404."""

    def __init__(self, config: MetricsConfig, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self.port = config.port

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)  # Prometheus scrapes every few seconds: no line per scrape
        await runner.setup()
        try:
            await web.TCPSite(runner, self._config.listen, self._config.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method != "GET" or request.path != "/metrics":
            raise web.HTTPNotFound()
        return web.Response(body=self._metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})
