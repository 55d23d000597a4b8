"""Testbed: a real Terraform 1.0.3 with the hashicorp/null 2.1.2 provider in a filesystem mirror, and a PostgreSQL
server for the ``pg`` backend.

``scripts/terraform-install`` (run by ``make test``) puts both binaries in a cache outside the repo and prints where;
the ``terraform_bin`` fixture runs it (a no-op in milliseconds when they are there; ~10 s cold) and fails, never skips,
when it cannot. ``tf_postgres`` is one PostgreSQL 15 server per module (the primary of a ``pg_pair`` copied from the
session's template; its replica is unused) whose loopback TCP connections need ``PG_PASSWORD``, as a real backend's
would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.testbed.postgres import PgPair, start_pair
from tests.testbed.process import ComponentFailed

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "terraform-install"
PG_PASSWORD = "pg-terraform-backend-only-for-tests"


@dataclass(frozen=True)
class TerraformBin:
    binary: Path
    plugin_mirror: Path

    def run(self, args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Terraform run by hand, as an operator would (the drift and lock tests act outside the daemon)."""
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1", **env}
        return subprocess.run(
            [str(self.binary), *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout, check=False
        )


def install() -> TerraformBin:
    pip = Path(sys.executable).parent / "pip"
    try:
        done = subprocess.run(
            [str(SCRIPT)], env={**os.environ, "PIP": str(pip)}, capture_output=True, text=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired:
        raise ComponentFailed("scripts/terraform-install did not finish within 600 s") from None
    found = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    if done.returncode != 0 or not {"binary", "plugin_mirror"} <= found.keys():
        raise ComponentFailed(f"scripts/terraform-install failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return TerraformBin(Path(found["binary"]), Path(found["plugin_mirror"]))


@pytest.fixture(scope="session")
def terraform_bin() -> TerraformBin:
    return install()


@dataclass(frozen=True)
class TfPostgres:
    pair: PgPair

    @property
    def conn_str(self) -> str:
        """The backend's URL: no password in it (the driver hands it over as PGPASSWORD)."""
        return f"postgres://postgres@127.0.0.1:{self.pair.primary.port}/postgres?sslmode=disable"

    def sql(self, query: str) -> list[tuple[object, ...]]:
        return self.pair.sql("primary", query)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tf_postgres(pg_template: Path) -> Iterator[TfPostgres]:
    pair = start_pair(pg_template, password=PG_PASSWORD)
    try:
        yield TfPostgres(pair)
    finally:
        pair.teardown()
