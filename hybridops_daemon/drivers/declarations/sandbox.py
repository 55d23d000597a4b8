"""The ``sandbox`` driver's declaration and config: a local JSON "world" file stands in for the outside world."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field

from hybridops_daemon.config.base import Duration
from hybridops_daemon.drivers.base import Driver
from hybridops_daemon.drivers.declaration import DriverConfig, DriverDeclaration, under
from hybridops_daemon.drivers.modules import MODULES


class SandboxDriverConfig(DriverConfig):
    """The embedded driver: a local JSON "world" file stands in for the outside world."""

    world: Path | None = Field(default=None, description="default: <state_dir>/world-<lane>.json")
    latency: Duration = 0.0

    def resolved(self, base: Path, state_dir: Path, lane: str) -> Self:
        world = state_dir / f"world-{lane}.json" if self.world is None else under(base, self.world)
        return self.model_copy(update={"world": world})


def _build(lane: str, config: SandboxDriverConfig) -> Driver:
    from hybridops_daemon.drivers.sandbox import SandboxDriver

    assert config.world is not None, f"lane {lane}: config not resolved"
    return SandboxDriver(config.world, config.latency)


DECLARATION: DriverDeclaration[SandboxDriverConfig] = DriverDeclaration(
    "sandbox", frozenset(MODULES), SandboxDriverConfig, _build, always=True
)
