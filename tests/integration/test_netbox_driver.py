"""The netbox driver (``ipam/address@v1``) against a real NetBox 4.7.3 on PostgreSQL 15 and redis-server.

NetBox is started once per test session (tests/testbed/netbox.py; the first session on a machine builds the
cached venv and database dump, ~5-7 min). The driver talks to it through pynetbox with a v2 token provisioned
for the session; the tests tamper and inspect through a separate pynetbox client, behind the driver's back.
Failure modes that NetBox itself cannot produce on demand (a dead port, a silent server, a 502 from a proxy in
front of it) use loopback sockets the test owns.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.chain import preflight
from hybridops_daemon.chain.approvals import ApprovalBook
from hybridops_daemon.chain.runner import ChainRunner, RunSpec
from hybridops_daemon.config.base import SecretRef
from hybridops_daemon.config.profile import Step
from hybridops_daemon.drivers.base import (
    CredentialsUnavailable,
    DriverError,
    Fenced,
    NoCompensation,
    PermanentDriverError,
    Preflight,
    Readiness,
    Refused,
    StepContext,
    Unavailable,
)
from hybridops_daemon.drivers.declarations.netbox import NetboxDriverConfig
from hybridops_daemon.drivers.netbox import FENCING_FIELD, NetboxDriver
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.lease.local import LocalLease
from tests.testbed.netbox import NetboxInstance
from tests.testbed.process import free_port

MODULE = "ipam/address@v1"
TOKEN_ENV = "HYOPS_TEST_NETBOX_TOKEN"
TEST_NETS = ("203.0.113.0/24", "2001:db8::/64")


def ctx(
    address: str = "203.0.113.10", status: str = "active", run_id: str = "run-1", token: int = 1, **extra: Any
) -> StepContext:
    inputs = {"address": address, "status": status, "description": f"claimed by run {run_id}", **extra}
    return StepContext(run_id, "prod", "ipam", MODULE, inputs, secrets={}, fencing_token=token)


def driver(url: str, monkeypatch: pytest.MonkeyPatch, token: str, timeout: float = 10.0) -> NetboxDriver:
    monkeypatch.setenv(TOKEN_ENV, token)
    return NetboxDriver(NetboxDriverConfig(url=url, token=SecretRef(env=TOKEN_ENV), timeout=timeout))


@pytest.fixture
def admin(netbox: NetboxInstance) -> Any:
    """A pynetbox client of our own (superuser token); the test networks start empty in every test."""
    api = netbox.api()
    for net in TEST_NETS:
        for record in api.ipam.ip_addresses.filter(parent=net):
            record.delete()
    return api


@pytest.fixture
def nb(netbox: NetboxInstance, admin: Any, monkeypatch: pytest.MonkeyPatch) -> NetboxDriver:
    return driver(netbox.url, monkeypatch, netbox.token)


def stored(admin: Any, address: str) -> list[dict[str, Any]]:
    """Every IP address object holding ``address``'s host, whatever its prefix length, as NetBox returns it."""
    host = address.split("/")[0]
    return [dict(record) for record in admin.ipam.ip_addresses.filter(q=host) if record.address.split("/")[0] == host]


def changes(admin: Any, object_id: int) -> int:
    """How many change-log entries NetBox wrote for the IP address ``object_id``: every write adds one."""
    return len(list(admin.core.object_changes.filter(changed_object_type="ipam.ipaddress", changed_object_id=object_id)))


# --------------------------------------------------------------------------------------------- the effect


async def test_apply_creates_the_host_address_and_verify_reads_it_back(nb: NetboxDriver, admin: Any) -> None:
    step = ctx("203.0.113.10")  # a bare IP: NetBox stores a host as /32

    before = await nb.check(step)
    assert not before.satisfied and before.observed == {"fencing_token": None}

    result = await nb.apply(step)
    assert result.log == ("created 203.0.113.10/32 in NetBox (status active); stamped fencing token 1",)
    assert result.outputs["address"] == "203.0.113.10/32" and result.outputs["status"] == "active"

    [record] = stored(admin, "203.0.113.10")
    assert record["address"] == "203.0.113.10/32"
    assert record["status"]["value"] == "active"
    assert record["description"] == "claimed by run run-1"
    assert record["vrf"] is None
    assert record["custom_fields"][FENCING_FIELD] == 1  # the stamp, written in the same POST
    assert result.outputs["id"] == record["id"]

    probe = await nb.verify(step)
    assert probe.ok, probe.detail
    assert probe.observed["id"] == record["id"] and probe.observed["status"] == "active"
    assert probe.observed["fencing_token"] == 1 and "stamped with fencing token 1" in probe.detail


