"""The ``terraform`` driver's declaration and config (the driver loads only when built).

Like the ansible driver it runs whatever module a lane binds to a pack (a Terraform root module), so it declares every
module; check-config also checks, for each step bound to it, that the module has a pack, that the pack's folder exists,
and that the binary and the provider mirror are there (``unbound``): a node without them fails check-config, not a
cutover.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Self

from pydantic import Field

from hybridops_daemon.config.base import Duration, PositiveDuration, SecretRef, Strict
from hybridops_daemon.drivers.base import Driver
from hybridops_daemon.drivers.declaration import PACK_NAME, DriverConfig, DriverDeclaration, under
from hybridops_daemon.drivers.modules import MODULES
from hybridops_daemon.drivers.process import find_program

SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class TerraformBackend(Strict):
    """The lane's Terraform state: the ``pg`` backend (real locking: PostgreSQL advisory locks), one schema per lane,
    one workspace per pack in it."""

    conn_str: str = Field(description="libpq URL without a password, e.g. postgres://terraform@db:5432/tfstate?sslmode=require")
    password: SecretRef | None = Field(default=None, description="reaches Terraform as PGPASSWORD, never on a command line")
    schema_name: str | None = Field(default=None, pattern=SCHEMA_NAME.pattern, description="default: hyops_<lane>")


class TerraformDriverConfig(DriverConfig):
    """Runs packs (Terraform root modules) from ``packs_dir/<pack>/`` for the modules bound to them."""

    binary: str = Field(default="terraform", description="a name on PATH or a path: terraform, or OpenTofu's tofu")
    plugin_mirror: Path | None = Field(
        default=None, description="provider filesystem mirror (offline installs); none: the binary's own registry access"
    )
    packs_dir: Path = Path("packs/terraform")
    packs: dict[str, str] = Field(default_factory=dict, description="module ref → pack name")
    backend: TerraformBackend
    timeout: PositiveDuration = Field(default=600.0, description="each terraform command; past it the process tree is killed")
    lock_timeout: Duration = Field(default=60.0, description="how long a command waits for the state lock (-lock-timeout)")
    plan_max_age: PositiveDuration = Field(
        default=3600.0, description="a plan check() saved older than this is not applied: apply plans again"
    )

    def resolved(self, base: Path, state_dir: Path, lane: str) -> Self:
        binary = self.binary if "/" not in self.binary else str(under(base, Path(self.binary)))
        mirror = None if self.plugin_mirror is None else under(base, self.plugin_mirror)
        schema = self.backend.schema_name or "hyops_" + lane.replace("-", "_")
        backend = self.backend.model_copy(update={"schema_name": schema})
        update = {"binary": binary, "plugin_mirror": mirror, "packs_dir": under(base, self.packs_dir), "backend": backend}
        return self.model_copy(update=update)

    def unbound(self, module: str) -> tuple[tuple[str, ...], str] | None:
        pack = self.packs.get(module)
        if pack is None:
            return ("packs",), f"no terraform pack bound to {module}"
        if not PACK_NAME.fullmatch(pack) or not (self.packs_dir / pack).is_dir():
            return ("packs", module), f"terraform pack {pack!r} for {module}: no folder {self.packs_dir / pack}"
        if find_program(self.binary) is None:
            how = "install one (make test runs scripts/terraform-install) or set binary: to a terraform or tofu"
            return ("binary",), f"terraform binary {self.binary!r} is not an executable file on this node; {how}"
        if self.plugin_mirror is not None and not self.plugin_mirror.is_dir():
            return ("plugin_mirror",), f"terraform provider mirror {self.plugin_mirror} is not a folder on this node"
        return None


def _build(lane: str, config: TerraformDriverConfig) -> Driver:
    from hybridops_daemon.drivers.terraform import TerraformDriver

    return TerraformDriver(config, lane=lane)


DECLARATION: DriverDeclaration[TerraformDriverConfig] = DriverDeclaration(
    "terraform", frozenset(MODULES), TerraformDriverConfig, _build
)
