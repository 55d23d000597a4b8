"""The daemon's rooms where they keep a promise of their own: the watchdog follows the decision loop's progress, and
a crashing source's restart delay starts over after a healthy run."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.config.loader import check_config
from hybridops_daemon.config.sources import HttpProbeSource
from hybridops_daemon.control.client import request
from hybridops_daemon.daemon import housekeeping
from hybridops_daemon.daemon.app import Daemon
from hybridops_daemon.daemon.sources import SourceSupervisor
from hybridops_daemon.drivers.registry import DRIVER_MODULES
from hybridops_daemon.retry import Backoff
from hybridops_daemon.signals.base import Emit
from tests.testbed.wait import eventually

REPO = Path(__file__).resolve().parents[2]
WATCHDOG_USEC = 400_000  # systemd's WatchdogSec=0.4s: the daemon pings every 0.2 s while its loop makes progress


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 107-byte limit of a Unix socket path; a short private dir cannot
    with tempfile.TemporaryDirectory(prefix="hyops-") as directory:
        yield Path(directory)


class SystemdNotifySocket:
    """What systemd would receive: every sd_notify datagram with the time it arrived."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[tuple[float, str]] = []

    async def collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            self.received.append((time.monotonic(), data.decode()))

    def pings(self, since: float = 0.0) -> int:
        return sum(1 for at, message in self.received if at >= since and message == "WATCHDOG=1")