async def test_ipv6_host_is_stored_as_128(nb: NetboxDriver, admin: Any) -> None:
    step = ctx("2001:DB8:0::10")  # normalised by the module: 2001:db8::10

    await nb.apply(step)

    [record] = stored(admin, "2001:db8::10")
    assert record["address"] == "2001:db8::10/128"
    assert (await nb.check(step)).satisfied
    assert (await nb.verify(step)).ok


async def test_reapply_is_a_no_op(nb: NetboxDriver, admin: Any) -> None:
    step = ctx("203.0.113.10/32")
    first = await nb.apply(step)
    object_id = first.outputs["id"]
    [record] = stored(admin, "203.0.113.10")
    written, logged = record["last_updated"], changes(admin, object_id)
    assert logged == 1  # the creation

    check = await nb.check(step)
    assert check.satisfied
    assert check.outputs == first.outputs
    assert check.observed["last_updated"] == written

    again = await nb.apply(step)  # what a runner resuming after a crash might do
    assert again.log == (f"203.0.113.10/32 already active in NetBox (id {object_id}): nothing written",)
    assert again.outputs == first.outputs

    [after] = stored(admin, "203.0.113.10")
    assert after["last_updated"] == written
    assert changes(admin, object_id) == logged  # no write reached NetBox at all


async def test_a_later_run_updates_the_same_object_in_place(nb: NetboxDriver, admin: Any) -> None:
    first = await nb.apply(ctx(run_id="run-1"))
    later = ctx(run_id="run-2", status="reserved")

    check = await nb.check(later)
    assert not check.satisfied
    assert check.observed["description"] == "claimed by run run-1"

    result = await nb.apply(later)
    assert result.log[0].startswith(f"updated 203.0.113.10/32 in NetBox (id {first.outputs['id']};")
    assert "status is 'active', not 'reserved'" in result.log[0]

    [record] = stored(admin, "203.0.113.10")  # one object, not two
    assert record["id"] == first.outputs["id"]
    assert record["status"]["value"] == "reserved"
    assert record["description"] == "claimed by run run-2"
    assert (await nb.verify(later)).ok
    assert (await nb.check(later)).satisfied


async def test_verify_catches_tampering_behind_the_drivers_back(nb: NetboxDriver, admin: Any) -> None:
    step = ctx()
    await nb.apply(step)
    assert (await nb.verify(step)).ok

    admin.ipam.ip_addresses.get(address="203.0.113.10/32").update({"status": "deprecated"})

    probe = await nb.verify(step)
    assert not probe.ok
    assert probe.observed["status"] == "deprecated"
    assert "status is 'deprecated', not 'active'" in probe.detail
    assert not (await nb.check(step)).satisfied

    admin.ipam.ip_addresses.get(address="203.0.113.10/32").delete()

    gone = await nb.verify(step)
    assert not gone.ok
    assert gone.observed == {"fencing_token": None}
    assert "203.0.113.10/32 is absent" in gone.detail


async def test_the_same_host_with_another_prefix_length_is_not_ours(nb: NetboxDriver, admin: Any) -> None:
    """NetBox's global table is unique per host: the driver neither adopts nor rewrites the /24 object."""
    admin.ipam.ip_addresses.create(address="203.0.113.10/24", status="active", description="someone else's")
    step = ctx("203.0.113.10")

    assert not (await nb.check(step)).satisfied
    with pytest.raises(Refused) as caught:
        await nb.apply(step)
    assert not caught.value.retryable and caught.value.code == 400
    assert "Duplicate IP address found in global table: 203.0.113.10/24" in str(caught.value)

    [record] = stored(admin, "203.0.113.10")
    assert record["address"] == "203.0.113.10/24" and record["description"] == "someone else's"


