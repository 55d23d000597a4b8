"""The ``netbox`` driver's declaration and config (the driver, and pynetbox, load only when built)."""

from __future__ import annotations

from hybridops_daemon.config.base import PositiveDuration, SecretRef
from hybridops_daemon.drivers.base import Driver
from hybridops_daemon.drivers.declaration import DriverConfig, DriverDeclaration


class NetboxDriverConfig(DriverConfig):
    url: str
    token: SecretRef
    timeout: PositiveDuration = 10.0

    def request_bound(self) -> tuple[str, float]:
        return "timeout", self.timeout


def _build(lane: str, config: NetboxDriverConfig) -> Driver:
    from hybridops_daemon.drivers.netbox import NetboxDriver

    return NetboxDriver(config)


DECLARATION: DriverDeclaration[NetboxDriverConfig] = DriverDeclaration(
    "netbox", frozenset({"ipam/address@v1"}), NetboxDriverConfig, _build
)
