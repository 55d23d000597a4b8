"""Fixtures shared by the control-socket tests (server transport and hyopsctl)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_control import RecordingBackend


@pytest.fixture
def sock_path() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 107-byte limit of a Unix socket path; a short private dir cannot
    with tempfile.TemporaryDirectory(prefix="hyops-") as directory:
        yield Path(directory) / "ctl.sock"


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend()
