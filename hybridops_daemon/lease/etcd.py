"""The edge-pair lease: a leader key in a three-member etcd, bound to an etcd lease that this node keeps alive.

Campaign: grant a lease, then one transaction puts ``key = node`` bound to it only if the key does not exist. The fencing
token is the key's **create revision**: etcd's revision counter never goes back, and every new holding creates the key
anew, so each successor's token is strictly greater. It names the holding itself: the mod revision would change on any
later write to the key, the create revision only when the key is created again, i.e. by the next leader.

Stop acting: the lease is lost the moment a refresh fails or etcd reports it expired, and at the latest when ``ttl`` has
passed on the local monotonic clock since the last refresh was *sent* (etcd restarts the TTL no earlier than it receives
the refresh, so it cannot expire the key before that local deadline). A node cut off from etcd thus stops without
learning anything. A node whose clock stood still (a paused VM) is caught by ``ensure()``: a transaction in etcd that
the key still holds this node's name under this token.

Each etcd call is bounded by ``op_timeout``. aetcd talks to one address per client, so ``EtcdPool`` keeps one client per
endpoint (shared by every lane's lease): a member that refuses the connection is skipped within the same call, one that
hangs (no quorum on its side) at the next. Over TLS (``EtcdCredentials`` with a CA), with a client certificate whose CN
etcd takes as the user, or with a user and password whose token is renewed when etcd refuses it; ``use`` swaps the
credentials (a reload) for every later call.

The leader also keeps a *handover* document next to its key (what a successor needs to finish an interrupted run). It is
written only by ``ensure``/``confirm(token, handover)``: in the same transaction that proves the key still holds this node
under this token, so a fenced node can never overwrite its successor's document, and only over the handover revision the
writer last saw, so a write etcd applies late cannot replace a newer document of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import aetcd  # type: ignore[import-untyped]  # aetcd ships no type hints
import grpc  # type: ignore[import-untyped]  # grpcio ships no type hints
from aetcd import rpc

from hybridops_daemon.lease.base import LeaseLost
from hybridops_daemon.lease.etcd_credentials import EtcdCredentials

_T = TypeVar("_T")

# gRPC backs off reconnecting up to 120 s by default: a member that comes back would stay unused that long.
_CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    # Keepalive on: gRPC then sets TCP_USER_TIMEOUT to the keepalive timeout (gRPC proposal A18), which the pool makes
    # op_timeout, so a fencing transaction the kernel could not deliver in time dies with its connection instead of
    # reaching etcd after a heal. Pings every 10 s during calls: etcd refuses clients pinging more often than 5 s.
    "grpc.keepalive_time_ms": 10_000,
}


class EtcdUnavailable(Exception):
    """The call failed: no member answered within op_timeout, or etcd refused it."""


def _host_port(endpoint: str) -> tuple[str, int, bool]:
    """(host, port, over TLS) of an ``http(s)://HOST:PORT`` endpoint."""
    url = urllib.parse.urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
    if url.scheme not in ("", "http", "https") or url.hostname is None or url.port is None:
        raise ValueError(f"etcd endpoint {endpoint!r}: expected https://HOST:PORT or http://HOST:PORT")
    return url.hostname, url.port, url.scheme == "https"


class _Client(aetcd.Client):  # type: ignore[misc]  # aetcd ships no type hints
    """aetcd's client on a channel made here: TLS when the credentials carry a CA, and an etcd token when they carry a
    user. aetcd 1.x makes plaintext channels only, in ``connect()``, and every other method uses the stubs and the
    ``metadata`` that ``connect()`` sets: overriding it is the whole change."""

    channel: grpc.aio.Channel | None
    metadata: tuple[tuple[str, str], ...] | None

    def __init__(self, host: str, port: int, credentials: EtcdCredentials, user_timeout_ms: int) -> None:
        super().__init__(host, port)
        self._credentials = credentials
        self._user_timeout_ms = user_timeout_ms

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self.channel is None:  # no await since the check: concurrent first calls share one channel
            target = f"{self._host}:{self._port}"
            options: list[tuple[str, int | str]] = list(_CHANNEL_OPTIONS.items())
            options.append(("grpc.keepalive_timeout_ms", self._user_timeout_ms))
            creds = self._credentials
            if creds.ca is None:
                self.channel = rpc.insecure_channel(target, options=options)
            else:
                if creds.server_name is not None:
                    options.append(("grpc.ssl_target_name_override", creds.server_name))
                tls = grpc.ssl_channel_credentials(creds.ca, creds.key, creds.cert)
                self.channel = rpc.secure_channel(target, tls, options=options)
            self.kvstub, self.leasestub = rpc.KVStub(self.channel), rpc.LeaseStub(self.channel)
            self.auth_stub = rpc.AuthStub(self.channel)
        if self._credentials.user is not None and self.metadata is None:
            request = rpc.AuthenticateRequest(name=self._credentials.user, password=self._credentials.password)
            self.metadata = (("token", (await self.auth_stub.Authenticate(request)).token),)
        self._connected.set()

    def forget_token(self) -> bool:
        """Authenticate again before the next call; False if this client has no password to do it with."""
        if self._credentials.user is None:
            return False
        self.metadata = None
        self._connected.clear()
        return True


