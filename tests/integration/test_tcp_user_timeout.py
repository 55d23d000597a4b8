"""No request lands after its sender's leadership ended: every driver's connections carry TCP_USER_TIMEOUT, and it
drops a request the kernel could not deliver instead of letting it arrive after a partition heals.

Two parts:
- each driver, pointed at a server that accepts and never answers, opens its connection with TCP_USER_TIMEOUT equal
  to its request bound (read from the kernel on the live socket while the request waits);
- on the edge testbed (``EdgeNet``: edge01 in its own namespace, the fake Hetzner API on the bridge), the hcloud
  driver's own client, in edge01, sends a labels PUT on a warm connection just after edge01 is cut. The SDK gives up
  after its request timeout; the link heals after a longer "lease ttl". With the option the request never reaches the
  API; without it (the control: the same client, its adapter replaced by requests' plain one) the kernel retransmits
  the queued request after the heal and the API applies it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.config.base import SecretRef
from hybridops_daemon.drivers.base import DriverError, StepContext
from hybridops_daemon.drivers.declarations.dns import PowerDnsDriverConfig, Rfc2136DriverConfig
from hybridops_daemon.drivers.declarations.gcp import GcpDriverConfig
from hybridops_daemon.drivers.declarations.hcloud import HcloudDriverConfig
from hybridops_daemon.drivers.declarations.netbox import NetboxDriverConfig
from hybridops_daemon.drivers.declarations.postgres import PostgresDriverConfig, PostgresSite
from hybridops_daemon.drivers.dns import PowerDnsDriver
from hybridops_daemon.drivers.gcp import GcpDriver
from hybridops_daemon.drivers.hcloud import HcloudDriver
from hybridops_daemon.drivers.netbox import NetboxDriver
from hybridops_daemon.drivers.postgres import PostgresDriver
from hybridops_daemon.drivers.rfc2136 import Rfc2136Driver
from hybridops_daemon.lease.etcd import EtcdPool, EtcdUnavailable
from tests.fakes.hcloud_api import SEED_FLOATING_IP, HcloudFake
from tests.testbed.edgenet import BRIDGE_ADDRESS, EdgeNet
from tests.testbed.wait import eventually

REPO = Path(__file__).resolve().parents[2]
BOUND = 1.5  # seconds: every driver's request bound in the first part
SECRET_ENV = "HYOPS_TEST_UT_SECRET"


# --------------------------------------------------------------------------------------------- every driver


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel does) and never reads or answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


def user_timeouts_to(port: int) -> list[int]:
    """TCP_USER_TIMEOUT (ms) of each socket of this process connected to 127.0.0.1:``port``, read from the kernel."""
    inodes = set()
    # gRPC connects from an IPv6 socket to the IPv4-mapped address: /proc lists those in tcp6
    for table, address in (("tcp", "0100007F"), ("tcp6", "0000000000000000FFFF00000100007F")):
        for line in Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            remote, inode = fields[2], fields[9]
            if remote == f"{address}:{port:04X}":
                inodes.add(inode)
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").removeprefix("socket:[").removesuffix("]") in inodes:
                with socket.socket(fileno=os.dup(int(fd))) as sock:  # the family is read off the descriptor
                    found.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
    return found


def step(module: str, inputs: dict[str, Any]) -> StepContext:
    return StepContext("run-ut", "prod", "s", module, inputs, {}, fencing_token=1)


def _hcloud(port: int) -> Awaitable[Any]:
    config = HcloudDriverConfig(endpoint=f"http://127.0.0.1:{port}/v1", token=SecretRef(env=SECRET_ENV))
    driver = HcloudDriver(config, request_timeout=BOUND)
    return driver.check(step("network/floating-ip@v1", {"ip": "203.0.113.10", "target": "edge02"}))


def _gcp(port: int) -> Awaitable[Any]:
    config = GcpDriverConfig(project="p", zone="z", endpoint=f"http://127.0.0.1:{port}", request_timeout=BOUND)
    return GcpDriver(config, request_timeout=BOUND).check(step("compute/capacity@v1", {"name": "vm", "state": "running"}))


DNS_INPUTS = {"zone": "dr.example.", "name": "app.dr.example.", "type": "A", "content": "192.0.2.1", "ttl": 60}


def _powerdns(port: int) -> Awaitable[Any]:
    api_url, key = f"http://127.0.0.1:{port}", SecretRef(env=SECRET_ENV)
    config = PowerDnsDriverConfig(api_url=api_url, api_key=key, nameservers=("127.0.0.1:1",))
    return PowerDnsDriver(config, timeout=BOUND).apply(step("dns/record@v1", DNS_INPUTS))


def _rfc2136(port: int) -> Awaitable[Any]:
    config = Rfc2136DriverConfig(server="127.0.0.1", port=port)
    return Rfc2136Driver(config, timeout=BOUND).apply(step("dns/record@v1", DNS_INPUTS))


def _netbox(port: int) -> Awaitable[Any]:
    config = NetboxDriverConfig(url=f"http://127.0.0.1:{port}", token=SecretRef(env=SECRET_ENV), timeout=BOUND)
    inputs = {"address": "203.0.113.10/32", "status": "active", "description": "x"}
    return NetboxDriver(config).check(step("ipam/address@v1", inputs))


def _postgres(port: int) -> Awaitable[Any]:
    site = PostgresSite(dsn=f"host=127.0.0.1 port={port} user=u dbname=d sslmode=disable")
    config = PostgresDriverConfig(clusters={"c": {"a": site}}, connect_timeout=BOUND)
    return PostgresDriver(config).check(step("database/primary@v1", {"cluster": "c", "primary": "a"}))


DRIVERS: dict[str, Callable[[int], Awaitable[Any]]] = {
    "hcloud": _hcloud,
    "gcp": _gcp,
    "powerdns": _powerdns,
    "rfc2136": _rfc2136,
    "netbox": _netbox,
    "postgres": _postgres,
}


@pytest.mark.parametrize("name", sorted(DRIVERS))
async def test_every_driver_connection_carries_tcp_user_timeout_of_its_request_bound(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "a-test-only-secret")
    with silent_server() as port:
        call = asyncio.ensure_future(DRIVERS[name](port))
        try:
            seen = await eventually(f"{name}'s connection to the silent server", lambda: user_timeouts_to(port), within=5)
        finally:
            with contextlib.suppress(DriverError):
                await asyncio.wait_for(call, BOUND + 10)  # it gives up by itself: no answer within its bound
    assert seen == [int(BOUND * 1000)] * len(seen)


async def test_the_etcd_channels_carry_tcp_user_timeout_of_the_op_timeout() -> None:
    """The lease's fencing transactions too: gRPC sets the option from the keepalive timeout the pool gives it."""
    with silent_server() as port:
        pool = EtcdPool([f"http://127.0.0.1:{port}"], op_timeout=BOUND)
        call = asyncio.ensure_future(pool.call("fencing check", lambda client: client.get(b"/hybridops/x")))
        try:
            seen = await eventually("the etcd channel's connection", lambda: user_timeouts_to(port), within=5)
        finally:
            with contextlib.suppress(EtcdUnavailable):
                await asyncio.wait_for(call, BOUND + 10)  # no answer within op_timeout: EtcdUnavailable
            await pool.close()
    assert seen == [int(BOUND * 1000)] * len(seen)


