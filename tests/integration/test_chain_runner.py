"""ChainRunner against real components: a Journal file, the SandboxDriver on a world file, a LocalLease,
an ApprovalBook and a Redactor, all in tmp_path. Nothing of ours is mocked; faults are armed in the world file.

Assertions read the journal (record kinds, bodies, order) and the world file (resources, apply counters).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.chain.approvals import ApprovalBook, PendingApproval, Verdict
from hybridops_daemon.chain.runner import ChainRunner, RunReleased, RunSpec
from hybridops_daemon.config.profile import Step
from hybridops_daemon.drivers.modules import resource_key, validate_inputs
from hybridops_daemon.drivers.sandbox import SandboxDriver, SandboxWorld
from hybridops_daemon.journal.redact import REDACTED, Redactor
from hybridops_daemon.journal.store import Journal, Record
from hybridops_daemon.lease.local import LocalLease
from hybridops_daemon.policy.types import ChainEvent

LANE = "drill"
FIP = "network/floating-ip@v1"
DNS = "dns/record@v1"
COMPUTE = "compute/capacity@v1"
FIP_INPUTS = {"ip": "203.0.113.10", "target": "edge02"}
DNS_INPUTS = {"zone": "example.com", "name": "app", "content": "198.51.100.7"}
COMPUTE_INPUTS = {"name": "standby-vms", "state": "running"}
STEP_KINDS = ["step.intent", "step.check", "step.apply", "step.verify", "step.done"]
SECRET = "tok-5f3a9c1e-very-secret"  # long enough for the redactor (MIN_SECRET_LENGTH)


# --------------------------------------------------------------------------------------------- helpers


def key(module: str, inputs: dict[str, Any]) -> str:
    """The world's key for a resource, as the sandbox derives it (the module catalogue's identity fields)."""
    return resource_key(module, validate_inputs(module, inputs))


FIP_KEY = key(FIP, FIP_INPUTS)
DNS_KEY = key(DNS, DNS_INPUTS)
COMPUTE_KEY = key(COMPUTE, COMPUTE_INPUTS)


def step(step_id: str, module: str, inputs: dict[str, Any], **extra: Any) -> Step:
    return Step.model_validate(
        {"id": step_id, "module": module, "driver": "sandbox", "inputs": inputs, "timeout": "2s", "backoff": "10ms", **extra}
    )


def fip_step(step_id: str = "fip", **extra: Any) -> Step:
    return step(step_id, FIP, FIP_INPUTS, **extra)


def dns_step(step_id: str = "dns", **extra: Any) -> Step:
    return step(step_id, DNS, DNS_INPUTS, **extra)


def compute_step(step_id: str = "compute", **extra: Any) -> Step:
    return step(step_id, COMPUTE, COMPUTE_INPUTS, **extra)


def spec(run_id: str, *steps: Step, approval_timeout: float = 5.0) -> RunSpec:
    return RunSpec(
        run_id=run_id,
        lane=LANE,
        chain="cutover",
        kind="drill",
        trigger="test",
        actor="pytest",
        reason="integration test",
        profile={"name": "drill", "version": 1},
        steps=steps,
        approval_timeout=approval_timeout,
        hourly_cost_usd=0.0,
    )


@dataclass
class Env:
    tmp: Path
    journal: Journal
    world: SandboxWorld
    lease: LocalLease
    approvals: ApprovalBook
    redactor: Redactor

    def runner(self, max_backoff: float = 0.5) -> ChainRunner:
        driver = SandboxDriver(self.world.path)
        return ChainRunner(
            self.journal, {LANE: {"sandbox": driver}}, self.lease, self.approvals, self.redactor, max_backoff=max_backoff
        )

    def records(self, run_id: str, step_id: str | None = None) -> list[Record]:
        found = self.journal.run_records(run_id)
        return found if step_id is None else [r for r in found if r.body.get("step") == step_id]

    def kinds(self, run_id: str, step_id: str | None = None) -> list[str]:
        return [r.kind for r in self.records(run_id, step_id)]

    def only(self, run_id: str, kind: str) -> Record:
        found = [r for r in self.journal.run_records(run_id) if r.kind == kind]
        assert len(found) == 1, f"expected one {kind}, got {[r.body for r in found]}"
        return found[0]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    redactor = Redactor()
    journal = Journal.open(tmp_path / "journal.db", redactor)
    lease = LocalLease(tmp_path / "lease.lock").acquire()
    made = Env(tmp_path, journal, SandboxWorld(tmp_path / "world.json"), lease, ApprovalBook(), redactor)
    try:
        yield made
    finally:
        made.lease.release()
        made.journal.close()  # tests that simulate a restart replace the journal


async def wait_for(condition: Callable[[], bool], what: str, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def world_lock(env: Env) -> Path:
    """The sandbox world's lock file: every writer of the world holds an exclusive flock on it."""
    return env.world.path.with_name(env.world.path.name + ".lock")