class EtcdPool:
    """One aetcd client per member; ``call`` tries them in turn within one ``op_timeout``. Close it last."""

    def __init__(self, endpoints: Sequence[str], op_timeout: float, credentials: EtcdCredentials | None = None) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        if op_timeout <= 0:
            raise ValueError(f"op_timeout ({op_timeout}s) must be positive")
        self.op_timeout = op_timeout
        addresses = [_host_port(endpoint) for endpoint in endpoints]
        self._tls = {tls for _, _, tls in addresses}
        if len(self._tls) > 1:
            raise ValueError("etcd endpoints mix http:// and https://")
        self._addresses = [(host, port) for host, port, _ in addresses]
        self._clients = self._connect(credentials or EtcdCredentials())
        self._retired: list[tuple[float, list[_Client]]] = []  # (closed after, clients) replaced by use()
        self._current = 0

    def _connect(self, credentials: EtcdCredentials) -> list[_Client]:
        if self._tls != {credentials.ca is not None}:
            raise ValueError("https:// etcd endpoints need a CA, and http:// ones take none")
        return [_Client(host, port, credentials, round(self.op_timeout * 1000)) for host, port in self._addresses]

    async def use(self, credentials: EtcdCredentials) -> None:
        """Make every later call on new channels with ``credentials`` (a reload: a renewed certificate, a new password).

        Calls under way finish on the old channels: closing those would abort a fencing check and end the holding. They
        are closed by a later ``use`` once ``op_timeout`` has passed (no call outlives it), or by ``close``."""
        fresh = self._connect(credentials)  # raises before anything changes
        await self._close_retired(time.monotonic())
        self._retired.append((time.monotonic() + self.op_timeout, self._clients))
        self._clients = fresh

    async def call(self, what: str, op: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run ``op(client)`` on the first member that answers; raise EtcdUnavailable naming ``what`` otherwise."""
        clients = self._clients  # a reload during the call leaves it on the channels it began with
        last: Exception | None = None
        try:
            async with asyncio.timeout(self.op_timeout):
                for _ in clients:
                    try:
                        return await self._authenticated(clients[self._current], op)
                    except aetcd.ConnectionFailedError as exc:  # refused at once: try the next member in the same budget
                        self._current = (self._current + 1) % len(clients)
                        last = exc
                raise EtcdUnavailable(f"{what}: no etcd member reachable (last: {last})")
        except aetcd.ClientError as exc:
            raise EtcdUnavailable(f"{what}: {exc}") from None
        except TimeoutError:
            self._current = (self._current + 1) % len(clients)  # this member hangs: start elsewhere next time
            raise EtcdUnavailable(f"{what}: no answer from etcd within {self.op_timeout:g}s (no quorum?)") from None

    @staticmethod
    async def _authenticated(client: _Client, op: Callable[[Any], Awaitable[_T]]) -> _T:
        try:
            return await op(client)
        except aetcd.exceptions.UnauthenticatedError:  # the token expired (or etcd restarted and forgot it)
            if not client.forget_token():
                raise
            # etcd checks the token before it proposes a request: the refused one never took effect, so sending it once
            # more with a new token is no blind retry, not even of a fencing transaction.
            return await op(client)

    async def close(self) -> None:
        await self._close_retired(math.inf)
        await self._close(self._clients)

    async def _close_retired(self, now: float) -> None:
        while self._retired and self._retired[0][0] <= now:
            await self._close(self._retired.pop(0)[1])

    async def _close(self, clients: list[_Client]) -> None:
        for client in clients:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.op_timeout):
                    await client.close()

    async def __aenter__(self) -> EtcdPool:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


class EtcdLease:
    """One leader key. ``campaign`` → ``run`` (keepalive until lost) → ``ensure`` before every effect → ``resign``."""

    def __init__(
        self,
        pool: EtcdPool,
        key: str,
        node: str,
        ttl: float,
        *,
        handover_key: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not pool.op_timeout < ttl:
            raise ValueError(f"op_timeout ({pool.op_timeout}s) must be shorter than the TTL ({ttl}s)")
        self._pool = pool
        self._key = key.encode()
        self._handover_key = handover_key.encode() if handover_key else None
        self._node = node.encode()  # aetcd's put wants bytes (its compares would convert)
        self._ttl = ttl
        self._clock = clock
        self._lease_id: int | None = None
        self._token = 0
        self._deadline = 0.0
        self._lost: str | None = "never campaigned"
        self._lost_now = asyncio.Event()  # wakes run() at once when ensure() learns the holding is over
        self._handover_rev = 0  # the handover's mod revision as this node last saw it (0: absent); see _holds()
        self.holder: str | None = None  # who holds the key, as last seen by a lost campaign (for status)

    @property
    def token(self) -> int:
        """The fencing token of the current (or last) holding; 0 before the first won campaign."""
        return self._token

    @property
    def leading(self) -> bool:
        return self._lost is None and self._clock() < self._deadline

    @property
    def reason(self) -> str:
        """Why this node does not lead (for status and the journal); empty while it leads."""
        if self._lost is not None:
            return self._lost
        if self._clock() >= self._deadline:
            return f"lease TTL ({self._ttl:g}s) ran out on the local clock since the last successful refresh"
        return ""

    async def campaign(self) -> bool:
        """Try to become the leader; False (see ``reason``) if another node holds the key or etcd does not answer.

        While the key exists this costs one read; only a free key is contested (lease grant + one transaction)."""
        if self.leading:
            return True
        self._lease_id = None
        sent = self._clock()
        try:
            held = await self._pool.call("campaign", lambda c: c.get(self._key))
            if held is not None:
                self.holder = bytes(held.value).decode(errors="replace")
                self._lost = f"held by {self.holder!r} under token {held.create_revision}"
                return False
            grant = await self._pool.call("lease grant", lambda c: c.lease(math.ceil(self._ttl)))
            lease_id = int(grant.id)
            _, responses = await self._pool.call(
                "campaign",
                lambda c: c.transaction(
                    compare=[c.transactions.create(self._key) == 0],
                    success=[c.transactions.put(self._key, self._node, lease=lease_id), c.transactions.get(self._key)],
                    failure=[c.transactions.get(self._key)],
                ),
            )
        except EtcdUnavailable as exc:
            self._lost = f"cannot campaign: {exc}"  # a lease granted before the failure expires by itself
            self.holder = None
            return False
        kv = responses[-1][0][1] if responses[-1] else None
        # A retried transaction whose first attempt did land fails its compare yet finds our own lease on the key.
        if kv is None or int(kv.lease) != lease_id:
            self._lost = f"held by another node: {self._describe(responses[-1])}"
            self.holder = responses[-1][0][0].decode(errors="replace") if responses[-1] else None
            await self._revoke(lease_id)
            return False
        self._lease_id = lease_id
        self._token = int(kv.create_revision)
        self._deadline = sent + self._ttl
        self._lost = None
        self._lost_now.clear()
        self.holder = self._node.decode()
        return True

    async def run(self) -> None:
        """Keep the lease alive every ttl/3 while leading; return once it is lost (``reason`` says why)."""
        lease_id = self._lease_id
        while lease_id is not None and self.leading:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._ttl / 3):
                    await self._lost_now.wait()
            if not self.leading:
                break
            sent = self._clock()
            try:
                reply = await self._pool.call("lease refresh", lambda c: c.refresh_lease(lease_id))
                if reply is None or int(reply.TTL) <= 0:  # etcd answers an expired lease with TTL 0, not an error
                    self._lose("lease expired in etcd")
                    break
                # An etcd leader cut off from its peers still answers refreshes until it steps down (an election timeout
                # later): only a linearizable read proves a quorum is behind the refresh, so only then does it count.
                if not await self._holds(self._token, "leadership check"):
                    break
            except EtcdUnavailable as exc:
                self._lose(f"lease refresh failed: {exc}")
                break
            self._deadline = sent + self._ttl
        self._lose(self.reason)
        if lease_id is not None:
            await self._revoke(lease_id)  # the holding is over: the other node need not wait out the TTL

    async def ensure(self, token: int, handover: bytes | None = None) -> None:
        """Raise LeaseLost unless this node leads and etcd still holds its key under ``token`` (bounded by op_timeout).

        With ``handover``, the same transaction writes it to the handover key: it lands only while the token is current.

        A check that fails for any reason, etcd merely not answering in time included, ends the holding ``token`` names:
        the caller refuses its effect and hands its run on, and only a new holding (this node's or the other's) takes a
        handed-on run up again. Were the holding kept, a lease refresh that succeeds a moment later would leave this
        node leading a lane whose run nobody works on."""
        try:
            await self.confirm(token, handover)
        except LeaseLost as exc:
            if token == self._token:  # an earlier holding's token must not end the current one
                self._lose(str(exc))
            raise

    async def confirm(self, token: int, handover: bytes | None) -> None:
        """``ensure`` without ending the holding when etcd does not answer: for the handover publisher, which retries
        (a fenced token still ends it: then the key is someone else's). Raises LeaseLost."""
        if token != self._token or not self.leading:
            raise LeaseLost(f"fencing token {token} is not current: {self.reason or f'this node holds token {self._token}'}")
        try:
            held = await self._holds(token, "fencing check", handover)
        except EtcdUnavailable as exc:
            raise LeaseLost(f"cannot confirm fencing token {token}: {exc}") from None
        if not held:
            raise LeaseLost(self.reason)
        if not self.leading:
            raise LeaseLost(f"fencing token {token}: {self.reason}")

    async def _holds(self, token: int, what: str, handover: bytes | None = None) -> bool:
        """One transaction, linearizable: does the key still hold this node under ``token``? If so, store ``handover``.
        If not, leadership is lost (``reason`` says to whom). Raises EtcdUnavailable.

        The handover is written only over the revision this node last saw of it. A write that timed out here can still
        be applied by etcd later (seen during an etcd leader transfer): unconditional, it would overwrite a newer
        document with an older one, and a successor would take over a lane without the run it was running. When only
        the revision differs (one of this holding's own earlier writes landed late), learn it and write again."""
        if self._handover_key is None:
            handover = None  # a lease without a handover key only checks the token
        for _ in range(3):
            ok, responses = await self._pool.call(
                what, functools.partial(self._fenced_txn, token=token, handover=handover, expected=self._handover_rev)
            )
            if ok:
                if handover is not None:
                    self._handover_rev = int(responses[-1][0][1].mod_revision)
                return True
            holder = responses[0]
            if handover is None or not holder or holder[0][0] != self._node or int(holder[0][1].create_revision) != token:
                self._lose(f"fencing token {token} is no longer current in etcd: {self._describe(holder)}")
                return False
            current = responses[1]
            self._handover_rev = int(current[0][1].mod_revision) if current else 0
        raise EtcdUnavailable(f"{what}: the handover kept changing under this node's own writes")

    def _fenced_txn(self, c: Any, token: int, handover: bytes | None, expected: int) -> Awaitable[tuple[bool, list[Any]]]:
        """The transaction of ``_holds``: the key holds this node under ``token`` (and the handover is still at revision
        ``expected``) → store ``handover``; else read back what differs."""
        key, hand = self._key, self._handover_key
        compare = [c.transactions.value(key) == self._node, c.transactions.create(key) == token]
        success, failure = [], [c.transactions.get(key)]
        if handover is not None:
            assert hand is not None, "_holds() drops the handover of a lease without a handover key"
            compare.append(c.transactions.mod(hand) == expected)
            success = [c.transactions.put(hand, handover), c.transactions.get(hand)]
            failure.append(c.transactions.get(hand))
        transaction: Awaitable[tuple[bool, list[Any]]] = c.transaction(compare=compare, success=success, failure=failure)
        return transaction

    async def handover(self) -> bytes | None:
        """The handover document the last leader left (None if none); its revision is what this node's next write of
        the handover must find (see ``_holds``). Raises EtcdUnavailable."""
        if self._handover_key is None:
            return None
        got = await self._pool.call("handover", lambda c: c.get(self._handover_key))
        self._handover_rev = int(got.mod_revision) if got is not None else 0
        return None if got is None else bytes(got.value)

    async def resign(self) -> None:
        """Stop leading and revoke the lease so the other node can take over at once (best effort: else the TTL does)."""
        lease_id, self._lease_id = self._lease_id, None
        self._lose("resigned")
        if lease_id is not None:
            await self._revoke(lease_id)

    async def __aenter__(self) -> EtcdLease:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.resign()

    def _lose(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
        self._lost_now.set()

    def _describe(self, got: list[tuple[bytes, Any]]) -> str:
        if not got:
            return f"{self._key.decode()} is gone (lease expired or revoked)"
        value, kv = got[0]
        return f"{self._key.decode()} is held by {value.decode(errors='replace')!r} under token {kv.create_revision}"

    async def _revoke(self, lease_id: int) -> None:
        with contextlib.suppress(EtcdUnavailable):  # already expired, or etcd is away: the TTL ends it either way
            await self._pool.call("lease revoke", lambda c: c.revoke_lease(lease_id))
