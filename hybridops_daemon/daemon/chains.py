"""Chain supervision: each lane's run is a task of the daemon's TaskGroup; its end goes to the decision loop.

A run ends in one of three ways: a ``ChainEvent`` (the loop decides what follows), ``RunReleased`` (the lane's
leadership moved on mid-run: its next leader ends the run, the journal says why), or a crash (a bug in a driver fails
the run, never the daemon). On shutdown, running steps get the grace period to finish before they are cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import structlog

from hybridops_daemon.chain.runner import ChainRunner, RunReleased
from hybridops_daemon.daemon.inbox import Inbox
from hybridops_daemon.daemon.lane import Lane, RunProgress
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.policy.types import ChainEvent

log = structlog.get_logger("hybridops.daemon")


class ChainSupervisor:
    def __init__(
        self, runner: ChainRunner, group: asyncio.TaskGroup, journal: Journal, inbox: Inbox, clock: Callable[[], float]
    ) -> None:
        self._runner = runner
        self._group = group
        self._journal = journal
        self._inbox = inbox
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, lane: Lane, decision: Mapping[str, Any]) -> None:
        """Run the chain a decision asked for (raises ValueError for a decision naming no known chain).

        ``lane.chain_stored`` resolves once the run is in the lane's handover (None) or cannot be (why not): an
        operator's command is answered only then, so a run a deposed leader took with it is never reported started."""
        spec = lane.run_spec(decision)
        stored: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

        def tell(why: str | None) -> None:
            if not stored.done():
                stored.set_result(why)

        task = self._spawn(lane, spec.run_id, self._runner.start(spec, tell))
        task.add_done_callback(lambda _task: tell("the run ended before its handover was stored"))
        lane.chain_stored = stored

    def take_over(self, lane: Lane, progress: RunProgress, previous: Mapping[str, Any]) -> None:
        """Continue a run another holding of the lane started, from check() of its first unfinished step."""
        run_id = progress.run_id
        assert run_id is not None, "a run's progress names its run"
        self._spawn(lane, run_id, self._runner.take_over(progress.start, progress.done, previous))

    def resume(self, lane: Lane, run_id: str) -> None:
        """Continue a run this node's journal holds unfinished (after a crash), from its first unfinished step."""
        self._spawn(lane, run_id, self._runner.resume(run_id))

    def _spawn(self, lane: Lane, run_id: str, work: Coroutine[Any, Any, ChainEvent]) -> asyncio.Task[None]:
        if lane.preflight is not None:  # never beside the lane's own chain (daemon/readiness.py)
            lane.preflight.cancel()
        task = self._group.create_task(self._watch(lane.name, run_id, work))
        lane.chain, lane.chain_run, lane.chain_stored = task, run_id, None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _watch(self, lane: str, run_id: str, work: Coroutine[Any, Any, ChainEvent]) -> None:
        try:
            event = await work
        except RunReleased:
            return
        except Exception as exc:  # a bug in a driver must fail the run, never the daemon
            log.exception("chain crashed", run_id=run_id)
            event = ChainEvent(lane, run_id, ok=False, detail=f"internal error: {type(exc).__name__}")
            body = {"run_id": run_id, "ok": False, "reason": event.detail, "outputs": {}}
            self._journal.append("run.end", body, ts=self._clock(), lane=lane, run_id=run_id)
        self._inbox.put(event)

    async def drain(self, grace: float) -> None:
        """Let running steps finish for the grace period, then cancel (the journal shows where they stopped)."""
        if not self._tasks:
            return
        log.info("waiting for running chains", runs=len(self._tasks), grace_s=grace)
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