def write_world(env: Env, world: dict[str, Any]) -> None:
    """Replace the world file atomically, as the sandbox does. Call with the world's lock held."""
    tmp = env.world.path.with_name(env.world.path.name + ".test-tmp")
    tmp.write_text(json.dumps(world), encoding="utf-8")
    os.replace(tmp, env.world.path)


def pending_for(approvals: ApprovalBook, run_id: str) -> list[PendingApproval]:
    return [p for p in approvals.pending() if p.run_id == run_id]


def assert_failed_run(env: Env, run_id: str, event: ChainEvent, step_id: str, *fragments: str) -> None:
    """The run ended failed, the detail names the step and the reason, and step.failed + run.end(ok False) close it."""
    assert event.ok is False
    assert event.lane == LANE and event.run_id == run_id
    assert event.detail.startswith(f"step {step_id} failed: ")
    for fragment in fragments:
        assert fragment in event.detail
    kinds = env.kinds(run_id)
    assert kinds[-2:] == ["step.failed", "run.end"]
    failed = env.only(run_id, "step.failed")
    assert failed.body == {"step": step_id, "error": event.detail}
    end = env.only(run_id, "run.end")
    assert end.body["ok"] is False
    assert end.body["reason"] == event.detail
    assert env.journal.unfinished_runs() == []
    assert env.journal.verify().ok


# --------------------------------------------------------------------------------------------- 1. happy path


async def test_happy_path_runs_every_step_in_order_and_applies_each_effect_once(env: Env) -> None:
    steps = (fip_step(), dns_step(), compute_step())
    event = await env.runner().start(spec("run-happy", *steps))

    assert event == ChainEvent(LANE, "run-happy", ok=True, detail="cutover chain completed: 3 steps")
    assert env.kinds("run-happy") == ["run.start", *STEP_KINDS * 3, "run.end"]
    for s in steps:
        assert env.kinds("run-happy", s.id) == STEP_KINDS
    records = env.records("run-happy")
    start, end = records[0], records[-1]
    assert start.body["steps"] == ["fip", "dns", "compute"]
    assert start.body["fencing_token"] == env.lease.token
    assert end.body["ok"] is True
    assert end.body["outputs"]["fip"] == {"ip": "203.0.113.10", "assigned_to": "edge02"}
    assert end.body["outputs"]["dns"]["fqdn"] == "app.example.com"

    intent = env.records("run-happy", "fip")[0]
    assert intent.body["attempt"] == 1
    assert intent.body["idempotency_key"] == "run-happy/fip/1"
    assert intent.body["fencing_token"] == env.lease.token
    verify = next(r for r in env.records("run-happy", "dns") if r.kind == "step.verify")
    assert verify.body["ok"] is True
    assert verify.body["probe"] == "sandbox world read-back"
    done = [r.body for r in records if r.kind == "step.done"]
    assert [d["outcome"] for d in done] == ["applied"] * 3

    for key in (FIP_KEY, DNS_KEY, COMPUTE_KEY):
        assert env.world.applies(key) == 1
    assert env.world.resource(FIP_KEY) == {"ip": "203.0.113.10", "target": "edge02"}
    assert env.world.resource(COMPUTE_KEY) == {"name": "standby-vms", "state": "running"}
    assert env.journal.unfinished_runs() == []
    assert env.journal.verify().ok


