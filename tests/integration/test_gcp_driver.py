"""GcpDriver against the Compute Engine fake (tests/fakes/gcp_compute.py), through the real google-cloud-compute SDK.

Nothing of ours and nothing of the SDK is mocked: the driver builds real ``InstancesClient`` /
``ZoneOperationsClient`` objects with the REST transport pointed at the fake, which speaks the v1 REST API.
Effects, call counts and operation histories are read back from the fake; tampering and faults are armed on it.
One test runs the driver under the real ChainRunner (journal, lease) to show a step timeout never starts twice.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hybridops_daemon.chain import preflight
from hybridops_daemon.chain.approvals import ApprovalBook
from hybridops_daemon.chain.runner import ChainRunner, RunSpec
from hybridops_daemon.config.base import SecretRef
from hybridops_daemon.config.profile import Step
from hybridops_daemon.drivers.base import (
    CredentialsUnavailable,
    DriverError,
    NotFound,
    PermanentDriverError,
    Preflight,
    RateLimited,
    Readiness,
    Refused,
    StepContext,
    Unavailable,
)
from hybridops_daemon.drivers.declarations.gcp import GcpDriverConfig
from hybridops_daemon.drivers.gcp import REQUEST_TIMEOUT, GcpDriver
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.lease.local import LocalLease
from tests.fakes.gcp_compute import INSTANCE, OPERATION_WAIT, START, STOP, TEST_PERMISSIONS, GcpComputeFake
from tests.testbed.process import Process, free_port, wait_until

PROJECT = "dr-project"
ZONE = "europe-west3-a"
COMPUTE = "compute/capacity@v1"
VM = "cloud-standby"
SA_EMAIL = "hyops-dr@dr-project.iam.gserviceaccount.com"
REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------- helpers


def make_driver(
    endpoint: str, *, operation_timeout: float = 15.0, request_timeout: float = 5.0, credentials: SecretRef | None = None
) -> GcpDriver:
    config = GcpDriverConfig(
        project=PROJECT, zone=ZONE, endpoint=endpoint, credentials=credentials, operation_timeout=operation_timeout
    )
    return GcpDriver(config, request_timeout=request_timeout, poll_interval=0.05)


def step(state: str = "running", name: str = VM, module: str = COMPUTE, **inputs: Any) -> StepContext:
    return StepContext(
        run_id="run-1",
        lane="drill",
        step_id="capacity",
        module=module,
        inputs={"name": name, "state": state, **inputs},
        secrets={},
        fencing_token=7,
    )


async def eventually(what: str, condition: Callable[[], Any], within: float = 15.0) -> Any:
    """Poll (never a fixed sleep: the machine is shared) until ``condition()`` is truthy."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


@pytest.fixture
def driver(gcp_fake: GcpComputeFake) -> GcpDriver:
    return make_driver(gcp_fake.endpoint)


# --------------------------------------------------------------------------------------------- apply / check / verify


