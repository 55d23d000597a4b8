"""Which drivers exist, which modules each can run, and how a lane's drivers are built from its config.

All of it is derived from the declarations in ``drivers/declarations/`` (one per driver: name, modules, config
model, factory), as is the config schema's ``lanes.<lane>.drivers`` (``LaneDrivers``), so the registry,
check-config and ``hyops-daemon schema`` cannot disagree about which drivers exist.

Driver modules are imported only when a lane configures them: a node that never talks to GCP never loads
google-cloud (slow to import, large in memory). A declaration and its config model live in a light module that
imports no SDK; the declaration's factory imports the driver module (and its SDK) when ``build_drivers`` calls it.
"""

from __future__ import annotations

from collections.abc import Mapping

from hybridops_daemon.config.models import LaneConfig
from hybridops_daemon.drivers.base import Driver
from hybridops_daemon.drivers.declarations import DECLARATIONS

# What check-config knows without importing any driver. The ansible driver runs whatever module a lane binds
# to a pack, so any module; check-config also checks the lane binds it (DriverConfig.unbound).
DRIVER_MODULES: Mapping[str, frozenset[str]] = {declared.name: declared.modules for declared in DECLARATIONS}


def build_drivers(lane: str, config: LaneConfig) -> dict[str, Driver]:
    """The lane's own driver instances: their targets (and secrets) are the lane's, never another lane's."""
    configured = config.drivers.configured()
    return {
        declared.name: declared.build(lane, configured[declared.name]) for declared in DECLARATIONS if declared.name in configured
    }