@contextlib.asynccontextmanager
async def running_daemon(directory: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Daemon, SystemdNotifySocket]]:
    config_file = directory / "daemon.yaml"
    (directory / "prod.yaml").write_text((REPO / "policies" / "prod.yaml").read_text())
    config_file.write_text(
        f"node: edge01\nstate_dir: {directory}\ntick: 1s\n"
        f"lanes:\n  prod:\n    profile: {directory / 'prod.yaml'}\n    drivers:\n      sandbox: {{}}\n"
    )
    config, profiles, errors = check_config(config_file, DRIVER_MODULES)
    assert config is not None and not errors, errors
    systemd = SystemdNotifySocket(directory / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(directory / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    daemon = Daemon(config, profiles, config_file)
    collector = asyncio.create_task(systemd.collect())
    task = asyncio.create_task(daemon.run())
    try:
        yield daemon, systemd
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)
        collector.cancel()
        systemd.sock.close()


async def test_a_decision_loop_stuck_on_an_await_stops_the_watchdog_while_status_still_answers(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    check = housekeeping.check_config

    def hung_check(*args: Any) -> Any:
        release.wait(30)  # a reload's check that does not return until the test says so (the event loop stays free)
        return check(*args)

    async with running_daemon(short_dir, monkeypatch) as (daemon, systemd):
        await eventually("READY and pings", lambda: any(m.startswith("READY=1") for _, m in systemd.received))
        await eventually("two pings", lambda: systemd.pings() >= 2)
        monkeypatch.setattr(housekeeping, "check_config", hung_check)
        daemon.request_reload()
        stuck_at = time.monotonic()
        await asyncio.sleep(1.0)  # five watchdog intervals with the loop held
        status = await request(short_dir / "hyops.sock", "status", {}, timeout=2.0)
        assert status["node"] == "edge01"  # the event loop serves the control socket...
        grace = daemon.watchdog.interval
        assert grace is not None
        # ...but after the ping that may already have been due, none while the decision loop makes no progress.
        assert systemd.pings(since=stuck_at + grace + 0.05) == 0, systemd.received[-8:]
        assert daemon.watchdog.skipped >= 3
        release.set()
        resumed = time.monotonic()
        await eventually("pings to resume once the loop moves again", lambda: systemd.pings(since=resumed) >= 2)


def reload_outcomes(daemon: Daemon) -> list[tuple[str, dict[str, Any]]]:
    assert daemon.journal is not None
    return [(r.kind, r.body) for r in daemon.journal.records(kinds=("profile.reloaded", "profile.reload_refused"))]


async def test_a_reload_applies_only_what_passes_every_check_config_check(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = short_dir / "prod.yaml"
    async with running_daemon(short_dir, monkeypatch) as (daemon, _):
        await eventually("the daemon to lead its lane", lambda: daemon.lanes and daemon.lanes["prod"].leads)
        original = profile.read_text()

        # A chain step bound to a driver the lane does not configure: valid alone, refused against the lane.
        profile.write_text(
            original.replace("version: 1", "version: 2").replace("    - id: dns\n", "    - id: dns\n      driver: powerdns\n")
        )
        daemon.request_reload()
        await eventually("the refusal", lambda: reload_outcomes(daemon))
        (kind, body), *_ = reload_outcomes(daemon)
        assert kind == "profile.reload_refused" and "uses driver 'powerdns', not configured here" in " ".join(body["errors"])
        assert daemon.lanes["prod"].profile.version == 1  # nothing changed

        # A valid burst profile for the lane: a DR lane does not become a burst lane (nor back) while it runs.
        profile.write_text((REPO / "simulations" / "profiles" / "burst.yaml").read_text().replace("name: burst", "name: prod"))
        daemon.request_reload()
        await eventually("the second refusal", lambda: len(reload_outcomes(daemon)) == 2)
        kind, body = reload_outcomes(daemon)[-1]
        assert kind == "profile.reload_refused"
        assert body["errors"] == [
            "lane prod: profile prod@v1 is a burst profile, the lane runs as a DR lane: restart the daemon to change its kind"
        ]
        assert daemon.lanes["prod"].profile.burst is None

        profile.write_text(original.replace("version: 1", "version: 2"))
        daemon.request_reload()
        await eventually("the reload", lambda: len(reload_outcomes(daemon)) == 3)
        assert reload_outcomes(daemon)[-1] == ("profile.reloaded", {"lanes": {"prod": "prod@v2"}})
        assert daemon.lanes["prod"].profile.version == 2

        # The daemon config changed too: applying only the profiles would run a config nobody checked as a whole.
        config_file = short_dir / "daemon.yaml"
        config_file.write_text(config_file.read_text().replace("tick: 1s", "tick: 2s"))
        profile.write_text(original.replace("version: 1", "version: 3"))
        daemon.request_reload()
        await eventually("the fourth answer", lambda: len(reload_outcomes(daemon)) == 4)
        kind, body = reload_outcomes(daemon)[-1]
        assert kind == "profile.reload_refused" and "restart" in body["errors"][0]
        assert daemon.lanes["prod"].profile.version == 2


class Crashing:
    """A source with a bug: crashes at once the first ``fail`` times it runs, then runs until told to crash."""

    name = "buggy"

    def __init__(self, runs: list[str], crash: asyncio.Event) -> None:
        self.runs = runs
        self.crash = crash

    async def __aenter__(self) -> Crashing:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def run(self, emit: Emit) -> None:
        self.runs.append("run")
        if len(self.runs) <= 4:
            raise RuntimeError("bug on start")
        await self.crash.wait()
        self.crash.clear()
        raise RuntimeError("bug after a healthy run")


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class Recorded(Backoff):
    def __init__(self, clock: Clock) -> None:
        super().__init__(0.001, 0.064, healthy_after=60.0, clock=clock)
        self.delays: list[float] = []

    def next(self) -> float:
        delay = super().next()
        self.delays.append(delay)
        return delay


async def test_a_source_restart_backoff_starts_over_after_a_healthy_run() -> None:
    clock, runs, crash = Clock(), list[str](), asyncio.Event()
    backoff = Recorded(clock)
    supervisor = SourceSupervisor(lambda spec: Crashing(runs, crash), lambda sample: None, lambda: backoff)  # type: ignore[arg-type, return-value]
    spec = HttpProbeSource.model_validate({"type": "http_probe", "signal": "s", "url": "http://127.0.0.1:1/"})
    task = asyncio.create_task(supervisor.run(spec))
    try:
        await eventually("four crashes on start, then a run that holds", lambda: len(runs) == 5)
        assert backoff.delays == [0.001, 0.002, 0.004, 0.008]  # doubling while it keeps crashing
        clock.now += 61.0  # healthy for longer than healthy_after
        crash.set()
        await eventually("the restart after the crash", lambda: len(runs) == 6)
        assert backoff.delays[-1] == 0.001  # started over, not 0.016 (nor 60 s for the rest of the daemon's life)
        crash.set()  # and a crash soon after that restart is a flapping source again: the delay doubles
        await eventually("the next restart", lambda: len(runs) == 7)
        assert backoff.delays[-1] == 0.002
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
