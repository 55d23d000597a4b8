"""Running a lane's preflights (chain/preflight.py): concurrently, each within its budget; a hang is cut and reported
not ready; a driver without a preflight is "not checked", never ready; a crashing preflight is not ready, never a
dead readiness loop; a secret in a reason is masked before the reason is cut."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hybridops_daemon.chain.preflight import NOT_CHECKED, NOT_READY, READY, Preflights, preflight_inputs
from hybridops_daemon.config.profile import Profile
from hybridops_daemon.drivers.base import ApplyResult, CheckResult, Driver, ProbeResult, Readiness, StepContext
from hybridops_daemon.drivers.sandbox import SandboxDriver, SandboxWorld
from hybridops_daemon.journal.redact import Redactor
from tests.e2e.harness import profile

SECRET = "s3cr3t-token-value-0123456789"


class NoPreflight:
    """A driver as a third party might write one: the four operations and nothing more."""

    name = "legacy"
    modules = frozenset({"dns/record@v1"})

    async def check(self, step: StepContext) -> CheckResult:
        raise AssertionError("a preflight never calls check")

    async def apply(self, step: StepContext) -> ApplyResult:
        raise AssertionError("a preflight never applies")

    async def verify(self, step: StepContext) -> ProbeResult:
        raise AssertionError("a preflight never verifies")

    async def compensate(self, step: StepContext) -> ApplyResult:
        raise AssertionError("a preflight never compensates")


class Crashing(NoPreflight):
    name = "crashing"

    async def preflight(self, step: StepContext) -> Readiness:
        raise KeyError("a bug")


class Echoing(NoPreflight):
    name = "echoing"

    async def preflight(self, step: StepContext) -> Readiness:
        return Readiness(False, "x" * 280 + f" token={step.secrets['token']} rejected", {"sent": step.secrets["token"]})


def lane_profile(**drivers: str) -> Profile:
    data: dict[str, Any] = profile("prod")
    for chain in ("cutover", "failback"):
        for step in data["chains"][chain]:
            step["driver"] = drivers.get(step["id"], "sandbox")
            if step["driver"] == "echoing":
                step["secrets"] = {"token": {"env": "HYOPS_TEST_TOKEN"}}
    return Profile.model_validate(data)


def sandbox(tmp_path: Path) -> tuple[dict[str, Driver], SandboxWorld]:
    world = tmp_path / "world.json"
    drivers: dict[str, Driver] = {"sandbox": SandboxDriver(world)}
    return drivers, SandboxWorld(world)


async def test_a_healthy_lane_is_ready_in_chain_order(tmp_path: Path) -> None:
    drivers, world = sandbox(tmp_path)
    results = await Preflights("prod", drivers, 5.0, Redactor()).check(lane_profile())
    assert [(r.chain, r.step, r.state) for r in results] == [
        (chain, step, READY)
        for chain, steps in (
            ("cutover", ["capacity", "database", "floating-ip", "dns", "ipam"]),
            ("failback", ["ipam", "dns", "floating-ip", "database", "capacity"]),
        )
        for step in steps
    ]
    assert world.read()["applies"] == {} and world.read()["events"] == []  # read-only
    assert results[0].signal == "ready_cutover_capacity" and results[2].signal == "ready_cutover_floating_ip"


async def test_a_hung_preflight_is_cut_at_its_budget_and_the_others_still_answer(tmp_path: Path) -> None:
    drivers, world = sandbox(tmp_path)
    world.inject_fault("database/primary@v1", "preflight", fail_times=2, hang=True)
    began = time.monotonic()
    results = await Preflights("prod", drivers, 0.5, Redactor()).check(lane_profile())
    assert time.monotonic() - began < 2.0  # concurrent: one budget, not one per step
    by_step = {(r.chain, r.step): r for r in results}
    assert by_step[("cutover", "database")].state == NOT_READY
    assert by_step[("cutover", "database")].reason == "preflight timed out after 0.5s"
    assert by_step[("cutover", "dns")].state == READY


async def test_no_preflight_is_not_checked_a_crash_is_not_ready_and_a_missing_driver_says_so(tmp_path: Path) -> None:
    drivers, _ = sandbox(tmp_path)
    drivers |= {"legacy": NoPreflight(), "crashing": Crashing()}
    results = await Preflights("prod", drivers, 5.0, Redactor()).check(
        lane_profile(dns="legacy", ipam="crashing", capacity="nowhere")
    )
    by_step = {(r.chain, r.step): r for r in results}
    assert (by_step[("cutover", "dns")].state, by_step[("cutover", "dns")].reason) == (
        NOT_CHECKED,
        "driver 'legacy' has no preflight",
    )
    crash = by_step[("cutover", "ipam")]
    assert (crash.state, crash.reason) == (NOT_READY, "internal error in the crashing preflight: KeyError")
    missing = by_step[("cutover", "capacity")]
    assert (missing.state, missing.reason) == (NOT_READY, "driver 'nowhere' is not configured for lane 'prod'")


async def test_a_secret_in_a_reason_is_masked_before_the_reason_is_cut(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("HYOPS_TEST_TOKEN", SECRET)
    drivers, _ = sandbox(tmp_path)
    drivers["echoing"] = Echoing()
    results = await Preflights("prod", drivers, 5.0, Redactor()).check(lane_profile(dns="echoing"))
    echoed = next(r for r in results if r.step == "dns")
    assert echoed.state == NOT_READY and SECRET[:8] not in echoed.reason and SECRET[:8] not in str(echoed.observed)
    assert len(echoed.reason) <= 300


def test_preflight_inputs_fill_the_run_and_leave_step_outputs_as_written() -> None:
    step = lane_profile().chains.cutover[4]  # ipam: "description": "run ${run.id}"
    assert preflight_inputs(step, "prod")["description"] == "run preflight"
    templated = step.model_copy(update={"inputs": {"address": "${steps.capacity.address}"}})
    assert preflight_inputs(templated, "prod") == {"address": "${steps.capacity.address}"}
