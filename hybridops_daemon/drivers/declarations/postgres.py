"""The ``postgres`` driver's declaration and config (the driver, and psycopg, load only when built)."""

from __future__ import annotations

from pydantic import Field

from hybridops_daemon.config.base import PositiveDuration, SecretRef, Strict
from hybridops_daemon.drivers.base import Driver
from hybridops_daemon.drivers.declaration import DriverConfig, DriverDeclaration


class PostgresSite(Strict):
    """One PostgreSQL server of a cluster: a libpq DSN without a password, and the password by reference."""

    dsn: str
    password: SecretRef | None = None


class PostgresDriverConfig(DriverConfig):
    """``clusters[cluster][site]``: the servers that ``database/primary@v1`` can make the primary."""

    clusters: dict[str, dict[str, PostgresSite]] = Field(min_length=1)
    connect_timeout: PositiveDuration = 5.0
    promote_timeout: PositiveDuration = 60.0

    def request_bound(self) -> tuple[str, float]:
        return "connect_timeout", self.connect_timeout


def _build(lane: str, config: PostgresDriverConfig) -> Driver:
    from hybridops_daemon.drivers.postgres import PostgresDriver

    return PostgresDriver(config)


DECLARATION: DriverDeclaration[PostgresDriverConfig] = DriverDeclaration(
    "postgres", frozenset({"database/primary@v1"}), PostgresDriverConfig, _build
)