# --------------------------------------------------------------------------------------------- 2. already satisfied


async def test_step_already_satisfied_is_skipped_without_apply(env: Env) -> None:
    first = await env.runner().start(spec("run-first", fip_step()))
    assert first.ok
    assert env.world.applies(FIP_KEY) == 1

    second = await env.runner().start(spec("run-second", fip_step(), dns_step()))

    assert second.ok, second.detail
    assert env.kinds("run-second", "fip") == ["step.intent", "step.check", "step.done"]
    check = next(r for r in env.records("run-second", "fip") if r.kind == "step.check")
    assert check.body["satisfied"] is True
    assert check.body["observed"] == {"ip": "203.0.113.10", "target": "edge02"}
    done = next(r for r in env.records("run-second", "fip") if r.kind == "step.done")
    assert done.body["outcome"] == "skipped (already satisfied)"
    assert done.body["outputs"] == {"ip": "203.0.113.10", "assigned_to": "edge02"}
    assert env.world.applies(FIP_KEY) == 1  # unchanged
    assert env.kinds("run-second", "dns") == STEP_KINDS  # the next step still runs in full
    assert env.world.applies(DNS_KEY) == 1


# --------------------------------------------------------------------------------------------- 3. retries


async def test_retryable_apply_fault_succeeds_on_third_attempt(env: Env) -> None:
    env.world.inject_fault(FIP, "apply", fail_times=2, message="upstream 503")

    event = await env.runner().start(spec("run-retry", fip_step(), dns_step()))

    assert event.ok, event.detail
    applies = [r.body for r in env.records("run-retry", "fip") if r.kind == "step.apply"]
    assert [(a["attempt"], a["ok"]) for a in applies] == [(1, False), (2, False), (3, True)]
    for failed in applies[:2]:
        assert failed["retryable"] is True
        assert failed["error"] == "upstream 503"
    # before each retry the runner looks again (a failed apply might have landed)
    assert env.kinds("run-retry", "fip") == [
        "step.intent",
        "step.check",
        "step.apply",
        "step.check",
        "step.apply",
        "step.check",
        "step.apply",
        "step.verify",
        "step.done",
    ]
    assert env.world.applies(FIP_KEY) == 1  # two failures never wrote, the third wrote once
    assert env.world.applies(DNS_KEY) == 1


async def test_retries_exhausted_fail_the_chain_and_stop_later_steps(env: Env) -> None:
    env.world.inject_fault(FIP, "apply", fail_times=2, message="upstream 503")

    event = await env.runner().start(spec("run-exhausted", fip_step(retries=1), dns_step(), compute_step()))

    assert_failed_run(env, "run-exhausted", event, "fip", "apply failed after 2 attempt(s)", "upstream 503")
    applies = [r.body for r in env.records("run-exhausted", "fip") if r.kind == "step.apply"]
    assert [(a["attempt"], a["ok"], a["retryable"]) for a in applies] == [(1, False, True), (2, False, True)]
    assert "step.verify" not in env.kinds("run-exhausted")
    assert env.kinds("run-exhausted", "dns") == [] and env.kinds("run-exhausted", "compute") == []
    world = env.world.read()
    assert world["resources"] == {}
    assert world["applies"] == {}


async def test_backoff_is_capped_by_max_backoff(env: Env) -> None:
    env.world.inject_fault(FIP, "apply", fail_times=1, message="upstream 503")

    # a profile's 30 s backoff must not outlast the runner's cap (here 50 ms)
    event = await asyncio.wait_for(env.runner(max_backoff=0.05).start(spec("run-capped", fip_step(backoff="30s"))), 3)

    assert event.ok, event.detail
    applies = [r for r in env.records("run-capped", "fip") if r.kind == "step.apply"]
    assert [a.body["ok"] for a in applies] == [False, True]
    assert applies[1].ts - applies[0].ts < 1.0


# --------------------------------------------------------------------------------------------- 4. permanent fault