# --------------------------------------------------------------------------------------------- the cut


REQUEST_TIMEOUT = 1.0  # the driver's request bound: the SDK gives up, and TCP_USER_TIMEOUT fires, after this
TTL = 2.0  # the lease ttl this stands for (etcd 3.4's minimum, as in the edge-pair tests): the heal comes later
HEAL_AFTER = TTL + 1.0

# Run inside edge01: the hcloud driver's own client (its session as the driver mounts it); a GET warms the connection,
# then, once told the link is cut, a labels PUT whose bytes the kernel can only queue.
CLIENT = textwrap.dedent(
    """
    import os, sys, requests
    from hybridops_daemon.config.base import SecretRef
    from hybridops_daemon.drivers.declarations.hcloud import HcloudDriverConfig
    from hybridops_daemon.drivers.hcloud import HcloudDriver

    endpoint, timeout, bounded = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "bounded"
    config = HcloudDriverConfig(endpoint=endpoint, token=SecretRef(env="HCLOUD_TOKEN"))
    client = HcloudDriver(config, request_timeout=timeout)._build_client(os.environ["HCLOUD_TOKEN"])
    if not bounded:  # the control: requests' own adapter, no socket options of ours
        for prefix in ("http://", "https://"):
            client._client._session.mount(prefix, requests.adapters.HTTPAdapter())
    fip = client.floating_ips.get_all()[0]
    print("warm", flush=True)
    sys.stdin.readline()
    try:
        client.floating_ips.update(fip, labels={"late": "yes"})
        print("answered", flush=True)
    except requests.Timeout:
        print("gave up", flush=True)
    """
)


