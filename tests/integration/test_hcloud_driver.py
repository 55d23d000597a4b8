"""HcloudDriver against the Hetzner Cloud API fake (tests/fakes/hcloud_api.py), spoken to only through the
official ``hcloud`` SDK: the driver is never patched, the SDK never mocked. Faults and tampering are armed in
the fake; effects and call counts are read back from it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import hcloud
import pytest

from hybridops_daemon.chain import preflight
from hybridops_daemon.chain.approvals import ApprovalBook
from hybridops_daemon.chain.runner import ChainRunner, RunSpec
from hybridops_daemon.config.profile import Step
from hybridops_daemon.drivers.base import (
    CredentialsUnavailable,
    DriverError,
    Fenced,
    NotFound,
    PermanentDriverError,
    Preflight,
    RateLimited,
    Readiness,
    Refused,
    StepContext,
    Unavailable,
)
from hybridops_daemon.drivers.declarations.hcloud import HcloudDriverConfig
from hybridops_daemon.drivers.hcloud import FENCING_LABEL, HcloudDriver
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.lease.local import LocalLease
from tests.fakes.hcloud_api import HcloudFake, running_fake
from tests.testbed.process import Process, free_port, wait_until

FIP = "network/floating-ip@v1"
IP = "203.0.113.10"
ASSIGN = "/v1/floating_ips/{id}/actions/assign"
LIST_FIPS = "/v1/floating_ips"
UPDATE_FIP = "/v1/floating_ips/{id}"
LANE = "drill"


# --------------------------------------------------------------------------------------------- helpers


def make_driver(
    fake: HcloudFake, tmp_path: Path, token: str | None = None, request_timeout: float = 5.0, **config: Any
) -> HcloudDriver:
    """A driver for ``fake``; its token is read from a file, as in production (a SecretRef)."""
    token_file = tmp_path / "hcloud-token"
    token_file.write_text((fake.token if token is None else token) + "\n")
    settings = {"endpoint": fake.endpoint, "token": {"file": str(token_file)}, "poll_interval": "50ms", "action_timeout": "10s"}
    return HcloudDriver(HcloudDriverConfig.model_validate({**settings, **config}), request_timeout=request_timeout)


def step(target: str = "edge02", ip: str = IP, module: str = FIP, token: int = 1, **inputs: Any) -> StepContext:
    return StepContext("run-1", LANE, "fip", module, {"ip": ip, "target": target, **inputs}, {}, fencing_token=token)


async def poll(what: str, condition: Callable[[], Any], within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def poll_async(what: str, condition: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def driver(hcloud_fake: HcloudFake, tmp_path: Path) -> HcloudDriver:
    return make_driver(hcloud_fake, tmp_path)


# --------------------------------------------------------------------------------------------- apply, re-apply, verify


async def test_apply_assigns_the_ip_through_one_action_polled_to_success(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    edge01, edge02 = hcloud_fake.server_id("edge01"), hcloud_fake.server_id("edge02")
    fip_id = hcloud_fake.floating_ip_id(IP)

    before = await driver.check(step())
    assert before.satisfied is False
    assert before.observed == {
        "ip": IP,
        "floating_ip_id": fip_id,
        "server_id": edge01,
        "target": "edge02",
        "target_server_id": edge02,
        "fencing_token": None,
    }
    assert before.outputs == {}

    result = await driver.apply(step())

    assert hcloud_fake.assigned_to(IP) == "edge02"
    assert result.outputs == {"ip": IP, "assigned_to": "edge02", "server_id": edge02, "floating_ip_id": fip_id}
    assert len(result.log) == 1 and f"was on server {edge01}" in result.log[0] and "succeeded" in result.log[0]
    assert hcloud_fake.calls("POST", ASSIGN) == 1
    assert hcloud_fake.calls("PUT", UPDATE_FIP) == 1  # the fencing stamp
    assert hcloud_fake.calls("GET", "/v1/actions/{id}") >= 1  # the SDK polled the action until it succeeded
    assert [a["status"] for a in hcloud_fake.snapshot()["actions"]] == ["success"]

    probe = await driver.verify(step())
    assert probe.ok is True
    assert probe.probe == "hcloud GET /floating_ips/{id}"
    assert probe.observed["server_id"] == edge02
    assert hcloud_fake.calls("GET", "/v1/floating_ips/{id}") == 1  # verify's own fresh read by id


async def test_reapply_is_a_noop(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    await driver.apply(step())
    assert hcloud_fake.calls("POST", ASSIGN) == 1

    again = await driver.check(step())
    assert again.satisfied is True
    assert again.outputs == {
        "ip": IP,
        "assigned_to": "edge02",
        "server_id": hcloud_fake.server_id("edge02"),
        "floating_ip_id": hcloud_fake.floating_ip_id(IP),
    }
    # Even called regardless of check(), apply() starts no second action.
    result = await driver.apply(step())
    assert "already assigned, no action started" in result.log[0]
    assert result.outputs == again.outputs
    assert hcloud_fake.calls("POST", ASSIGN) == 1


async def test_verify_catches_a_move_behind_the_drivers_back(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    await driver.apply(step())
    assert (await driver.verify(step())).ok is True

    hcloud_fake.assign(IP, "edge01")  # someone moved it back (keepalived, the console, another tool)
    probe = await driver.verify(step())
    assert probe.ok is False
    assert probe.observed["server_id"] == hcloud_fake.server_id("edge01")
    assert f"assigned to server {hcloud_fake.server_id('edge01')}, not to edge02" in probe.detail
    assert (await driver.check(step())).satisfied is False

    hcloud_fake.assign(IP, None)
    probe = await driver.verify(step())
    assert probe.ok is False and probe.observed["server_id"] is None
    assert "not assigned to any server" in probe.detail


async def test_finds_the_ip_past_the_first_page_and_ipv6_networks(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    for n in range(60):
        hcloud_fake.add_floating_ip(f"198.51.100.{n}")
    hcloud_fake.add_floating_ip("192.0.2.77", server="edge01")  # the 62nd: page 2 at the SDK's 50 per page
    hcloud_fake.add_floating_ip("2001:db8:77::/64", server="edge02")
    hcloud_fake.reset_calls()

    await driver.apply(step(ip="192.0.2.77"))
    assert hcloud_fake.assigned_to("192.0.2.77") == "edge02"
    assert hcloud_fake.calls("GET", LIST_FIPS) == 2

    # An IPv6 floating IP is a /64: any address in it names it.
    assert (await driver.check(step(ip="2001:db8:77::1"))).satisfied is True


# --------------------------------------------------------------------------------------------- fencing stamp


async def test_apply_stamps_the_token_beside_the_assignment_and_keeps_other_labels(
    hcloud_fake: HcloudFake, driver: HcloudDriver
) -> None:
    hcloud_fake.set_labels(IP, {"env": "prod", "example.com/owner": "netops"})

    result = await driver.apply(step(token=7))

    assert hcloud_fake.labels(IP) == {"env": "prod", "example.com/owner": "netops", FENCING_LABEL: "7"}
    assert hcloud_fake.assigned_to(IP) == "edge02"
    assert hcloud_fake.calls("PUT", UPDATE_FIP) == 1 and hcloud_fake.calls("POST", ASSIGN) == 1
    # The order the driver chose: the labels PUT before the assign POST (see HcloudDriver._assign).
    writes = [(r["method"], r["path"]) for r in hcloud_fake.request_log if r["method"] in ("PUT", "POST")]
    assert writes == [("PUT", UPDATE_FIP), ("POST", ASSIGN)]
    assert f"stamped fencing token 7 (label {FENCING_LABEL}, was none)" in result.log[0]
    probe = await driver.verify(step(token=7))
    assert probe.ok, probe.detail
    assert probe.observed["fencing_token"] == 7 and "stamped with fencing token 7" in probe.detail
    check = await driver.check(step(token=7))
    assert check.satisfied and check.observed["fencing_token"] == 7


async def test_a_newer_stamp_fences_check_and_apply_and_nothing_is_written(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    await driver.apply(step(token=42))  # the newer leader moved the IP to edge02
    hcloud_fake.assign(IP, "edge01")  # and someone moved it back since: an old leader would move it again
    hcloud_fake.reset_calls()

    for call in (driver.check, driver.apply):
        with pytest.raises(Fenced) as caught:
            await call(step(token=40))
        assert caught.value.retryable is False and isinstance(caught.value, PermanentDriverError)
        assert str(caught.value) == (
            f"fenced: floating IP {IP} was changed under fencing token 42, newer than this run's 40; refusing to overwrite"
        )
    assert hcloud_fake.calls("PUT", UPDATE_FIP) == 0 and hcloud_fake.calls("POST", ASSIGN) == 0
    assert hcloud_fake.labels(IP) == {FENCING_LABEL: "42"} and hcloud_fake.assigned_to(IP) == "edge01"
    # A stamp that is not a token (someone's hand edit) proves no newer leadership: it does not block.
    hcloud_fake.set_labels(IP, {FENCING_LABEL: "n-a"})
    assert (await driver.check(step(token=40))).observed["fencing_token"] is None


async def test_a_higher_token_proceeds_and_restamps_but_a_satisfied_step_is_left_alone(
    hcloud_fake: HcloudFake, driver: HcloudDriver
) -> None:
    await driver.apply(step(token=3))
    hcloud_fake.reset_calls()

    # Already on edge02: satisfied, and neither re-stamped by check() nor by an apply() called regardless.
    check = await driver.check(step(token=5))
    assert check.satisfied and check.observed["fencing_token"] == 3
    assert "already assigned, no action started" in (await driver.apply(step(token=5))).log[0]
    assert hcloud_fake.labels(IP) == {FENCING_LABEL: "3"} and hcloud_fake.calls("PUT", UPDATE_FIP) == 0

    # Moving it back is a change: the higher token goes ahead and re-stamps.
    check = await driver.check(step("edge01", token=5))
    assert not check.satisfied and check.observed["fencing_token"] == 3
    result = await driver.apply(step("edge01", token=5))
    assert "stamped fencing token 5 (label hybridops/fencing-token, was 3)" in result.log[0]
    assert hcloud_fake.labels(IP) == {FENCING_LABEL: "5"} and hcloud_fake.assigned_to(IP) == "edge01"
    assert hcloud_fake.calls("PUT", UPDATE_FIP) == 1 and hcloud_fake.calls("POST", ASSIGN) == 1
    assert (await driver.verify(step("edge01", token=5))).ok


async def test_verify_fails_when_the_stamp_is_not_the_runs_own(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    await driver.apply(step(token=5))
    hcloud_fake.set_labels(IP, {FENCING_LABEL: "6"})  # a newer leader stamped it after our apply
    probe = await driver.verify(step(token=5))
    assert not probe.ok and probe.observed["fencing_token"] == 6
    assert f"is assigned to edge02 (server {hcloud_fake.server_id('edge02')}), but floating IP {IP} is stamped" in probe.detail
    assert "fencing token 6 (newer: fenced), not this run's 5" in probe.detail


async def test_a_refused_stamp_assigns_nothing(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    hcloud_fake.fail_next(1, "invalid_input", message="invalid input in field 'labels'", method="PUT", path=UPDATE_FIP)
    with pytest.raises(Refused, match="invalid input in field 'labels'") as caught:
        await driver.apply(step(token=2))
    assert caught.value.code == "invalid_input"
    assert hcloud_fake.assigned_to(IP) == "edge01" and hcloud_fake.calls("POST", ASSIGN) == 0


def test_the_fake_replaces_and_validates_labels_as_the_api_does(hcloud_fake: HcloudFake) -> None:
    client = hcloud.Client(token=hcloud_fake.token, api_endpoint=hcloud_fake.endpoint)
    [fip] = client.floating_ips.get_all()
    assert fip.labels == {}
    client.floating_ips.update(fip, labels={"a": "1", "example.com/b": ""})
    updated = client.floating_ips.update(fip, labels={"c": "3"})  # replaces the set, as documented
    assert updated.labels == {"c": "3"} == client.floating_ips.get_by_id(fip.id).labels
    for bad in ({"hetzner.cloud/x": "1"}, {"a": "-x"}, {"k" * 64: "v"}, {"a": "v" * 64}, {"Not_DNS/x": "1"}, {"": "1"}):
        with pytest.raises(hcloud.APIException) as caught:
            client.floating_ips.update(fip, labels=bad)
        assert caught.value.code == "invalid_input" and caught.value.message == "invalid input in field 'labels'"
        assert caught.value.details["fields"][0]["name"] == "labels"
    assert client.floating_ips.get_by_id(fip.id).labels == {"c": "3"}  # a refused PUT changes nothing
    assert client.floating_ips.update(fip, labels={"k" * 63: "v" * 63}).labels == {"k" * 63: "v" * 63}  # the limits
    assert hcloud_fake.calls("PUT", UPDATE_FIP) == 9


# --------------------------------------------------------------------------------------------- locked, rate limited


async def test_locked_is_retryable_and_the_chain_runners_retry_succeeds(
    hcloud_fake: HcloudFake, driver: HcloudDriver, tmp_path: Path
) -> None:
    hcloud_fake.fail_next(1, "locked", method="POST", path=ASSIGN)
    with pytest.raises(Unavailable) as caught:
        await driver.apply(step())
    assert caught.value.retryable is True and caught.value.code == "locked"
    assert hcloud_fake.assigned_to(IP) == "edge01"

    # The real runner, journal and lease: attempt 1 meets `locked`, the retry assigns.
    hcloud_fake.fail_next(1, "locked", method="POST", path=ASSIGN)
    hcloud_fake.reset_calls()
    redactor = Redactor()
    journal = Journal.open(tmp_path / "journal.db", redactor)
    lease = LocalLease(tmp_path / "lease.lock").acquire()
    try:
        runner = ChainRunner(journal, {LANE: {"hcloud": driver}}, lease, ApprovalBook(), redactor, max_backoff=0.2)
        fip_step = Step.model_validate(
            {
                "id": "fip",
                "module": FIP,
                "driver": "hcloud",
                "inputs": {"ip": IP, "target": "edge02"},
                "timeout": "15s",
                "backoff": "10ms",
            }
        )
        spec = RunSpec("run-locked", LANE, "cutover", "drill", "test", "pytest", "hcloud locked", {"name": "drill", "version": 1},
                       (fip_step,), 5.0, 0.0)  # fmt: skip
        event = await runner.start(spec)
        assert event.ok is True, event.detail
        applies = [r.body for r in journal.run_records("run-locked") if r.kind == "step.apply"]
        assert [(a["attempt"], a["ok"]) for a in applies] == [(1, False), (2, True)]
        assert applies[0]["retryable"] is True and "locked" in applies[0]["error"]
        verify = next(r.body for r in journal.run_records("run-locked") if r.kind == "step.verify")
        assert verify["ok"] is True
    finally:
        lease.release()
        journal.close()
    assert hcloud_fake.assigned_to(IP) == "edge02"
    assert hcloud_fake.calls("POST", ASSIGN) == 2


async def test_the_fake_locks_the_ip_while_an_action_runs(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    hcloud_fake.set_action_delay(1.0)
    first = asyncio.create_task(driver.apply(step()))
    await poll("the first assign", lambda: hcloud_fake.calls("POST", ASSIGN) == 1)
    with pytest.raises(Unavailable, match="locked by action") as caught:
        await driver.apply(step())
    assert caught.value.code == "locked"
    await first
    assert hcloud_fake.assigned_to(IP) == "edge02"


async def test_rate_limited_carries_the_reset_hint_and_the_sdk_does_not_retry(
    hcloud_fake: HcloudFake, driver: HcloudDriver
) -> None:
    hcloud_fake.fail_next(1, "rate_limit_exceeded")
    began = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        await driver.check(step())
    assert caught.value.retryable is True and caught.value.code == "rate_limit_exceeded"
    assert caught.value.retry_after is not None and 3500 < caught.value.retry_after <= 3601
    assert "quota full again at" in str(caught.value) and "0 of 3600 requests left" in str(caught.value)
    # One request, one 429: the SDK's own retry loop (≈30 s of backoff) is off; the runner retries instead.
    assert hcloud_fake.calls("GET", LIST_FIPS) == 1
    assert time.monotonic() - began < 5
    assert (await driver.check(step())).satisfied is False  # the next request passes


async def test_a_spent_quota_gives_rate_limited(tmp_path: Path) -> None:
    with running_fake(rate_limit=2) as fake:  # 2 requests per hour: check() spends them both
        driver = make_driver(fake, tmp_path)
        await driver.check(step())
        with pytest.raises(RateLimited, match=r"0 of 2 requests left"):
            await driver.check(step())


# --------------------------------------------------------------------------------------------- permanent errors


async def test_a_wrong_token_is_unauthorized_and_never_quoted(hcloud_fake: HcloudFake, tmp_path: Path) -> None:
    wrong = "wrong-token-3b9f1c2e8a7d55aa"
    driver = make_driver(hcloud_fake, tmp_path, token=wrong)
    for call in (driver.check, driver.apply, driver.verify):
        with pytest.raises(CredentialsUnavailable) as caught:
            await call(step())
        error = caught.value
        assert error.retryable is False and error.code == "unauthorized"
        for text in (str(error), repr(error), *map(str, error.args)):
            assert wrong not in text and hcloud_fake.token not in text
        assert error.__cause__ is None
    assert hcloud_fake.calls("POST", ASSIGN) == 0


async def test_a_token_echoed_by_the_api_is_blanked(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    hcloud_fake.fail_next(1, "invalid_input", message=f"header was Bearer {hcloud_fake.token}", method="POST", path=ASSIGN)
    with pytest.raises(Refused) as caught:
        await driver.apply(step())
    assert caught.value.retryable is False and caught.value.code == "invalid_input"
    assert hcloud_fake.token not in str(caught.value) and "Bearer ***" in str(caught.value)
    assert hcloud_fake.assigned_to(IP) == "edge01"


async def test_unknown_ip_or_server_is_not_found(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    with pytest.raises(NotFound, match=r"no floating IP 203\.0\.113\.99"):
        await driver.check(step(ip="203.0.113.99"))
    with pytest.raises(NotFound, match="no server named 'edge99'") as caught:
        await driver.apply(step(target="edge99"))
    assert caught.value.retryable is False
    # A 404 from the API itself (the IP deleted between our read and the POST) maps the same way.
    hcloud_fake.fail_next(1, "not_found", message="floating_ip with ID 4711 not found", method="POST", path=ASSIGN)
    with pytest.raises(NotFound, match="not_found: floating_ip with ID 4711 not found"):
        await driver.apply(step())
    assert hcloud_fake.calls("POST", ASSIGN) == 1


async def test_bad_inputs_a_foreign_module_and_a_missing_token_are_permanent(hcloud_fake: HcloudFake, tmp_path: Path) -> None:
    driver = make_driver(hcloud_fake, tmp_path)
    with pytest.raises(PermanentDriverError, match="ip: must be an IPv4 or IPv6 address"):
        await driver.check(step(ip="not-an-ip"))
    with pytest.raises(PermanentDriverError, match="runs only network/floating-ip@v1"):
        await driver.check(step(module="dns/record@v1"))
    (tmp_path / "hcloud-token").unlink()
    with pytest.raises(PermanentDriverError, match="hcloud-token") as caught:
        await driver.check(step())
    assert caught.value.retryable is False
    with pytest.raises(PermanentDriverError, match="no compensation for network/floating-ip@v1"):
        await driver.compensate(step())


# --------------------------------------------------------------------------------------------- retryable errors


async def test_an_action_that_ends_in_error_is_a_driver_error(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    hcloud_fake.fail_next_action("action_failed", "floating ip is blocked")
    with pytest.raises(Unavailable) as caught:
        await driver.apply(step())
    assert caught.value.retryable is True and caught.value.code == "action_failed"
    assert "ended in error: action_failed: floating ip is blocked" in str(caught.value)
    assert hcloud_fake.assigned_to(IP) == "edge01"
    await driver.apply(step())  # the next action succeeds
    assert hcloud_fake.assigned_to(IP) == "edge02"


async def test_server_errors_are_retryable(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    hcloud_fake.fail_next(1, "server_error", path=LIST_FIPS)
    with pytest.raises(Unavailable) as caught:
        await driver.check(step())
    assert caught.value.retryable is True and caught.value.code == "server_error"
    hcloud_fake.stop()
    with pytest.raises(Unavailable, match="cannot reach"):
        await driver.check(step())


# --------------------------------------------------------------------------------------------- time


async def test_a_hanging_request_is_cut_by_the_step_timeout_and_a_late_effect_is_seen(
    hcloud_fake: HcloudFake, driver: HcloudDriver
) -> None:
    hcloud_fake.hang_next(method="POST", path=ASSIGN, seconds=30)
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await driver.apply(step())
    assert time.monotonic() - began < 3  # the asyncio timeout, well before request_timeout (5 s)
    assert hcloud_fake.assigned_to(IP) == "edge01"

    # The API finally answers the abandoned request: the effect lands after the caller gave up, and the
    # runner's re-check before a retry finds it in place, so nothing is applied twice.
    hcloud_fake.release_hangs()
    await poll_async("the late assignment", lambda: _satisfied(driver))
    assert hcloud_fake.calls("POST", ASSIGN) == 1


async def _satisfied(driver: HcloudDriver) -> bool:
    return (await driver.check(step())).satisfied


async def test_a_request_with_no_answer_times_out_client_side(hcloud_fake: HcloudFake, tmp_path: Path) -> None:
    driver = make_driver(hcloud_fake, tmp_path, request_timeout=1.0)
    hcloud_fake.hang_next(method="GET", path=LIST_FIPS, seconds=30)
    began = time.monotonic()
    with pytest.raises(Unavailable, match=r"no answer from .* within 1s") as caught:
        await driver.check(step())
    assert caught.value.retryable is True
    assert time.monotonic() - began < 5
    hcloud_fake.release_hangs()
    assert hcloud_fake.calls("GET", LIST_FIPS) == 1  # the SDK did not retry the timeout either


async def test_an_action_slower_than_action_timeout_is_a_typed_timeout(hcloud_fake: HcloudFake, tmp_path: Path) -> None:
    driver = make_driver(hcloud_fake, tmp_path, action_timeout="300ms")
    hcloud_fake.set_action_delay(1.5)
    with pytest.raises(Unavailable, match=r"still running after 0.3s") as caught:
        await driver.apply(step())
    assert isinstance(caught.value, DriverError) and caught.value.retryable is True
    assert not isinstance(caught.value, TimeoutError)  # the runner must not report it as its own step timeout
    await poll_async("the slow action to land", lambda: _satisfied(driver))
    assert hcloud_fake.calls("POST", ASSIGN) == 1


# --------------------------------------------------------------------------------------------- the fake's control plane


def _http(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


async def test_the_fake_is_steered_over_http(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    """What an end-to-end test with the daemon as a subprocess uses: faults, tampering and counts over HTTP."""
    fault = {"fail_next": {"count": 1, "code": "locked", "method": "POST", "path": ASSIGN}}
    await asyncio.to_thread(_http, f"{hcloud_fake.url}/_fake/faults", fault)
    with pytest.raises(Unavailable) as caught:
        await driver.apply(step())
    assert caught.value.code == "locked"
    calls = (await asyncio.to_thread(_http, f"{hcloud_fake.url}/_fake/calls"))["calls"]
    assert calls[f"POST {ASSIGN}"] == 1

    await asyncio.to_thread(_http, f"{hcloud_fake.url}/_fake/state", {"assign": {"ip": IP, "server": "edge02"}})
    assert (await driver.check(step())).satisfied is True
    state = await asyncio.to_thread(_http, f"{hcloud_fake.url}/_fake/state")
    assert [f["server"] for f in state["floating_ips"]] == [hcloud_fake.server_id("edge02")]


def test_the_fake_runs_standalone(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "tests.fakes.hcloud_api", "--port", str(port), "--token", "standalone-token"]
    proc = Process("hcloud-fake", argv, tmp_path / "fake.log", cwd=Path(__file__).resolve().parents[2])
    try:

        def servers() -> Any:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/servers", headers={"Authorization": "Bearer standalone-token"}
            )
            with urllib.request.urlopen(request, timeout=2) as response:
                return [s["name"] for s in json.load(response)["servers"]]

        assert wait_until("the standalone hcloud fake", servers, timeout=20, proc=proc) == ["edge01", "edge02"]
    finally:
        proc.stop()


# --------------------------------------------------------------------------------------------- preflight (readiness)

SERVER = "/v1/servers/{id}"
FIP_ACTIONS = "/v1/floating_ips/{id}/actions"


def preflight_step(target: str = "edge02", ip: str = IP) -> StepContext:
    """As the daemon builds it: run "preflight", fencing token 0, the profiled (literal) inputs."""
    return StepContext("preflight", LANE, "fip", FIP, {"ip": ip, "target": target}, {}, fencing_token=0)


async def readiness(fake: HcloudFake, driver: HcloudDriver, target: str = "edge02", ip: str = IP) -> Readiness:
    """The driver's preflight as its caller reads it (a DriverError is not ready, its text the reason), checked
    to have written nothing; the time it took is printed (``pytest -s``)."""
    requests = sum(fake.all_calls().values())
    began = time.monotonic()
    answer = await preflight.read(driver, preflight_step(target, ip))  # as the daemon reads it
    took, requests = time.monotonic() - began, sum(fake.all_calls().values()) - requests
    print(f"hcloud preflight ({answer.reason}): {took:.3f}s, {requests} requests")
    assert fake.mutating_calls() == {}
    assert fake.actions_started("assign_floating_ip") == 0
    return answer


async def test_preflight_is_ready_against_a_healthy_target_and_only_reads(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    assert isinstance(driver, Preflight)
    edge01, edge02 = hcloud_fake.server_id("edge01"), hcloud_fake.server_id("edge02")
    hcloud_fake.set_labels(IP, {FENCING_LABEL: "3"})

    answer = await readiness(hcloud_fake, driver)

    assert answer.ready is True, answer.reason
    assert answer.reason == (
        f"hcloud: {IP} is assigned to edge01 (server {edge01}) and can be assigned to edge02 (server {edge02})"
    )
    assert answer.observed == {
        "ip": IP,
        "floating_ip_id": hcloud_fake.floating_ip_id(IP),
        "server_id": edge01,
        "assigned_to": "edge01",
        "target": "edge02",
        "target_server_id": edge02,
        "target_locked": False,
        "fencing_token": 3,
    }
    assert json.loads(json.dumps(answer.observed)) == answer.observed
    assert hcloud_fake.all_calls() == {f"GET {LIST_FIPS}": 1, "GET /v1/servers": 1, f"GET {SERVER}": 1, f"GET {FIP_ACTIONS}": 1}
    assert hcloud_fake.assigned_to(IP) == "edge01" and hcloud_fake.labels(IP) == {FENCING_LABEL: "3"}


async def test_preflight_of_an_ip_already_on_its_target_is_ready_with_nothing_to_move(
    hcloud_fake: HcloudFake, driver: HcloudDriver
) -> None:
    hcloud_fake.lock_server("edge01")  # a lock on the target does not matter when apply() has nothing to do
    answer = await readiness(hcloud_fake, driver, target="edge01")
    assert answer.ready is True and answer.reason == f"hcloud: {IP} is already assigned to edge01: nothing to move"
    assert answer.observed["assigned_to"] == "edge01" and answer.observed["target_locked"] is True
    assert hcloud_fake.calls() == 2  # the listing and the target: nothing else needs asking


async def test_preflight_with_a_revoked_token_is_not_ready_unauthorized(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    old = hcloud_fake.token
    hcloud_fake.token = "hcloud-rotated-token-52e1a9"  # the API no longer knows the driver's token (401)
    answer = await readiness(hcloud_fake, driver)
    assert answer.ready is False
    assert answer.reason == "hcloud preflight: unauthorized: unable to authenticate"
    assert old not in answer.reason and hcloud_fake.token not in answer.reason


async def test_preflight_of_a_deleted_floating_ip_is_not_ready(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    hcloud_fake.remove_floating_ip(IP)
    answer = await readiness(hcloud_fake, driver)
    assert answer.ready is False and answer.reason == f"hcloud: no floating IP {IP} in the token's project"
    assert answer.observed == {"ip": IP, "target": "edge02"}
    assert hcloud_fake.calls() == 1


async def test_preflight_of_an_unknown_target_server_is_not_ready(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    answer = await readiness(hcloud_fake, driver, target="edge99")
    assert answer.ready is False and answer.reason == "hcloud: no server named 'edge99' in the token's project"
    assert answer.observed["server_id"] == hcloud_fake.server_id("edge01")  # where the IP still points


async def test_preflight_of_a_locked_target_server_is_not_ready_and_an_assign_would_meet_423(
    hcloud_fake: HcloudFake, driver: HcloudDriver
) -> None:
    edge02 = hcloud_fake.server_id("edge02")
    hcloud_fake.lock_server("edge02")

    answer = await readiness(hcloud_fake, driver)

    assert answer.ready is False
    assert answer.reason == (
        f"hcloud: server 'edge02' (server {edge02}) is locked: an assign to it gets 423 locked until it is unlocked; "
        f"{IP} is assigned to edge01 (server {hcloud_fake.server_id('edge01')})"
    )
    assert answer.observed["target_locked"] is True
    # What the preflight foresaw: the step itself meets the 423 (the fake models the API's lock).
    with pytest.raises(Unavailable) as caught:
        await driver.apply(step())
    assert caught.value.code == "locked" and hcloud_fake.assigned_to(IP) == "edge01"
    hcloud_fake.lock_server("edge02", locked=False)
    hcloud_fake.reset_calls()
    assert (await readiness(hcloud_fake, driver)).ready is True


async def test_preflight_of_an_ip_locked_by_a_running_action_is_not_ready(hcloud_fake: HcloudFake, driver: HcloudDriver) -> None:
    action = hcloud_fake.hold_action(IP, "change_protection")

    answer = await readiness(hcloud_fake, driver)

    assert answer.ready is False
    assert f"floating IP {IP} is locked by action {action} (change_protection), still running" in answer.reason
    assert "423 locked" in answer.reason
    assert answer.observed["running_action"] == {"id": action, "command": "change_protection"}
    with pytest.raises(Unavailable, match="locked by action") as caught:
        await driver.apply(step())
    assert caught.value.code == "locked"
    hcloud_fake.finish_action(action)
    hcloud_fake.reset_calls()
    assert (await readiness(hcloud_fake, driver)).ready is True
