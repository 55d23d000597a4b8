"""The declarations and configs of the two ``dns/record@v1`` drivers, ``powerdns`` and ``rfc2136`` (the drivers,
and dnspython and aiohttp with them, load only when built)."""

from __future__ import annotations

from pydantic import Field, model_validator

from hybridops_daemon.config.base import Duration, PositiveDuration, SecretRef
from hybridops_daemon.drivers.base import Driver
from hybridops_daemon.drivers.declaration import DriverConfig, DriverDeclaration

MODULES = frozenset({"dns/record@v1"})


class PowerDnsDriverConfig(DriverConfig):
    api_url: str
    api_key: SecretRef
    server_id: str = "localhost"
    nameservers: tuple[str, ...] = Field(min_length=1, description="authoritative servers verify() resolves against, host:port")
    timeout: PositiveDuration = 5.0
    verify_settle: Duration = Field(default=0.0, description="verify() re-resolves until all nameservers agree, up to this long")

    def request_bound(self) -> tuple[str, float]:
        return "timeout", self.timeout


class Rfc2136DriverConfig(DriverConfig):
    server: str
    port: int = Field(default=53, ge=1, le=65535)
    tsig_name: str | None = None
    tsig_secret: SecretRef | None = None
    tsig_algorithm: str = "hmac-sha256"
    nameservers: tuple[str, ...] = Field(default=(), description="for verify(); default: the server itself")
    timeout: PositiveDuration = 5.0
    verify_settle: Duration = Field(default=0.0, description="verify() re-resolves until all nameservers agree, up to this long")

    def request_bound(self) -> tuple[str, float]:
        return "timeout", self.timeout

    @model_validator(mode="after")
    def _tsig_complete(self) -> Rfc2136DriverConfig:
        if (self.tsig_name is None) != (self.tsig_secret is None):
            raise ValueError("tsig_name and tsig_secret go together")
        return self


def _powerdns(lane: str, config: PowerDnsDriverConfig) -> Driver:
    from hybridops_daemon.drivers.dns import PowerDnsDriver

    return PowerDnsDriver(config, timeout=config.timeout, settle=config.verify_settle)


def _rfc2136(lane: str, config: Rfc2136DriverConfig) -> Driver:
    from hybridops_daemon.drivers.rfc2136 import Rfc2136Driver

    return Rfc2136Driver(config, timeout=config.timeout, settle=config.verify_settle)


POWERDNS: DriverDeclaration[PowerDnsDriverConfig] = DriverDeclaration("powerdns", MODULES, PowerDnsDriverConfig, _powerdns)
RFC2136: DriverDeclaration[Rfc2136DriverConfig] = DriverDeclaration("rfc2136", MODULES, Rfc2136DriverConfig, _rfc2136)