async def test_start_goes_through_the_operation_lifecycle(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.set_operation_delays(pending=0.3, running=0.5)
    before = await driver.check(step("running"))
    assert not before.satisfied and before.observed["status"] == "TERMINATED" and before.outputs == {}

    applying = asyncio.create_task(driver.apply(step("running")))
    await eventually("the instance to show STAGING", lambda: gcp_fake.status(VM) == "STAGING")
    during = await driver.check(step("running"))  # a transitional status is not "running" yet
    assert not during.satisfied and during.observed["status"] == "STAGING"
    result = await applying

    assert result.outputs["status"] == "RUNNING" and result.outputs["state"] == "running" and result.outputs["name"] == VM
    assert result.outputs["self_link"].endswith(f"/projects/{PROJECT}/zones/{ZONE}/instances/{VM}")
    assert result.outputs["id"].isdigit()
    assert "TERMINATED → RUNNING" in result.log[0]
    [operation] = gcp_fake.operations("start", "stop")
    assert operation["operationType"] == "start" and operation["history"] == ["PENDING", "RUNNING", "DONE"]
    assert operation["name"] in result.log[0]
    assert set(result.outputs) == set((await driver.check(step("running"))).outputs)  # one shape, applied or skipped
    assert gcp_fake.calls("POST", START) == 1 and gcp_fake.calls("POST", STOP) == 0
    assert gcp_fake.calls("POST", OPERATION_WAIT) >= 1  # waited through zoneOperations.wait
    assert gcp_fake.status(VM) == "RUNNING" and gcp_fake.status("drill-standby") == "TERMINATED"
    probe = await driver.verify(step("running"))
    assert probe.ok and probe.observed["status"] == "RUNNING"
    json.dumps(dict(result.outputs))  # outputs are JSON-able for later steps


async def test_reapply_is_a_noop(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    await driver.apply(step("running"))
    check = await driver.check(step("running"))
    assert check.satisfied and check.outputs["status"] == "RUNNING" and check.outputs["name"] == VM

    again = await driver.apply(step("running"))  # the runner would not call it; if something does, it changes nothing

    assert "already RUNNING" in again.log[0] and again.outputs["status"] == "RUNNING"
    assert gcp_fake.calls("POST", START) == 1 and len(gcp_fake.operations("start", "stop")) == 1


async def test_stop_terminates_the_instance(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.set_status(VM, "RUNNING")
    assert not (await driver.check(step("stopped"))).satisfied

    applying = asyncio.create_task(driver.apply(step("stopped")))
    await eventually("the instance to show STOPPING", lambda: gcp_fake.status(VM) != "RUNNING")
    assert gcp_fake.status(VM) in ("STOPPING", "TERMINATED")
    result = await applying

    assert result.outputs["status"] == "TERMINATED" and result.outputs["state"] == "stopped"
    assert gcp_fake.calls("POST", STOP) == 1 and gcp_fake.calls("POST", START) == 0
    [operation] = gcp_fake.operations("start", "stop")
    assert operation["operationType"] == "stop" and operation["history"] == ["PENDING", "RUNNING", "DONE"]
    assert (await driver.verify(step("stopped"))).ok
    assert (await driver.check(step("stopped"))).satisfied
    # A late stop (a deposed leader's request landing after its successor's) is an operation that moves nothing:
    # the fake's effect count, which the edge-pair tests use, stays at one.
    url = gcp_fake.endpoint + STOP.format(project=PROJECT, zone=ZONE, instance=VM)
    await asyncio.to_thread(_http, url, {})
    assert gcp_fake.calls("POST", STOP) == 2 and len(gcp_fake.operations("start", "stop")) == 2
    assert gcp_fake.changes("stop") == 1 and gcp_fake.changes("start") == 0


async def test_verify_catches_tampering_behind_the_drivers_back(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.set_status(VM, "RUNNING")
    await driver.apply(step("stopped"))
    assert (await driver.verify(step("stopped"))).ok

    gcp_fake.set_status(VM, "RUNNING")  # someone starts it in the console

    probe = await driver.verify(step("stopped"))
    assert not probe.ok and probe.observed["status"] == "RUNNING"
    assert "RUNNING" in probe.detail and "TERMINATED" in probe.detail
    assert not (await driver.check(step("stopped"))).satisfied


async def test_compensate_undoes_a_start(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    await driver.apply(step("running"))

    undone = await driver.compensate(step("running"))

    assert gcp_fake.status(VM) == "TERMINATED" and undone.outputs["status"] == "TERMINATED"
    assert undone.log[0].startswith("compensation: ")
    assert gcp_fake.calls("POST", STOP) == 1


async def test_transitional_instance_is_not_satisfied_and_apply_waits_it_out(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.set_status(VM, "STAGING")  # a start someone else issued is under way
    check = await driver.check(step("running"))
    assert not check.satisfied and check.observed["status"] == "STAGING"

    applying = asyncio.create_task(driver.apply(step("running")))
    await eventually("apply to poll the instance", lambda: gcp_fake.calls("GET", INSTANCE) >= 3)
    assert not applying.done()
    gcp_fake.set_status(VM, "RUNNING")
    result = await applying

    assert "already RUNNING" in result.log[0]
    assert gcp_fake.calls("POST", START) == 0  # never piled a second start onto the one under way


async def test_instance_stuck_in_transition_times_out_retryably(gcp_fake: GcpComputeFake) -> None:
    gcp_fake.set_status(VM, "STOPPING")
    driver = make_driver(gcp_fake.endpoint, operation_timeout=0.6)

    with pytest.raises(Unavailable, match="still STOPPING") as caught:
        await driver.apply(step("running"))

    assert caught.value.retryable
    assert gcp_fake.calls("POST", START) == 0


# --------------------------------------------------------------------------------------------- typed errors


async def test_failed_operation_raises_with_googles_error_codes(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.fail_next_operation(code="ZONE_RESOURCE_POOL_EXHAUSTED", http_status=503)

    with pytest.raises(Unavailable, match="ZONE_RESOURCE_POOL_EXHAUSTED") as caught:
        await driver.apply(step("running"))

    assert caught.value.details == {"codes": ("ZONE_RESOURCE_POOL_EXHAUSTED",), "http_status": 503}
    assert caught.value.retryable  # a zone out of capacity now may have it later: the runner retries after a re-check
    assert gcp_fake.status(VM) == "TERMINATED"
    assert [op["history"] for op in gcp_fake.operations("start", "stop")] == [["PENDING", "RUNNING", "DONE"]]
    assert not (await driver.check(step("running"))).satisfied


async def test_unknown_instance_is_a_permanent_not_found(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    for call in (driver.check, driver.apply, driver.verify):
        with pytest.raises(NotFound, match="no-such-vm") as caught:
            await call(step("running", name="no-such-vm"))
        assert not caught.value.retryable
    assert gcp_fake.calls("POST", START) == 0


async def test_deleted_instance_is_not_found_by_verify(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.delete_instance(VM)
    with pytest.raises(NotFound):
        await driver.verify(step("running"))


@pytest.mark.parametrize(("status", "error"), [(429, RateLimited), (503, Unavailable)])
async def test_throttling_and_outages_are_retryable(
    gcp_fake: GcpComputeFake, driver: GcpDriver, status: int, error: type[DriverError]
) -> None:
    gcp_fake.fail_next_requests(1, status)

    with pytest.raises(error, match=str(status)) as caught:
        await driver.check(step("running"))

    assert caught.value.retryable
    assert gcp_fake.calls("GET", INSTANCE) == 1  # the SDK's own retry is off: retrying is the runner's call
    assert not (await driver.check(step("running"))).satisfied  # the next attempt goes through


async def test_rate_limited_start_is_retryable_and_starts_nothing(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.fail_next_requests(1, 429, method="POST", template=START)

    with pytest.raises(RateLimited) as caught:
        await driver.apply(step("running"))

    assert caught.value.retryable
    assert gcp_fake.calls("POST", START) == 1 and gcp_fake.operations("start", "stop") == []
    assert gcp_fake.status(VM) == "TERMINATED"


async def test_wait_that_outlasts_the_request_timeout_is_asked_again(gcp_fake: GcpComputeFake) -> None:
    # Google holds zoneOperations.wait up to ~2 min, longer than a request may take: a timed-out wait is not a failure.
    gcp_fake.hang_next_request(1, "POST", OPERATION_WAIT)
    driver = make_driver(gcp_fake.endpoint, request_timeout=1.0)

    result = await driver.apply(step("running"))

    assert result.outputs["status"] == "RUNNING" and gcp_fake.calls("POST", OPERATION_WAIT) >= 2
    assert gcp_fake.calls("POST", START) == 1


async def test_unauthenticated_anonymous_caller_is_refused(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.require_auth(tokens=["only-this-token"])

    with pytest.raises(CredentialsUnavailable) as caught:
        await driver.check(step("running"))

    assert not caught.value.retryable


async def test_hanging_request_is_cut_by_the_callers_timeout_and_its_thread_gives_up(gcp_fake: GcpComputeFake) -> None:
    driver = make_driver(gcp_fake.endpoint, request_timeout=1.5)
    gcp_fake.hang_next_request()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):  # the chain runner's step timeout
            await driver.check(step("running"))

    # The worker thread keeps its request until the client-side timeout closes it: the fake sees the client go.
    await eventually("the abandoned request's connection to close", lambda: gcp_fake.abandoned == 1, within=10)
    assert not (await driver.check(step("running"))).satisfied


async def test_hanging_request_without_a_caller_timeout_ends_in_request_timeout(gcp_fake: GcpComputeFake) -> None:
    driver = make_driver(gcp_fake.endpoint, request_timeout=1.0)
    gcp_fake.hang_next_request()

    with pytest.raises(Unavailable) as caught:
        await driver.verify(step("running"))

    assert caught.value.retryable and caught.value.code == REQUEST_TIMEOUT


async def test_operation_slower_than_operation_timeout_is_a_typed_timeout(gcp_fake: GcpComputeFake) -> None:
    gcp_fake.set_operation_delays(pending=0.2, running=2.5)
    driver = make_driver(gcp_fake.endpoint, operation_timeout=0.8)

    with pytest.raises(Unavailable, match="operation_timeout") as caught:
        await driver.apply(step("running"))

    assert caught.value.retryable
    [operation] = gcp_fake.operations("start", "stop")
    assert operation["name"] in str(caught.value) and operation["status"] != "DONE"
    # The operation carries on at "Google": check() sees it land, which is how the runner resumes without a second start.
    await eventually("the slow operation to land", lambda: gcp_fake.status(VM) == "RUNNING")
    assert (await driver.check(step("running"))).satisfied
    assert gcp_fake.calls("POST", START) == 1


async def test_suspended_instance_is_refused_for_running(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.set_status(VM, "SUSPENDED")
    with pytest.raises(Refused, match="SUSPENDED"):
        await driver.apply(step("running"))
    assert gcp_fake.calls("POST", START) == 0


async def test_unknown_zone_is_rejected_permanently(gcp_fake: GcpComputeFake) -> None:
    config = GcpDriverConfig(project=PROJECT, zone="mars-north1-a", endpoint=gcp_fake.endpoint)
    with pytest.raises(Refused, match="zone") as caught:
        await GcpDriver(config, request_timeout=5.0).check(step("running"))
    assert not caught.value.retryable and caught.value.code == 400


async def test_bad_inputs_and_foreign_modules_are_permanent(driver: GcpDriver) -> None:
    with pytest.raises(PermanentDriverError, match="state"):
        await driver.check(step("paused"))
    with pytest.raises(PermanentDriverError, match="compute/capacity@v1"):
        await driver.check(step("running", module="dns/record@v1"))


# --------------------------------------------------------------------------------------------- under the chain runner


async def test_runner_step_timeout_mid_operation_never_starts_twice(gcp_fake: GcpComputeFake, tmp_path: Path) -> None:
    """The runner's apply timeout fires while the start operation runs; its re-check and retry must wait for that
    operation, not issue a second start. A second run then finds the capacity there and skips the step."""
    gcp_fake.set_operation_delays(pending=0.2, running=2.0)
    driver = make_driver(gcp_fake.endpoint)
    journal = Journal.open(tmp_path / "journal.db", Redactor())
    lease = LocalLease(tmp_path / "lease.lock").acquire()
    try:
        runner = ChainRunner(journal, {"drill": {"gcp": driver}}, lease, ApprovalBook(), Redactor(), max_backoff=0.1)
        capacity = Step.model_validate(
            {
                "id": "capacity",
                "module": COMPUTE,
                "driver": "gcp",
                "inputs": {"name": VM, "state": "running"},
                "timeout": "1s",
                "retries": 3,
                "backoff": "50ms",
            }
        )

        def run(run_id: str) -> RunSpec:
            return RunSpec(
                run_id=run_id,
                lane="drill",
                chain="cutover",
                kind="drill",
                trigger="test",
                actor="pytest",
                reason="gcp driver test",
                profile={"name": "drill", "version": 1},
                steps=(capacity,),
                approval_timeout=5.0,
                hourly_cost_usd=0.0,
            )

        first = await runner.start(run("run-a"))
        assert first.ok, first.detail
        applies = [r.body for r in journal.run_records("run-a") if r.kind == "step.apply"]
        assert any("timed out" in str(body.get("error", "")) for body in applies)  # the timeout really fired
        assert gcp_fake.calls("POST", START) == 1 and gcp_fake.status(VM) == "RUNNING"

        second = await runner.start(run("run-b"))
        assert second.ok, second.detail
        done = [r.body for r in journal.run_records("run-b") if r.kind == "step.done"]
        assert done[0]["outcome"] == "skipped (already satisfied)"
        assert gcp_fake.calls("POST", START) == 1
    finally:
        lease.release()
        journal.close()


# --------------------------------------------------------------------------------------------- credentials by reference


def service_account_key(tmp_path: Path, endpoint: str) -> tuple[Path, str, str]:
    """A fresh RSA key as a service-account JSON file: (path, public key PEM, a line of the private key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    path = tmp_path / "sa.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": PROJECT,
                "private_key_id": "k1",
                "private_key": private,
                "client_email": SA_EMAIL,
                "client_id": "1",
                "token_uri": f"{endpoint}/token",
            }
        )
    )
    path.chmod(0o600)
    return path, public, private.splitlines()[5]


async def test_service_account_key_by_file_reference(gcp_fake: GcpComputeFake, tmp_path: Path) -> None:
    key_file, public_key, private_line = service_account_key(tmp_path, gcp_fake.endpoint)
    gcp_fake.require_auth(service_accounts={SA_EMAIL: public_key})
    driver = make_driver(gcp_fake.endpoint, credentials=SecretRef(file=key_file))

    result = await driver.apply(step("running"))  # the SDK signs its own JWT with the key; the fake checks it

    assert gcp_fake.status(VM) == "RUNNING"
    assert private_line not in repr(result)
    gcp_fake.require_auth(service_accounts={SA_EMAIL: public_key}, denied=[SA_EMAIL])
    with pytest.raises(Refused, match="403") as caught:
        await driver.verify(step("running"))
    assert private_line not in str(caught.value)


async def test_service_account_path_in_an_env_var(
    gcp_fake: GcpComputeFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file, public_key, _ = service_account_key(tmp_path, gcp_fake.endpoint)
    gcp_fake.require_auth(service_accounts={SA_EMAIL: public_key})
    monkeypatch.setenv("HYOPS_TEST_GCP_KEY", str(key_file))
    driver = make_driver(gcp_fake.endpoint, credentials=SecretRef(env="HYOPS_TEST_GCP_KEY"))

    assert not (await driver.check(step("running"))).satisfied


async def test_unusable_credentials_are_permanent_and_never_quoted(gcp_fake: GcpComputeFake, tmp_path: Path) -> None:
    missing = make_driver(gcp_fake.endpoint, credentials=SecretRef(file=tmp_path / "absent.json"))
    with pytest.raises(CredentialsUnavailable, match=r"absent\.json"):
        await missing.check(step("running"))

    garbled = tmp_path / "garbled.json"
    garbled.write_text('{"type": "service_account", "private_key": "s3cr3t-not-a-key", "client_email": "x@y"}')
    driver = make_driver(gcp_fake.endpoint, credentials=SecretRef(file=garbled))
    with pytest.raises(CredentialsUnavailable) as caught:
        await driver.check(step("running"))
    assert not caught.value.retryable and "s3cr3t" not in str(caught.value)
    assert gcp_fake.calls("GET", INSTANCE) == 0


# --------------------------------------------------------------------------------------------- the fake standalone


def _http(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


async def test_standalone_fake_serves_the_sdk_and_its_http_knobs(tmp_path: Path) -> None:
    port = free_port()
    process = Process(
        "gcp-fake",
        [sys.executable, "-m", "tests.fakes.gcp_compute", "--port", str(port), "--instance", f"{VM}=RUNNING"],
        tmp_path / "fake.log",
        cwd=REPO,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_until, "the standalone fake", lambda: _http(f"{endpoint}/_fake/state"), 20.0, 0.1, process)
        driver = make_driver(endpoint)
        assert (await driver.verify(step("running"))).ok

        _http(f"{endpoint}/_fake/state", {"instances": {VM: {"status": "TERMINATED"}}})
        assert not (await driver.verify(step("running"))).ok
        _http(f"{endpoint}/_fake/faults", {"fail_next_requests": {"count": 1, "status": 429}})
        with pytest.raises(RateLimited):
            await driver.check(step("running"))
        calls = {(c["method"], c["path"]): c["count"] for c in _http(f"{endpoint}/_fake/calls")["calls"]}
        assert calls[("GET", INSTANCE)] == 3
    finally:
        process.stop()


# --------------------------------------------------------------------------------------------- preflight (readiness)


def preflight_step(state: str = "running", name: str = VM) -> StepContext:
    """As the daemon builds it: run "preflight", fencing token 0, the profiled (literal) inputs."""
    return StepContext("preflight", "drill", "capacity", COMPUTE, {"name": name, "state": state}, {}, fencing_token=0)


async def readiness(fake: GcpComputeFake, driver: GcpDriver, state: str = "running", name: str = VM) -> Readiness:
    """The driver's preflight as its caller reads it (a DriverError is not ready, its text the reason), checked
    to have started and stopped nothing; the time it took is printed (``pytest -s``)."""
    before = fake.instances()
    requests = sum(fake.call_counts().values())
    began = time.monotonic()
    answer = await preflight.read(driver, preflight_step(state, name))  # as the daemon reads it
    took = time.monotonic() - began
    print(f"gcp preflight ({answer.reason}): {took:.3f}s, {sum(fake.call_counts().values()) - requests} requests")
    assert fake.mutating_calls() == {}
    assert fake.operations() == [] and fake.instances() == before
    return answer


async def test_preflight_is_ready_to_start_a_stopped_standby_and_only_reads(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    assert isinstance(driver, Preflight)

    answer = await readiness(gcp_fake, driver)

    assert answer.ready is True and answer.reason == f"gcp: instance {VM} is TERMINATED: ready to start"
    assert answer.observed["status"] == "TERMINATED" and answer.observed["id"] == gcp_fake.instances()[VM]["id"]
    assert answer.observed["self_link"].endswith(f"/projects/{PROJECT}/zones/{ZONE}/instances/{VM}")
    assert gcp_fake.call_counts() == {("GET", INSTANCE): 1, ("POST", TEST_PERMISSIONS): 1}


@pytest.mark.parametrize(
    ("status", "state", "reason"),
    [
        ("RUNNING", "running", "is already RUNNING: nothing to start"),
        ("TERMINATED", "stopped", "is already TERMINATED: nothing to stop"),
        ("RUNNING", "stopped", "is RUNNING: ready to stop"),
        ("SUSPENDED", "stopped", "is SUSPENDED: ready to stop"),
    ],
)
async def test_preflight_is_ready_in_every_status_the_step_can_act_on(
    gcp_fake: GcpComputeFake, driver: GcpDriver, status: str, state: str, reason: str
) -> None:
    gcp_fake.set_status(VM, status)
    answer = await readiness(gcp_fake, driver, state)
    assert answer.ready is True and answer.reason == f"gcp: instance {VM} {reason}"
    assert answer.observed["status"] == status


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("STOPPING", "running"),
        ("STAGING", "stopped"),
        ("PROVISIONING", "running"),
        ("SUSPENDING", "stopped"),
        ("REPAIRING", "running"),
    ],
)
async def test_preflight_of_an_instance_between_states_is_not_ready(
    gcp_fake: GcpComputeFake, driver: GcpDriver, status: str, state: str
) -> None:
    gcp_fake.set_status(VM, status)
    answer = await readiness(gcp_fake, driver, state)
    verb = "start" if state == "running" else "stop"
    assert answer.ready is False
    assert answer.reason == f"gcp: instance {VM} is {status}, between states: not ready to {verb} until it settles"
    assert answer.observed["status"] == status


async def test_preflight_of_a_suspended_instance_to_start_is_not_ready(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.set_status(VM, "SUSPENDED")
    answer = await readiness(gcp_fake, driver, "running")
    assert answer.ready is False and answer.reason.startswith(f"gcp: instance {VM} is SUSPENDED: resume it")


async def test_preflight_of_a_deleted_instance_is_not_ready(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.delete_instance(VM)
    answer = await readiness(gcp_fake, driver)
    assert answer.ready is False
    assert answer.reason.startswith(f"gcp instances.get {VM}: HTTP 404 notFound: GET http")  # the SDK quotes the request
    assert answer.reason.endswith(f"The resource 'projects/{PROJECT}/zones/{ZONE}/instances/{VM}' was not found")


async def test_preflight_with_denied_credentials_is_not_ready_403(gcp_fake: GcpComputeFake, tmp_path: Path) -> None:
    key_file, public_key, private_line = service_account_key(tmp_path, gcp_fake.endpoint)
    gcp_fake.require_auth(service_accounts={SA_EMAIL: public_key}, denied=[SA_EMAIL])
    driver = make_driver(gcp_fake.endpoint, credentials=SecretRef(file=key_file))

    answer = await readiness(gcp_fake, driver)

    assert answer.ready is False
    assert answer.reason.startswith(f"gcp instances.get {VM}: HTTP 403 forbidden: GET http")
    assert answer.reason.endswith(f"Required 'compute.instances.get' permission for 'projects/{PROJECT}'")
    assert private_line not in answer.reason


async def test_preflight_with_refused_credentials_is_not_ready_401(gcp_fake: GcpComputeFake, tmp_path: Path) -> None:
    key_file, _, private_line = service_account_key(tmp_path, gcp_fake.endpoint)
    gcp_fake.require_auth(service_accounts={})  # the key is not (or no longer) one the API knows
    driver = make_driver(gcp_fake.endpoint, credentials=SecretRef(file=key_file))

    answer = await readiness(gcp_fake, driver)

    assert answer.ready is False
    assert answer.reason.startswith(f"gcp instances.get {VM}: HTTP 401 authError: GET http")
    assert answer.reason.endswith(": Request had invalid authentication credentials.")
    assert private_line not in answer.reason


async def test_preflight_of_credentials_that_may_not_start_is_not_ready(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.revoke_permissions("compute.instances.start")

    answer = await readiness(gcp_fake, driver)

    assert answer.ready is False
    assert answer.reason == f"gcp: instance {VM}: the credentials lack compute.instances.start: a start would be refused (403)"
    assert (await readiness(gcp_fake, driver, "stopped")).ready is True  # stopping needs (and has) another permission
    # What the preflight foresaw: the step itself is refused.
    with pytest.raises(Refused, match="403"):
        await driver.apply(step("running"))
    assert gcp_fake.status(VM) == "TERMINATED"
