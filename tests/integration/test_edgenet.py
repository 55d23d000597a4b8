"""The edge-pair testbed itself (``edge_net``): three namespaces on a bridge, a three-member etcd with one member in
each, and the faults later tests inject: an edge cut off (link down, or silenced with every link up) and quorum loss.

Timings are printed (``pytest -s``): what a daemon on a cut edge sees, and how fast the other side carries on.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from tests.testbed.edgenet import BRIDGE_ADDRESS, NODES, EdgeTestbed
from tests.testbed.etcd import MIN_LEASE_TTL, PREFIX
from tests.testbed.wait import eventually_sync

T = TypeVar("T")

OP_TIMEOUT = 2.0  # every etcdctl call expected to fail is bounded by this
SURE = 5.0  # the bound of a call expected to succeed: generous, as other tests may load the machine
POLL = 1.0  # each attempt of a call retried until it succeeds
SLACK = 1.5  # process start-up (etcdctl, ip netns exec) on a busy 2-core machine
FAILOVER = 15.0  # an election among the other two: 1 s election timeout plus up to 1 s randomisation, split votes retried


@pytest.fixture
def bed(edge_net: EdgeTestbed) -> EdgeTestbed:
    edge_net.ensure_healthy()  # heal what an earlier test left cut, stopped or frozen
    return edge_net


@pytest.fixture
def key() -> str:
    return f"{PREFIX}/test/{uuid.uuid4().hex}"  # where the edges' own etcd users may write


def at_once(*calls: Callable[[], Any]) -> list[Any]:  # calls of different types
    """Run blocking calls (each waits out its own timeout) side by side: the test waits for the slowest only."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [future.result() for future in [pool.submit(call) for call in calls]]


def timed(call: Callable[[], T]) -> tuple[float, T]:
    began = time.monotonic()
    result = call()
    return time.monotonic() - began, result


def put(
    bed: EdgeTestbed, node: str, key: str, value: str, via: str | None = None, timeout: float = SURE
) -> subprocess.CompletedProcess[str]:
    return bed.etcdctl(node, "put", key, value, via=via, timeout=timeout)


def get(
    bed: EdgeTestbed, node: str, key: str, via: str | None = None, serializable: bool = False, timeout: float = SURE
) -> str | None:
    """The value of ``key`` read from inside ``node`` (linearizable unless ``serializable``); None if the read failed."""
    args = ["get", key, "--print-value-only", *(["--consistency=s"] if serializable else [])]
    done = bed.etcdctl(node, *args, via=via, timeout=timeout)
    return done.stdout.strip() if done.returncode == 0 else None


def ok(done: subprocess.CompletedProcess[str]) -> bool:
    return done.returncode == 0 and done.stdout.strip() == "OK"


def test_each_member_runs_in_its_node_namespace_and_is_healthy_through_the_bridge(bed: EdgeTestbed) -> None:
    assert bed.endpoints == ["https://10.77.0.1:2379", "https://10.77.0.2:2379", "https://10.77.0.3:2379"]
    assert bed.net.bridge_address == BRIDGE_ADDRESS == "10.77.0.254"
    for i, node in enumerate(NODES):
        assert bed.member(node) == i and bed.endpoint(node) == f"https://{bed.net.address(node)}:2379"
        assert bed.etcd.healthy(i)  # asked from the root namespace, over the bridge
        process = bed.etcd.process(i)
        assert process is not None
        # The PID is etcd itself (``ip netns exec`` execs), so stop/kill/freeze signal etcd, and it is in the node's netns.
        with open(f"/proc/{process.pid}/comm") as comm:
            assert comm.read().strip() == "etcd"
        assert os.stat(f"/proc/{process.pid}/ns/net").st_ino == os.stat(f"/run/netns/{bed.net.ns(node)}").st_ino
    listed = bed.etcdctl("witness", "member", "list", "-w", "json")
    assert listed.returncode == 0, listed.stderr
    members = json.loads(listed.stdout)["members"]
    assert sorted((m["name"], m["clientURLs"]) for m in members) == [
        ("e1", ["https://10.77.0.1:2379"]), ("e2", ["https://10.77.0.2:2379"]), ("e3", ["https://10.77.0.3:2379"]),
    ]  # fmt: skip


