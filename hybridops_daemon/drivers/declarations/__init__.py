"""Every driver the daemon knows: the one list a new driver is added to (see README, "How to add a driver").

Each entry comes from a light module beside it (config model + declaration, no SDK); the registry and the
``lanes.<lane>.drivers`` schema (``LaneDrivers``) are derived from this list and nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hybridops_daemon.drivers.declaration import DriverDeclaration, LaneDriversBase, lane_drivers_model
from hybridops_daemon.drivers.declarations import ansible, dns, gcp, hcloud, netbox, postgres, sandbox, terraform

DECLARATIONS: tuple[DriverDeclaration[Any], ...] = (
    sandbox.DECLARATION,
    hcloud.DECLARATION,
    postgres.DECLARATION,
    dns.POWERDNS,
    dns.RFC2136,
    netbox.DECLARATION,
    gcp.DECLARATION,
    ansible.DECLARATION,
    terraform.DECLARATION,
)

# Type checkers see the shape every lane's drivers share; pydantic sees one field per declared driver.
if TYPE_CHECKING:
    LaneDrivers = LaneDriversBase
else:
    LaneDrivers = lane_drivers_model(DECLARATIONS)
