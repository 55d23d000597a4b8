"""Leadership: only the lease holder runs a chain, and every step re-checks its fencing token before apply()."""

from __future__ import annotations

from typing import Protocol


class LeaseLost(Exception):
    """This node no longer holds the lease (or never did): it must not act."""


class Lease(Protocol):
    @property
    def token(self) -> int:
        """The fencing token of the current holding: strictly greater than any earlier holder's."""
        ...

    async def ensure(self, token: int) -> None:
        """Raise LeaseLost unless this node still holds the lease under ``token``. Bounded by its own timeout."""
        ...
