"""A fleet for the backtest tests: generated site traces (simulations/generate.py's ``site``), what ``simulate --json``
says of each, and a real local Dask cluster (a scheduler and workers as subprocesses)."""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.cli.daemon_cli import main
from simulations.generate import site
from tests.testbed.process import Process, free_port, live
from tests.testbed.wait import eventually_sync

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "simulations" / "profiles" / "prod-10s.yaml"


def write_sites(folder: Path, count: int, duration: int, seed: int = 1) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        path = folder / f"site{number:02d}.jsonl"
        path.write_text("".join(site(random.Random(f"{seed}:{number}"), duration)))
        paths.append(path)
    return paths


def simulate_each(capsys: pytest.CaptureFixture[str], traces: Sequence[Path], *options: str) -> list[list[dict[str, Any]]]:
    """``simulate --json`` of every trace, in-process, one variant per list (the variants in the sweep's order)."""
    code = main(["simulate", "--profile", str(PROFILE), *(f"--trace={t}" for t in traces), "--json", *options])
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), err
    data = json.loads(out)
    outs = data if isinstance(data, list) else [data]
    return [outs[i : i + len(traces)] for i in range(0, len(outs), len(traces))]


def assert_fleet_matches(fleet: dict[str, Any], expected: list[list[dict[str, Any]]]) -> None:
    """Every site's figures are simulate's, and the fleet's are computed from them (sums, nearest-rank percentiles)."""
    assert len(fleet["variants"]) == len(expected)
    for variant, outs in zip(fleet["variants"], expected, strict=True):
        assert [Path(site["trace"]).name for site in variant["per_site"]] == [Path(out["trace"]).name for out in outs]
        for site_row, out in zip(variant["per_site"], outs, strict=True):
            assert site_row["cutovers"] == out["cutovers"]
            assert site_row["failbacks"] == out["failbacks"]
            assert site_row["faults"] == len(out["faults"])
            assert site_row["false_cutovers"] == out["false_cutovers"]
            assert site_row["missed_faults"] == out["missed_faults"]
            assert site_row["detection_latency_s"] == out["detection_latency_s"]
            assert site_row["time_on_standby_s"] == out["time_on_standby_s"]
            assert site_row["policy_usd"] == out["cost"]["policy_usd"]
            assert site_row["always_on_usd"] == out["cost"]["always_on_usd"]
            assert site_row["saving_ratio"] == out["cost"]["saving_ratio"]
        assert variant["cutovers"] == sum(out["cutovers"] for out in outs)
        assert variant["false_cutovers"] == sum(out["false_cutovers"] for out in outs)
        assert variant["missed_faults"] == sum(out["missed_faults"] for out in outs)
        latencies = sorted(x for out in outs for x in out["detection_latency_s"] if x is not None)
        if latencies:
            n = len(latencies)
            assert variant["detection_latency_s"] == {
                "detected": n,
                "p50": latencies[math.ceil(n / 2) - 1],
                "p95": latencies[math.ceil(0.95 * n) - 1],
                "max": latencies[-1],
            }
        policy = math.fsum(out["cost"]["policy_usd"] for out in outs)
        always_on = math.fsum(out["cost"]["always_on_usd"] for out in outs)
        assert variant["cost"]["policy_usd"] == round(policy, 6)
        assert variant["cost"]["always_on_usd"] == round(always_on, 6)
        assert variant["standby_hours"] == round(math.fsum(out["time_on_standby_s"] for out in outs) / 3600, 6)


@dataclass
class DaskCluster:
    address: str
    scheduler: Process
    workers: list[Process]

    def worker_pids(self) -> list[int]:
        """The processes that run tasks: each ``dask worker`` (a nanny) runs its worker as a child process."""
        import psutil

        return [child.pid for worker in self.workers for child in psutil.Process(worker.pid).children() if live(child.pid)]

    def connected_workers(self) -> int:
        from distributed import Client

        with Client(self.address, timeout=10, set_as_default=False) as client:
            return len(client.scheduler_info(n_workers=-1)["workers"])


@contextmanager
def dask_cluster(folder: Path, workers: int = 2) -> Iterator[DaskCluster]:
    """``dask scheduler`` and ``workers`` × ``dask worker --nworkers 1 --nthreads 1``, started here, stopped after.
    The workers import hybridops_daemon from this checkout (PYTHONPATH)."""
    dask = str(Path(sys.executable).parent / "dask")
    port, dashboard = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {"PYTHONPATH": str(REPO)}
    folder.mkdir(parents=True, exist_ok=True)
    scheduler = Process(
        "dask-scheduler",
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", f"127.0.0.1:{dashboard}"],
        folder / "scheduler.log",
        env=env,
        cwd=folder,
    )
    started = [scheduler]
    cluster = DaskCluster(address, scheduler, [])
    try:
        for number in range(workers):
            worker = Process(
                f"dask-worker-{number}",
                [dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--local-directory", "."],
                folder / f"worker{number}.log",
                env={**env, "OMP_NUM_THREADS": "1"},
                cwd=folder,
            )
            started.append(worker)
            cluster.workers.append(worker)
        eventually_sync(f"{workers} Dask workers connected", lambda: cluster.connected_workers() == workers or None, within=60)
        yield cluster
    finally:
        for process in reversed(started):
            process.stop(timeout=10)
