"""The control backend against a real journal and approval book: what it answers, and that it keeps the loop free."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.chain.approvals import ApprovalBook, PendingApproval, Verdict
from hybridops_daemon.control.backend import DaemonBackend
from hybridops_daemon.control.protocol import Actor, CommandRefused, NotFound
from hybridops_daemon.journal import store
from hybridops_daemon.journal.store import Journal, VerifyReport
from hybridops_daemon.policy.types import Command, Decision

ALICE = Actor(uid=1000, gid=1000, pid=4242, user="alice")
BOB = Actor(uid=1001, gid=1000, pid=4343, user="bob")


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path / "journal.db") as opened:
        yield opened


def backend_for(journal: Journal, approvals: ApprovalBook | None = None) -> DaemonBackend:
    async def submit(command: Command, lane: str, actor: str) -> tuple[int, Decision]:
        raise AssertionError("not used here")

    return DaemonBackend("edge01", "local", {}, journal, approvals or ApprovalBook(), {}, submit, clock=lambda: 5000.0)


async def test_status_answers_while_a_long_verify_runs(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    journal.append("decision", {"i": 0}, ts=1.0, lane="prod")
    started, release = threading.Event(), threading.Event()
    threads: list[int] = []

    def blocked_verify(*args: Any, **kwargs: Any) -> VerifyReport:
        threads.append(threading.get_ident())
        started.set()
        release.wait(10)  # a verify of a huge journal, as long as the test wants
        return VerifyReport(ok=True, count=1, head_seq=1, head_hash="h", problems=[])

    monkeypatch.setattr(store, "verify_chain", blocked_verify)
    monkeypatch.setattr(store, "verify_file", blocked_verify)
    backend = backend_for(journal)
    verifies = [asyncio.create_task(backend.journal_verify()) for _ in range(3)]
    for _ in range(1000):  # let the loop run until a verify is under way (count-based, no timing)
        if started.is_set():
            break
        await asyncio.sleep(0)
    assert started.wait(10)

    status = await backend.status()  # the loop answers while the verify is blocked
    assert status["node"] == "edge01"
    assert not any(task.done() for task in verifies)
    assert threading.get_ident() not in threads  # the verify runs off the event loop's thread
    release.set()
    assert [(await task)["ok"] for task in verifies] == [True, True, True]


async def test_verify_through_the_backend_reports_the_real_chain(journal: Journal) -> None:
    last = journal.append("decision", {"i": 0}, ts=1.0, lane="prod")
    report = await backend_for(journal).journal_verify()
    assert (report["ok"], report["count"], report["head_hash"]) == (True, 1, last.hash)


async def approved_once(journal: Journal, approve: bool) -> tuple[DaemonBackend, asyncio.Task[Verdict | None]]:
    approvals = ApprovalBook()
    pending = PendingApproval(run_id="cutover-1", step="promote-db", lane="prod", since=4000.0, expires_at=9000.0)
    waiting = asyncio.create_task(approvals.wait(pending, 60))
    await asyncio.sleep(0)  # one turn of the loop: the step is waiting
    assert approvals.pending() == [pending]
    backend = backend_for(journal, approvals)
    answer = await backend.approval("cutover-1", "promote-db", approve, ALICE)
    assert answer["approved"] is approve
    return backend, waiting


@pytest.mark.parametrize(("approve", "word"), [(True, "approved"), (False, "rejected")])
async def test_a_second_answer_is_refused_saying_who_answered_and_when(journal: Journal, approve: bool, word: str) -> None:
    backend, waiting = await approved_once(journal, approve)
    for again in (True, False):
        with pytest.raises(CommandRefused) as refused:
            await backend.approval("cutover-1", "promote-db", again, BOB)
        assert str(refused.value) == (
            f"step 'promote-db' of run 'cutover-1' was already {word} by uid=1000(alice) pid=4242 at 1970-01-01T01:23:20+00:00"
        )
    assert (await waiting) == Verdict(approve, str(ALICE))
    assert len(journal.records(kinds=["operator"])) == 1  # the refused second answer wrote nothing


async def test_an_unknown_step_is_still_not_found(journal: Journal) -> None:
    with pytest.raises(NotFound, match="no step 'promote-db' of run 'cutover-1' is waiting for approval"):
        await backend_for(journal).approval("cutover-1", "promote-db", True, ALICE)


# --------------------------------------------------------------------------------------------- run abandon

ROOT = Actor(uid=0, gid=0, pid=1, user="root")


def open_run(journal: Journal, run_id: str, lane: str = "gone") -> None:
    journal.append("run.start", {"run_id": run_id, "chain": "cutover", "kind": "drill"}, ts=1.0, lane=lane, run_id=run_id)


async def test_abandon_is_privileged(journal: Journal) -> None:
    open_run(journal, "gone-1")
    with pytest.raises(CommandRefused, match=r"run abandon is privileged: run it as root or as the daemon's user"):
        await backend_for(journal).abandon("gone-1", "lane removed", Actor(uid=os.geteuid() + 1, gid=0, pid=2, user="x"))
    assert journal.unfinished_runs() == ["gone-1"]


async def test_abandon_ends_an_orphan_and_says_why(journal: Journal) -> None:
    open_run(journal, "gone-1")
    answer = await backend_for(journal).abandon("gone-1", "lane removed", ROOT)
    assert answer["run_id"] == "gone-1" and answer["lane"] == "gone"
    assert journal.unfinished_runs() == []
    operator, end = journal.run_records("gone-1")[-2:]
    assert operator.body == {"command": "abandon", "run_id": "gone-1", "reason": "lane removed", "actor": str(ROOT)}
    assert end.kind == "run.end" and end.seq == answer["seq"] and end.body["abandoned"] is True
    assert end.body["reason"] == f"abandoned by {ROOT}: lane removed" and end.body["ok"] is False
    with pytest.raises(CommandRefused, match="has already ended"):
        await backend_for(journal).abandon("gone-1", "again", ROOT)
    with pytest.raises(NotFound, match="no run 'nope' in the journal"):
        await backend_for(journal).abandon("nope", "typo", ROOT)


async def test_resume_refused_by_every_lane_names_each_lane(journal: Journal) -> None:
    from hybridops_daemon.policy.types import DecisionKind, LaneStatus
    from tests.unit.test_status_line import lane

    lanes = {"prod": lane("prod"), "drill": lane("drill", LaneStatus.ON_STANDBY)}

    async def submit(command: Command, name: str, actor: str) -> tuple[int, Decision]:
        status = lanes[name].state.status
        reason = f"resume refused: lane is {status.value}, not paused"
        return 1, Decision(DecisionKind.REFUSE, name, reason, 0.0, status, status)

    backend = DaemonBackend("edge01", "local", lanes, journal, ApprovalBook(), {}, submit, clock=lambda: 5000.0)
    with pytest.raises(CommandRefused) as refused:
        await backend.submit("resume", None, ROOT)
    assert str(refused.value) == (
        "prod: resume refused: lane is PRIMARY, not paused; drill: resume refused: lane is ON_STANDBY, not paused"
    )
