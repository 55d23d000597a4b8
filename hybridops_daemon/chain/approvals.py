"""Approval gates: a step marked ``approval: true`` waits here until an operator approves or rejects it.

Approvals expire (the profile's ``approval_timeout``): a gate nobody answered is a failed step, not a
cutover that runs hours later on a stale "yes". Only a step that is waiting can be approved.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


class NoSuchApproval(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class Verdict:
    approved: bool
    actor: str


@dataclass(frozen=True, slots=True)
class PendingApproval:
    run_id: str
    step: str
    lane: str
    since: float
    expires_at: float


class ApprovalBook:
    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], tuple[PendingApproval, asyncio.Future[Verdict]]] = {}

    async def wait(self, pending: PendingApproval, expires_in: float) -> Verdict | None:
        """Wait for a verdict; None when the approval expired first."""
        key = (pending.run_id, pending.step)
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._waiting[key] = (pending, future)
        try:
            async with asyncio.timeout(expires_in):
                return await future
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(key, None)

    def answer(self, run_id: str, step: str, verdict: Verdict) -> PendingApproval:
        """Hand a verdict to the waiting step; NoSuchApproval when no such step is waiting."""
        entry = self._waiting.get((run_id, step))
        if entry is None or entry[1].done():
            raise NoSuchApproval(f"no step {step!r} of run {run_id!r} is waiting for approval")
        entry[1].set_result(verdict)
        return entry[0]

    def pending(self) -> list[PendingApproval]:
        return [entry[0] for entry in self._waiting.values() if not entry[1].done()]
