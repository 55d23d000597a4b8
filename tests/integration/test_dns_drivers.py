"""The powerdns and rfc2136 drivers against a real PowerDNS Authoritative (tests/testbed/powerdns.py).

What "worked" means here is what a resolver sees: every assertion about the record is made by asking the
authoritative server over DNS (``answer()`` below, independent of the drivers' own probe code). Tampering
goes through the PowerDNS API behind the driver's back. The only stand-ins are dumb sockets (a server that
never answers) and a tiny DNS responder playing a lagging secondary; nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from aiohttp import web

from hybridops_daemon.chain.approvals import ApprovalBook
from hybridops_daemon.chain.runner import ChainRunner, RunSpec
from hybridops_daemon.config.base import SecretRef
from hybridops_daemon.config.profile import Step
from hybridops_daemon.drivers.base import (
    CredentialsUnavailable,
    DriverError,
    Fenced,
    NoCompensation,
    NotFound,
    PermanentDriverError,
    Preflight,
    RateLimited,
    Refused,
    StepContext,
    Unavailable,
)
from hybridops_daemon.drivers.declarations.dns import PowerDnsDriverConfig, Rfc2136DriverConfig
from hybridops_daemon.drivers.dns import PowerDnsDriver
from hybridops_daemon.drivers.rfc2136 import Rfc2136Driver
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.lease.local import LocalLease
from tests.testbed.powerdns import PowerDns

MODULE = "dns/record@v1"
ZONE = "dr.example"
TIMEOUT = 1.0  # the drivers' per-request bound in these tests
SLACK = 3.0  # on a busy 2-core machine, "bounded" means well under step timeouts, not to the millisecond

Driver = PowerDnsDriver | Rfc2136Driver


# --------------------------------------------------------------------------------------------- helpers


def ctx(
    name: str, content: str, ttl: int = 60, rtype: str = "A", zone: str = ZONE, token: int = 1, run_id: str = "run-1"
) -> StepContext:
    inputs = {"zone": zone, "name": name, "type": rtype, "content": content, "ttl": ttl}
    return StepContext(run_id, "drill", "dns", MODULE, inputs, {}, fencing_token=token)


def secret_file(tmp_path: Path, name: str, value: str) -> SecretRef:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return SecretRef(file=path)


def pdns_driver(powerdns: PowerDns, tmp_path: Path, key: str | None = None, settle: float = 0.0, **config: Any) -> PowerDnsDriver:
    fields: dict[str, Any] = {
        "api_url": powerdns.api_url,
        "api_key": secret_file(tmp_path, "pdns-key", powerdns.api_key if key is None else key),
        "nameservers": (powerdns.nameserver,),
        **config,
    }
    return PowerDnsDriver(PowerDnsDriverConfig(**fields), timeout=TIMEOUT, settle=settle)


def rfc_driver(
    powerdns: PowerDns,
    tmp_path: Path,
    secret: str | None = None,
    tsig: bool = True,
    settle: float = 0.0,
    timeout: float = TIMEOUT,
    **config: Any,
) -> Rfc2136Driver:
    fields: dict[str, Any] = {"server": powerdns.host, "port": powerdns.dns_port, **config}
    if tsig:
        fields["tsig_name"] = powerdns.tsig_name
        fields["tsig_algorithm"] = powerdns.tsig_algorithm
        fields["tsig_secret"] = secret_file(tmp_path, "tsig", powerdns.tsig_secret if secret is None else secret)
    return Rfc2136Driver(Rfc2136DriverConfig(**fields), timeout=timeout, settle=settle)


def make_driver(kind: str, powerdns: PowerDns, tmp_path: Path, **config: Any) -> Driver:
    return pdns_driver(powerdns, tmp_path, **config) if kind == "powerdns" else rfc_driver(powerdns, tmp_path, **config)


async def answer(powerdns: PowerDns, fqdn: str, rtype: str = "A") -> tuple[str, list[str], int | None]:
    """(rcode, contents, ttl) as the authoritative server answers a non-recursive query: the test's own eyes."""
    query = dns.message.make_query(fqdn, rtype)
    query.flags &= ~dns.flags.RD
    response = await dns.asyncquery.udp(query, powerdns.host, port=powerdns.dns_port, timeout=5)
    assert response.flags & dns.flags.AA, "PowerDNS must answer authoritatively for its own zone"
    rrset = next((r for r in response.answer if r.rdtype == dns.rdatatype.from_text(rtype)), None)
    if rrset is None:
        return dns.rcode.to_text(response.rcode()), [], None
    return dns.rcode.to_text(response.rcode()), sorted(r.to_text() for r in rrset), rrset.ttl


@contextlib.contextmanager
def silent_udp() -> Iterator[str]:
    """A loopback UDP port that swallows every datagram: a nameserver that hangs."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def silent_tcp() -> Iterator[int]:
    """A loopback TCP port that completes handshakes (backlog) but never reads or answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


