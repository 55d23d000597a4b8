"""What the control socket may ask of the daemon: read state, record intent, hand over approvals. It never acts:
an intent is journaled and queued for the decision loop, which decides and starts chains."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from hybridops_daemon.chain.approvals import ApprovalBook, Verdict
from hybridops_daemon.control.protocol import Actor, CommandRefused, NotFound
from hybridops_daemon.daemon.burst import status_document as burst_status
from hybridops_daemon.daemon.housekeeping import RetentionHold
from hybridops_daemon.daemon.lane import Lane, lane_document
from hybridops_daemon.daemon.readiness import ON_DEMAND_BUDGET, Busy, Readiness
from hybridops_daemon.journal.records import RUN_END, RUN_START
from hybridops_daemon.journal.store import Journal, Record
from hybridops_daemon.journal.verify import JournalCheck
from hybridops_daemon.policy.types import Command, Decision
from hybridops_daemon.scheduler import DrillScheduler
from hybridops_daemon.signals.base import Source

Submit = Callable[[Command, str, str], Awaitable[tuple[int, Decision]]]

# Verifies running at once, each in a thread: the rest wait, leaving the default executor to the daemon's other work.
VERIFY_THREADS = 2


class DaemonBackend:
    def __init__(
        self,
        node: str,
        lease: str,
        lanes: Mapping[str, Lane],
        journal: Journal,
        approvals: ApprovalBook,
        sources: Mapping[str, Source],
        submit: Submit,
        clock: Callable[[], float],
        drills: Callable[[], DrillScheduler | None] = lambda: None,
        retention: RetentionHold | None = None,
        readiness: Readiness | None = None,
    ) -> None:
        self._node = node
        self._lease = lease
        self._lanes = lanes
        self._journal = journal
        self._approvals = approvals
        self._sources = sources
        self._submit = submit
        self._clock = clock
        self._drills = drills  # started after the control socket: a status call may come first
        self._verify_slots = asyncio.Semaphore(VERIFY_THREADS)
        self._retention = retention
        self._readiness = readiness
        self.web_url: str | None = None  # the journal view's address, once it listens (web/server.py)
        self.notify: Callable[[], dict[str, Any]] | None = None  # direct notification's state, once it runs
        self.journal_check: JournalCheck | None = None  # the daemon's periodic verification of its journal

    async def status(self) -> dict[str, Any]:
        drills = self._drills()
        next_drills = drills.next_runs() if drills is not None else {}
        pending = [
            {"run_id": p.run_id, "step": p.step, "lane": p.lane, "since": p.since, "expires_at": p.expires_at}
            for p in self._approvals.pending()
        ]
        sources = []
        for name, source in self._sources.items():
            health = getattr(source, "health", None)
            entry: dict[str, Any] = {
                "source": name,
                "upstream": "down" if health is not None and health.upstream_down else "ok",
                "malformed": health.malformed if health is not None else 0,
            }
            if health is not None and health.dropped:  # the peer link: drops by reason, and whether it checks at all
                entry["dropped"] = dict(health.dropped)
                entry["authenticated"] = getattr(source, "authenticated", None)
            sources.append(entry)
        return {
            "node": self._node,
            "lease": self._lease,
            "lanes": [_lane_status(lane, next_drills.get(lane.name), self._clock()) for lane in self._lanes.values()],
            "pending_approvals": pending,
            "sources": sources,
            "retention": self._retention.document() if self._retention is not None else None,
            "web": self.web_url,
            "notify": self.notify() if self.notify is not None else None,
            "journal_check": _check_document(self.journal_check),
        }

    async def submit(self, command: str, lane: str | None, actor: Actor) -> dict[str, Any]:
        verb = Command(command)
        if lane is not None and lane not in self._lanes:
            raise NotFound(f"no lane {lane!r}; lanes: {', '.join(self._lanes)}")
        if lane is None and verb not in (Command.PAUSE, Command.RESUME):
            raise CommandRefused(f"{command} needs --lane")
        targets = [lane] if lane is not None else list(self._lanes)
        answers = [await self._submit(verb, name, str(actor)) for name in targets]
        decisions = [decision for _, decision in answers]
        refused = [d for d in decisions if d.kind.value == "refuse"]
        if refused and len(refused) == len(decisions):
            # every lane refused: one lane's reason alone, else each lane's, named (they may differ)
            reasons = [d.reason if len(refused) == 1 else f"{d.lane}: {d.reason}" for d in refused]
            raise CommandRefused("; ".join(reasons))
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

    async def ready(self, lane: str | None) -> list[dict[str, Any]]:
        """Run the preflights now: per lane, its steps' readiness, or why none ran (a chain is running)."""
        if lane is not None and lane not in self._lanes:
            raise NotFound(f"no lane {lane!r}; lanes: {', '.join(self._lanes)}")
        if self._readiness is None:
            raise CommandRefused("readiness is not running yet")
        checker = self._readiness
        names = [lane] if lane is not None else list(self._lanes)

        async def one(name: str) -> dict[str, Any]:
            try:
                results = await checker.check(name, ON_DEMAND_BUDGET)
            except Busy as exc:
                return {"lane": name, "skipped": str(exc), "steps": [r.document() for r in self._lanes[name].readiness.values()]}
            return {"lane": name, "skipped": None, "steps": [r.document() for r in results]}

        async with asyncio.TaskGroup() as group:  # the lanes' preflights side by side
            tasks = [group.create_task(one(name)) for name in names]
        return [task.result() for task in tasks]

    async def abandon(self, run_id: str, reason: str, actor: Actor) -> dict[str, Any]:
        if actor.uid not in (0, os.geteuid()):
            raise CommandRefused(f"run abandon is privileged: run it as root or as the daemon's user (uid {os.geteuid()})")
        starts = self._journal.records(run_id=run_id, kinds=[RUN_START], limit=1)
        if not starts:
            raise NotFound(f"no run {run_id!r} in the journal")
        start = starts[0]
        if run_id not in self._journal.unfinished_runs():
            raise CommandRefused(f"run {run_id!r} has already ended")
        for each in self._lanes.values():
            if run_id in (each.state.active_run, each.winding_down):
                raise CommandRefused(f"run {run_id!r} is lane {each.name!r}'s active run: it ends with its chain")
        # The operator's word first, then the end that lets retention and recovery pass the run by.
        lane = start.lane
        now = self._clock()
        body = {"command": "abandon", "run_id": run_id, "reason": reason, "actor": str(actor)}
        self._journal.append("operator", body, ts=now, lane=lane, run_id=run_id)
        end = {"run_id": run_id, "ok": False, "reason": f"abandoned by {actor}: {reason}", "outputs": {}, "abandoned": True}
        record = self._journal.append(RUN_END, end, ts=now, lane=lane, run_id=run_id)
        return {"run_id": run_id, "lane": lane, "seq": record.seq}

    async def approval(self, run_id: str, step: str, approve: bool, actor: Actor) -> dict[str, Any]:
        pending = next((p for p in self._approvals.pending() if (p.run_id, p.step) == (run_id, step)), None)
        if pending is None:
            earlier = self._earlier_answer(run_id, step)
            if earlier is not None:
                word = "approved" if earlier.body["command"] == "approve" else "rejected"
                at = datetime.fromtimestamp(earlier.ts, UTC).isoformat(timespec="seconds")
                by = earlier.body.get("actor", "an unknown actor")
                raise CommandRefused(f"step {step!r} of run {run_id!r} was already {word} by {by} at {at}")
            raise NotFound(f"no step {step!r} of run {run_id!r} is waiting for approval")
        # Durable first: the operator's word is on record before the step can act on it.
        self._journal.append(
            "operator",
            {"command": "approve" if approve else "reject", "run_id": run_id, "step": step, "actor": str(actor)},
            ts=self._clock(),
            lane=pending.lane,
            run_id=run_id,
        )
        self._approvals.answer(run_id, step, Verdict(approve, str(actor)))
        return {"run_id": run_id, "step": step, "lane": pending.lane, "approved": approve}

    def _earlier_answer(self, run_id: str, step: str) -> Record | None:
        """The operator's answer to this gate on record (the journal outlives a restart), newest first."""
        for record in self._journal.records(run_id=run_id, kinds=["operator"], newest_first=True):
            if record.body.get("step") == step and record.body.get("command") in ("approve", "reject"):
                return record
        return None

    async def journal_list(self, lane: str | None, limit: int) -> list[dict[str, Any]]:
        return [asdict(run) for run in self._journal.runs(lane=lane, limit=limit)]

    async def journal_show(self, run_id: str) -> list[dict[str, Any]]:
        records = self._journal.run_records(run_id)
        if not records:
            raise NotFound(f"no run {run_id!r} in the journal")
        return [record.to_dict() for record in records]

    async def journal_verify(self) -> dict[str, Any]:
        # Off the loop: a long journal's walk would hold every other request and the decision loop behind it. The
        # thread opens its own read-only connection (a SQLite connection stays in the thread that made it).
        async with self._verify_slots:
            return asdict(await asyncio.to_thread(self._journal.verify_readonly))


