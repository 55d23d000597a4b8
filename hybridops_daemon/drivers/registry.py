"""Which drivers exist, which modules each can run, and how a lane's drivers are built from its config."""

from __future__ import annotations

from collections.abc import Mapping

from hybridops_daemon.config.models import LaneConfig
from hybridops_daemon.drivers.base import Driver
from hybridops_daemon.drivers.modules import MODULES
from hybridops_daemon.drivers.sandbox import SandboxDriver

DRIVER_MODULES: Mapping[str, frozenset[str]] = {"sandbox": frozenset(MODULES)}


def build_drivers(lane: str, config: LaneConfig) -> dict[str, Driver]:
    """The lane's own driver instances: their targets (and secrets) are the lane's, never another lane's."""
    sandbox = config.drivers.sandbox
    assert sandbox.world is not None, f"lane {lane}: config not resolved"
    return {"sandbox": SandboxDriver(sandbox.world, sandbox.latency)}