async def test_permanent_fault_is_not_retried(env: Env) -> None:
    env.world.inject_fault(FIP, "apply", fail_times=5, message="address not owned by project", permanent=True)

    event = await env.runner().start(spec("run-permanent", fip_step(retries=3), dns_step()))

    assert_failed_run(env, "run-permanent", event, "fip", "apply failed after 1 attempt(s)", "address not owned by project")
    applies = [r.body for r in env.records("run-permanent", "fip") if r.kind == "step.apply"]
    assert len(applies) == 1
    assert applies[0]["ok"] is False and applies[0]["retryable"] is False
    assert env.world.read()["faults"][FIP]["apply"]["fail_times"] == 4  # consumed exactly once
    assert env.world.resource(DNS_KEY) is None


async def test_a_retryable_check_failure_is_retried_not_fatal(env: Env) -> None:
    env.world.inject_fault(FIP, "check", fail_times=2, message="api briefly unreachable")

    event = await env.runner().start(spec("run-check-blip", fip_step(retries=2)))

    assert event.ok, event.detail
    checks = [r.body for r in env.records("run-check-blip", "fip") if r.kind == "step.check"]
    assert [c.get("error") for c in checks] == ["api briefly unreachable", "api briefly unreachable", None]
    assert checks[-1]["satisfied"] is False
    assert env.world.applies(FIP_KEY) == 1


async def test_a_permanent_check_failure_fails_the_step_without_applying(env: Env) -> None:
    env.world.inject_fault(FIP, "check", fail_times=1, message="no such project", permanent=True)

    event = await env.runner().start(spec("run-check-perm", fip_step(retries=3)))

    assert not event.ok and "check failed: no such project" in event.detail
    assert len([r for r in env.records("run-check-perm", "fip") if r.kind == "step.check"]) == 1
    assert env.world.applies(FIP_KEY) == 0


# --------------------------------------------------------------------------------------------- 5. timeouts


async def test_hanging_apply_is_cut_by_the_step_timeout(env: Env) -> None:
    env.world.inject_fault(FIP, "apply", fail_times=1, hang=True)

    began = time.monotonic()
    event = await asyncio.wait_for(
        env.runner().start(spec("run-hang", fip_step(timeout="200ms", retries=0), dns_step())), 5
    )  # a runner without timeouts hangs

    assert time.monotonic() - began < 1.5
    assert_failed_run(env, "run-hang", event, "fip", "apply failed after 1 attempt(s): timed out after 0.2s")
    applies = [r.body for r in env.records("run-hang", "fip") if r.kind == "step.apply"]
    assert len(applies) == 1
    assert applies[0]["error"] == "timed out after 0.2s"
    assert applies[0]["retryable"] is True
    assert applies[0]["elapsed_s"] >= 0.19
    assert env.world.applies(FIP_KEY) == 0
    assert env.world.resource(DNS_KEY) is None


async def test_timed_out_apply_is_retried(env: Env) -> None:
    env.world.inject_fault(FIP, "apply", fail_times=1, hang=True)

    event = await asyncio.wait_for(
        env.runner().start(spec("run-hang-retry", fip_step(timeout="200ms", retries=1))), 5
    )  # a runner without timeouts hangs

    assert event.ok, event.detail
    applies = [r.body for r in env.records("run-hang-retry", "fip") if r.kind == "step.apply"]
    assert [(a["ok"], a.get("error")) for a in applies] == [(False, "timed out after 0.2s"), (True, None)]
    assert env.world.applies(FIP_KEY) == 1


async def test_hanging_verify_fails_the_chain(env: Env) -> None:
    env.world.inject_fault(FIP, "verify", fail_times=1, hang=True)

    event = await asyncio.wait_for(
        env.runner().start(spec("run-verify-hang", fip_step(timeout="200ms"), dns_step())), 5
    )  # a runner without timeouts hangs

    assert_failed_run(env, "run-verify-hang", event, "fip", "verify timed out after 0.2s")
    assert env.kinds("run-verify-hang", "fip") == ["step.intent", "step.check", "step.apply", "step.failed"]
    assert "step.done" not in env.kinds("run-verify-hang")
    assert env.world.applies(FIP_KEY) == 1  # the effect landed; it was never proven
    assert env.world.resource(DNS_KEY) is None


