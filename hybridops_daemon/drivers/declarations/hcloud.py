"""The ``hcloud`` driver's declaration and config (the driver, and the hcloud SDK, load only when built)."""

from __future__ import annotations

from pydantic import Field

from hybridops_daemon.config.base import PositiveDuration, SecretRef
from hybridops_daemon.drivers.base import Driver
from hybridops_daemon.drivers.declaration import DriverConfig, DriverDeclaration


class HcloudDriverConfig(DriverConfig):
    """Hetzner Cloud (floating IPs) through the official ``hcloud`` SDK."""

    endpoint: str = "https://api.hetzner.cloud/v1"
    token: SecretRef
    action_timeout: PositiveDuration = Field(default=25.0, description="keep below the step's timeout (30s by default)")
    poll_interval: PositiveDuration = 0.5
    request_timeout: PositiveDuration = 10.0

    def request_bound(self) -> tuple[str, float]:
        return "request_timeout", self.request_timeout


def _build(lane: str, config: HcloudDriverConfig) -> Driver:
    from hybridops_daemon.drivers.hcloud import HcloudDriver

    return HcloudDriver(config, request_timeout=config.request_timeout)


DECLARATION: DriverDeclaration[HcloudDriverConfig] = DriverDeclaration(
    "hcloud", frozenset({"network/floating-ip@v1"}), HcloudDriverConfig, _build
)
