"""The ``gcp`` driver's declaration and config (the driver, and google-cloud-compute, load only when built)."""

from __future__ import annotations

from pydantic import Field

from hybridops_daemon.config.base import PositiveDuration, SecretRef
from hybridops_daemon.drivers.base import Driver
from hybridops_daemon.drivers.declaration import DriverConfig, DriverDeclaration


class GcpDriverConfig(DriverConfig):
    """GCP Compute Engine instances and zonal managed instance groups through ``google-cloud-compute`` (REST transport).
    A group's quota is read in ``zone``'s region."""

    project: str
    zone: str
    endpoint: str | None = Field(default=None, description="API endpoint override (tests point it at a local fake)")
    credentials: SecretRef | None = Field(default=None, description="service-account JSON file; default: ADC")
    operation_timeout: PositiveDuration = 300.0
    request_timeout: PositiveDuration = Field(default=30.0, description="client-side limit of each API request")
    poll_interval: PositiveDuration = 1.0

    def request_bound(self) -> tuple[str, float]:
        return "request_timeout", self.request_timeout


def _build(lane: str, config: GcpDriverConfig) -> Driver:
    from hybridops_daemon.drivers.gcp import GcpDriver

    return GcpDriver(config, request_timeout=config.request_timeout, poll_interval=config.poll_interval)


DECLARATION: DriverDeclaration[GcpDriverConfig] = DriverDeclaration(
    "gcp", frozenset({"compute/capacity@v1", "compute/group-size@v1"}), GcpDriverConfig, _build
)