class _StaleSecondary(asyncio.DatagramProtocol):
    """Answers every query authoritatively with one fixed A record: a secondary that missed the NOTIFY."""

    def __init__(self, content: str, ttl: int) -> None:
        self.content, self.ttl = content, ttl
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        rrset = response.find_rrset(response.answer, question.name, question.rdclass, dns.rdatatype.A, create=True)
        rrset.add(dns.rdata.from_text("IN", "A", self.content), self.ttl)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@contextlib.asynccontextmanager
async def stale_secondary(content: str, ttl: int = 60) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _StaleSecondary(content, ttl), local_addr=("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{transport.get_extra_info('sockname')[1]}"
    finally:
        transport.close()


@contextlib.contextmanager
def stopped(powerdns: PowerDns) -> Iterator[None]:
    powerdns.stop()
    try:
        yield
    finally:
        powerdns.start()


@contextlib.contextmanager
def runner_for(tmp_path: Path, name: str, driver: Driver) -> Iterator[tuple[ChainRunner, Journal]]:
    """The real chain runner with a real journal and lease, the driver bound for lane ``drill``."""
    redactor = Redactor()
    journal = Journal.open(tmp_path / "journal.db", redactor)
    lease = LocalLease(tmp_path / "lease.lock").acquire()
    try:
        yield ChainRunner(journal, {"drill": {name: driver}}, lease, ApprovalBook(), redactor, max_backoff=0.1), journal
    finally:
        lease.release()
        journal.close()


def run_spec(run_id: str, driver_name: str, inputs: dict[str, Any]) -> RunSpec:
    step = Step.model_validate(
        {
            "id": "dns",
            "module": MODULE,
            "driver": driver_name,
            "inputs": inputs,
            "timeout": "10s",
            "retries": 1,
            "backoff": "10ms",
        }
    )
    return RunSpec(run_id, "drill", "cutover", "drill", "test", "pytest", "integration test", {"name": "drill", "version": 1},
                   (step,), 5.0, 0.0)  # fmt: skip


# --------------------------------------------------------------------------------------------- both drivers


@pytest.mark.parametrize("kind", ["powerdns", "rfc2136"])
async def test_apply_is_seen_by_resolving_the_authoritative_server(kind: str, powerdns: PowerDns, tmp_path: Path) -> None:
    driver = make_driver(kind, powerdns, tmp_path)
    content = "192.0.2.10" if kind == "powerdns" else "192.0.2.20"
    step = ctx("app", content, ttl=120)

    before = await driver.check(step)
    assert not before.satisfied and before.outputs == {}
    assert set(before.observed) == {powerdns.nameserver, "fencing_token"}

    result = await driver.apply(step)
    assert result.outputs == {"fqdn": "app.dr.example", "type": "A", "content": content, "ttl": 120}
    assert any("app.dr.example" in line for line in result.log)

    assert await answer(powerdns, "app.dr.example.") == ("NOERROR", [content], 120)
    after = await driver.check(step)
    assert after.satisfied and after.outputs == result.outputs
    assert after.observed == {powerdns.nameserver: {"status": "ok", "content": [content], "ttl": 120}, "fencing_token": 1}
    probe = await driver.verify(step)
    assert probe.ok, probe.detail
    assert probe.observed == after.observed and powerdns.nameserver in probe.probe


@pytest.mark.parametrize("kind", ["powerdns", "rfc2136"])
async def test_reapply_through_the_runner_is_a_noop(kind: str, powerdns: PowerDns, tmp_path: Path) -> None:
    """Run 1 applies; run 2 finds it in place (check satisfied): no change reaches PowerDNS, so the serial stays."""
    driver = make_driver(kind, powerdns, tmp_path)
    inputs = {"zone": "DR.example.", "name": f"noop-{kind}", "content": "192.0.2.30", "ttl": 90}  # any spelling
    with runner_for(tmp_path, kind, driver) as (runner, journal):
        first = await runner.start(run_spec("run-a", kind, inputs))
        assert first.ok, first.detail
        done = [r.body for r in journal.run_records("run-a") if r.kind == "step.done"]
        assert done[0]["outcome"] == "applied"
        serial = powerdns.serial()

        second = await runner.start(run_spec("run-b", kind, inputs))
        assert second.ok, second.detail
        kinds = [r.kind for r in journal.run_records("run-b")]
        assert "step.apply" not in kinds and "step.verify" not in kinds
        done = [r.body for r in journal.run_records("run-b") if r.kind == "step.done"]
        assert done[0]["outcome"] == "skipped (already satisfied)"
        assert done[0]["outputs"]["content"] == "192.0.2.30"
    assert powerdns.serial() == serial
    assert await answer(powerdns, f"noop-{kind}.dr.example.") == ("NOERROR", ["192.0.2.30"], 90)


@pytest.mark.parametrize("kind", ["powerdns", "rfc2136"])
async def test_verify_catches_tampering_behind_the_drivers_back(kind: str, powerdns: PowerDns, tmp_path: Path) -> None:
    driver = make_driver(kind, powerdns, tmp_path)
    step = ctx(f"tamper-{kind}", "192.0.2.40")
    await driver.apply(step)
    assert (await driver.verify(step)).ok

    powerdns.tamper(f"tamper-{kind}", "198.51.100.66")
    probe = await driver.verify(step)
    assert not probe.ok
    assert probe.observed == {powerdns.nameserver: {"status": "ok", "content": ["198.51.100.66"], "ttl": 60}, "fencing_token": 1}
    assert "198.51.100.66" in probe.detail and "192.0.2.40" in probe.detail
    assert not (await driver.check(step)).satisfied

    powerdns.delete(f"tamper-{kind}")
    gone = await driver.verify(step)
    # The stamp at _hyops-fence.<name> keeps <name> in existence (an empty non-terminal): NODATA, not NXDOMAIN.
    assert not gone.ok and gone.observed[powerdns.nameserver] == {"status": "noanswer"}
    assert "NOANSWER" in gone.detail
    powerdns.delete(f"_hyops-fence.tamper-{kind}", "TXT")
    gone = await driver.verify(step)
    assert not gone.ok and gone.observed[powerdns.nameserver] == {"status": "nxdomain"}
    assert "NXDOMAIN" in gone.detail


@pytest.mark.parametrize("kind", ["powerdns", "rfc2136"])
async def test_ttl_mismatch_alone_fails_verify(kind: str, powerdns: PowerDns, tmp_path: Path) -> None:
    driver = make_driver(kind, powerdns, tmp_path)
    step = ctx(f"ttl-{kind}", "192.0.2.50", ttl=60)
    await driver.apply(step)
    powerdns.tamper(f"ttl-{kind}", "192.0.2.50", ttl=3600)  # same content, the TTL a resolver would cache for an hour

    probe = await driver.verify(step)
    assert not probe.ok
    assert probe.observed[powerdns.nameserver] == {"status": "ok", "content": ["192.0.2.50"], "ttl": 3600}
    assert "ttl 3600" in probe.detail
    assert not (await driver.check(step)).satisfied


@pytest.mark.parametrize("kind", ["powerdns", "rfc2136"])
async def test_a_missing_type_is_noanswer_not_success(kind: str, powerdns: PowerDns, tmp_path: Path) -> None:
    driver = make_driver(kind, powerdns, tmp_path)
    await driver.apply(ctx(f"v4only-{kind}", "192.0.2.60"))
    step = ctx(f"v4only-{kind}", "2001:db8::60", rtype="AAAA")
    probe = await driver.verify(step)
    assert not probe.ok and probe.observed[powerdns.nameserver] == {"status": "noanswer"}
    await driver.apply(step)
    assert (await driver.verify(step)).ok
    assert await answer(powerdns, f"v4only-{kind}.dr.example.", "AAAA") == ("NOERROR", ["2001:db8::60"], 60)


@pytest.mark.parametrize("kind", ["powerdns", "rfc2136"])
async def test_server_down_is_a_retryable_typed_error(kind: str, powerdns: PowerDns, tmp_path: Path) -> None:
    driver = make_driver(kind, powerdns, tmp_path)
    step = ctx(f"down-{kind}", "192.0.2.70")
    with stopped(powerdns):
        began = time.monotonic()
        with pytest.raises(Unavailable) as applied:
            await driver.apply(step)
        with pytest.raises(Unavailable) as checked:
            await driver.check(step)  # the DNS port is gone too: nobody can say what the world looks like
        probe = await driver.verify(step)
        elapsed = time.monotonic() - began
    assert applied.value.retryable and checked.value.retryable
    assert powerdns.nameserver in str(checked.value)
    assert not probe.ok and probe.observed[powerdns.nameserver]["status"] == "timeout"
    assert elapsed < 3 * TIMEOUT + SLACK
    # Back up: the same step now goes through.
    await driver.apply(step)
    assert (await driver.verify(step)).ok


@pytest.mark.parametrize("kind", ["powerdns", "rfc2136"])
async def test_a_hanging_nameserver_is_bounded_and_fails_verify(kind: str, powerdns: PowerDns, tmp_path: Path) -> None:
    with silent_udp() as hanging:
        driver = make_driver(kind, powerdns, tmp_path, nameservers=(powerdns.nameserver, hanging))
        step = ctx(f"hang-{kind}", "192.0.2.80")
        await driver.apply(step)

        began = time.monotonic()
        probe = await driver.verify(step)
        assert time.monotonic() - began < TIMEOUT + SLACK  # servers are asked concurrently: one timeout in all
        assert not probe.ok
        assert probe.observed == {
            powerdns.nameserver: {"status": "ok", "content": ["192.0.2.80"], "ttl": 60},
            hanging: {"status": "timeout"},
            "fencing_token": 1,
        }
        assert f"{hanging} did not answer in time" in probe.detail

        began = time.monotonic()
        with pytest.raises(Unavailable, match="did not answer in time"):
            await driver.check(step)
        assert time.monotonic() - began < TIMEOUT + SLACK


@pytest.mark.parametrize("kind", ["powerdns", "rfc2136"])
async def test_every_nameserver_must_agree(kind: str, powerdns: PowerDns, tmp_path: Path) -> None:
    """A secondary still serving the old address fails verify even though the primary is right."""
    async with stale_secondary("203.0.113.99") as secondary:
        # `localhost:PORT` is the same PowerDNS by host name: names in `nameservers` are resolved too.
        nameservers = (powerdns.nameserver, f"localhost:{powerdns.dns_port}")
        agreeing = make_driver(kind, powerdns, tmp_path, nameservers=nameservers)
        step = ctx(f"agree-{kind}", "192.0.2.90")
        await agreeing.apply(step)
        probe = await agreeing.verify(step)
        assert probe.ok, probe.detail
        assert len(probe.observed) == 3  # two servers and the stamp

        lagging = make_driver(kind, powerdns, tmp_path, nameservers=(*nameservers, secondary))
        probe = await lagging.verify(step)
        assert not probe.ok
        assert probe.observed[secondary] == {"status": "ok", "content": ["203.0.113.99"], "ttl": 60}
        assert probe.observed[powerdns.nameserver]["content"] == ["192.0.2.90"]
        assert f"{secondary} answers 203.0.113.99" in probe.detail
        assert not (await lagging.check(step)).satisfied


@pytest.mark.parametrize("kind", ["powerdns", "rfc2136"])
async def test_verify_settles_while_servers_converge(kind: str, powerdns: PowerDns, tmp_path: Path) -> None:
    """With ``settle``, verify keeps asking until the servers agree (a lagging secondary catching up), and no longer."""
    driver = make_driver(kind, powerdns, tmp_path, settle=3.0)
    step = ctx(f"settle-{kind}", "192.0.2.170")
    await driver.apply(step)
    powerdns.tamper(f"settle-{kind}", "198.51.100.17")  # the stale answer a secondary would still give

    async def catch_up() -> None:
        await asyncio.sleep(0.6)
        await asyncio.to_thread(powerdns.tamper, f"settle-{kind}", "192.0.2.170")

    began = time.monotonic()
    catching_up = asyncio.create_task(catch_up())
    probe = await driver.verify(step)
    await catching_up
    assert probe.ok, probe.detail
    assert 0.5 <= time.monotonic() - began < 3.0 + SLACK

    quick = make_driver(kind, powerdns, tmp_path, settle=1.0)
    powerdns.tamper(f"settle-{kind}", "198.51.100.17")
    began = time.monotonic()
    probe = await quick.verify(step)
    assert not probe.ok and probe.observed[powerdns.nameserver]["content"] == ["198.51.100.17"]
    assert 0.5 <= time.monotonic() - began < 1.0 + TIMEOUT + SLACK


@pytest.mark.parametrize("kind", ["powerdns", "rfc2136"])
async def test_apply_writes_the_stamp_beside_the_name_in_the_same_change(kind: str, powerdns: PowerDns, tmp_path: Path) -> None:
    driver = make_driver(kind, powerdns, tmp_path)
    step = ctx(f"stamp-{kind}", "192.0.2.180", ttl=90, token=7, run_id="run-7")
    serial = powerdns.serial()

    result = await driver.apply(step)

    fence = f"_hyops-fence.stamp-{kind}.dr.example."
    assert await answer(powerdns, fence, "TXT") == ("NOERROR", ['"token=7 run=run-7"'], 90)
    assert await answer(powerdns, f"stamp-{kind}.dr.example.") == ("NOERROR", ["192.0.2.180"], 90)
    assert powerdns.serial() == serial + 1  # one change to the zone, not two
    assert f'and {fence} TXT "token=7 run=run-7"' in result.log[0]
    check = await driver.check(step)
    assert check.satisfied and check.observed["fencing_token"] == 7
    probe = await driver.verify(step)
    assert probe.ok and probe.observed["fencing_token"] == 7 and "stamped with fencing token 7" in probe.detail


@pytest.mark.parametrize("kind", ["powerdns", "rfc2136"])
async def test_a_newer_stamp_fences_check_and_nothing_is_applied(kind: str, powerdns: PowerDns, tmp_path: Path) -> None:
    driver = make_driver(kind, powerdns, tmp_path)
    await driver.apply(ctx(f"fenced-{kind}", "192.0.2.190", token=42, run_id="run-new"))
    powerdns.tamper(f"fenced-{kind}", "198.51.100.19")  # moved since: an old leader would move it again
    serial = powerdns.serial()

    with pytest.raises(Fenced) as caught:
        await driver.check(ctx(f"fenced-{kind}", "192.0.2.191", token=40))
    assert caught.value.retryable is False
    assert str(caught.value) == (
        f"fenced: DNS name fenced-{kind}.dr.example was changed under fencing token 42, newer than this run's 40;"
        " refusing to overwrite"
    )
    # The real runner stops at the check: one attempt (not retryable), no apply, nothing reaches PowerDNS.
    inputs = {"zone": ZONE, "name": f"fenced-{kind}", "content": "192.0.2.191"}
    with runner_for(tmp_path, kind, driver) as (runner, journal):
        event = await runner.start(run_spec("run-old", kind, inputs))  # the runner's local lease: token 1
        assert not event.ok and "fenced" in event.detail
        checks = [r.body for r in journal.run_records("run-old") if r.kind == "step.check"]
        assert [(c["retryable"], "under fencing token 42" in c["error"]) for c in checks] == [(False, True)]
        assert "step.apply" not in [r.kind for r in journal.run_records("run-old")]
    assert powerdns.serial() == serial
    assert await answer(powerdns, f"fenced-{kind}.dr.example.") == ("NOERROR", ["198.51.100.19"], 60)
    assert (await answer(powerdns, f"_hyops-fence.fenced-{kind}.dr.example.", "TXT"))[1] == ['"token=42 run=run-new"']

    # A newer stamp showing up after our apply fails verify (the record itself is right).
    await driver.apply(ctx(f"fenced-{kind}", "192.0.2.190", token=43))
    powerdns.tamper(f"_hyops-fence.fenced-{kind}", '"token=44 run=run-newer"', rtype="TXT")
    probe = await driver.verify(ctx(f"fenced-{kind}", "192.0.2.190", token=43))
    assert not probe.ok and probe.observed["fencing_token"] == 44
    assert "stamped with fencing token 44 (newer: fenced), not this run's 43" in probe.detail


@pytest.mark.parametrize("kind", ["powerdns", "rfc2136"])
async def test_a_higher_token_proceeds_and_restamps(kind: str, powerdns: PowerDns, tmp_path: Path) -> None:
    driver = make_driver(kind, powerdns, tmp_path)
    await driver.apply(ctx(f"restamp-{kind}", "192.0.2.200", token=3, run_id="run-3"))
    serial = powerdns.serial()

    # Satisfied: a later run's check() says so and stamps nothing.
    same = await driver.check(ctx(f"restamp-{kind}", "192.0.2.200", token=5))
    assert same.satisfied and same.observed["fencing_token"] == 3
    assert powerdns.serial() == serial

    step = ctx(f"restamp-{kind}", "192.0.2.201", token=5, run_id="run-5")
    check = await driver.check(step)
    assert not check.satisfied and check.observed["fencing_token"] == 3
    await driver.apply(step)
    assert await answer(powerdns, f"restamp-{kind}.dr.example.") == ("NOERROR", ["192.0.2.201"], 60)
    assert (await answer(powerdns, f"_hyops-fence.restamp-{kind}.dr.example.", "TXT"))[1] == ['"token=5 run=run-5"']
    assert (await driver.verify(step)).ok
    # A stamp that is not ours to read (a hand edit) blocks nothing: it proves no newer leadership.
    powerdns.tamper(f"_hyops-fence.restamp-{kind}", '"edited by hand"', rtype="TXT")
    assert (await driver.check(step)).observed["fencing_token"] is None


@pytest.mark.parametrize("kind", ["powerdns", "rfc2136"])
async def test_compensate_is_refused(kind: str, powerdns: PowerDns, tmp_path: Path) -> None:
    driver = make_driver(kind, powerdns, tmp_path)
    with pytest.raises(NoCompensation, match="failback"):
        await driver.compensate(ctx("app", "192.0.2.10"))
    assert not NoCompensation("x").retryable


@pytest.mark.parametrize("kind", ["powerdns", "rfc2136"])
async def test_bad_inputs_are_permanent(kind: str, powerdns: PowerDns, tmp_path: Path) -> None:
    driver = make_driver(kind, powerdns, tmp_path)
    with pytest.raises(PermanentDriverError, match="content"):
        await driver.apply(ctx("bad", "not-an-ip"))
    with pytest.raises(Refused, match="does not parse"):
        await driver.apply(ctx("bad", "no priority here", rtype="MX"))
    wrong_module = StepContext("r", "drill", "s", "network/floating-ip@v1", {"ip": "203.0.113.1", "target": "x"}, {}, 1)
    with pytest.raises(PermanentDriverError, match="dns/record@v1"):
        await driver.check(wrong_module)


# --------------------------------------------------------------------------------------------- powerdns only


async def test_powerdns_wrong_api_key_is_permanent_and_not_echoed(powerdns: PowerDns, tmp_path: Path) -> None:
    wrong = "wrong-key-" + "7" * 24
    driver = pdns_driver(powerdns, tmp_path, key=wrong)
    with pytest.raises(CredentialsUnavailable) as caught:
        await driver.apply(ctx("auth", "192.0.2.100"))
    assert not caught.value.retryable
    assert "401" in str(caught.value)
    assert wrong not in str(caught.value) and powerdns.api_key not in str(caught.value)


async def test_powerdns_unknown_zone_and_rejected_record_are_permanent(powerdns: PowerDns, tmp_path: Path) -> None:
    driver = pdns_driver(powerdns, tmp_path)
    with pytest.raises(NotFound, match=r"no zone nowhere\.example\.") as missing:
        await driver.apply(ctx("app", "192.0.2.110", zone="nowhere.example"))
    assert not missing.value.retryable

    # PowerDNS (not dnspython) refuses this one: a CNAME next to an existing A rrset → HTTP 422.
    await driver.apply(ctx("both", "192.0.2.111"))
    with pytest.raises(Refused, match="422") as rejected:
        await driver.apply(ctx("both", "elsewhere.example.org", rtype="CNAME", token=2))
    assert not rejected.value.retryable
    assert powerdns.api_key not in str(rejected.value)
    # The stamp was in the same PATCH: refused with the record, it did not land either.
    assert (await answer(powerdns, "_hyops-fence.both.dr.example.", "TXT"))[1] == ['"token=1 run=run-1"']


async def test_powerdns_sends_canonical_content(powerdns: PowerDns, tmp_path: Path) -> None:
    """A CNAME target without its trailing dot, and TXT without quotes, are what an operator writes."""
    driver = pdns_driver(powerdns, tmp_path)
    cname = ctx("alias", "Target.Example.ORG", rtype="CNAME")
    await driver.apply(cname)
    assert await answer(powerdns, "alias.dr.example.", "CNAME") == ("NOERROR", ["Target.Example.ORG."], 60)
    assert (await driver.verify(ctx("alias", "target.example.org.", rtype="CNAME"))).ok  # same name, any case
    txt = ctx("note", "cut over by hyops", rtype="TXT")
    await driver.apply(txt)
    assert (await driver.check(txt)).satisfied


async def test_powerdns_hanging_api_is_bounded_by_the_timeout(powerdns: PowerDns, tmp_path: Path) -> None:
    with silent_tcp() as port:
        driver = pdns_driver(powerdns, tmp_path, api_url=f"http://127.0.0.1:{port}/")
        began = time.monotonic()
        with pytest.raises(Unavailable, match="did not answer within 1s") as caught:
            await driver.apply(ctx("slow", "192.0.2.120"))
        assert time.monotonic() - began < TIMEOUT + SLACK
    assert caught.value.retryable


async def test_powerdns_unknown_server_id_is_permanent(powerdns: PowerDns, tmp_path: Path) -> None:
    driver = pdns_driver(powerdns, tmp_path, server_id="elsewhere")
    with pytest.raises(NotFound, match="server 'elsewhere'") as caught:
        await driver.apply(ctx("app", "192.0.2.130"))
    assert not caught.value.retryable


@contextlib.asynccontextmanager
async def failing_proxy(status: int) -> AsyncIterator[str]:
    """A reverse proxy whose backend is down: answers ``status`` and, carelessly, echoes the request headers."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=status, text=f"upstream down; your headers: {dict(request.headers)}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("status", "error"), [(502, Unavailable), (503, Unavailable), (429, RateLimited)])
async def test_powerdns_5xx_and_429_are_retryable_and_scrubbed(
    status: int, error: type[DriverError], powerdns: PowerDns, tmp_path: Path
) -> None:
    async with failing_proxy(status) as url:
        driver = pdns_driver(powerdns, tmp_path, api_url=url)
        with pytest.raises(error, match=f"HTTP {status}") as caught:
            await driver.apply(ctx("proxied", "192.0.2.135"))
    assert caught.value.retryable
    assert powerdns.api_key not in str(caught.value) and "[redacted]" in str(caught.value)


# --------------------------------------------------------------------------------------------- rfc2136 only


async def test_rfc2136_wrong_tsig_secret_is_refused_and_the_right_one_works(powerdns: PowerDns, tmp_path: Path) -> None:
    wrong = base64.b64encode(b"not-the-real-secret-0123456789ab").decode()
    step = ctx("signed", "192.0.2.140")
    (tmp_path / "bad").mkdir()
    bad = rfc_driver(powerdns, tmp_path / "bad", secret=wrong)
    with pytest.raises(CredentialsUnavailable, match="TSIG") as caught:
        await bad.apply(step)
    assert not caught.value.retryable
    assert wrong not in str(caught.value) and powerdns.tsig_secret not in str(caught.value)
    assert (await answer(powerdns, "signed.dr.example."))[0] == "NXDOMAIN"

    unsigned = rfc_driver(powerdns, tmp_path, tsig=False)
    with pytest.raises(Refused, match="REFUSED"):
        await unsigned.apply(step)  # the zone requires TSIG-ALLOW-DNSUPDATE

    good = rfc_driver(powerdns, tmp_path)
    result = await good.apply(step)
    assert powerdns.tsig_secret not in " ".join(result.log) and powerdns.tsig_name in " ".join(result.log)
    assert await answer(powerdns, "signed.dr.example.") == ("NOERROR", ["192.0.2.140"], 60)


async def test_rfc2136_update_to_a_zone_the_server_lacks_is_permanent(powerdns: PowerDns, tmp_path: Path) -> None:
    driver = rfc_driver(powerdns, tmp_path)
    # The signed read of the fence (for the UPDATE's prerequisite) comes first: a server without the zone refuses it.
    with pytest.raises(Refused, match=r"nowhere\.example: REFUSED reading _hyops-fence\.app\.nowhere\.example\. TXT") as caught:
        await driver.apply(ctx("app", "192.0.2.150", zone="nowhere.example"))
    assert not caught.value.retryable


async def test_rfc2136_hanging_server_is_bounded_by_the_timeout(powerdns: PowerDns, tmp_path: Path) -> None:
    with silent_tcp() as port:
        driver = Rfc2136Driver(Rfc2136DriverConfig(server="127.0.0.1", port=port), timeout=TIMEOUT)
        began = time.monotonic()
        with pytest.raises(Unavailable, match="no answer within 1s") as caught:
            await driver.apply(ctx("slow", "192.0.2.160"))
        assert time.monotonic() - began < TIMEOUT + SLACK
    assert caught.value.retryable


def test_rfc2136_config_mistakes_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="go together"):
        Rfc2136Driver(Rfc2136DriverConfig(server="127.0.0.1", tsig_name="k."))
    with pytest.raises(ValueError, match="unsupported TSIG algorithm"):
        Rfc2136Driver(Rfc2136DriverConfig(server="127.0.0.1", tsig_algorithm="hmac-nope"))
    with pytest.raises(ValueError, match="not host"):
        Rfc2136Driver(Rfc2136DriverConfig(server="127.0.0.1", nameservers=("127.0.0.1:notaport",)))


# --------------------------------------------------------------------------------------------- preflight (issue #13)


def preflight_ctx(name: str = "pf", content: str = "192.0.2.210", zone: str = ZONE, rtype: str = "A") -> StepContext:
    """As the daemon hands it: run id "preflight", fencing token 0, the inputs as profiled."""
    inputs = {"zone": zone, "name": name, "type": rtype, "content": content, "ttl": 60}
    return StepContext("preflight", "drill", "dns", MODULE, inputs, {}, fencing_token=0)


def zone_state(powerdns: PowerDns) -> tuple[int, list[Any]]:
    """(serial, every rrset) through the API: what a preflight must leave exactly as it was."""
    status, zone = powerdns.api("GET", f"/api/v1/servers/localhost/zones/{ZONE}")
    assert status == 200
    return int(zone["serial"]), sorted(zone["rrsets"], key=lambda rrset: (rrset["name"], rrset["type"]))


def counters(powerdns: PowerDns) -> dict[str, int]:
    """PowerDNS's own counts of the DNS messages it received: queries by transport, and UPDATEs."""
    status, items = powerdns.api("GET", "/api/v1/servers/localhost/statistics")
    assert status == 200
    wanted = ("udp-queries", "tcp-queries", "dnsupdate-queries")
    return {item["name"]: int(item["value"]) for item in items if item["name"] in wanted}


@contextlib.asynccontextmanager
async def non_authoritative() -> AsyncIterator[str]:
    """A DNS server that answers every question, but without the AA flag: a resolver, or a server left out of the zone."""

    class Resolverish(asyncio.DatagramProtocol):
        transport: asyncio.DatagramTransport

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)  # AA clear
            rrset = response.find_rrset(response.answer, query.question[0].name, 1, dns.rdatatype.SOA, create=True)
            rrset.add(dns.rdata.from_text("IN", "SOA", "ns1.dr.example. hostmaster.dr.example. 1 3600 600 86400 30"), 60)
            self.transport.sendto(response.to_wire(), addr)

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Resolverish, local_addr=("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{transport.get_extra_info('sockname')[1]}"
    finally:
        transport.close()


@pytest.mark.parametrize("kind", ["powerdns", "rfc2136"])
async def test_preflight_is_ready_against_a_healthy_target_and_writes_nothing(
    kind: str, powerdns: PowerDns, tmp_path: Path
) -> None:
    driver = make_driver(kind, powerdns, tmp_path)
    assert isinstance(driver, Preflight)
    await driver.apply(ctx("pf", "192.0.2.209"))  # the record exists already: a preflight must not touch it either
    before, seen = zone_state(powerdns), counters(powerdns)
    rounds, times = 5, []
    for _ in range(rounds):
        began = time.perf_counter()
        readiness = await driver.preflight(preflight_ctx())
        times.append(time.perf_counter() - began)
        assert readiness.ready, readiness.reason
    after = counters(powerdns)
    sent = {name: (after[name] - seen[name]) / rounds for name in after}
    print(f"{kind} preflight: {1000 * min(times):.1f}-{1000 * max(times):.1f} ms; DNS messages per preflight {sent}")

    assert zone_state(powerdns) == before  # serial and every rrset as they were
    assert sent == {"udp-queries": 1, "tcp-queries": 1 if kind == "rfc2136" else 0, "dnsupdate-queries": 0}
    serial = before[0]
    assert readiness.observed["zone"] == "dr.example."
    assert readiness.observed["change"] == "pf.dr.example A 192.0.2.210 (ttl 60)"
    assert readiness.observed["nameservers"] == {powerdns.nameserver: {"status": "ok", "serial": serial}}
    assert readiness.metrics == {"nameservers": 1.0, "nameservers_authoritative": 1.0, "soa_serial_spread": 0.0}
    if kind == "powerdns":
        assert readiness.observed["api"] == {"serial": serial, "kind": "Native"}
        assert readiness.reason == (
            f"powerdns: API key accepted, zone dr.example. exists (Native, serial {serial}); "
            "all 1 nameserver(s) answer its SOA authoritatively"
        )
    else:
        where = f"127.0.0.1:{powerdns.dns_port}"
        assert readiness.observed["update_server"] == {
            "server": where,
            "tsig_key": "hyops-update.",
            "status": "ok",
            "serial": serial,
        }
        assert readiness.reason.startswith(f"rfc2136: TSIG key hyops-update. accepted by {where}, zone dr.example. served there")
    assert powerdns.api_key not in str(readiness) and powerdns.tsig_secret not in str(readiness)


@pytest.mark.parametrize("kind", ["powerdns", "rfc2136"])
async def test_preflight_names_a_nameserver_that_is_silent_or_not_authoritative(
    kind: str, powerdns: PowerDns, tmp_path: Path
) -> None:
    before = zone_state(powerdns)
    with silent_udp() as hanging:
        async with non_authoritative() as resolver:
            driver = make_driver(kind, powerdns, tmp_path, nameservers=(powerdns.nameserver, hanging, resolver))
            began = time.monotonic()
            readiness = await driver.preflight(preflight_ctx())
            elapsed = time.monotonic() - began
    print(f"{kind} preflight with a silent nameserver: {elapsed:.2f} s")
    assert elapsed < 2 * TIMEOUT + SLACK  # the update server or API, then the nameservers at once
    assert not readiness.ready
    assert f"nameserver {hanging} did not answer in time" in readiness.reason
    assert f"nameserver {resolver} answered without the AA flag (not authoritative for the zone)" in readiness.reason
    assert powerdns.nameserver not in readiness.reason  # the healthy one is not blamed
    assert readiness.observed["nameservers"][hanging] == {"status": "timeout", "serial": None}
    assert readiness.metrics["nameservers_authoritative"] == 1.0 and readiness.metrics["nameservers"] == 3.0
    assert zone_state(powerdns) == before


async def test_powerdns_preflight_wrong_api_key_and_missing_zone(powerdns: PowerDns, tmp_path: Path) -> None:
    before = zone_state(powerdns)
    wrong = "revoked-" + "5" * 24
    with pytest.raises(CredentialsUnavailable) as revoked:
        await pdns_driver(powerdns, tmp_path, key=wrong).preflight(preflight_ctx())
    # The caller's reason is the error's text: it names the fault, never the key.
    assert str(revoked.value) == f"PowerDNS API at {powerdns.api_url} rejected the API key (HTTP 401)"
    with pytest.raises(NotFound) as missing:
        await pdns_driver(powerdns, tmp_path).preflight(preflight_ctx(zone="nowhere.example"))
    assert "no zone nowhere.example. on server 'localhost' (HTTP 404" in str(missing.value)
    with stopped(powerdns), pytest.raises(Unavailable, match="unreachable"):
        await pdns_driver(powerdns, tmp_path).preflight(preflight_ctx())
    assert zone_state(powerdns) == before


async def test_rfc2136_preflight_wrong_tsig_and_missing_zone_without_an_update(powerdns: PowerDns, tmp_path: Path) -> None:
    before, seen = zone_state(powerdns), counters(powerdns)
    wrong = base64.b64encode(b"not-the-real-secret-0123456789ab").decode()
    (tmp_path / "bad").mkdir()
    unknown = {"tsig_name": "no-such-key.", "tsig_secret": secret_file(tmp_path, "other", wrong)}
    for bad in (rfc_driver(powerdns, tmp_path / "bad", secret=wrong), rfc_driver(powerdns, tmp_path, tsig=False, **unknown)):
        with pytest.raises(CredentialsUnavailable) as rejected:
            await bad.preflight(preflight_ctx())
        assert "SOA query to 127.0.0.1" in str(rejected.value) and "without a valid signature" in str(rejected.value)
        assert wrong not in str(rejected.value) and powerdns.tsig_secret not in str(rejected.value)

    missing = await rfc_driver(powerdns, tmp_path).preflight(preflight_ctx(zone="nowhere.example"))
    assert not missing.ready
    where = f"127.0.0.1:{powerdns.dns_port}"
    assert missing.reason == (
        f"rfc2136: zone nowhere.example.: update server {where} does not serve the zone (REFUSED); "
        f"nameserver {powerdns.nameserver} refused the query (not authoritative for the zone?)"
    )
    # No TSIG configured: only the zone can be proved, and the reason says so.
    unsigned = await rfc_driver(powerdns, tmp_path, tsig=False).preflight(preflight_ctx())
    assert unsigned.ready and f"{where} answers (no TSIG key configured)" in unsigned.reason
    assert counters(powerdns)["dnsupdate-queries"] == seen["dnsupdate-queries"]  # not one UPDATE
    assert zone_state(powerdns) == before


async def test_preflight_checks_literal_inputs_and_leaves_references_to_the_run(powerdns: PowerDns, tmp_path: Path) -> None:
    driver = pdns_driver(powerdns, tmp_path)
    with pytest.raises(Refused, match="does not parse"):
        await driver.preflight(preflight_ctx(content="no priority here", rtype="MX"))
    later = await driver.preflight(preflight_ctx(content="${steps.capacity.ip}"))  # known only to the run
    assert later.ready and later.observed["change"] == "a record in zone dr.example."
    assert later.reason.endswith(
        "; the record is not checked: ${steps.capacity.ip}: step 'capacity' has published no output 'ip'"
    )
    with pytest.raises(Refused, match="the zone must be a literal DNS name"):
        await driver.preflight(preflight_ctx(zone="${steps.zone.name}"))