POOL_AND_BRIDGE = """
import asyncio, socket, sys
from pathlib import Path
from hybridops_daemon.lease.etcd import EtcdPool
from hybridops_daemon.lease.etcd_credentials import EtcdCredentials

async def main(key, bridge, port, ca, cert, private):
    edge01 = EtcdCredentials(ca=Path(ca).read_bytes(), cert=Path(cert).read_bytes(), key=Path(private).read_bytes())
    async with EtcdPool(["https://10.77.0.2:2379"], 5.0, edge01) as e2:
        await e2.call("put", lambda c: c.put(key.encode(), b"from-the-pool"))
    async with EtcdPool(["https://10.77.0.1:2379"], 5.0, edge01) as e1:
        print((await e1.call("get", lambda c: c.get(key.encode()))).value.decode())
    with socket.create_connection((bridge, port), timeout=2) as conn:
        print(conn.recv(16).decode())

asyncio.run(main(*sys.argv[1:3], int(sys.argv[3]), *sys.argv[4:]))
"""


def test_from_inside_edge01_writes_and_reads_go_through_its_own_member_and_through_e2(bed: EdgeTestbed, key: str) -> None:
    assert ok(put(bed, "edge01", key, "from-etcdctl"))
    assert get(bed, "edge01", key, via="edge02") == "from-etcdctl"

    # The daemon's own stack from inside the namespace: this venv's Python and the lease's etcd pool, over TLS as edge01;
    # and the bridge address, where a test's fake cloud APIs listen, is reachable from there.
    assert bed.etcd.pki is not None
    certificate = bed.etcd.client("edge01")
    with socket.create_server((BRIDGE_ADDRESS, 0)) as server:
        port = server.getsockname()[1]
        argv = [*bed.net.exec_prefix("edge01"), sys.executable, "-c", POOL_AND_BRIDGE, key, BRIDGE_ADDRESS, str(port),
                str(bed.etcd.pki.ca), str(certificate.cert), str(certificate.key)]  # fmt: skip
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            conn, peer = accept_from(server, child)
            with conn:
                assert peer[0] == bed.net.address("edge01")
                conn.sendall(b"hello")
        finally:
            out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert out.split() == ["from-the-pool", "hello"]


def accept_from(server: socket.socket, child: subprocess.Popen[str], within: float = 30.0) -> tuple[socket.socket, Any]:
    """The connection ``child`` makes to ``server``; fails as soon as the child exits without making it."""
    server.settimeout(0.1)  # each attempt waits this long for the connection

    def accepted() -> tuple[socket.socket | None, Any] | None:
        try:
            return server.accept()
        except TimeoutError:
            return (None, "exited") if child.poll() is not None else None

    conn, peer = eventually_sync("the child to connect", accepted, within=within, every=0)
    if conn is None:
        err = child.stderr.read() if child.stderr else ""
        raise AssertionError(f"the child exited ({child.returncode}) without connecting:\n{err}")
    return conn, peer


def test_etcd_raises_a_1s_lease_to_its_minimum_ttl(bed: EdgeTestbed) -> None:
    granted = json.loads(bed.etcdctl("edge01", "lease", "grant", "1", "-w", "json").stdout)
    assert granted["TTL"] == MIN_LEASE_TTL == 2
    alive = json.loads(bed.etcdctl("edge01", "lease", "timetolive", format(granted["ID"], "x"), "-w", "json").stdout)
    assert alive["granted-ttl"] == MIN_LEASE_TTL


