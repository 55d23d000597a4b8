"""``hyops-daemon backtest --scheduler`` on a real local Dask cluster: a ``dask scheduler`` and two ``dask worker``
processes (one process, one thread each) started here and stopped after. The fleet's results equal ``simulate``'s,
site by site; a worker killed (SIGKILL) while it runs a site changes nothing in them (Dask runs its tasks again
elsewhere); an invalid trace is reported with its file and line while the other sites count."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.cli.daemon_cli import main
from hybridops_daemon.config.loader import load_profile
from hybridops_daemon.drivers.registry import DRIVER_MODULES
from hybridops_daemon.simulate.command import profile_grid
from hybridops_daemon.simulate.fleet import FleetSpec, dask_executor, local_executor, run_fleet
from hybridops_daemon.simulate.fleet_report import fleet_json
from tests.testbed.fleet import PROFILE, DaskCluster, assert_fleet_matches, dask_cluster, simulate_each, write_sites

DAY = 86400
SWEEP = ("--sweep", "rules.primary_down.for=10s,40s", "--sweep", "cooldown=10m,30m")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    with dask_cluster(tmp_path_factory.mktemp("dask")) as running:
        yield running


def backtest(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    code = main(["backtest", "--profile", str(PROFILE), "--json", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def test_the_fleet_on_dask_equals_simulate_site_by_site(
    cluster: DaskCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = write_sites(tmp_path / "sites", 4, DAY)
    code, fleet, err = backtest(capsys, "--traces", str(tmp_path / "sites"), "--scheduler", cluster.address, *SWEEP)
    assert (code, err) == (0, "")
    assert len(fleet["variants"]) == 4 and fleet["sites"] == 4
    assert fleet["variants"][0]["cutovers"] > 0
    assert_fleet_matches(fleet, simulate_each(capsys, paths, *SWEEP))
    _, local, _ = backtest(capsys, "--traces", str(tmp_path / "sites"), "--workers", "2", *SWEEP)
    assert local == fleet


def test_a_worker_killed_mid_run_changes_nothing(cluster: DaskCluster, tmp_path: Path) -> None:
    from distributed import Client

    sites = [str(path) for path in write_sites(tmp_path / "sites", 6, 3 * DAY, seed=2)]
    profile = load_profile(PROFILE, DRIVER_MODULES)
    _, _, grid = profile_grid(PROFILE, [SWEEP[1], SWEEP[3]])
    spec = FleetSpec(tuple(grid), None, "edge01", "edge02", 1.0, 60.0)
    killed: list[tuple[int, int, int]] = []  # (sites done, tasks the victim was running, its pid)

    with Client(cluster.address, timeout=10, set_as_default=False) as observer:

        def kill_a_busy_worker(done: int, total: int) -> None:
            if killed or done == 0 or done >= total - 2:
                return
            processing = observer.processing()
            busy = [address for address, tasks in processing.items() if tasks]
            if not busy:
                return
            pid = observer.run(os.getpid, workers=[busy[0]])[busy[0]]  # answered by the worker, beside the running task
            os.kill(pid, signal.SIGKILL)
            killed.append((done, len(processing[busy[0]]), pid))

        with dask_executor(cluster.address, timeout=30) as executor:
            results = run_fleet(executor, spec, sites, stall_timeout=300, on_progress=kill_a_busy_worker)

    assert killed, "no worker was killed: the run ended before the first site did"
    done_at_kill, running, victim = killed[0]
    assert done_at_kill < len(sites) - 2 and running >= 1  # mid-run: the victim held a site, others were still to run
    assert all(result.ok for result in results), [result.error for result in results]
    # The victim's site ran again on a live worker: no result comes from it but those it finished before it died.
    from_victim = [result for result in results if result.worker.endswith(f":{victim}")]
    assert len(from_victim) <= done_at_kill
    with dask_executor(cluster.address, timeout=30) as executor:  # the nanny has restarted the killed worker by now
        again = run_fleet(executor, spec, sites, stall_timeout=300)
    assert fleet_json(profile, spec, results) == fleet_json(profile, spec, again)
    with local_executor(2) as pool:
        local = run_fleet(pool, spec, sites, stall_timeout=300)
    assert fleet_json(profile, spec, results) == fleet_json(profile, spec, local)


def test_an_invalid_trace_in_the_fleet_is_reported_and_the_others_count(
    cluster: DaskCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = write_sites(tmp_path / "sites", 3, DAY // 2, seed=3)
    broken = tmp_path / "sites" / "site99.jsonl"
    broken.write_text('{"t": 0, "signal": "primary_http", "value": 1}\n{"t": 10, "signal": "primary_http", "value": NaN}\n')
    code, fleet, err = backtest(capsys, "--traces", f"{tmp_path}/sites/site*.jsonl", "--scheduler", cluster.address)
    assert (code, err) == (1, "")
    assert fleet["sites"] == 4
    [invalid] = fleet["invalid_sites"]
    assert invalid["trace"] == str(broken) and invalid["error"].startswith(f"{broken}:2: ")
    assert fleet["variants"][0]["sites"] == 3
    assert_fleet_matches(fleet, simulate_each(capsys, paths))
