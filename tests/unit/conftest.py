"""Fixtures shared by the control-socket tests (server transport and hyopsctl)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hybridops_daemon.control.server import ControlServer
from tests.unit.test_control import RecordingBackend


@pytest.fixture
def sock_path() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 107-byte limit of a Unix socket path; a short private dir cannot
    with tempfile.TemporaryDirectory(prefix="hyops-") as directory:
        yield Path(directory) / "ctl.sock"


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend()


@pytest.fixture
async def server(sock_path: Path, backend: RecordingBackend) -> AsyncIterator[ControlServer]:
    async with ControlServer(sock_path, backend) as srv:
        yield srv


@pytest.fixture
async def served(server: ControlServer) -> Path:
    """The path of a serving control socket, for hyopsctl."""
    return server.path
