"""The gcp driver's fencing stamp: an instance label written by ``setLabels`` with the label fingerprint of the read,
so Google (here the fake, which checks fingerprints as the API reference says) refuses a stale writer's stamp.

Everything goes through google-cloud-compute against the fake (tests/fakes/gcp_compute.py); a stale writer's
request is delayed in flight by the fake's ``hold_next_request``, as a partition would delay a deposed leader's.
"""

from __future__ import annotations

import asyncio

import pytest

from hybridops_daemon.drivers.base import Fenced, StepContext, Unavailable
from hybridops_daemon.drivers.gcp import FENCING_LABEL, GcpDriver
from tests.fakes.gcp_compute import SET_LABELS, START, GcpComputeFake
from tests.integration.test_gcp_driver import COMPUTE, VM, make_driver
from tests.testbed.wait import eventually


def step(token: int, state: str = "running", run_id: str = "run-1") -> StepContext:
    return StepContext(run_id, "drill", "capacity", COMPUTE, {"name": VM, "state": state}, {}, fencing_token=token)


@pytest.fixture
def driver(gcp_fake: GcpComputeFake) -> GcpDriver:
    return make_driver(gcp_fake.endpoint)


async def test_apply_stamps_the_token_as_a_label_before_acting_and_keeps_other_labels(
    gcp_fake: GcpComputeFake, driver: GcpDriver
) -> None:
    gcp_fake.set_labels(VM, {"team": "dr"})

    result = await driver.apply(step(7))

    assert gcp_fake.labels(VM) == {"team": "dr", FENCING_LABEL: "7"}
    assert gcp_fake.status(VM) == "RUNNING"
    assert "stamped fencing token 7 (label hyops-fencing-token, was none)" in result.log[0]
    assert (await driver.check(step(7))).observed["fencing_token"] == 7
    # Already there: nothing written, not even the stamp (a later run's token stays off the instance).
    calls = gcp_fake.calls("POST", SET_LABELS)
    await driver.apply(step(9))
    assert gcp_fake.calls("POST", SET_LABELS) == calls and gcp_fake.labels(VM)[FENCING_LABEL] == "7"


async def test_a_newer_stamp_fences_check_and_apply(gcp_fake: GcpComputeFake, driver: GcpDriver) -> None:
    await driver.apply(step(42, run_id="run-new"))
    gcp_fake.set_status(VM, "TERMINATED")  # moved since: an old leader would move it again

    with pytest.raises(Fenced, match="gcp instance cloud-standby was changed under fencing token 42, newer than this run's 40"):
        await driver.check(step(40))
    with pytest.raises(Fenced):
        await driver.apply(step(40))
    assert gcp_fake.status(VM) == "TERMINATED" and gcp_fake.calls("POST", START) == 1


async def test_a_stale_writers_set_labels_is_refused_by_its_fingerprint(gcp_fake: GcpComputeFake) -> None:
    stale, newer = make_driver(gcp_fake.endpoint), make_driver(gcp_fake.endpoint)
    gcp_fake.hold_next_request("POST", SET_LABELS)
    late = asyncio.ensure_future(stale.apply(step(5, run_id="run-5")))  # read: unstamped, fingerprint F
    await eventually("the stale setLabels held in flight", lambda: gcp_fake.held)

    await newer.apply(step(6, run_id="run-6"))  # meanwhile the newer leader stamps (F → F') and starts it
    gcp_fake.release_held()
    with pytest.raises(Fenced) as refused:
        await late

    assert refused.value.retryable is False and refused.value.code == 412
    assert str(refused.value) == (
        "fenced: gcp setLabels on instance cloud-standby refused (412 conditionNotMet): it was stamped with fencing "
        "token 6 since this attempt read it, newer than this run's 5; not retried"
    )
    assert gcp_fake.labels(VM) == {FENCING_LABEL: "6"}
    assert gcp_fake.calls("POST", START) == 1  # the newer leader's start only: the stale one never acted


async def test_someone_elses_label_change_between_read_and_stamp_is_retryable(
    gcp_fake: GcpComputeFake, driver: GcpDriver
) -> None:
    gcp_fake.hold_next_request("POST", SET_LABELS)
    late = asyncio.ensure_future(driver.apply(step(5)))
    await eventually("the setLabels held in flight", lambda: gcp_fake.held)
    gcp_fake.set_labels(VM, {"owner": "ops"})  # not a stamp: no newer leadership, but the fingerprint moved on
    gcp_fake.release_held()

    with pytest.raises(Unavailable, match="labels changed since this attempt read them"):
        await late
    assert gcp_fake.calls("POST", START) == 0
    await driver.apply(step(5))  # the runner's retry reads again and goes through
    assert gcp_fake.labels(VM) == {"owner": "ops", FENCING_LABEL: "5"} and gcp_fake.status(VM) == "RUNNING"
