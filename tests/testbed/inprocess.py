"""A daemon in the test's own event loop: built from a config file exactly as `hyops-daemon run` builds it, and run
for the length of a ``with`` block."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from hybridops_daemon.config.loader import check_config
from hybridops_daemon.daemon.app import Daemon
from hybridops_daemon.drivers.registry import DRIVER_MODULES

REPO = Path(__file__).resolve().parents[2]


def daemon_from(config_file: Path) -> Daemon:
    """The daemon for ``config_file``, which must pass check-config."""
    config, profiles, errors = check_config(config_file, DRIVER_MODULES)
    assert config is not None and not errors, errors
    return Daemon(config, profiles, config_file)


def sandbox_daemon(directory: Path, settings: str, lane: str = "prod") -> Daemon:
    """The daemon for a config in ``directory`` of ``settings`` (its lines up to ``lanes``) and one lane, ``lane``:
    its profile copied from policies/, the sandbox driver, no preflights (their records would land at random moments)."""
    (directory / f"{lane}.yaml").write_text((REPO / "policies" / f"{lane}.yaml").read_text())
    config_file = directory / "daemon.yaml"
    config_file.write_text(
        f"state_dir: {directory}\n{settings}"
        f"lanes:\n  {lane}:\n    profile: {directory / f'{lane}.yaml'}\n    drivers:\n      sandbox: {{}}\n"
        "    readiness: {enabled: false}\n"
    )
    return daemon_from(config_file)


@contextlib.asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[None]:
    task = asyncio.create_task(daemon.run())
    try:
        yield
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 15)
