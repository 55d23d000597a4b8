"""The gcp driver's ``compute/group-size@v1`` (drivers/gcp_group.py) against the Compute Engine fake's managed instance
groups (tests/fakes/gcp_groups.py), through the real google-cloud-compute SDK: InstanceGroupManagersClient,
ZoneOperationsClient and RegionsClient with the REST transport pointed at the fake. Nothing is mocked; effects, calls
and operations are read back from the fake, faults and quotas armed on it. Instances take real (short) time to come up
and to go, so the driver's waiting is exercised, not skipped.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from hybridops_daemon.chain import preflight
from hybridops_daemon.config.profile import Step
from hybridops_daemon.drivers.base import (
    NoCompensation,
    NotFound,
    PermanentDriverError,
    RateLimited,
    StepContext,
    Unavailable,
)
from hybridops_daemon.drivers.gcp import GcpDriver
from hybridops_daemon.drivers.gcp_group import NOT_SETTLED
from tests.fakes.gcp_compute import GcpComputeFake
from tests.fakes.gcp_model import GROUP, LIST_MANAGED, OPERATION_WAIT, REGION, RESIZE
from tests.integration.test_gcp_driver import make_driver
from tests.testbed.wait import eventually

MODULE = "compute/group-size@v1"
POOL = "burst-pool"


def step(size: int, group: str = POOL, **inputs: Any) -> StepContext:
    return StepContext("run-1", "burst", "capacity", MODULE, {"group": group, "size": size, **inputs}, {}, fencing_token=7)


def resizes(fake: GcpComputeFake) -> list[int | None]:
    return [op["size"] for op in fake.resizes()]


@pytest.fixture
def driver(gcp_fake: GcpComputeFake) -> GcpDriver:
    gcp_fake.add_group(POOL, 1)
    return make_driver(gcp_fake.endpoint)


# --------------------------------------------------------------------------------------------- apply / check / verify


async def test_scale_out_waits_for_instances_that_take_time_and_check_is_then_satisfied(
    gcp_fake: GcpComputeFake, driver: GcpDriver
) -> None:
    gcp_fake.set_operation_delays(pending=0.1, running=0.2)
    gcp_fake.set_member_delays(provisioning=0.4, staging=0.4, deleting=0.2)
    assert not (await driver.check(step(3))).satisfied

    started = time.monotonic()
    applying = asyncio.create_task(driver.apply(step(3)))
    # Meanwhile the fake shows what the driver must wait through: the new instances come up via PROVISIONING and STAGING.
    seen: set[str] = set()
    while not applying.done():
        seen |= {m["instanceStatus"] for m in gcp_fake.group(POOL)["members"]}
        await asyncio.sleep(0.02)
    result = await applying
    took = time.monotonic() - started

    assert {"PROVISIONING", "STAGING"} <= seen
    assert took >= 0.3 + 0.8 - 0.05  # the operation, then the instances: apply() returned only once they ran
    assert resizes(gcp_fake) == [3] and gcp_fake.resizes()[0]["history"] == ["PENDING", "RUNNING", "DONE"]
    assert gcp_fake.calls("POST", OPERATION_WAIT) >= 1  # the resize's operation waited out with zoneOperations.wait
    assert "resized 1 → 3" in result.log[0] and result.outputs["running"] == 3 and result.outputs["target_size"] == 3
    members = gcp_fake.group(POOL)["members"]
    assert [(m["instanceStatus"], m["currentAction"]) for m in members] == [("RUNNING", "NONE")] * 3

    check = await driver.check(step(3))
    assert check.satisfied and set(check.outputs) == set(result.outputs)  # one shape, applied or skipped
    again = await driver.apply(step(3))  # idempotent: no second resize
    assert "nothing to do" in again.log[0] and resizes(gcp_fake) == [3]
    probe = await driver.verify(step(3))
    assert probe.ok and probe.observed["running"] == 3 and probe.observed["target_size"] == 3
    assert f"instanceGroupManagers/{POOL}: targetSize 3, 3 of 3 instance(s) RUNNING" in probe.detail


async def test_scale_in_waits_until_the_removed_instances_are_gone(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.add_group(POOL, 4)
    gcp_fake.set_member_delays(provisioning=0.1, staging=0.1, deleting=0.6)

    applying = asyncio.create_task(driver.apply(step(1)))
    seen: set[tuple[str, str]] = set()
    while not applying.done():
        seen |= {(m["instanceStatus"], m["currentAction"]) for m in gcp_fake.group(POOL)["members"]}
        await asyncio.sleep(0.02)
    result = await applying

    assert ("STOPPING", "DELETING") in seen  # the driver waited through the deletions, not just the targetSize
    assert resizes(gcp_fake) == [1] and result.outputs["instances"] == 1 and result.outputs["running"] == 1
    assert len(gcp_fake.group(POOL)["members"]) == 1
    assert (await driver.check(step(1))).satisfied and (await driver.verify(step(1))).ok


async def test_scaling_to_zero_and_back(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    await driver.apply(step(0))
    assert gcp_fake.group(POOL)["members"] == [] and (await driver.verify(step(0))).ok
    await driver.apply(step(2))
    assert resizes(gcp_fake) == [0, 2] and (await driver.verify(step(2))).ok


async def test_a_resize_already_sent_is_not_sent_again_only_waited_for(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    """A run resumed after its resize landed (a timeout, a restart) finds targetSize set and only waits."""
    gcp_fake.set_member_delays(provisioning=0.3, staging=0.1, deleting=0.1)
    client = compute_v1.InstanceGroupManagersClient(
        transport="rest", client_options={"api_endpoint": gcp_fake.endpoint}, credentials=AnonymousCredentials()
    )
    client.resize_unary(project=gcp_fake.project, zone=gcp_fake.zone, instance_group_manager=POOL, size=2, timeout=5)
    await eventually("the resize to land", lambda: gcp_fake.group(POOL)["targetSize"] == 2)
    assert not (await driver.check(step(2))).satisfied  # targetSize 2, the second instance not running yet

    result = await driver.apply(step(2))

    assert "targetSize already 2: no resize sent" in result.log[0] and resizes(gcp_fake) == [2]
    assert result.outputs["running"] == 2


async def test_verify_is_an_independent_read_that_sees_a_change_behind_the_drivers_back(
    gcp_fake: GcpComputeFake, driver: GcpDriver
) -> None:
    await driver.apply(step(2))
    gcp_fake.add_group(POOL, 1)  # someone shrank it since

    probe = await driver.verify(step(2))

    assert not probe.ok and probe.observed == {"target_size": 1, "instances": 1, "running": 1, "states": {"RUNNING/NONE": 1}}
    assert "expected 2 RUNNING" in probe.detail
    assert gcp_fake.calls("GET", GROUP) >= 1 and gcp_fake.calls("POST", LIST_MANAGED) >= 1


# --------------------------------------------------------------------------------------------- failures


async def test_an_operation_error_is_a_clear_error_naming_googles_reason(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.fail_next_operation("QUOTA_EXCEEDED", "Quota 'INSTANCES' exceeded. Limit: 24.0 in region europe-west3.", 403)

    with pytest.raises(Unavailable) as caught:
        await driver.apply(step(3))

    message = str(caught.value)
    assert f"gcp resize of group {POOL} to 3: operation" in message and "failed: QUOTA_EXCEEDED: Quota 'INSTANCES'" in message
    assert caught.value.details["codes"] == ("QUOTA_EXCEEDED",) and caught.value.details["http_status"] == 403
    assert gcp_fake.group(POOL)["targetSize"] == 1  # a failed resize changed nothing: the retry resizes again
    await driver.apply(step(3))
    assert resizes(gcp_fake) == [3, 3] and (await driver.verify(step(3))).ok


async def test_instances_never_running_is_a_typed_timeout_within_the_deadline(gcp_fake: GcpComputeFake) -> None:
    gcp_fake.add_group(POOL, 1)
    gcp_fake.set_member_delays(provisioning=math.inf, staging=0.1, deleting=0.1)
    driver = make_driver(gcp_fake.endpoint, operation_timeout=1.0)

    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        await driver.apply(step(3))
    took = time.monotonic() - started

    assert caught.value.code == NOT_SETTLED and caught.value.retryable
    assert f"gcp: group {POOL} not at 3 running instance(s) after 1s (operation_timeout)" in str(caught.value)
    assert "targetSize 3, 1 of 3 instance(s) RUNNING (2 PROVISIONING/CREATING)" in str(caught.value)
    assert caught.value.details["states"] == {"PROVISIONING/CREATING": 2, "RUNNING/NONE": 1}
    assert 0.9 <= took < 2.5  # bounded by operation_timeout (and the last read in flight), not by the instances
    # The runner's retry re-checks and applies again: no second resize, the same clear timeout.
    with pytest.raises(Unavailable):
        await driver.apply(step(3))
    assert resizes(gcp_fake) == [3]


async def test_a_missing_group_is_not_found(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    with pytest.raises(NotFound, match=r"instanceGroupManagers\.get no-such-pool: HTTP 404"):
        await driver.check(step(2, group="no-such-pool"))
    with pytest.raises(NotFound):
        await driver.apply(step(2, group="no-such-pool"))
    assert gcp_fake.calls("POST", RESIZE) == 0


async def test_a_garbled_list_is_a_clear_error(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.garble_next_list()

    with pytest.raises(Unavailable, match="listManagedInstances burst-pool: the API answered with something that is not"):
        await driver.check(step(1))
    assert (await driver.check(step(1))).satisfied  # the next answer is sound again


async def test_endless_pages_are_cut_off_with_a_clear_error(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.endless_pages()

    with pytest.raises(Unavailable, match=f"group {POOL}: listManagedInstances still had more pages after 5: not read further"):
        await driver.check(step(1))
    assert gcp_fake.calls("POST", LIST_MANAGED) == 5


async def test_a_group_listing_more_instances_than_the_bound_is_a_clear_error(
    gcp_fake: GcpComputeFake, driver: GcpDriver
) -> None:
    gcp_fake.add_group(POOL, 2001)  # more than MAX_INSTANCES: the fake pages it 500 at a time

    with pytest.raises(Unavailable, match=f"gcp: group {POOL} lists more than 2000 instances: not read further"):
        await driver.check(step(3))
    assert gcp_fake.calls("POST", LIST_MANAGED) == 5


async def test_a_refused_or_failing_resize_request_keeps_googles_meaning(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    gcp_fake.fail_next_requests(1, 503, "POST", RESIZE)
    with pytest.raises(Unavailable, match=r"instanceGroupManagers\.resize burst-pool: HTTP 503"):
        await driver.apply(step(2))
    gcp_fake.fail_next_requests(1, 429, "POST", RESIZE)
    with pytest.raises(RateLimited):
        await driver.apply(step(2))
    assert gcp_fake.group(POOL)["targetSize"] == 1
    await driver.apply(step(2))  # the runner's retry
    assert resizes(gcp_fake) == [2]


async def test_inputs_are_validated_and_there_is_no_compensation(driver: GcpDriver) -> None:
    with pytest.raises(PermanentDriverError, match="size must not exceed max_size"):
        await driver.check(step(5, max_size=4))
    with pytest.raises(PermanentDriverError, match="size"):
        await driver.apply(step(-1))
    with pytest.raises(NoCompensation):
        await driver.compensate(step(2))


# --------------------------------------------------------------------------------------------- preflight (readiness)


def preflight_step(size: Any, group: str = POOL, **inputs: Any) -> StepContext:
    """As the daemon builds it: the profiled inputs with ``${run.*}`` rendered for a run called "preflight"."""
    profiled = Step(id="capacity", module=MODULE, driver="gcp", inputs={"group": group, "size": size, **inputs})
    return StepContext("preflight", "burst", "capacity", MODULE, preflight.preflight_inputs(profiled, "burst"), {}, 0)


async def test_preflight_checks_the_quota_for_max_size_when_the_run_gives_the_size(
    gcp_fake: GcpComputeFake, driver: GcpDriver
) -> None:
    gcp_fake.set_quota("INSTANCES", limit=10, usage=8)  # the group's 1 instance is among the 8

    ready = await preflight.read(driver, preflight_step("${run.size}", max_size=3))

    assert ready.ready, ready.reason
    assert "size 3 fits region europe-west3's INSTANCES quota (limit 10 − usage 8 + the group's own 1 = 3)" in ready.reason
    assert ready.metrics["quota_instances_room"] == 3
    assert ready.observed["quota"] == {"metric": "INSTANCES", "limit": 10, "usage": 8}
    assert gcp_fake.calls("GET", REGION) == 1 and gcp_fake.mutating_calls() == {}  # read-only


async def test_preflight_with_too_small_a_quota_is_not_ready_with_the_numbers(
    gcp_fake: GcpComputeFake, driver: GcpDriver
) -> None:
    gcp_fake.set_quota("INSTANCES", limit=10, usage=8)

    answer = await preflight.read(driver, preflight_step("${run.size}", max_size=4))

    assert not answer.ready
    assert answer.reason == (
        f"gcp: group {POOL} (targetSize 1, 1 of 1 instance(s) RUNNING): size 4 does not fit region europe-west3's "
        "INSTANCES quota: limit 10 − usage 8 + the group's own 1 = 3 < 4"
    )
    # A literal size is checked as it is (no max_size): 3 fits.
    assert (await preflight.read(driver, preflight_step(3))).ready


async def test_preflight_counts_the_quota_the_fake_holds(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    """Usage as the region reports it: the fake's two standalone instances and the group's one (limit 24)."""
    answer = await preflight.read(driver, preflight_step(22))
    assert answer.ready and "limit 24 − usage 3 + the group's own 1 = 22" in answer.reason
    assert not (await preflight.read(driver, preflight_step(23))).ready


async def test_preflight_of_a_missing_group_is_not_ready(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    answer = await preflight.read(driver, preflight_step("${run.size}", group="no-such-pool", max_size=2))

    assert not answer.ready
    assert "instanceGroupManagers.get no-such-pool: HTTP 404" in answer.reason and "was not found" in answer.reason
    assert gcp_fake.calls("GET", REGION) == 0


async def test_preflight_without_max_size_checks_the_group_and_says_the_quota_was_not(
    gcp_fake: GcpComputeFake, driver: GcpDriver
) -> None:
    answer = await preflight.read(driver, preflight_step("${run.size}"))

    assert answer.ready
    assert "quota not checked: the size comes from the run (${run.size}) and no max_size is set" in answer.reason
    assert gcp_fake.calls("GET", REGION) == 0
