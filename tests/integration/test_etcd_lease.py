"""EtcdLease against a real three-member etcd: one leader at a time, fencing tokens, expiry, quorum loss; each test
over plaintext and over mutual TLS with etcd's authentication on (each node as its own etcd user, from its certificate)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from hybridops_daemon.lease.base import LeaseLost
from hybridops_daemon.lease.etcd import EtcdLease, EtcdPool
from tests.testbed.etcd import PREFIX, EtcdCluster
from tests.testbed.wait import eventually

TTL = 2.0
OP_TIMEOUT = 1.0
SLACK = 1.5  # scheduling on a shared 2-core machine, and etcd checks lease expiry every 500 ms

LeaseFactory = Callable[..., EtcdLease]


@pytest.fixture(params=["plaintext", "mutual-tls"])
def cluster(request: pytest.FixtureRequest) -> EtcdCluster:
    found: EtcdCluster = request.getfixturevalue("etcd_cluster" if request.param == "plaintext" else "tls_cluster")
    found.ensure_running()  # heal what an earlier test stopped
    return found


@pytest.fixture
async def make_lease(cluster: EtcdCluster) -> AsyncIterator[LeaseFactory]:
    """Leases for nodes on one fresh leader key per test; all closed (and resigned) at the end."""
    key = f"{PREFIX}/test/{uuid.uuid4().hex}/leader"
    made: list[tuple[EtcdLease, EtcdPool]] = []

    def make(node: str, clock: Callable[[], float] = time.monotonic) -> EtcdLease:
        pool = EtcdPool(cluster.endpoints, OP_TIMEOUT, cluster.credentials(node))  # one per node, as daemons
        lease = EtcdLease(pool, key, node, TTL, clock=clock)
        made.append((lease, pool))
        return lease

    yield make
    for lease, pool in made:
        await lease.resign()
        await pool.close()


async def timed(what: str, attempt: Callable[[], Awaitable[bool]], within: float) -> float:
    """The seconds until ``attempt()`` (tried every 0.1 s) returns True."""
    began = time.monotonic()
    await eventually(what, attempt, within, every=0.1)
    return time.monotonic() - began


async def test_keepalive_holds_the_lease_past_its_ttl_and_the_other_node_cannot_campaign(make_lease: LeaseFactory) -> None:
    a, b = make_lease("edge01"), make_lease("edge02")
    assert await a.campaign()
    assert a.token > 0 and a.reason == ""
    async with asyncio.TaskGroup() as tg:
        keepalive = tg.create_task(a.run())
        await asyncio.sleep(1.5 * TTL)  # the point: without refreshes the lease would have expired by now
        assert a.leading
        await a.ensure(a.token)
        assert not await b.campaign()
        assert "'edge01'" in b.reason and f"token {a.token}" in b.reason
        with pytest.raises(LeaseLost):
            await b.ensure(a.token)
        await a.resign()
    assert keepalive.done() and not a.leading


async def test_tokens_strictly_increase_across_successive_leaders_and_old_tokens_are_refused(make_lease: LeaseFactory) -> None:
    a, b = make_lease("edge01"), make_lease("edge02")
    tokens: list[int] = []
    for leader, other in [(a, b), (b, a), (a, b), (b, a)]:
        assert await leader.campaign(), leader.reason
        assert not await other.campaign()
        await leader.ensure(leader.token)
        tokens.append(leader.token)
        await leader.resign()
        with pytest.raises(LeaseLost, match="resigned"):
            await leader.ensure(leader.token)
    assert all(earlier < later for earlier, later in itertools.pairwise(tokens)), tokens
    assert await a.campaign()
    with pytest.raises(LeaseLost, match=f"token {tokens[0]} is not current"):
        await a.ensure(tokens[0])  # the same node, but an earlier holding
    await a.ensure(a.token)


async def test_an_unrefreshed_leader_loses_within_the_ttl_and_etcd_refuses_its_token_after_it_wakes(
    make_lease: LeaseFactory,
) -> None:
    frozen_at = time.monotonic()
    # A paused VM: its monotonic clock did not advance, so only etcd can tell it that it lost.
    a = make_lease("edge01", clock=lambda: frozen_at)
    b = make_lease("edge02")
    assert await a.campaign()  # and never run(): no refresh ever reaches etcd
    old = a.token
    took = await timed("edge02 taking over", b.campaign, within=TTL + 3 * SLACK)
    assert took <= TTL + SLACK, f"takeover took {took:.2f}s with a {TTL}s TTL"
    assert b.token > old
    assert a.leading  # by its own frozen clock it still leads...
    with pytest.raises(LeaseLost, match=rf"token {old} is no longer current in etcd: .* held by 'edge02' under token {b.token}"):
        await a.ensure(old)  # ...but etcd refuses it
    assert not a.leading
    await b.ensure(b.token)


async def test_the_create_revision_fences_an_old_holding_of_the_same_node_name(make_lease: LeaseFactory) -> None:
    frozen_at = time.monotonic()
    stale = make_lease("edge01", clock=lambda: frozen_at)
    restarted = make_lease("edge01")  # the same node's daemon, restarted while the old process was paused
    assert await stale.campaign()
    old = stale.token
    await eventually("the restarted daemon winning", restarted.campaign, within=TTL + 3 * SLACK, every=0.1)
    assert restarted.token > old
    # The key's value is the same node name again: only the create-revision compare tells the holdings apart.
    with pytest.raises(
        LeaseLost, match=rf"token {old} is no longer current in etcd: .* held by 'edge01' under token {restarted.token}"
    ):
        await stale.ensure(old)
    await restarted.ensure(restarted.token)


async def test_a_leader_cut_off_from_etcd_stops_by_its_local_clock(make_lease: LeaseFactory, cluster: EtcdCluster) -> None:
    a = make_lease("edge01")
    began = time.monotonic()  # before the grant: the TTL counts from when the request left, not when it was answered
    assert await a.campaign()
    for i in range(3):
        cluster.freeze(i)

    try:
        await eventually("edge01 to stop leading", lambda: not a.leading, within=TTL + SLACK, every=0.02)
        stopped = time.monotonic() - began
        assert stopped <= TTL + 0.1, f"still leading {stopped:.2f}s after its lease was requested, TTL {TTL}s"
        assert "ran out on the local clock" in a.reason
        with pytest.raises(LeaseLost, match="ran out on the local clock"):
            await a.ensure(a.token)
    finally:
        for i in range(3):
            cluster.thaw(i)


async def test_a_fencing_check_etcd_does_not_answer_ends_the_holding_though_etcd_answers_again(
    make_lease: LeaseFactory, cluster: EtcdCluster
) -> None:
    # Seen in the fault schedule: a check timed out during an etcd election, the run was handed on, the next refresh
    # succeeded, and the node went on leading a lane whose run nobody worked on. The holding must end with the check.
    a, b = make_lease("edge01"), make_lease("edge02")
    assert await a.campaign()
    for i in range(3):
        cluster.freeze(i)
    try:
        with pytest.raises(LeaseLost, match="cannot confirm fencing token"):
            await a.ensure(a.token)
    finally:
        for i in range(3):
            cluster.thaw(i)
    assert not a.leading, "a fencing check that failed left the holding standing (its TTL has not run out yet)"
    assert "cannot confirm fencing token" in a.reason
    await asyncio.wait_for(a.run(), OP_TIMEOUT + SLACK)  # returns at once, revoking the lease: no TTL to wait out
    took = await timed("edge02 to win the lane", b.campaign, within=TTL + SLACK)
    print(f"edge02 won {took:.2f}s after edge01's holding ended")
    with pytest.raises(LeaseLost):
        await a.ensure(a.token)


async def test_a_handover_write_etcd_applies_late_never_overwrites_a_newer_one(cluster: EtcdCluster) -> None:
    # Seen in the fault schedule: a handover write timed out during an etcd leader transfer and etcd applied it after a
    # newer one, so the successor adopted a lane without the run it was running. A late write is a request built
    # earlier: here, the transaction a write would have sent then, handed to etcd now.
    base = f"{PREFIX}/test/{uuid.uuid4().hex}"
    async with EtcdPool(cluster.endpoints, OP_TIMEOUT, cluster.credentials("edge01")) as pool:
        a = EtcdLease(pool, f"{base}/leader", "edge01", TTL, handover_key=f"{base}/handover")
        try:
            assert await a.campaign()
            assert await a.handover() is None

            def built_now(document: bytes) -> Callable[[Any], Awaitable[tuple[bool, list[Any]]]]:
                return functools.partial(a._fenced_txn, token=a.token, handover=document, expected=a._handover_rev)

            older = built_now(b"older")
            await a.ensure(a.token, b"newer")
            landed, _ = await pool.call("the older write, applied late", older)
            assert not landed and await a.handover() == b"newer"

            # The other order: the older write lands first; the newer one then finds the handover moved under it,
            # sees the leader key is still its own, and writes over it.
            landed, _ = await pool.call("the older write, applied first", built_now(b"older"))
            assert landed
            await a.ensure(a.token, b"newest")
            assert await a.handover() == b"newest"
        finally:
            await a.resign()


async def test_quorum_loss_stops_everyone_and_quorum_return_restores_leadership(
    make_lease: LeaseFactory, cluster: EtcdCluster
) -> None:
    a, b = make_lease("edge01"), make_lease("edge02")
    assert await a.campaign()
    async with asyncio.TaskGroup() as tg:
        keepalive = tg.create_task(a.run())
        # Killed, not stopped: a TLS member takes about a second to exit after SIGTERM, this loop would stand still
        # meanwhile (these calls block), and the TTL would run out before the check below is even asked.
        cluster.kill(1)
        cluster.kill(2)
        began = time.monotonic()
        with pytest.raises(LeaseLost, match="cannot confirm fencing token"):
            await a.ensure(a.token)
        assert time.monotonic() - began <= OP_TIMEOUT + SLACK
        began = time.monotonic()
        assert not await b.campaign()
        assert time.monotonic() - began <= 2 * OP_TIMEOUT + SLACK
        assert "cannot campaign" in b.reason
        await asyncio.wait_for(keepalive, OP_TIMEOUT + SLACK)  # run() gives up: the failed check ended the holding
    assert not a.leading and "cannot confirm fencing token" in a.reason

    cluster.start(1)
    cluster.start(2)
    await asyncio.to_thread(cluster.wait_healthy)
    # a's lease (revoked while etcd was away, in vain) still binds the key until it expires after quorum returns.
    took = await timed("a campaign after quorum returns", b.campaign, within=TTL + 5 * SLACK)
    print(f"campaign succeeded {took:.2f}s after quorum returned")
    await b.ensure(b.token)
    assert not await a.campaign()
