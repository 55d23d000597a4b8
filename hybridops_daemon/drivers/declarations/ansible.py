"""The ``ansible`` driver's declaration and config (the driver loads only when built).

The driver runs whatever module a lane binds to a pack, so it declares every module; check-config also checks
that the lane binds the step's module to a pack (``unbound``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field

from hybridops_daemon.config.base import PositiveDuration
from hybridops_daemon.drivers.base import Driver
from hybridops_daemon.drivers.declaration import DriverConfig, DriverDeclaration, under
from hybridops_daemon.drivers.modules import MODULES


class AnsibleDriverConfig(DriverConfig):
    """Runs packs (playbooks) from ``packs_dir/<pack>/`` for the modules bound to them."""

    packs_dir: Path = Path("packs/ansible")
    packs: dict[str, str] = Field(default_factory=dict, description="module ref → pack name")
    playbook: str = "ansible-playbook"
    timeout: PositiveDuration = 600.0

    def resolved(self, base: Path, state_dir: Path, lane: str) -> Self:
        return self.model_copy(update={"packs_dir": under(base, self.packs_dir)})

    def unbound(self, module: str) -> tuple[tuple[str, ...], str] | None:
        return None if module in self.packs else (("packs",), f"no ansible pack bound to {module}")


def _build(lane: str, config: AnsibleDriverConfig) -> Driver:
    from hybridops_daemon.drivers.ansible import AnsibleDriver

    return AnsibleDriver(config)


DECLARATION: DriverDeclaration[AnsibleDriverConfig] = DriverDeclaration(
    "ansible", frozenset(MODULES), AnsibleDriverConfig, _build
)
