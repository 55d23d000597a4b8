"""Which drivers exist, which modules each can run, and how a lane's drivers are built from its config.

Driver modules are imported only when a lane configures them: a node that never talks to GCP never loads
google-cloud (slow to import, large in memory).
"""

from __future__ import annotations

from collections.abc import Mapping

from hybridops_daemon.config.models import LaneConfig
from hybridops_daemon.drivers.base import Driver
from hybridops_daemon.drivers.modules import MODULES

# What check-config knows without importing any driver. The ansible driver runs whatever module a lane binds
# to a pack, so any module; check-config also checks the lane binds it (see config/loader.py).
DRIVER_MODULES: Mapping[str, frozenset[str]] = {
    "sandbox": frozenset(MODULES),
    "hcloud": frozenset({"network/floating-ip@v1"}),
    "postgres": frozenset({"database/primary@v1"}),
    "powerdns": frozenset({"dns/record@v1"}),
    "rfc2136": frozenset({"dns/record@v1"}),
    "netbox": frozenset({"ipam/address@v1"}),
    "gcp": frozenset({"compute/capacity@v1"}),
    "ansible": frozenset(MODULES),
}


def build_drivers(lane: str, config: LaneConfig) -> dict[str, Driver]:
    """The lane's own driver instances: their targets (and secrets) are the lane's, never another lane's."""
    from hybridops_daemon.drivers.sandbox import SandboxDriver

    drivers = config.drivers
    assert drivers.sandbox.world is not None, f"lane {lane}: config not resolved"
    built: dict[str, Driver] = {"sandbox": SandboxDriver(drivers.sandbox.world, drivers.sandbox.latency)}
    if drivers.hcloud is not None:
        from hybridops_daemon.drivers.hcloud import HcloudDriver

        built["hcloud"] = HcloudDriver(drivers.hcloud, request_timeout=drivers.hcloud.request_timeout)
    if drivers.postgres is not None:
        from hybridops_daemon.drivers.postgres import PostgresDriver

        built["postgres"] = PostgresDriver(drivers.postgres)
    if drivers.powerdns is not None:
        from hybridops_daemon.drivers.dns import PowerDnsDriver

        built["powerdns"] = PowerDnsDriver(
            drivers.powerdns, timeout=drivers.powerdns.timeout, settle=drivers.powerdns.verify_settle
        )
    if drivers.rfc2136 is not None:
        from hybridops_daemon.drivers.dns import Rfc2136Driver

        built["rfc2136"] = Rfc2136Driver(drivers.rfc2136, timeout=drivers.rfc2136.timeout, settle=drivers.rfc2136.verify_settle)
    if drivers.netbox is not None:
        from hybridops_daemon.drivers.netbox import NetboxDriver

        built["netbox"] = NetboxDriver(drivers.netbox)
    if drivers.gcp is not None:
        from hybridops_daemon.drivers.gcp import GcpDriver

        built["gcp"] = GcpDriver(
            drivers.gcp, request_timeout=drivers.gcp.request_timeout, poll_interval=drivers.gcp.poll_interval
        )
    if drivers.ansible is not None:
        from hybridops_daemon.drivers.ansible import AnsibleDriver

        built["ansible"] = AnsibleDriver(drivers.ansible)
    return built
