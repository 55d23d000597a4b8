"""Takeover and crash recovery, built from the daemon's rooms with an in-memory lease and a temporary journal:
no etcd, no namespaces, no subprocess. The sandbox driver acts on a world file, so every effect is counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.chain.approvals import ApprovalBook
from hybridops_daemon.chain.runner import ChainRunner, RunSpec
from hybridops_daemon.config.profile import Profile
from hybridops_daemon.control.protocol import CommandRefused, Unconfirmed
from hybridops_daemon.daemon import decisions
from hybridops_daemon.daemon.chains import ChainSupervisor
from hybridops_daemon.daemon.decisions import DecisionLoop
from hybridops_daemon.daemon.inbox import Inbox
from hybridops_daemon.daemon.lane import Handover, HandoverInvalid, Lane, RunProgress
from hybridops_daemon.daemon.takeover import Takeover, restore_state
from hybridops_daemon.drivers.base import StepContext
from hybridops_daemon.drivers.modules import resource_key, validate_inputs
from hybridops_daemon.drivers.sandbox import SandboxDriver, SandboxWorld
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.lease.base import LeaseLost
from hybridops_daemon.metrics import Metrics
from hybridops_daemon.observations import ObservationStore
from hybridops_daemon.policy.types import ChainEvent, Command, LaneState, LaneStatus
from hybridops_daemon.sdnotify import Notifier

LANE = "prod"
RUN = "prod-20261204T100000Z-1"
FIP = {"ip": "203.0.113.10", "target": "edge02"}
DNS = {"zone": "dr.example.", "name": "app.dr.example.", "type": "A", "content": "198.51.100.20", "ttl": 60}
PROFILE = Profile.model_validate(
    {
        "name": "prod",
        "version": 3,
        "signals": {"primary_http": {"max_age": "5s"}},
        "rules": [{"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5}],
        "chains": {
            "cutover": [
                {"id": "fip", "module": "network/floating-ip@v1", "inputs": FIP, "timeout": "2s", "backoff": "10ms"},
                {"id": "dns", "module": "dns/record@v1", "inputs": DNS, "timeout": "2s", "backoff": "10ms"},
            ],
            "failback": [],
        },
    }
)
DECISION = {"run_id": RUN, "chain": "cutover", "kind": "cutover", "trigger": "rule", "actor": "policy", "reason": "test"}
CUTTING_OVER = LaneState(lane=LANE, status=LaneStatus.CUTTING_OVER, since=1000.0, active_run=RUN, run_seq=1)


class MemoryLeadership:
    """The lane lease in memory: leads until resigned, keeps a handover document as etcd would, and can be fenced
    (a newer holding exists) to see what a deposed node does."""

    def __init__(self, token: int, document: Mapping[str, Any] | None = None) -> None:
        self.token = token
        self.document = document
        self.fenced = False
        self.checks = 0  # ensure() calls so far
        self.fence_at: int | None = None  # a newer holding appears at this ensure() (1: the first)
        self.stalled: asyncio.Event | None = None  # set: ensure() waits for it (an etcd election under way)
        self._resigned = asyncio.Event()

    @property
    def leading(self) -> bool:
        return not self._resigned.is_set() and not self.fenced

    @property
    def reason(self) -> str:
        return "" if self.leading else "fenced: a newer holding exists"

    @property
    def holder(self) -> str | None:
        return "edge01" if self.leading else "edge02"

    async def campaign(self) -> bool:
        return self.leading

    async def hold(self) -> None:
        await self._resigned.wait()

    async def ensure(self, token: int) -> None:
        self.checks += 1
        if self.stalled is not None:
            await self.stalled.wait()
        if self.fence_at is not None and self.checks >= self.fence_at:
            self.fenced = True
        if self.fenced or token != self.token:
            raise LeaseLost(f"fencing token {token} is no longer current")

    async def publish(self) -> None:
        return None

    async def handover(self) -> Mapping[str, Any] | None:
        return self.document

    async def resign(self) -> None:
        self._resigned.set()


@dataclass
class Rooms:
    journal: Journal
    world: SandboxWorld
    lane: Lane
    leadership: MemoryLeadership
    inbox: Inbox
    takeover: Takeover
    chains: ChainSupervisor
    metrics: Metrics

    def kinds(self, step: str | None = None) -> list[str]:
        return [r.kind for r in self.journal.run_records(RUN) if step is None or r.body.get("step") == step]

    def effects(self) -> dict[str, int]:
        """How often each resource was applied, by anyone."""
        return dict(self.world.read()["applies"])

    async def plant(self, module: str, inputs: Mapping[str, Any]) -> None:
        """An effect an earlier holding (or the crashed process) applied before it was lost."""
        driver = SandboxDriver(self.world.path)
        await driver.apply(StepContext("earlier", LANE, "planted", module, inputs, {}, fencing_token=3))

    async def chain_end(self) -> list[Any]:
        assert self.lane.chain is not None, "no chain was started"
        await asyncio.wait_for(asyncio.shield(self.lane.chain), 10)
        return self.inbox.take()


def key(module: str, inputs: Mapping[str, Any]) -> str:
    return resource_key(module, validate_inputs(module, inputs))


@pytest.fixture
async def rooms(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rooms]:
    marker = request.node.get_closest_marker("handover")
    leadership = MemoryLeadership(token=8, document=marker.args[0] if marker else None)
    journal = Journal.open(tmp_path / "journal.db", Redactor())
    world = SandboxWorld(tmp_path / "world.json")
    lane = Lane(LANE, PROFILE, LaneState(lane=LANE, since=0.0), {"sandbox": SandboxDriver(world.path)}, leadership)
    metrics = Metrics(dict, dict, dict, lambda: None, lambda: 2000.0)
    runner = ChainRunner(
        journal,
        {LANE: lane.drivers},
        {LANE: leadership},
        ApprovalBook(),
        Redactor(),
        lambda: 2000.0,
        on_record=lambda kind, spec, body: lane.track(kind, spec.run_id, body) and None,  # as the daemon wires it
    )
    inbox = Inbox()
    try:
        async with asyncio.TaskGroup() as group:
            chains = ChainSupervisor(runner, group, journal, inbox, lambda: 2000.0)
            takeover = Takeover("edge01", True, 0.05, journal, chains, inbox, metrics, lambda: None, lambda: 2000.0)
            yield Rooms(journal, world, lane, leadership, inbox, takeover, chains, metrics)
    finally:
        journal.close()


def run_start(token: int) -> dict[str, Any]:
    spec: RunSpec = Lane(LANE, PROFILE, CUTTING_OVER, {}).run_spec(DECISION)
    return {**spec.start_body(), "fencing_token": token}


def handover_document(done: Mapping[str, Any]) -> dict[str, Any]:
    run = RunProgress(run_start(token=3), {k: dict(v) for k, v in done.items()})
    return Handover("edge02", 3, CUTTING_OVER, dict(DECISION), run, 1999.0).document()


@pytest.mark.handover(handover_document({"fip": {"ip": FIP["ip"]}}))
async def test_a_new_leader_adopts_the_handover_and_continues_the_run_from_check(rooms: Rooms) -> None:
    await rooms.plant("network/floating-ip@v1", FIP)  # what edge02 did before it was lost
    document = await rooms.leadership.handover()
    assert document is not None
    rooms.takeover.take(rooms.lane, Handover.from_document(document))
    assert rooms.lane.state == CUTTING_OVER and rooms.lane.led

    events = await rooms.chain_end()
    assert events == [ChainEvent(LANE, RUN, True, "cutover chain completed: 2 steps")]
    acquired = rooms.journal.last("lease.acquired", lane=LANE)
    assert acquired is not None and acquired.body["previous"] == {"node": "edge02", "fencing_token": 3}
    starts = [r.body for r in rooms.journal.run_records(RUN) if r.kind == "run.start"]
    assert starts[-1]["continued_from"] == {"node": "edge02", "fencing_token": 3, "completed_steps": ["fip"]}
    assert starts[-1]["fencing_token"] == 8
    assert "step.apply" not in rooms.kinds("fip")  # the step the handover names as done is not touched again
    assert rooms.kinds("dns").count("step.apply") == 1
    assert rooms.effects() == {key("network/floating-ip@v1", FIP): 1, key("dns/record@v1", DNS): 1}
    assert rooms.lane.run_progress is not None and rooms.lane.run_progress.end is not None
    assert set(rooms.lane.run_progress.done) == {"fip", "dns"}  # the handover follows the run


async def test_a_restart_resumes_its_interrupted_run_from_check_never_applying_twice(rooms: Rooms) -> None:
    # The previous process decided, started the run, finished fip and applied dns, and died before recording it.
    journal = rooms.journal
    journal.append("decision", {**DECISION, "state": CUTTING_OVER.durable()}, ts=1000.0, lane=LANE, run_id=RUN)
    journal.append("run.start", run_start(token=7), ts=1000.1, lane=LANE, run_id=RUN)
    journal.append("step.done", {"step": "fip", "outcome": "applied", "outputs": {}}, ts=1000.2, lane=LANE, run_id=RUN)
    journal.append("step.intent", {"step": "dns", "attempt": 1}, ts=1000.3, lane=LANE, run_id=RUN)
    await rooms.plant("network/floating-ip@v1", FIP)
    await rooms.plant("dns/record@v1", DNS)
    effects_before = rooms.effects()

    rooms.takeover.take(rooms.lane, None)  # no handover: this node's journal is the lane's memory
    assert rooms.lane.state == CUTTING_OVER
    events = await rooms.chain_end()
    assert [e.ok for e in events] == [True]
    resumed = rooms.journal.last("run.resumed")
    assert resumed is not None and resumed.body["from_step"] == "dns" and resumed.body["completed_steps"] == ["fip"]
    dns = [r.body for r in rooms.journal.run_records(RUN) if r.body.get("step") == "dns"]
    assert [b.get("satisfied") for b in dns if "satisfied" in b] == [True]  # check() found it done
    assert "step.apply" not in rooms.kinds("dns") and rooms.effects() == effects_before


@pytest.mark.handover(handover_document({}))
async def test_a_fenced_node_releases_the_run_instead_of_failing_it(rooms: Rooms) -> None:
    document = await rooms.leadership.handover()
    assert document is not None
    rooms.takeover.take(rooms.lane, Handover.from_document(document))
    rooms.leadership.fence_at = 2  # the run reached the handover (check 1); a newer holding exists before the apply
    events = await rooms.chain_end()
    assert events == []  # not a chain end for this node to decide on: the lane's next leader ends the run
    kinds = rooms.kinds()
    assert "step.refused" in kinds and kinds[-1] == "run.released" and "run.end" not in kinds
    assert "step.apply" not in kinds and rooms.effects() == {}


@pytest.mark.handover(handover_document({}))
async def test_a_run_not_yet_in_the_handover_is_released_before_its_first_check(rooms: Rooms) -> None:
    document = await rooms.leadership.handover()
    assert document is not None
    rooms.takeover.take(rooms.lane, Handover.from_document(document))
    rooms.leadership.fenced = True  # deposed before the run's first fencing check (which stores the handover)
    assert await rooms.chain_end() == []
    assert rooms.kinds() == ["run.start", "run.released"]  # no step.intent: no target was even read
    released = rooms.journal.last("run.released")
    assert released is not None and "lost the lane before the run was handed over" in released.body["reason"]


def decision_loop(rooms: Rooms) -> DecisionLoop:
    lanes = {LANE: rooms.lane}
    journal, clock = rooms.journal, lambda: 2000.0
    chains, inbox, metrics = rooms.chains, rooms.inbox, rooms.metrics
    return DecisionLoop(lanes, ObservationStore(), journal, chains, inbox, metrics, Notifier(""), "edge01", None, clock)


async def test_an_operator_hears_of_a_run_only_once_it_is_in_the_handover(rooms: Rooms) -> None:
    rooms.takeover.take(rooms.lane, None)  # leads, PRIMARY (an empty journal)
    loop = decision_loop(rooms)
    async with asyncio.TaskGroup() as group:
        group.create_task(loop.run(0.05, lambda: None))
        _, decision = await loop.submit(Command.CUTOVER, LANE, "ops")
        # answered after the run's first fencing check, which with etcd stores the handover naming the run
        assert decision.run_id is not None and rooms.leadership.checks >= 1
        await rooms.chain_end()  # the loop takes the chain's end itself
        loop.stop()
    end = rooms.journal.last("run.end")
    assert end is not None and end.run_id == decision.run_id and end.body["ok"] is True


async def test_an_operator_hears_a_run_refused_when_its_leader_is_deposed_before_the_handover(rooms: Rooms) -> None:
    rooms.takeover.take(rooms.lane, None)
    loop = decision_loop(rooms)
    rooms.leadership.fence_at = 1  # deposed at the run's first fencing check: its successor never hears of the run
    async with asyncio.TaskGroup() as group:
        group.create_task(loop.run(0.05, lambda: None))
        with pytest.raises(CommandRefused, match=r"decided but not started: this node lost the lane before the run was "
                           r"handed over, so no step was checked: .*; edge02 leads the lane now: ask there"):
            await loop.submit(Command.CUTOVER, LANE, "ops")
        loop.stop()
    starts = rooms.journal.records(kinds=("run.start",))
    kinds = [r.kind for r in rooms.journal.run_records(starts[0].run_id)]
    assert len(starts) == 1 and kinds == ["decision", "run.start", "run.released"]
    assert rooms.effects() == {}


async def test_lane_state_is_restored_after_a_retention_cut(rooms: Rooms) -> None:
    journal = rooms.journal
    on_standby = LaneState(lane=LANE, status=LaneStatus.ON_STANDBY, since=1000.0, run_seq=1)
    journal.append("decision", {**DECISION, "run_id": None, "state": on_standby.durable()}, ts=1000.0, lane=LANE)
    for i in range(50):
        journal.append("operator", {"command": "status", "n": i}, ts=1001.0 + i)
    report = journal.prune(before_ts=1040.0, now=2000.0)
    assert report is not None and report.removed > 0
    assert not [r for r in journal.records(kinds=("decision",)) if r.kind == "decision" and r.ts == 1000.0]
    assert restore_state(journal, LANE, now=2000.0) == on_standby
    rooms.takeover.take(rooms.lane, None)
    assert rooms.lane.state == on_standby and rooms.lane.chain is None


def test_a_handover_that_is_not_one_is_refused_with_a_reason() -> None:
    with pytest.raises(HandoverInvalid, match="lane state"):
        Handover.from_document({"node": "edge02", "fencing_token": 3})
    with pytest.raises(HandoverInvalid, match="finished steps"):
        Handover.from_document({"state": CUTTING_OVER.durable(), "run": {"start": {"run_id": RUN}, "done": ["fip"]}})
    document = handover_document({"fip": {}})
    assert Handover.from_document(document).document() == document  # round trip


def test_a_decision_naming_no_known_chain_is_refused_not_taken_for_a_failback() -> None:
    lane = Lane(LANE, PROFILE, CUTTING_OVER, {})
    with pytest.raises(ValueError, match="'scale'"):
        lane.run_spec({**DECISION, "chain": "scale"})
    assert lane.run_spec({**DECISION, "chain": "failback"}).chain == "failback"


async def test_an_operator_hears_unconfirmed_while_the_handover_waits_on_etcd(
    rooms: Rooms, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decisions, "INTENT_REPLY_TIMEOUT", 0.2)
    rooms.takeover.take(rooms.lane, None)
    loop = decision_loop(rooms)
    rooms.leadership.stalled = asyncio.Event()  # the run's first fencing check has no answer yet
    async with asyncio.TaskGroup() as group:
        group.create_task(loop.run(0.05, lambda: None))
        with pytest.raises(Unconfirmed, match=r"its handover is not stored yet after 0.2s .* check hyopsctl status"):
            await loop.submit(Command.CUTOVER, LANE, "ops")
        rooms.leadership.stalled.set()  # etcd answers after all: the run goes on, as the answer warned
        await rooms.chain_end()
        loop.stop()
    end = rooms.journal.last("run.end")
    assert end is not None and end.body["ok"] is True
