"""The single-node lease: one daemon per state directory, even when the directory or its lock file is replaced."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hybridops_daemon.lease.base import LeaseLost
from hybridops_daemon.lease.local import LocalLease


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "lease.lock"


def test_a_second_daemon_is_refused_and_the_token_grows(lock_path: Path) -> None:
    first = LocalLease(lock_path).acquire()
    with pytest.raises(LeaseLost, match="another daemon"):
        LocalLease(lock_path).acquire()
    first.release()
    assert LocalLease(lock_path).acquire().token == first.token + 1


def test_a_replaced_state_directory_does_not_let_a_second_daemon_start(lock_path: Path) -> None:
    first = LocalLease(lock_path).acquire()
    shutil.rmtree(lock_path.parent)
    lock_path.parent.mkdir()
    with pytest.raises(LeaseLost, match="another daemon"):
        LocalLease(lock_path).acquire()
    first.release()
    LocalLease(lock_path).acquire().release()  # once the first one is gone, the new directory is free


def test_a_replaced_lock_file_does_not_let_a_second_daemon_start(lock_path: Path) -> None:
    first = LocalLease(lock_path).acquire()
    lock_path.unlink()
    with pytest.raises(LeaseLost, match="another daemon"):
        LocalLease(lock_path).acquire()
    first.release()


async def test_the_holder_stops_acting_once_its_state_directory_is_replaced(lock_path: Path) -> None:
    lease = LocalLease(lock_path).acquire()
    await lease.ensure(lease.token)
    shutil.rmtree(lock_path.parent)
    lock_path.parent.mkdir()
    with pytest.raises(LeaseLost, match="replaced"):
        await lease.ensure(lease.token)
    lease.release()
