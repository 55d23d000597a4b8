"""The single-node lease: an exclusive lock on the state directory, held for the daemon's lifetime.

A lock on a path is only as good as the path: once the directory (or the lock file) is deleted and recreated, a
second daemon locks the new one while the first still runs on the old. So the lease holds three things:

- an ``flock`` on an ``O_DIRECTORY`` descriptor of the directory, and the lock file opened relative to that
  descriptor (and locked too), checked after locking to still be what the path names (no race with a rename);
- on Linux, an abstract Unix socket named after the directory's real path: it lives as long as the process, in no
  directory, so a directory deleted and recreated under a running daemon still refuses a second one;
- ``ensure`` (before every step's apply) re-checks that the path still names the locked directory and file: a
  daemon whose state directory was replaced stops acting.

The fencing token is a generation counter kept in the file and bumped on every acquisition, so a
restarted daemon's token is always newer than the one before. Two nodes with ``local`` leases cannot
see each other: this backend cannot prevent split brain across an edge pair (use etcd there).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
import sys
from contextlib import ExitStack
from pathlib import Path

from hybridops_daemon.lease.base import LeaseLost


class LocalLease:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._held: ExitStack | None = None
        self._fds: tuple[int, int] = (-1, -1)  # (directory, lock file) while held
        self._token = 0

    def acquire(self) -> LocalLease:
        """Take the lock or raise LeaseLost naming the directory (another daemon on this node holds it)."""
        directory = self._path.parent
        directory.mkdir(parents=True, exist_ok=True)
        with ExitStack() as held:
            held.enter_context(_path_lock(directory.resolve(), self._path))
            dir_fd = _opened(held, os.open(directory, os.O_RDONLY | os.O_DIRECTORY))
            self._lock(dir_fd, directory)
            fd = _opened(held, os.open(self._path.name, os.O_RDWR | os.O_CREAT, 0o640, dir_fd=dir_fd))
            self._lock(fd, directory)
            self._fds = (dir_fd, fd)
            if self._replaced():  # replaced between our open and our lock: the new one is someone else's to take
                raise LeaseLost(f"the state directory {directory} was replaced while locking it; try again")
            raw = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            self._token = (int(raw) if raw.isdigit() else 0) + 1
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{self._token}\n".encode(), 0)
            os.fsync(fd)
            self._held = held.pop_all()
        return self

    def _lock(self, fd: int, directory: Path) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LeaseLost(f"another daemon holds the state directory {directory} (lease {self._path})") from None

    def _replaced(self) -> bool:
        """Whether the path no longer names the directory and file this lease locked."""
        try:
            now = (os.stat(self._path.parent), os.stat(self._path))
        except OSError:
            return True
        held = (os.fstat(self._fds[0]), os.fstat(self._fds[1]))
        return any((a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) for a, b in zip(now, held, strict=True))

    def release(self) -> None:
        if self._held is not None:
            self._held.close()  # closing the descriptors drops the flocks
            self._held = None

    @property
    def token(self) -> int:
        return self._token

    async def ensure(self, token: int) -> None:
        if self._held is None or token != self._token:
            holding = self._token if self._held is not None else "nothing"
            raise LeaseLost(f"fencing token {token} is not current (holding {holding})")
        if self._replaced():
            raise LeaseLost(f"the state directory {self._path.parent} or its lease file was replaced under this daemon")


def _opened(stack: ExitStack, fd: int) -> int:
    stack.callback(os.close, fd)
    return fd


def _path_lock(directory: Path, lease: Path) -> ExitStack:
    """The abstract socket named after ``directory`` (Linux; elsewhere nothing): bound while the stack is open."""
    stack = ExitStack()
    if not sys.platform.startswith("linux"):
        return stack
    sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    name = hashlib.sha256(str(directory).encode()).hexdigest()[:40]
    try:
        sock.bind(f"\0hybridops-daemon/{name}")
    except OSError as exc:
        stack.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        # Also when the directory was deleted and recreated under the running daemon: the name outlives the path.
        raise LeaseLost(f"another daemon holds the state directory {directory} (lease {lease})") from None
    return stack
