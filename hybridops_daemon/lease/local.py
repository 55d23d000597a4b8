"""The single-node lease: an exclusive ``flock`` on a file, held for the daemon's lifetime.

The fencing token is a generation counter kept in the file and bumped on every acquisition, so a
restarted daemon's token is always newer than the one before. Two nodes with ``local`` leases cannot
see each other: this backend cannot prevent split brain across an edge pair (use etcd there).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from hybridops_daemon.lease.base import LeaseLost


class LocalLease:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._token = 0

    def acquire(self) -> LocalLease:
        """Take the lock or raise LeaseLost naming the file (another daemon on this node holds it)."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LeaseLost(f"another daemon holds the lease {self._path}") from None
        raw = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        self._token = (int(raw) if raw.isdigit() else 0) + 1
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self._token}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @property
    def token(self) -> int:
        return self._token

    async def ensure(self, token: int) -> None:
        if self._fd is None or token != self._token:
            holding = self._token if self._fd is not None else "nothing"
            raise LeaseLost(f"fencing token {token} is not current (holding {holding})")
