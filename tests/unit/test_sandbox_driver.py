"""The sandbox driver against real world files in tmp_path: effects, counts, faults, compensation."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.drivers.base import Driver, DriverError, PermanentDriverError, Preflight, StepContext
from hybridops_daemon.drivers.modules import MODULES, resource_key, validate_inputs
from hybridops_daemon.drivers.sandbox import Op, SandboxDriver, SandboxWorld

FIP = "network/floating-ip@v1"

CASES: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {
    # module: (inputs, resource key, outputs)
    "compute/capacity@v1": (
        {"name": "standby-vms", "state": "running"},
        "compute/capacity@v1:standby-vms",
        {"name": "standby-vms", "state": "running"},
    ),
    "compute/group-size@v1": (
        {"group": "burst-pool", "size": 4},
        "compute/group-size@v1:burst-pool",
        {"group": "burst-pool", "size": 4},
    ),
    "database/primary@v1": (
        {"cluster": "pg-main", "primary": "cloud-replica"},
        "database/primary@v1:pg-main",
        {"cluster": "pg-main", "primary": "cloud-replica"},
    ),
    FIP: (
        {"ip": "203.0.113.10", "target": "edge02"},
        "network/floating-ip@v1:203.0.113.10",
        {"ip": "203.0.113.10", "assigned_to": "edge02"},
    ),
    "dns/record@v1": (
        {"zone": "example.com", "name": "app", "content": "198.51.100.7"},
        "dns/record@v1:app.example.com/A",
        {"fqdn": "app.example.com", "type": "A", "content": "198.51.100.7", "ttl": 60},
    ),
    "ipam/address@v1": (
        {"address": "203.0.113.10/32", "status": "active"},
        "ipam/address@v1:203.0.113.10/32",
        {"address": "203.0.113.10/32", "status": "active"},
    ),
}


def step(
    module: str = FIP,
    inputs: dict[str, Any] | None = None,
    *,
    run_id: str = "run-1",
    step_id: str = "move-ip",
    secrets: dict[str, str] | None = None,
    attempt: int = 1,
) -> StepContext:
    return StepContext(
        run_id=run_id,
        lane="drill",
        step_id=step_id,
        module=module,
        inputs=CASES[module][0] if inputs is None else inputs,
        secrets=secrets or {},
        fencing_token=7,
        attempt=attempt,
    )


@pytest.fixture
def world(tmp_path: Path) -> SandboxWorld:
    return SandboxWorld(tmp_path / "world.json")


@pytest.fixture
def driver(world: SandboxWorld) -> SandboxDriver:
    return SandboxDriver(world.path)


def test_sandbox_implements_the_driver_protocol(driver: SandboxDriver) -> None:
    typed: Driver = driver  # checked by mypy
    assert typed.name == "sandbox"
    assert typed.modules == frozenset(MODULES)


@pytest.mark.parametrize("module", sorted(CASES))
async def test_check_apply_verify_round_trip(driver: SandboxDriver, world: SandboxWorld, module: str) -> None:
    inputs, key, outputs = CASES[module]
    ctx = step(module)

    before = await driver.check(ctx)
    assert not before.satisfied
    assert before.observed == {}
    assert before.outputs == {}

    applied = await driver.apply(ctx)
    assert applied.outputs == outputs
    assert applied.log and "absent" in applied.log[-1]

    probe = await driver.verify(ctx)
    assert probe.ok, probe.detail
    assert probe.probe == "sandbox world read-back"
    assert world.resource(key) == validate_inputs(module, inputs).model_dump()

    after = await driver.check(ctx)
    assert after.satisfied  # the runner would record "skipped (already satisfied)" and not apply again
    assert after.outputs == outputs
    assert world.applies(key) == 1


async def test_floating_ip_log_reads_like_an_operator_would_say_it(driver: SandboxDriver) -> None:
    await driver.apply(step(inputs={"ip": "203.0.113.10", "target": "edge01"}))
    result = await driver.apply(step())
    assert result.log == ("floating IP 203.0.113.10 → edge02 (was target='edge01')",)


async def test_applies_counts_every_apply_exactly(driver: SandboxDriver, world: SandboxWorld) -> None:
    key = CASES[FIP][1]
    assert world.applies(key) == 0
    for expected in (1, 2, 3):
        await driver.apply(step(attempt=expected))
        assert world.applies(key) == expected
    events = world.read()["events"]
    assert [(e["op"], e["attempt"], e["fencing_token"], e["run_id"]) for e in events] == [
        ("apply", 1, 7, "run-1"),
        ("apply", 2, 7, "run-1"),
        ("apply", 3, 7, "run-1"),
    ]


async def test_verify_reads_the_file_not_applys_answer(driver: SandboxDriver, world: SandboxWorld) -> None:
    await driver.apply(step())
    # Someone else moves the IP behind the driver's back.
    data = json.loads(world.path.read_text())
    data["resources"][CASES[FIP][1]]["target"] = "edge01"
    world.path.write_text(json.dumps(data))

    probe = await driver.verify(step())
    assert not probe.ok
    assert probe.observed == {"ip": "203.0.113.10", "target": "edge01"}
    assert "target='edge01'" in probe.detail


async def test_missing_world_is_empty_and_check_does_not_create_it(driver: SandboxDriver, world: SandboxWorld) -> None:
    assert not (await driver.check(step())).satisfied
    assert not (await driver.verify(step())).ok
    assert not world.path.exists()


@pytest.mark.parametrize(
    ("module", "inputs", "field"),
    [
        (FIP, {"ip": "203.0.113.300", "target": "edge02"}, "ip"),
        (FIP, {"ip": "203.0.113.10"}, "target"),
        ("compute/capacity@v1", {"name": "vms", "state": "paused"}, "state"),
        ("dns/record@v1", {"zone": "example.com", "name": "app", "content": "198.51.100.7", "ttl": 0}, "ttl"),
        ("dns/record@v1", {"zone": "example.com", "name": "app", "content": "not-an-ip"}, "content"),
        ("ipam/address@v1", {"address": "10.0.0.0/33", "status": "active"}, "address"),
        ("database/primary@v1", {"cluster": "pg", "primary": "a", "replica": "b"}, "replica"),
    ],
)
async def test_bad_inputs_are_permanent_and_name_the_field(
    driver: SandboxDriver, world: SandboxWorld, module: str, inputs: dict[str, Any], field: str
) -> None:
    for operation in (driver.check, driver.apply, driver.verify, driver.compensate):
        with pytest.raises(PermanentDriverError, match=rf"invalid inputs for {module}: .*\b{field}:"):
            await operation(step(module, inputs))
    assert not world.path.exists()


async def test_unknown_module_is_permanent(driver: SandboxDriver) -> None:
    ctx = StepContext(run_id="r", lane="drill", step_id="s", module="dns/zone@v9", inputs={}, secrets={}, fencing_token=1)
    with pytest.raises(PermanentDriverError, match=r"unknown module 'dns/zone@v9'; known: compute/capacity@v1"):
        await driver.check(ctx)


def test_resource_keys_are_canonical() -> None:
    # The same resource spelled two ways is one resource.
    upper = validate_inputs(FIP, {"ip": "2001:DB8:0::10", "target": "edge02"})
    assert resource_key(FIP, upper) == "network/floating-ip@v1:2001:db8::10"
    dns = validate_inputs("dns/record@v1", {"zone": "Example.COM.", "name": "App", "type": "aaaa", "content": "2001:db8::1"})
    assert resource_key("dns/record@v1", dns) == "dns/record@v1:app.example.com/AAAA"
    fqdn = validate_inputs(
        "dns/record@v1", {"zone": "example.com", "name": "app.example.com.", "type": "AAAA", "content": "2001:db8::1"}
    )
    assert resource_key("dns/record@v1", fqdn) == resource_key("dns/record@v1", dns)
    other_zone = validate_inputs(
        "dns/record@v1", {"zone": "example.org", "name": "app", "type": "AAAA", "content": "2001:db8::1"}
    )
    assert resource_key("dns/record@v1", other_zone) != resource_key("dns/record@v1", dns)
    with pytest.raises(TypeError):
        resource_key("dns/record@v1", upper)


async def test_fault_fails_exactly_fail_times_then_succeeds(driver: SandboxDriver, world: SandboxWorld) -> None:
    world.inject_fault(FIP, "apply", fail_times=2, message="hcloud API 503")
    for _ in range(2):
        with pytest.raises(DriverError, match="hcloud API 503") as caught:
            await driver.apply(step())
        assert caught.value.retryable
        assert world.applies(CASES[FIP][1]) == 0
    await driver.apply(step())
    assert world.applies(CASES[FIP][1]) == 1
    assert world.read()["faults"][FIP]["apply"]["fail_times"] == 0
    # A fault on one operation leaves the others alone.
    assert (await driver.verify(step())).ok


@pytest.mark.parametrize("op", ["check", "verify", "compensate"])
async def test_faults_apply_to_every_operation(driver: SandboxDriver, world: SandboxWorld, op: Op) -> None:
    await driver.apply(step())
    world.inject_fault(FIP, op, message=f"{op} broke")
    with pytest.raises(DriverError, match=f"{op} broke"):
        await getattr(driver, op)(step())
    await getattr(driver, op)(step())


async def test_permanent_fault(driver: SandboxDriver, world: SandboxWorld) -> None:
    world.inject_fault(FIP, "apply", message="quota exceeded", permanent=True)
    with pytest.raises(PermanentDriverError, match="quota exceeded") as caught:
        await driver.apply(step())
    assert not caught.value.retryable


async def test_hang_is_cut_by_the_callers_timeout(driver: SandboxDriver, world: SandboxWorld) -> None:
    world.inject_fault(FIP, "apply", hang=True)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await driver.apply(step())
    assert time.monotonic() - started < 1.0
    assert world.applies(CASES[FIP][1]) == 0
    # The hang consumed its one failure: the retry goes through.
    await driver.apply(step())
    assert world.applies(CASES[FIP][1]) == 1


async def test_fault_message_echoes_a_secret_for_the_redaction_tests(driver: SandboxDriver, world: SandboxWorld) -> None:
    world.inject_fault(FIP, "apply", message="401 for token {secret:api_token}; {secret:missing} stays")
    with pytest.raises(DriverError) as caught:
        await driver.apply(step(secrets={"api_token": "s3cr3t-value"}))
    assert str(caught.value) == "401 for token s3cr3t-value; {secret:missing} stays"


async def test_echo_secrets_puts_credentials_in_the_apply_log(driver: SandboxDriver, world: SandboxWorld) -> None:
    quiet = await driver.apply(step(secrets={"api_token": "s3cr3t-value"}))
    assert not any("s3cr3t-value" in line for line in quiet.log)

    data = world.read()
    data["echo_secrets"] = True
    world.path.write_text(json.dumps(data))
    loud = await driver.apply(step(secrets={"api_token": "s3cr3t-value"}))
    assert "authenticated with api_token=s3cr3t-value" in loud.log


async def test_concurrent_applies_in_one_world_lose_no_update(world: SandboxWorld) -> None:
    # Two drivers (as two lanes or two processes would be) write one file at once; the latency makes them overlap.
    first, second = SandboxDriver(world.path, latency=0.01), SandboxDriver(world.path, latency=0.01)
    ips = [f"203.0.113.{n}" for n in range(1, 21)]
    await asyncio.gather(
        *((first if n % 2 else second).apply(step(inputs={"ip": ip, "target": "edge02"})) for n, ip in enumerate(ips))
    )
    data = world.read()
    assert sorted(data["resources"]) == sorted(f"{FIP}:{ip}" for ip in ips)
    assert all(count == 1 for count in data["applies"].values())
    assert len(data["events"]) == len(ips)
    assert not list(world.path.parent.glob("*.tmp"))


async def test_compensate_restores_the_value_before_the_run(driver: SandboxDriver, world: SandboxWorld) -> None:
    key = CASES[FIP][1]
    await driver.apply(step(inputs={"ip": "203.0.113.10", "target": "edge01"}, run_id="earlier"))
    await driver.apply(step(attempt=1))
    await driver.apply(step(attempt=2))  # a retry: its `previous` is the run's own value

    result = await driver.compensate(step())
    assert result.log == ("restored floating IP 203.0.113.10 → edge01",)
    assert result.outputs == {"ip": "203.0.113.10", "assigned_to": "edge01"}
    assert world.resource(key) == {"ip": "203.0.113.10", "target": "edge01"}
    # Idempotent: a second compensation lands on the same value.
    await driver.compensate(step())
    assert world.resource(key) == {"ip": "203.0.113.10", "target": "edge01"}
    assert [e["op"] for e in world.read()["events"]][-2:] == ["compensate", "compensate"]
    assert world.applies(key) == 3  # compensation is not an apply


async def test_compensate_removes_a_resource_the_run_created(driver: SandboxDriver, world: SandboxWorld) -> None:
    await driver.apply(step())
    result = await driver.compensate(step())
    assert world.resource(CASES[FIP][1]) is None
    assert result.outputs == {}
    assert "did not exist before run run-1" in result.log[0]


async def test_compensate_without_an_apply_is_permanent(driver: SandboxDriver) -> None:
    await driver.apply(step(run_id="other-run"))
    with pytest.raises(PermanentDriverError, match="nothing to compensate: run run-1 step move-ip"):
        await driver.compensate(step())


async def test_corrupt_world_is_a_permanent_error(driver: SandboxDriver, world: SandboxWorld) -> None:
    world.path.write_text("{not json")
    with pytest.raises(PermanentDriverError, match="not valid JSON"):
        await driver.check(step())


# --------------------------------------------------------------------------------------------- preflight (issue #13)

SITE = "service/active-site@v1"
PREFLIGHT_INPUTS = {**{module: inputs for module, (inputs, _key, _outputs) in CASES.items()},
                    SITE: {"service": "web", "site": "ams", "config_dir": "/etc/web"}}  # fmt: skip


def preflight_step(module: str, inputs: dict[str, Any] | None = None) -> StepContext:
    """As the daemon hands it: run id "preflight", fencing token 0, the inputs as profiled."""
    return StepContext("preflight", "drill", "s", module, PREFLIGHT_INPUTS[module] if inputs is None else inputs, {}, 0)


def untouched(world: SandboxWorld) -> tuple[Any, Any, Any]:
    data = world.read()
    return data["resources"], data["applies"], data["events"]


async def test_preflight_is_ready_for_every_module_and_writes_nothing(driver: SandboxDriver, world: SandboxWorld) -> None:
    assert set(PREFLIGHT_INPUTS) == set(MODULES)  # every module the driver runs
    checked: Preflight = driver  # checked by mypy; at run time by the caller's isinstance
    assert isinstance(checked, Preflight)
    await driver.apply(step())  # a world that holds something
    before, raw = untouched(world), world.path.read_bytes()
    for module in sorted(MODULES):
        began = time.perf_counter()
        readiness = await driver.preflight(preflight_step(module))
        print(f"sandbox preflight {module}: {1000 * (time.perf_counter() - began):.2f} ms")
        assert readiness.ready, readiness.reason
        key = resource_key(module, validate_inputs(module, PREFLIGHT_INPUTS[module]))
        assert readiness.observed["resource"] == key
        assert "can be applied to world world.json" in readiness.reason
    assert readiness.observed["current"] is None  # active-site, sorted last: not in the world
    fip = await driver.preflight(preflight_step(FIP))
    assert fip.observed["current"] == {"ip": "203.0.113.10", "target": "edge02"}  # what is there now
    assert untouched(world) == before and world.path.read_bytes() == raw


async def test_preflight_fault_plants_a_not_ready_step(driver: SandboxDriver, world: SandboxWorld) -> None:
    world.inject_fault(FIP, "preflight", fail_times=2, message="standby project over its IP quota")
    before = untouched(world)
    for _ in range(2):
        with pytest.raises(DriverError, match="standby project over its IP quota") as caught:
            await driver.preflight(preflight_step(FIP))
        assert caught.value.retryable  # the caller reports str(exc) as the reason
    assert (await driver.check(step())).satisfied is False  # other operations are not affected
    assert (await driver.preflight(preflight_step(FIP))).ready  # spent: ready again
    assert (await driver.preflight(preflight_step("dns/record@v1"))).ready  # a fault is per module
    world.inject_fault(FIP, "preflight", message="token revoked", permanent=True)
    with pytest.raises(PermanentDriverError, match="token revoked"):
        await driver.preflight(preflight_step(FIP))
    assert untouched(world) == before


async def test_preflight_hang_is_cut_by_the_callers_timeout(driver: SandboxDriver, world: SandboxWorld) -> None:
    world.inject_fault("dns/record@v1", "preflight", hang=True)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await driver.preflight(preflight_step("dns/record@v1"))
    assert time.monotonic() - started < 1.0
    assert untouched(world) == ({}, {}, [])


async def test_preflight_checks_literal_inputs_leaves_references_to_the_run(driver: SandboxDriver, world: SandboxWorld) -> None:
    with pytest.raises(PermanentDriverError, match="content"):
        await driver.preflight(preflight_step("dns/record@v1", {"zone": "example.com", "name": "app", "content": "not-an-ip"}))
    with pytest.raises(PermanentDriverError, match="unknown module"):
        await driver.preflight(StepContext("preflight", "drill", "s", "x/y@v1", {"a": "${steps.fip.ip}"}, {}, 0))
    # ${run.*} is known (the preflight's own); an earlier step's output is not, so those inputs wait for the run.
    named = await driver.preflight(preflight_step("ipam/address@v1", {"address": "203.0.113.9", "status": "active",
                                                                       "description": "run ${run.id}"}))  # fmt: skip
    assert named.ready and named.observed["resource"] == "ipam/address@v1:203.0.113.9"
    later = {"zone": "example.com", "name": "app", "content": "${steps.capacity.ip}"}
    deferred = await driver.preflight(preflight_step("dns/record@v1", later))
    assert deferred.ready and deferred.observed["resource"] is None
    assert "inputs not checked: ${steps.capacity.ip}: step 'capacity' has published no output 'ip'" in deferred.reason
    world.path.write_text("{not json")
    with pytest.raises(PermanentDriverError, match="not valid JSON"):
        await driver.preflight(preflight_step(FIP))