def connections_to(net: EdgeNet, port: int) -> str:
    """What edge01's kernel still holds toward the fake (``ss``): empty once a connection is gone for good."""
    return net.run("edge01", "ss", "-tnH", "state", "all", "dst", f"{BRIDGE_ADDRESS}:{port}").stdout.strip()


def late_put(bounded: bool, watch: float) -> tuple[float | None, str]:
    """Cut edge01 with a warm connection, send the PUT, heal HEAL_AFTER s after the cut and watch the API for ``watch``
    s more: (when the PUT landed, in s after the cut, or None; what edge01's kernel held toward the API at the heal)."""
    net = EdgeNet(nodes=("edge01",))
    fake = HcloudFake(host=BRIDGE_ADDRESS).start()
    client: subprocess.Popen[str] | None = None
    try:
        env = {**os.environ, "HCLOUD_TOKEN": fake.token, "PYTHONPATH": str(REPO)}
        argv = [sys.executable, "-c", CLIENT, fake.endpoint, str(REQUEST_TIMEOUT), "bounded" if bounded else "plain"]
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
        client = subprocess.Popen([*net.exec_prefix("edge01"), *argv], env=env, text=True, **pipes)
        assert client.stdin is not None and client.stdout is not None
        assert client.stdout.readline().strip() == "warm"
        net.cut("edge01")
        cut_at = time.monotonic()
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "gave up"  # after REQUEST_TIMEOUT: the SDK closed the socket
        assert client.wait(timeout=10) == 0
        time.sleep(max(0.0, cut_at + HEAL_AFTER - time.monotonic()))
        held = connections_to(net, fake.port)
        assert fake.calls("PUT") == 0  # nothing arrived while cut
        net.heal("edge01")
        while time.monotonic() < cut_at + HEAL_AFTER + watch:
            if fake.labels(SEED_FLOATING_IP).get("late") == "yes":
                return time.monotonic() - cut_at, held
            time.sleep(0.05)
        return None, held
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        fake.stop()
        net.close()


def test_a_request_queued_across_a_cut_dies_with_its_connection_instead_of_landing_after_the_heal() -> None:
    # The control first: requests' plain adapter. The SDK gives up and closes its socket, but the kernel goes on
    # retransmitting the queued PUT, which lands after the heal (the labels change): what the option is for.
    landed, held = late_put(bounded=False, watch=15.0)
    assert landed is not None, f"without TCP_USER_TIMEOUT the PUT should land after the heal; edge01 held {held!r}"
    print(f"\nwithout TCP_USER_TIMEOUT: the PUT landed {landed:.1f}s after the cut, {landed - HEAL_AFTER:.1f}s after the heal")
    assert landed > HEAL_AFTER and held != ""

    # The driver as it is: the kernel aborts the connection (queued PUT and all) REQUEST_TIMEOUT after the write,
    # long before the heal. Watched for twice as long as the control took to land after the heal (the retransmissions
    # keep the same schedule in both runs), and at least 3 s, nothing arrives.
    landed_too, held = late_put(bounded=True, watch=max(3.0, 2 * (landed - HEAL_AFTER)))
    print(f"with TCP_USER_TIMEOUT {REQUEST_TIMEOUT:g}s: landed={landed_too}; edge01 held {held!r} at the heal")
    assert held == ""
    assert landed_too is None
