"""A lane's leadership as the daemon sees it: campaign, hold, fence every effect, leave a handover for a successor.

Two shapes behind one interface. ``LocalLaneLeadership`` leads from the start and forever (the file lock is held for
the daemon's lifetime; a successor is the same node after a restart, which reads its own journal). ``EtcdLaneLeadership``
campaigns for ``<prefix>/lanes/<lane>/leader`` and writes the lane's handover document (lane state, the decision that
started the current run, the run's plan and progress) to ``<prefix>/lanes/<lane>/handover`` inside the fencing
transaction itself, so the document in etcd is always the current leader's and never a fenced node's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from hybridops_daemon.lease.base import Lease, LeaseLost
from hybridops_daemon.lease.etcd import EtcdLease, EtcdUnavailable
from hybridops_daemon.lease.local import LocalLease

Handover = Mapping[str, Any]


class LaneLeadership(Lease, Protocol):
    """A Lease (``token``, and ``ensure`` before every apply()) that also campaigns, holds and hands over.

    With etcd, ``ensure`` stores the lane's handover document in the same transaction that checks the token, so the
    successor knows everything up to this effect."""

    @property
    def leading(self) -> bool: ...

    @property
    def reason(self) -> str:
        """Why this node does not lead the lane; empty while it does."""
        ...

    @property
    def holder(self) -> str | None:
        """The node holding the lane, as last seen (None: unknown, e.g. etcd unreachable)."""
        ...

    async def campaign(self) -> bool:
        """Try to lead; never raises (False and ``reason`` on failure). Bounded by the backend's timeout."""
        ...

    async def hold(self) -> None:
        """Keep leading; return once leadership is lost (``reason`` says why)."""
        ...

    async def publish(self) -> None:
        """Store the handover document now, fenced by the current token. Raises LeaseLost."""
        ...

    async def handover(self) -> Handover | None:
        """What the previous leader left (None: nothing, or a backend that keeps none). Raises LeaseLost if unreadable."""
        ...

    async def resign(self) -> None:
        """Stop leading and let a successor in at once. Best effort, bounded."""
        ...


class LocalLaneLeadership:
    """The single-node default: leads as long as the daemon holds its file lock."""

    def __init__(self, lease: LocalLease, node: str) -> None:
        self._lease = lease
        self._node = node
        self._resigned = asyncio.Event()

    @property
    def token(self) -> int:
        return self._lease.token

    @property
    def leading(self) -> bool:
        return not self._resigned.is_set()

    @property
    def reason(self) -> str:
        return "" if self.leading else "resigned"

    @property
    def holder(self) -> str | None:
        return self._node

    async def campaign(self) -> bool:
        return self.leading

    async def hold(self) -> None:
        await self._resigned.wait()

    async def ensure(self, token: int) -> None:
        await self._lease.ensure(token)

    async def publish(self) -> None:
        """Nothing to hand over: the successor is this node, and it reads its own journal."""

    async def handover(self) -> Handover | None:
        return None

    async def resign(self) -> None:
        self._resigned.set()


class EtcdLaneLeadership:
    def __init__(self, lease: EtcdLease, document: Callable[[], Handover]) -> None:
        self._lease = lease
        self._document = document  # the lane's current handover document, built by the daemon

    @property
    def token(self) -> int:
        return self._lease.token

    @property
    def leading(self) -> bool:
        return self._lease.leading

    @property
    def reason(self) -> str:
        return self._lease.reason

    @property
    def holder(self) -> str | None:
        return self._lease.holder

    async def campaign(self) -> bool:
        return await self._lease.campaign()

    async def hold(self) -> None:
        await self._lease.run()

    async def ensure(self, token: int) -> None:
        await self._lease.ensure(token, self._encoded())

    async def publish(self) -> None:
        await self._lease.confirm(self._lease.token, self._encoded())

    def _encoded(self) -> bytes:
        return json.dumps(self._document(), sort_keys=True).encode()

    async def handover(self) -> Handover | None:
        try:
            raw = await self._lease.handover()
        except EtcdUnavailable as exc:
            raise LeaseLost(f"cannot read the handover: {exc}") from None
        if raw is None:
            return None
        try:
            document = json.loads(raw)
        except ValueError:
            raise LeaseLost("the handover document in etcd is not JSON; refusing to guess the lane's state") from None
        if not isinstance(document, dict):
            raise LeaseLost("the handover document in etcd is not an object; refusing to guess the lane's state")
        return document

    async def resign(self) -> None:
        await self._lease.resign()
