"""Readiness between incidents (issue #13): every lane's cutover and failback preflights, on a schedule and on demand.

Each result goes where people and the policy look: a ``ready_<chain>_<step>`` sample in the observation store (1/0,
its reason as the sample's detail; "not checked" adds none, so it stays UNKNOWN), the lane's readiness in ``status``
and the STATUS line, the metrics, and a ``readiness`` journal record when a step's state changes (not every run).

Preflights run only on a lane this node leads, never beside the lane's own chain: a chain that starts cancels the
lane's preflight (``Lane.preflight``), and none starts while a run is active. Scheduled runs are jittered so the
lanes (and the two edges) do not hit the targets in step.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from hybridops_daemon.chain.preflight import NOT_CHECKED, READY, Chain, Preflights, StepReadiness
from hybridops_daemon.config.models import ReadinessConfig
from hybridops_daemon.daemon.lane import Lane, next_chain, path_summary, path_summary_of
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.metrics import Metrics
from hybridops_daemon.signals.sample import Sample

log = structlog.get_logger("hybridops.readiness")

ON_DEMAND_BUDGET = 20.0  # a `hyopsctl ready` answer must fit the control socket's 30 s request deadline
JITTER = 0.1  # of the period, either way


class Busy(Exception):
    """The lane runs a chain: its preflights wait (the message says which run)."""


class Readiness:
    def __init__(
        self,
        node: str,
        lanes: Mapping[str, Lane],
        settings: Mapping[str, ReadinessConfig],
        journal: Journal,
        put: Callable[[Sample], None],
        metrics: Metrics,
        redactor: Redactor,
        clock: Callable[[], float],
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        self._node = node
        self._lanes = lanes
        self._settings = settings
        self._journal = journal
        self._put = put
        self._metrics = metrics
        self._redactor = redactor
        self._clock = clock
        self._changed = changed  # the STATUS line names each lane's path
        self._locks = {name: asyncio.Lock() for name in lanes}
        self._rng = random.Random()

    async def run(self) -> None:
        """Every lane's schedule, until cancelled."""
        async with asyncio.TaskGroup() as group:
            for name, lane in self._lanes.items():
                setting = self._settings.get(name)
                if setting is not None and setting.enabled:
                    group.create_task(self._schedule(lane, setting))

    async def _schedule(self, lane: Lane, setting: ReadinessConfig) -> None:
        await asyncio.sleep(self._rng.uniform(0.0, min(setting.every * JITTER, 10.0)))  # soon after start, not at once
        while True:
            if lane.leads:
                try:
                    await self.check(lane.name)
                except Busy as exc:
                    log.debug("readiness skipped", lane=lane.name, reason=str(exc))
            await asyncio.sleep(setting.every * self._rng.uniform(1.0 - JITTER, 1.0 + JITTER))

    async def check(self, name: str, budget: float | None = None) -> list[StepReadiness]:
        """Run the lane's preflights now and publish them. Raises Busy while the lane runs a chain, KeyError for an
        unknown lane. A chain starting meanwhile stops the preflights (Busy, nothing published)."""
        lane = self._lanes[name]
        setting = self._settings.get(name) or ReadinessConfig()
        budget = min(setting.timeout, budget if budget is not None else setting.timeout)
        async with self._locks[name]:
            running = lane.winding_down or lane.state.active_run
            if running:
                raise Busy(f"run {running} is in progress on lane {name}")
            preflights = Preflights(name, lane.drivers, budget, self._redactor, self._clock)
            try:
                # A task of its own, so that the chain supervisor can cancel it and not whoever waits here.
                async with asyncio.TaskGroup() as group:
                    at_rest: Chain = "cutover" if next_chain(lane) == "failback" else "failback"
                    lane.preflight = group.create_task(preflights.check(lane.profile, at_rest))
            finally:
                inner, lane.preflight = lane.preflight, None
            assert inner is not None
            if inner.cancelled():
                raise Busy(f"a run started on lane {name}; its preflights were stopped")
            results = inner.result()
        self._publish(lane, results)
        return results

    def _publish(self, lane: Lane, results: list[StepReadiness]) -> None:
        before = lane.readiness
        lane.readiness = {result.key: result for result in results}
        for result in results:
            if result.state != NOT_CHECKED:
                value = 1.0 if result.state == READY else 0.0
                detail = None if result.state == READY else result.reason
                self._put(Sample(result.signal, value, result.checked_at, "readiness", self._node, detail))
            self._metrics.step_ready(lane.name, result.chain, result.step, result.state, result.metrics)
            was = before.get(result.key)
            if was is None or was.state != result.state:
                self._journal_change(lane, result, was)
        if results:
            self._metrics.readiness_checked(lane.name, max(result.checked_at for result in results))
        if path_summary(lane) != path_summary_of(lane, before):
            self._changed()

    def _journal_change(self, lane: Lane, result: StepReadiness, was: StepReadiness | None) -> None:
        body: dict[str, Any] = {**result.document(), "was": was.state if was is not None else None}
        self._journal.append("readiness", body, ts=result.checked_at, lane=lane.name)
        if was is not None or result.state != READY:
            log.info("readiness changed", lane=lane.name, chain=result.chain, step=result.step, state=result.state,
                     was=body["was"], reason=result.reason)