@pytest.mark.parametrize("fault", ["cut", "silence"])
def test_a_cut_off_leader_edge_cannot_write_but_the_other_edge_can_and_the_cut_edge_catches_up(
    bed: EdgeTestbed, key: str, fault: str
) -> None:
    bed.move_leader("edge01")  # the harder case: the other two must elect a leader before edge02 can write
    assert ok(put(bed, "edge01", key, "before"))
    getattr(bed.net, fault)("edge01")
    try:
        # Failed writes go to another key: one forwarded to a leader over the cut may still land after the heal (below).
        def edge02_writes() -> bool:
            return ok(put(bed, "edge02", key, "during", timeout=POLL))

        (took, own), (_, other), (_, linearizable), (_, stale), (carried_on, _) = at_once(
            lambda: timed(lambda: put(bed, "edge01", f"{key}/lost", "lost", timeout=OP_TIMEOUT)),  # own member: no quorum
            lambda: timed(lambda: put(bed, "edge01", f"{key}/lost", "lost", via="edge02", timeout=OP_TIMEOUT)),  # unreachable
            lambda: timed(lambda: get(bed, "edge01", key, timeout=OP_TIMEOUT)),
            lambda: timed(lambda: get(bed, "edge01", key, serializable=True)),
            lambda: timed(lambda: eventually_sync("a write from edge02 (e2 + e3 have quorum)", edge02_writes, within=FAILOVER)),
        )
        assert own.returncode != 0 and other.returncode != 0, (own.stdout, other.stdout)
        assert OP_TIMEOUT - 0.1 <= took <= OP_TIMEOUT + SLACK, f"the write failed after {took:.2f}s, not at its timeout"
        assert linearizable is None
        assert stale == "before", "a serializable read is served from the cut member's own (stale) copy"
        assert get(bed, "witness", key) == "during"
        assert get(bed, "edge01", key, serializable=True) == "before"
    finally:
        bed.net.heal("edge01")
    healed_at = time.monotonic()
    eventually_sync("edge01 reading the write made during the cut", lambda: get(bed, "edge01", key, timeout=POLL) == "during",
                    within=FAILOVER)  # fmt: skip
    caught_up = time.monotonic() - healed_at
    print(f"\n{fault}: edge01's write failed at its {OP_TIMEOUT:g}s timeout ({took:.2f}s); edge02 wrote "
          f"{carried_on:.2f}s after the {fault}; edge01 caught up {caught_up:.2f}s after the heal")  # fmt: skip


@pytest.mark.parametrize("fault", ["cut", "silence"])
def test_a_write_that_timed_out_on_a_cut_follower_lands_after_the_heal(bed: EdgeTestbed, key: str, fault: str) -> None:
    """The follower forwarded the proposal to the leader before noticing the cut; TCP delivers it once the link is back
    (within etcd's 5 s peer read timeout). A failed write is ambiguous, not undone: the lease's campaign must allow it."""
    bed.move_leader("edge02")
    getattr(bed.net, fault)("edge01")
    try:
        assert put(bed, "edge01", key, "late", timeout=OP_TIMEOUT).returncode != 0
        assert get(bed, "witness", key) == "", "not committed during the cut"
    finally:
        bed.net.heal("edge01")
    healed_at = time.monotonic()
    eventually_sync("the timed-out write landing", lambda: get(bed, "witness", key, timeout=POLL) == "late", within=FAILOVER)
    landed = time.monotonic() - healed_at
    print(f"\n{fault}: the write that timed out during the {fault} was committed {landed:.2f}s after the heal")


def test_quorum_loss_stops_every_write_and_quorum_return_restores_them(bed: EdgeTestbed, key: str) -> None:
    bed.etcd.kill(bed.member("witness"))  # kill -9: two of three still make a quorum
    assert ok(put(bed, "edge01", key, "two-left"))
    assert get(bed, "edge02", key) == "two-left"

    bed.etcd.stop(bed.member("edge02"))
    writes = at_once(
        lambda: put(bed, "edge01", key, "lost", timeout=OP_TIMEOUT),
        lambda: put(bed, "edge02", key, "lost", via="edge01", timeout=OP_TIMEOUT),
        lambda: put(bed, "edge02", key, "lost", timeout=OP_TIMEOUT),  # its own member is down: refused
        lambda: put(bed, "witness", key, "lost", via="edge01", timeout=OP_TIMEOUT),
    )
    assert [w.returncode != 0 for w in writes] == [True] * 4, [w.stdout for w in writes]
    assert get(bed, "edge01", key, serializable=True) == "two-left"

    restarted = time.monotonic()
    bed.etcd.start(bed.member("edge02"))
    bed.etcd.start(bed.member("witness"))
    bed.etcd.wait_healthy()
    for node in NODES:
        assert ok(put(bed, node, key, f"back-{node}")), node
        assert get(bed, "edge01", key) == f"back-{node}"
    print(f"\nquorum back and written through every member {time.monotonic() - restarted:.2f}s after the restart")
