"""The etcd lease across an untrusted link: who etcd lets in over TLS, and what it lets them touch.

Against real etcd 3.4 members with TLS for peers and clients and authentication on (``tests/testbed/etcd.py``): with
``--client-cert-auth`` the user is a client certificate's CN; in password mode the client logs in for a token that
expires. Leadership, fencing and handover over TLS are the lease tests' (``test_etcd_lease.py``, both transports).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from aetcd import rpc

from hybridops_daemon.lease.base import LeaseLost
from hybridops_daemon.lease.etcd import EtcdLease, EtcdPool
from hybridops_daemon.lease.etcd_credentials import EtcdCredentials
from tests.testbed.etcd import PREFIX, SERVER_NAME, EtcdCluster, Secure, running
from tests.testbed.pki import Pki

TTL = 2.0
OP_TIMEOUT = 0.5
TOKEN_TTL = 1  # seconds an unused token lives in the password-mode cluster

Campaigner = Callable[..., EtcdLease]


@pytest.fixture
def cluster(tls_cluster: EtcdCluster) -> EtcdCluster:
    tls_cluster.ensure_running()
    return tls_cluster


@pytest.fixture(scope="module")
def password_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """TLS for the server only (no client certificates): users log in with a password for a token."""
    with running(tmp_path_factory.mktemp("etcd-pw"), Secure(client_certs=False, token_ttl=TOKEN_TTL), size=1) as cluster:
        yield cluster


@pytest.fixture
async def lease_as(tls_cluster: EtcdCluster) -> AsyncIterator[Campaigner]:
    """``lease_as(credentials, key=...)``: a lease on a pool of its own; all resigned and closed at the end."""
    made: list[tuple[EtcdLease, EtcdPool]] = []

    def make(credentials: EtcdCredentials, key: str | None = None, node: str = "edge01") -> EtcdLease:
        pool = EtcdPool(tls_cluster.endpoints, OP_TIMEOUT, credentials)
        made.append((EtcdLease(pool, key or f"{PREFIX}/test/{uuid.uuid4().hex}/leader", node, TTL), pool))
        return made[-1][0]

    yield make
    for lease, pool in made:
        await lease.resign()
        await pool.close()


def stranger(cluster: EtcdCluster, cn: str = "stranger", pki: Pki | None = None) -> EtcdCredentials:
    """A client certificate with CN ``cn`` from ``pki`` (default: the cluster's own CA)."""
    assert cluster.pki is not None
    pair = (pki or cluster.pki).client(cn)
    return dataclasses.replace(cluster.credentials(None), cert=pair.cert.read_bytes(), key=pair.key.read_bytes())


async def test_without_a_client_certificate_the_handshake_fails_and_nothing_is_read(
    cluster: EtcdCluster, lease_as: Campaigner
) -> None:
    key = f"{PREFIX}/test/{uuid.uuid4().hex}/leader"
    anonymous = lease_as(cluster.credentials(None), key)
    assert not await anonymous.campaign()
    assert "no etcd member reachable" in anonymous.reason, anonymous.reason
    edge = lease_as(cluster.credentials("edge01"), key)
    assert await edge.campaign(), edge.reason  # the same key, the same members: only the certificate differs


@pytest.mark.parametrize("who", ["stranger", "norole"])
async def test_a_certificate_whose_user_has_no_role_is_denied_inside_the_prefix(
    cluster: EtcdCluster, lease_as: Campaigner, who: str
) -> None:
    # "stranger": the CA signed it, but etcd has no such user; "norole": a user without a role.
    denied = lease_as(stranger(cluster, who) if who == "stranger" else cluster.credentials("norole"))
    assert not await denied.campaign()
    assert "cannot campaign: campaign: etcdserver: permission denied" in denied.reason, denied.reason


async def test_an_edge_may_use_the_hybridops_prefix_and_nothing_outside_it(cluster: EtcdCluster, lease_as: Campaigner) -> None:
    outside = f"/elsewhere/{uuid.uuid4().hex}/leader"
    denied = lease_as(cluster.credentials("edge01"), outside)
    assert not await denied.campaign()
    assert "permission denied" in denied.reason, denied.reason
    assert cluster.etcdctl("get", "--prefix", "/elsewhere/").stdout == ""  # as root: nothing was written there

    inside = lease_as(cluster.credentials("edge01"))
    assert await inside.campaign(), inside.reason
    await inside.ensure(inside.token)
    other = lease_as(cluster.credentials("edge02"), inside._key.decode(), node="edge02")
    assert not await other.campaign() and "held by 'edge01'" in other.reason  # edge02 reads it under its own role


async def test_the_server_name_is_what_the_members_certificates_are_checked_against(
    cluster: EtcdCluster, lease_as: Campaigner
) -> None:
    edge = cluster.credentials("edge01")
    # The endpoints are addresses, which the members' certificates also carry: the name given instead is checked.
    named = lease_as(dataclasses.replace(edge, server_name=SERVER_NAME))
    assert await named.campaign(), named.reason
    misnamed = lease_as(dataclasses.replace(edge, server_name="etcd.elsewhere.test"))
    assert not await misnamed.campaign()
    assert "no etcd member reachable" in misnamed.reason, misnamed.reason


async def test_later_calls_use_the_credentials_a_reload_swaps_in(
    cluster: EtcdCluster, lease_as: Campaigner, tmp_path: Path
) -> None:
    lease = lease_as(cluster.credentials("norole"))
    pool = lease._pool
    assert not await lease.campaign() and "permission denied" in lease.reason

    await pool.use(cluster.credentials("edge01"))  # a renewed certificate, say, for the right user this time
    assert await lease.campaign(), lease.reason
    await lease.ensure(lease.token)
    replaced = [client for client in pool._retired[0][1] if client.channel is not None]
    assert replaced  # the member it asked: kept open, as a call begun before the swap may still be using it

    # A certificate of a CA the members do not trust: every later call fails; the holding ends at the next check.
    await pool.use(stranger(cluster, "edge01", Pki(tmp_path / "another-ca")))
    with pytest.raises(LeaseLost, match=r"cannot confirm fencing token .* no etcd member reachable"):
        await lease.ensure(lease.token)

    # Replaced channels are closed by a later swap once no call can still be using them (op_timeout after theirs).
    await asyncio.sleep(OP_TIMEOUT)
    await pool.use(cluster.credentials("edge01"))
    assert all(client.channel is None for client in replaced)
    assert [len(clients) for _, clients in pool._retired] == [3]  # the ones replaced just now stay open a while


# --------------------------------------------------------------------------------------------- password mode


@pytest.fixture
async def password_pool(password_cluster: EtcdCluster) -> AsyncIterator[EtcdPool]:
    password_cluster.ensure_running()
    async with EtcdPool(password_cluster.endpoints, OP_TIMEOUT, password_cluster.credentials("edge01")) as pool:
        yield pool


async def refused(cluster: EtcdCluster, token: tuple[tuple[str, str], ...]) -> bool:
    """Does etcd refuse ``token`` (asked directly, on a channel of this test's own)?"""
    assert cluster.pki is not None
    host_port = cluster.endpoints[0].removeprefix("https://")
    async with grpc.aio.secure_channel(host_port, grpc.ssl_channel_credentials(cluster.pki.ca.read_bytes())) as channel:
        try:
            await rpc.KVStub(channel).Range(rpc.RangeRequest(key=f"{PREFIX}/".encode()), metadata=token, timeout=2)
        except grpc.aio.AioRpcError as exc:
            return bool(exc.code() == grpc.StatusCode.UNAUTHENTICATED)
    return False


async def test_a_token_that_expired_unused_is_renewed_and_the_fencing_check_goes_through(
    password_cluster: EtcdCluster, password_pool: EtcdPool
) -> None:
    lease = EtcdLease(password_pool, f"{PREFIX}/test/{uuid.uuid4().hex}/leader", "edge01", 3 * TTL)
    async with lease:
        assert await lease.campaign(), lease.reason
        first = password_pool._clients[0].metadata
        assert first is not None and not await refused(password_cluster, first)

        async with asyncio.TaskGroup() as tg:  # the lease is kept alive: only the token is left unused
            keepalive = tg.create_task(lease.run())
            await asyncio.sleep(TOKEN_TTL + 1.5)  # etcd sweeps expired tokens once a second
            assert await refused(password_cluster, first), "the token did not expire: this test proves nothing"

            await lease.ensure(lease.token)  # refused as unauthenticated, logged in again, sent once more
            assert password_pool._clients[0].metadata not in (None, first)
            assert lease.leading
            keepalive.cancel()


async def test_after_etcd_restarts_and_forgets_every_token_the_same_pool_logs_in_again(
    password_cluster: EtcdCluster, password_pool: EtcdPool
) -> None:
    key = f"{PREFIX}/test/{uuid.uuid4().hex}/leader"
    before = EtcdLease(password_pool, key, "edge01", TTL)
    assert await before.campaign(), before.reason
    await before.resign()
    token = password_pool._clients[0].metadata
    assert token is not None

    password_cluster.stop(0)
    password_cluster.ensure_running()
    assert await refused(password_cluster, token)

    after = EtcdLease(password_pool, key, "edge01", TTL)
    assert await after.campaign(), after.reason
    await after.ensure(after.token)
    await after.resign()


async def test_a_wrong_password_is_refused_without_saying_it(password_cluster: EtcdCluster) -> None:
    password_cluster.ensure_running()
    wrong = dataclasses.replace(password_cluster.credentials("edge01"), password="not-the-password")
    async with EtcdPool(password_cluster.endpoints, OP_TIMEOUT, wrong) as pool:
        lease = EtcdLease(pool, f"{PREFIX}/test/{uuid.uuid4().hex}/leader", "edge01", TTL)
        assert not await lease.campaign()
        assert "authentication failed" in lease.reason and "not-the-password" not in lease.reason, lease.reason