def _capacity(lane: Lane) -> dict[str, Any] | None:
    """Paid capacity a failed run may have left running (policy/teardown.py), and when its teardown comes."""
    state = lane.state
    if state.stranded is None:
        return None
    return {
        "may_be_running": list(lane.profile.capacity()),
        "left_by": state.stranded,
        "failed_teardowns": state.teardown_tries,
        "next_teardown": state.teardown_at,
        "waits_for_healthy_primary": state.drill_deadline is None,
    }


def _lane_status(lane: Lane, next_drill: Any, now: float) -> dict[str, Any]:
    last = lane.last_decision
    leadership = lane.leadership
    return {
        "capacity": _capacity(lane),
        "burst": burst_status(lane, now),
        "readiness": lane_document(lane),
        "lane": lane.name,
        "status": lane.state.status.value,
        "since": lane.state.since,
        "profile": lane.profile.ref,
        "active_run": lane.state.active_run,
        "paused_by": lane.state.paused_by,
        "last_decision": {"kind": last.kind.value, "reason": last.reason, "at": last.at} if last else None,
        "next_drill": next_drill.isoformat() if next_drill is not None else None,
        "leadership": {
            "leading": lane.leads,
            "situation": lane.situation or "starting",
            "holder": leadership.holder if leadership is not None else None,
            "fencing_token": leadership.token if leadership is not None else None,
            "reason": leadership.reason if leadership is not None else "starting",
        },
    }


def _check_document(check: JournalCheck | None) -> dict[str, Any] | None:
    if check is None or check.ok is None:
        return None  # no verification has ended yet
    return {"ok": check.ok, "problem": check.problem, "at": check.at, "every": check.every}