async def test_the_address_in_a_vrf_is_another_record(nb: NetboxDriver, admin: Any) -> None:
    """The module means the global table: a VRF's copy of the address is neither found, nor changed, nor in the way."""
    vrf = admin.ipam.vrfs.create(name="hybridops-test-vrf")
    try:
        admin.ipam.ip_addresses.create(address="203.0.113.10/32", vrf=vrf.id, status="deprecated", description="vrf copy")
        step = ctx()

        check = await nb.check(step)
        assert not check.satisfied and check.observed == {"fencing_token": None}
        await nb.apply(step)
        assert (await nb.verify(step)).ok

        by_vrf = {(record["vrf"] or {}).get("name"): record for record in stored(admin, "203.0.113.10")}
        assert by_vrf.keys() == {None, "hybridops-test-vrf"}
        assert by_vrf[None]["status"]["value"] == "active"
        assert by_vrf["hybridops-test-vrf"]["status"]["value"] == "deprecated"
    finally:
        for record in admin.ipam.ip_addresses.filter(vrf_id=vrf.id):
            record.delete()
        vrf.delete()


async def test_through_the_chain_runner_with_the_run_id_in_the_description(
    netbox: NetboxInstance, admin: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The profile puts ``${run.id}`` in the description: the runner renders it, the driver records it."""
    monkeypatch.setenv(TOKEN_ENV, netbox.token)
    config = NetboxDriverConfig(url=netbox.url, token=SecretRef(env=TOKEN_ENV), timeout=10.0)
    step = Step.model_validate(
        {
            "id": "ipam",
            "module": MODULE,
            "driver": "netbox",
            "inputs": {"address": "203.0.113.20", "status": "active", "description": "claimed by run ${run.id}"},
            "timeout": "30s",
            "retries": 0,
        }
    )
    redactor = Redactor()
    redactor.add_secret(netbox.token)
    journal = Journal.open(tmp_path / "journal.db", redactor)
    lease = LocalLease(tmp_path / "lease.lock").acquire()
    try:
        runner = ChainRunner(journal, {"prod": {"netbox": NetboxDriver(config)}}, lease, ApprovalBook(), redactor)
        spec = RunSpec(
            run_id="run-7f3a",
            lane="prod",
            chain="cutover",
            kind="cutover",
            trigger="test",
            actor="pytest",
            reason="integration test",
            profile={"name": "prod", "version": 1},
            steps=(step,),
            approval_timeout=60.0,
            hourly_cost_usd=0.0,
        )
        event = await runner.start(spec)
        assert event.ok, event.detail
        kinds = [record.kind for record in journal.run_records("run-7f3a")]
        assert kinds == ["run.start", "step.intent", "step.check", "step.apply", "step.verify", "step.done", "run.end"]
        [verify] = [record.body for record in journal.run_records("run-7f3a") if record.kind == "step.verify"]
        assert verify["ok"] and verify["observed"]["description"] == "claimed by run run-7f3a"
    finally:
        lease.release()
        journal.close()
    [record] = stored(admin, "203.0.113.20")
    assert record["description"] == "claimed by run run-7f3a"


# --------------------------------------------------------------------------------------------- fencing stamp


async def test_the_stamp_lands_in_the_same_patch_as_the_change(nb: NetboxDriver, admin: Any) -> None:
    first = await nb.apply(ctx(token=3))
    object_id = first.outputs["id"]
    logged = changes(admin, object_id)

    result = await nb.apply(ctx(status="reserved", token=4))

    assert result.log[0].endswith("; stamped fencing token 4 (was 3)")
    [record] = stored(admin, "203.0.113.10")
    assert record["status"]["value"] == "reserved" and record["custom_fields"][FENCING_FIELD] == 4
    assert changes(admin, object_id) == logged + 1  # one write carried both
    check = await nb.check(ctx(status="reserved", token=4))
    assert check.satisfied and check.observed["fencing_token"] == 4


async def test_a_newer_stamp_fences_check_and_apply_and_nothing_is_written(nb: NetboxDriver, admin: Any) -> None:
    await nb.apply(ctx(run_id="run-new", token=42))
    admin.ipam.ip_addresses.get(address="203.0.113.10/32").update({"status": "deprecated"})  # changed since
    [before] = stored(admin, "203.0.113.10")
    logged = changes(admin, before["id"])

    for operation in (nb.check, nb.apply):
        with pytest.raises(Fenced) as caught:
            await operation(ctx(run_id="run-old", token=40))
        assert not caught.value.retryable
        assert str(caught.value) == (
            "fenced: NetBox IP address 203.0.113.10/32 was changed under fencing token 42, newer than this run's 40;"
            " refusing to overwrite"
        )
    [after] = stored(admin, "203.0.113.10")
    assert after["last_updated"] == before["last_updated"] and changes(admin, after["id"]) == logged
    assert after["status"]["value"] == "deprecated" and after["custom_fields"][FENCING_FIELD] == 42

    # A newer stamp showing up after our apply fails verify, the fields themselves being right.
    await nb.apply(ctx(token=43))
    admin.ipam.ip_addresses.get(address="203.0.113.10/32").update({"custom_fields": {FENCING_FIELD: 44}})
    probe = await nb.verify(ctx(token=43))
    assert not probe.ok and probe.observed["fencing_token"] == 44
    assert "stamped with fencing token 44 (newer: fenced), not this run's 43" in probe.detail


async def test_a_higher_token_proceeds_and_restamps_but_a_satisfied_step_is_left_alone(nb: NetboxDriver, admin: Any) -> None:
    first = await nb.apply(ctx(token=3))
    logged = changes(admin, first.outputs["id"])

    same = await nb.check(ctx(token=5))
    assert same.satisfied and same.observed["fencing_token"] == 3
    assert "nothing written" in (await nb.apply(ctx(token=5))).log[0]
    assert changes(admin, first.outputs["id"]) == logged  # not re-stamped

    later = ctx(status="reserved", run_id="run-5", token=5)
    check = await nb.check(later)
    assert not check.satisfied and check.observed["fencing_token"] == 3
    await nb.apply(later)
    [record] = stored(admin, "203.0.113.10")
    assert record["status"]["value"] == "reserved" and record["custom_fields"][FENCING_FIELD] == 5
    assert (await nb.verify(later)).ok


@pytest.fixture
def without_fencing_field(netbox: NetboxInstance, admin: Any) -> Iterator[None]:
    """A NetBox that skipped the setup step; the field is defined again afterwards (the NetBox is shared)."""
    netbox.drop_fencing_field()
    try:
        yield
    finally:
        netbox.define_fencing_field()


async def test_without_the_custom_field_apply_proceeds_unstamped_and_says_so(
    nb: NetboxDriver, admin: Any, without_fencing_field: None
) -> None:
    created = await nb.apply(ctx(token=9))  # NetBox refuses the stamp on the POST; the driver creates without it
    assert created.log[0].startswith("created 203.0.113.10/32 in NetBox (status active); not stamped: NetBox defines no")
    [record] = stored(admin, "203.0.113.10")
    assert FENCING_FIELD not in record["custom_fields"] and len(stored(admin, "203.0.113.10")) == 1

    updated = await nb.apply(ctx(status="reserved", token=9))  # an update knows from the object: no refused PATCH
    assert updated.log[0].endswith(
        f"not stamped: NetBox defines no custom field {FENCING_FIELD} for IP addresses (see README, NetBox)"
    )
    check = await nb.check(ctx(status="reserved", token=9))
    assert check.satisfied and check.observed["fencing_token"] is None
    probe = await nb.verify(ctx(status="reserved", token=9))
    assert probe.ok and "not stamped" in probe.detail


# --------------------------------------------------------------------------------------------- typed errors


async def test_an_invalid_status_is_permanent_with_netboxs_message(nb: NetboxDriver, admin: Any) -> None:
    step = ctx(status="on-fire")

    assert not (await nb.check(step)).satisfied
    with pytest.raises(Refused) as caught:
        await nb.apply(step)

    assert not caught.value.retryable and caught.value.code == 400
    assert "HTTP 400" in str(caught.value)
    assert "status: on-fire is not a valid choice." in str(caught.value)  # NetBox's words, field by field
    assert stored(admin, "203.0.113.10") == []


@pytest.mark.parametrize(
    "token",
    [
        "nbt_notakey12345.0123456789abcdef0123456789abcdef01234567",  # v2 shape: sent as Bearer
        "0123456789abcdef0123456789abcdef01234567",  # v1 shape: sent as Token
    ],
)
async def test_a_wrong_token_is_permanent_and_never_repeated(
    netbox: NetboxInstance, admin: Any, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    bad = driver(netbox.url, monkeypatch, token)
    for operation in (bad.check, bad.apply, bad.verify):
        with pytest.raises(CredentialsUnavailable) as caught:
            await operation(ctx())
        assert not caught.value.retryable
        assert "HTTP 403" in str(caught.value)
        assert token not in str(caught.value) and token not in repr(caught.value)
        assert token.split(".")[-1] not in str(caught.value)
        assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert stored(admin, "203.0.113.10") == []


async def test_an_unset_token_is_permanent_and_names_the_reference(
    netbox: NetboxInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    nb = NetboxDriver(NetboxDriverConfig(url=netbox.url, token=SecretRef(env=TOKEN_ENV)))
    with pytest.raises(CredentialsUnavailable, match=f"environment variable {TOKEN_ENV} is not set"):
        await nb.check(ctx())


async def test_unreachable_netbox_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = driver(f"http://127.0.0.1:{free_port()}", monkeypatch, "nbt_abc.def")
    for operation in (dead.check, dead.apply, dead.verify):
        with pytest.raises(Unavailable) as caught:
            await operation(ctx())
        assert caught.value.retryable
        assert "Connection refused" in str(caught.value)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) but never answers a byte."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


async def test_a_silent_netbox_times_out_within_the_configured_timeout(monkeypatch: pytest.MonkeyPatch, silent_port: int) -> None:
    slow = driver(f"http://127.0.0.1:{silent_port}", monkeypatch, "nbt_abc.def", timeout=1.0)
    for operation in (slow.check, slow.apply, slow.verify):
        began = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            await operation(ctx())
        elapsed = time.monotonic() - began
        assert caught.value.retryable
        assert "did not answer within 1s" in str(caught.value)
        assert 0.9 <= elapsed < 8.0, elapsed  # generous upper bound: a shared 2-core machine


@pytest.fixture
def bad_gateway() -> Iterator[str]:
    """What a reverse proxy in front of a NetBox that is down answers: 502 with an HTML page."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_a_5xx_is_retryable(monkeypatch: pytest.MonkeyPatch, bad_gateway: str) -> None:
    proxied = driver(bad_gateway, monkeypatch, "nbt_abc.def")
    with pytest.raises(Unavailable) as caught:
        await proxied.check(ctx())
    assert caught.value.retryable
    assert "HTTP 502" in str(caught.value) and "502 Bad Gateway" in str(caught.value)


async def test_invalid_inputs_and_compensation_are_permanent(nb: NetboxDriver) -> None:
    with pytest.raises(PermanentDriverError, match="address: must be an IP address"):
        await nb.check(ctx("not-an-ip"))
    with pytest.raises(NoCompensation, match=r"no compensation for ipam/address@v1"):
        await nb.compensate(ctx())
    assert issubclass(Unavailable, DriverError) and Unavailable.retryable


# --------------------------------------------------------------------------------------------- preflight (issue #13)


def pf(address: str = "203.0.113.10", status: str = "active") -> StepContext:
    """A step as the readiness check hands it over: run "preflight", fencing token 0, the description unrendered."""
    inputs = {"address": address, "status": status, "description": "on edge02 by run ${run.id}"}
    return StepContext("preflight", "prod", "ipam", MODULE, inputs, secrets={}, fencing_token=0)


async def readiness(nb: NetboxDriver, step: StepContext) -> Readiness:
    """What the caller makes of a preflight: a DriverError is not ready, with the error's text as the reason."""
    began = time.monotonic()
    answer = await preflight.read(nb, step)  # as the daemon reads it
    print(f"netbox preflight: {time.monotonic() - began:.3f}s ready={answer.ready}: {answer.reason}")
    return answer


def snapshot(admin: Any, address: str) -> tuple[list[dict[str, Any]], int, int]:
    """What a preflight must leave as it found it: the objects holding the host, the IP address change log as a
    whole (every write to any address adds an entry), and the custom fields defined."""
    log = admin.core.object_changes.filter(changed_object_type="ipam.ipaddress")
    return stored(admin, address), len(list(log)), len(list(admin.extras.custom_fields.all()))


async def test_preflight_ready_for_an_existing_or_missing_address_and_writes_nothing(nb: NetboxDriver, admin: Any) -> None:
    assert isinstance(nb, Preflight)
    before = snapshot(admin, "203.0.113.10")
    missing = await readiness(nb, pf())
    assert missing.ready and "203.0.113.10/32 is not in NetBox yet: apply would create it" in missing.reason
    assert missing.observed["fencing_field"] is True and missing.observed["writable"] is True
    assert snapshot(admin, "203.0.113.10") == before == ([], before[1], before[2])

    await nb.apply(ctx(token=42))  # a newer stamp than the preflight's token 0: reported, not fenced
    before = snapshot(admin, "203.0.113.10")
    timings = []
    for _ in range(5):
        began = time.monotonic()
        held = await nb.preflight(pf(status="reserved"))
        timings.append(time.monotonic() - began)
        assert held.ready, held.reason
    print(f"netbox preflight (ready): {[f'{t:.3f}' for t in timings]} s")
    assert f"(id {before[0][0]['id']}, active, stamped with fencing token 42): apply may change it" in held.reason
    assert held.observed["fencing_token"] == 42 and held.observed["status"] == "active"
    assert snapshot(admin, "203.0.113.10") == before  # the object, its last_updated and every change-log entry


async def test_preflight_wrong_token_is_not_ready_and_never_shows_it(
    netbox: NetboxInstance, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "nbt_notakey12345.0123456789abcdef0123456789abcdef01234567"
    answer = await readiness(driver(netbox.url, monkeypatch, token), pf())
    assert not answer.ready and "HTTP 403" in answer.reason and "check the API token" in answer.reason
    assert token.split(".")[-1] not in answer.reason


async def test_preflight_without_the_custom_field_is_not_ready(nb: NetboxDriver, admin: Any, without_fencing_field: None) -> None:
    await nb.apply(ctx())  # unstamped: NetBox has no field for it
    before = snapshot(admin, "203.0.113.10")
    for step in (pf(), pf("203.0.113.11")):  # an object to read the field from, and none
        answer = await readiness(nb, step)
        assert not answer.ready and f"NetBox defines no custom field {FENCING_FIELD}" in answer.reason
        assert answer.observed["fencing_field"] is False
    assert snapshot(admin, "203.0.113.10") == before


async def test_preflight_read_only_token_bad_status_and_duplicate_host_are_not_ready(
    netbox: NetboxInstance, nb: NetboxDriver, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = await readiness(nb, pf(status="on-fire"))
    assert not bad.ready and "status 'on-fire' is not one NetBox accepts (active, reserved," in bad.reason

    admin.ipam.ip_addresses.create(address="203.0.113.10/24", status="active", description="someone else's")
    duplicate = await readiness(nb, pf())
    assert not duplicate.ready and "NetBox holds 203.0.113.10/24 in the global table" in duplicate.reason
    assert "creating 203.0.113.10/32 would be a refused duplicate" in duplicate.reason

    token_id, read_only = netbox.read_only_token()
    try:
        before = snapshot(admin, "203.0.113.12")
        for step, verb in ((pf("203.0.113.12"), "add"), (pf("203.0.113.10/24"), "change")):
            answer = await readiness(driver(netbox.url, monkeypatch, read_only), step)
            assert not answer.ready and f"the NetBox token may not {verb} IP addresses" in answer.reason
        assert snapshot(admin, "203.0.113.12") == before
    finally:
        netbox.delete_token(token_id)