async def test_verify_reads_the_world_back_and_fails_on_mismatch(env: Env) -> None:
    """verify() must be an independent read, not apply()'s answer. Another writer (this test, holding the world's
    lock as every writer must) reassigns the IP after the runner's re-check and before its verify can read: the
    verify fault armed here makes verify() wait for the lock, so the order is certain."""
    env.world.inject_fault(FIP, "apply", fail_times=1, message="upstream 503")
    task = asyncio.create_task(env.runner().start(spec("run-mismatch", fip_step(backoff="300ms"), dns_step())))
    await wait_for(lambda: "step.apply" in env.kinds("run-mismatch"), "the failed first apply")
    lock = os.open(world_lock(env), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        world = env.world.read()  # the failed apply landed after all, and verify will have to queue for the lock
        world["resources"][FIP_KEY] = {"ip": "203.0.113.10", "target": "edge02"}
        world["faults"][FIP]["verify"] = {"fail_times": 1, "message": "unused", "permanent": False, "hang": False}
        write_world(env, world)
        await wait_for(lambda: env.kinds("run-mismatch").count("step.check") == 2, "the re-check before the retry")
        world = env.world.read()  # now someone else takes the IP, and the barrier is lifted
        world["resources"][FIP_KEY] = {"ip": "203.0.113.10", "target": "edge09"}
        world["faults"][FIP]["verify"]["fail_times"] = 0
        write_world(env, world)
    finally:
        os.close(lock)
    event = await asyncio.wait_for(task, 5)

    assert_failed_run(env, "run-mismatch", event, "fip", "verify failed (sandbox world read-back)", "target='edge09'")
    checks = [r.body["satisfied"] for r in env.records("run-mismatch", "fip") if r.kind == "step.check"]
    assert checks == [False, True]
    verify = env.only("run-mismatch", "step.verify")
    assert verify.body["ok"] is False
    assert verify.body["observed"] == {"ip": "203.0.113.10", "target": "edge09"}
    assert "step.done" not in env.kinds("run-mismatch")
    assert env.world.applies(FIP_KEY) == 0  # the runner itself never wrote
    assert env.world.resource(DNS_KEY) is None


# --------------------------------------------------------------------------------------------- 6. timed out, but landed


async def test_timed_out_apply_that_landed_is_not_applied_again(env: Env) -> None:
    """The apply's write is held up behind the world's lock (taken here, as another writer would) past the
    step timeout. The runner gives up on it; the write lands once the lock is released; the retry's check()
    sees the effect and the runner does not apply a second time."""
    lock = os.open(world_lock(env), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        task = asyncio.create_task(env.runner().start(spec("run-landed", fip_step(timeout="200ms", backoff="300ms"))))
        await wait_for(lambda: "step.apply" in env.kinds("run-landed"), "the timed-out step.apply record")
        assert env.world.applies(FIP_KEY) == 0  # still blocked behind our lock
    finally:
        os.close(lock)  # drops the flock: the abandoned write goes through now
    event = await asyncio.wait_for(task, 5)

    assert event.ok, event.detail
    assert env.kinds("run-landed", "fip") == [
        "step.intent",
        "step.check",
        "step.apply",
        "step.check",
        "step.verify",
        "step.done",
    ]
    apply = env.only("run-landed", "step.apply")
    assert apply.body["ok"] is False and apply.body["error"] == "timed out after 0.2s"
    checks = [r.body for r in env.records("run-landed", "fip") if r.kind == "step.check"]
    assert [c["satisfied"] for c in checks] == [False, True]
    done = env.only("run-landed", "step.done")
    assert done.body["outputs"] == {"ip": "203.0.113.10", "assigned_to": "edge02"}
    assert env.world.applies(FIP_KEY) == 1  # the late write only; no second apply


# --------------------------------------------------------------------------------------------- 7. outputs flow


async def test_later_step_inputs_resolve_earlier_outputs(env: Env) -> None:
    capacity = step("capacity", COMPUTE, {"name": "${steps.fip.assigned_to}", "state": "running"})
    label = step(
        "record",
        DNS,
        {"zone": "example.com", "name": "${run.lane}-${steps.fip.assigned_to}", "type": "TXT", "content": "${run.id}"},
    )

    event = await env.runner().start(spec("run-outputs", fip_step(), capacity, label))

    assert event.ok, event.detail
    intent = next(r for r in env.records("run-outputs", "capacity") if r.kind == "step.intent")
    assert intent.body["inputs"] == {"name": "edge02", "state": "running"}
    assert env.world.resource(key(COMPUTE, {"name": "edge02", "state": "running"})) == {"name": "edge02", "state": "running"}
    record = env.world.resource(
        key(DNS, {"zone": "example.com", "name": "drill-edge02", "type": "TXT", "content": "run-outputs"})
    )
    assert record is not None and record["content"] == "run-outputs"
    assert env.only("run-outputs", "run.start").body["inputs"]["capacity"]["name"] == "${steps.fip.assigned_to}"


async def test_unresolved_reference_fails_the_step_before_intent(env: Env) -> None:
    capacity = step("capacity", COMPUTE, {"name": "${steps.fip.server_id}", "state": "running"})

    event = await env.runner().start(spec("run-unresolved", fip_step(), capacity, dns_step()))

    assert_failed_run(env, "run-unresolved", event, "capacity", "${steps.fip.server_id}", "no output 'server_id'")
    assert env.kinds("run-unresolved", "capacity") == ["step.failed"]  # no intent: nothing was attempted
    assert env.world.read()["applies"] == {FIP_KEY: 1}


# --------------------------------------------------------------------------------------------- 8. approvals


async def _run_until_waiting(env: Env, run: RunSpec) -> asyncio.Task[ChainEvent]:
    task = asyncio.create_task(env.runner().start(run))
    await wait_for(lambda: bool(pending_for(env.approvals, run.run_id)), "the approval gate")
    return task


async def test_approval_gate_waits_then_proceeds_when_approved(env: Env) -> None:
    task = await _run_until_waiting(env, spec("run-approve", fip_step(), dns_step(approval=True)))

    [pending] = pending_for(env.approvals, "run-approve")
    assert (pending.step, pending.lane) == ("dns", LANE)
    assert pending.expires_at == pytest.approx(pending.since + 5.0)
    assert env.world.applies(FIP_KEY) == 1
    assert env.world.applies(DNS_KEY) == 0  # nothing applied while waiting
    assert env.kinds("run-approve", "dns") == ["step.intent", "step.check", "step.approval"]

    env.approvals.answer("run-approve", "dns", Verdict(approved=True, actor="alice"))
    event = await asyncio.wait_for(task, 5)

    assert event.ok, event.detail
    approvals = [r.body for r in env.records("run-approve", "dns") if r.kind == "step.approval"]
    assert [a["status"] for a in approvals] == ["waiting", "approved"]
    assert approvals[1]["actor"] == "alice"
    kinds = env.kinds("run-approve", "dns")
    assert kinds.index("step.approval") < kinds.index("step.apply")
    assert env.world.applies(DNS_KEY) == 1
    assert env.approvals.pending() == []


async def test_rejected_approval_fails_the_chain(env: Env) -> None:
    task = await _run_until_waiting(env, spec("run-reject", fip_step(approval=True), dns_step()))

    env.approvals.answer("run-reject", "fip", Verdict(approved=False, actor="bob"))
    event = await asyncio.wait_for(task, 5)

    assert_failed_run(env, "run-reject", event, "fip", "rejected by bob")
    approvals = [r.body for r in env.records("run-reject", "fip") if r.kind == "step.approval"]
    assert [(a["status"], a.get("actor")) for a in approvals] == [("waiting", None), ("rejected", "bob")]
    assert "step.apply" not in env.kinds("run-reject")
    assert env.world.read()["applies"] == {}


async def test_unanswered_approval_expires(env: Env) -> None:
    task = await _run_until_waiting(env, spec("run-expire", fip_step(approval=True), approval_timeout=0.2))
    event = await asyncio.wait_for(task, 5)

    assert_failed_run(env, "run-expire", event, "fip", "approval expired after 0.2s")
    approvals = [r.body["status"] for r in env.records("run-expire", "fip") if r.kind == "step.approval"]
    assert approvals == ["waiting", "expired"]
    assert env.approvals.pending() == []
    assert env.world.applies(FIP_KEY) == 0


# --------------------------------------------------------------------------------------------- 9. fencing


async def test_released_lease_releases_the_run_before_its_first_check(env: Env) -> None:
    env.lease.release()

    # Not a failed run: this node may no longer act on it. Its first fencing check (the one that hands the run over)
    # fails, so it stops before reading any target, says why, and leaves the run to the next leader.
    with pytest.raises(RunReleased, match=f"lost the lane before the run was handed over, .*token {env.lease.token}"):
        await env.runner().start(spec("run-fenced", fip_step(), dns_step()))

    assert env.kinds("run-fenced") == ["run.start", "run.released"]
    assert env.only("run-fenced", "run.released").body["step"] == "fip"  # where it stopped: before the first step
    assert env.world.read()["applies"] == {}


async def test_token_from_before_a_lease_change_is_refused(env: Env) -> None:
    """The intent is taken under token N; while the step waits for approval the lease is lost and taken again
    (token N+1). The step must not apply with the stale token it was planned under."""
    old = env.lease.token
    task = await _run_until_waiting(env, spec("run-stale", fip_step(approval=True)))
    assert env.only("run-stale", "step.intent").body["fencing_token"] == old
    env.lease.release()
    env.lease.acquire()
    assert env.lease.token == old + 1

    env.approvals.answer("run-stale", "fip", Verdict(approved=True, actor="alice"))
    with pytest.raises(RunReleased, match=f"fencing token {old} is not current \\(holding {old + 1}\\)"):
        await asyncio.wait_for(task, 5)

    assert env.kinds("run-stale")[-2:] == ["step.refused", "run.released"]
    assert "step.apply" not in env.kinds("run-stale")
    assert env.world.applies(FIP_KEY) == 0


# --------------------------------------------------------------------------------------------- 10. secrets


def journal_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


async def test_secret_never_reaches_the_journal_file(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYOPS_TEST_TOKEN", SECRET)
    world = env.world.read()
    world["echo_secrets"] = True
    write_world(env, world)
    env.world.inject_fault(FIP, "apply", fail_times=1, message="401 for token {secret:api_token}")
    refs = {"api_token": {"env": "HYOPS_TEST_TOKEN"}}

    ok = await env.runner().start(spec("run-secret", fip_step(secrets=refs)))
    # and a failure whose message carries the secret ends up in step.failed, run.end and the ChainEvent
    env.world.inject_fault(DNS, "apply", fail_times=1, message="denied: {secret:api_token}", permanent=True)
    failed = await env.runner().start(spec("run-secret-fail", dns_step(secrets=refs)))

    assert ok.ok, ok.detail
    applies = [r.body for r in env.records("run-secret", "fip") if r.kind == "step.apply"]
    assert applies[0]["error"] == f"401 for token {REDACTED}"
    assert applies[1]["log"][0] == f"authenticated with api_token={REDACTED}"  # the echoing upstream was caught
    assert env.only("run-secret", "run.start").body["plan"][0]["secret_refs"] == [
        {"name": "api_token", "env": "HYOPS_TEST_TOKEN"}
    ]
    assert not failed.ok
    assert SECRET not in failed.detail and f"denied: {REDACTED}" in failed.detail

    env.journal.close()  # the last connection checkpoints the WAL into the main file
    data = journal_bytes(env.journal.path)
    assert SECRET.encode() not in data
    assert REDACTED.encode() in data
    assert Journal.verify_file(env.journal.path).ok


async def test_secret_rotated_during_the_run_is_redacted_too(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner learns a secret's value at run start; one rotated before its step runs (here: while an
    earlier step waits for approval) must be redacted as well."""
    rotated = "tok-rotated-2b7e151628aed2a6"
    monkeypatch.setenv("HYOPS_TEST_TOKEN", SECRET)
    world = env.world.read()
    world["echo_secrets"] = True
    write_world(env, world)
    uses_secret = fip_step(secrets={"api_token": {"env": "HYOPS_TEST_TOKEN"}})
    task = await _run_until_waiting(env, spec("run-rotated", compute_step(approval=True), uses_secret))
    monkeypatch.setenv("HYOPS_TEST_TOKEN", rotated)
    env.approvals.answer("run-rotated", "compute", Verdict(approved=True, actor="alice"))
    event = await asyncio.wait_for(task, 5)

    assert event.ok, event.detail
    apply = next(r for r in env.records("run-rotated", "fip") if r.kind == "step.apply")
    assert apply.body["log"][0] == f"authenticated with api_token={REDACTED}"
    stored = json.dumps([r.body for r in env.records("run-rotated")])
    assert rotated not in stored and SECRET not in stored


async def test_unset_secret_env_var_fails_the_step_without_apply(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYOPS_TEST_MISSING", raising=False)
    missing = fip_step(secrets={"api_token": {"env": "HYOPS_TEST_MISSING"}})

    event = await env.runner().start(spec("run-nosecret", missing, dns_step()))

    assert_failed_run(env, "run-nosecret", event, "fip", "secret 'api_token': environment variable HYOPS_TEST_MISSING is not set")
    assert env.kinds("run-nosecret", "fip") == ["step.failed"]
    assert env.world.read()["applies"] == {}


# --------------------------------------------------------------------------------------------- 11. resume


async def test_interrupted_run_resumes_from_first_unfinished_step(env: Env) -> None:
    env.world.inject_fault(DNS, "apply", fail_times=1, hang=True)
    later = step("capacity", COMPUTE, {"name": "${steps.fip.assigned_to}", "state": "running"})
    task = asyncio.create_task(env.runner().start(spec("run-resume", fip_step(), dns_step(timeout="5s"), later)))

    def hanging_in_dns_apply() -> bool:
        return "step.intent" in env.kinds("run-resume", "dns") and env.world.read()["faults"][DNS]["apply"]["fail_times"] == 0

    await wait_for(hanging_in_dns_apply, "step dns to hang in apply")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    interrupted = env.only("run-resume", "run.interrupted")
    assert interrupted.body == {"run_id": "run-resume", "step": "dns", "reason": "daemon stopping"}
    assert env.journal.unfinished_runs() == ["run-resume"]
    assert env.world.applies(FIP_KEY) == 1 and env.world.applies(DNS_KEY) == 0

    # a restart: the journal reopened, a fresh redactor, the lease taken again (newer token), a new runner
    env.journal.close()
    env.redactor = Redactor()
    env.journal = Journal.open(env.journal.path, env.redactor)
    env.lease.release()
    env.lease.acquire()
    event = await env.runner().resume("run-resume")

    assert event.ok, event.detail
    resumed = env.only("run-resume", "run.resumed")
    assert resumed.body["from_step"] == "dns"
    assert resumed.body["completed_steps"] == ["fip"]
    assert resumed.body["interrupted_at_kind"] == "run.interrupted"
    assert resumed.body["fencing_token"] == env.lease.token
    assert env.kinds("run-resume", "fip") == STEP_KINDS  # never touched again
    intents = [r.body for r in env.records("run-resume", "dns") if r.kind == "step.intent"]
    assert [(i["attempt"], i["idempotency_key"]) for i in intents] == [(1, "run-resume/dns/1"), (2, "run-resume/dns/2")]
    assert intents[1]["fencing_token"] == env.lease.token == intents[0]["fencing_token"] + 1
    kinds = env.kinds("run-resume")
    assert kinds.index("run.interrupted") < kinds.index("run.resumed") < len(kinds) - 1
    assert kinds[-1] == "run.end"
    assert env.world.applies(FIP_KEY) == 1
    assert env.world.applies(DNS_KEY) == 1
    assert env.world.resource(key(COMPUTE, {"name": "edge02", "state": "running"})) == {
        "name": "edge02",
        "state": "running",
    }  # outputs from the journal
    assert env.journal.unfinished_runs() == []
    assert env.journal.verify().ok
