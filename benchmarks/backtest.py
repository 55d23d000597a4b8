"""The fleet backtest (``hyops-daemon backtest``, issue #18): throughput per worker beside ``simulate`` alone, scaling
from 1 to 2 local workers, a fleet of 50 sites × 20 variants, and the projection to a year and to N cores.

Every site is a generated trace (simulations/generate.py ``site``: a 10-second probe with one to three outages, blips,
nulls and lost samples), replayed with ``simulations/profiles/prod-10s.yaml`` and a sweep of its rule and cooldown.

- "simulate alone": ``replay()`` and ``result()`` in this process, site after site, variant after variant (what
  ``simulate --sweep`` does), in sample-decisions per second (a sample replayed with one variant);
- "backtest path, per worker": the same sites through ``run_fleet`` on one local worker process: the sample-decisions
  divided by the time the tasks took on the worker (parse included), and by the wall-clock time of the whole run
  (process start, pickling, result transfer included);
- scaling: the wall-clock time of one fleet on 1 worker divided by its time on 2;
- the fleet run: 50 sites × 20 variants, its wall-clock rate, and from it the projection (plain arithmetic);
- the peak RSS of a worker process (``ru_maxrss`` as each task ends).

    python -m benchmarks.backtest            # a few minutes
    python -m benchmarks.backtest --quick    # seconds: every figure printed, nothing asserted
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from hybridops_daemon.simulate.command import profile_grid
from hybridops_daemon.simulate.engine import replay
from hybridops_daemon.simulate.fleet import FleetSpec, SiteResult, local_executor, run_fleet
from hybridops_daemon.simulate.report import result
from hybridops_daemon.simulate.trace import load_trace
from simulations.generate import STEP, site

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "simulations" / "profiles" / "prod-10s.yaml"
DAY, YEAR_DAYS = 86400, 365
# 5 × 2 × 2 = 20 variants for the fleet run; the first two axes' first values (4 variants) for the other sections.
FLEET_SWEEP = ["rules.primary_down.for=10s,20s,30s,40s,60s", "rules.primary_down.consecutive=2,3", "cooldown=10m,30m"]
SMALL_SWEEP = ["rules.primary_down.for=10s,30s", "cooldown=10m,30m"]


def write_fleet(folder: Path, sites: int, days: float, seed: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(sites):
        path = folder / f"site{number:03d}.jsonl"
        with path.open("w") as out:
            out.writelines(site(random.Random(f"{seed}:{number}"), int(days * DAY)))
        paths.append(str(path))
    return paths


def spec_for(sweeps: list[str]) -> FleetSpec:
    _, _, grid = profile_grid(PROFILE, sweeps)
    return FleetSpec(tuple(grid), None, "edge01", "edge02", 1.0, 60.0)


def simulate_alone(spec: FleetSpec, paths: list[str]) -> tuple[int, float]:
    """Sample-decisions and seconds of replay() + result() in this process (the trace parsed once per site)."""
    decisions, seconds = 0, 0.0
    for path in paths:
        trace = load_trace(Path(path))
        began = time.perf_counter()
        for _, profile in spec.grid:
            replayed = replay(profile, trace, lane=profile.name, node=spec.node, peer=spec.peer, tick=spec.tick)
            result(profile, trace, replayed, tick=spec.tick, grace=spec.grace)
        seconds += time.perf_counter() - began
        decisions += len(trace) * len(spec.grid)
    return decisions, seconds


def fleet(spec: FleetSpec, paths: list[str], workers: int) -> tuple[list[SiteResult], float]:
    began = time.perf_counter()
    with local_executor(workers) as executor:
        results = run_fleet(executor, spec, paths, stall_timeout=3600)
    wall = time.perf_counter() - began
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise SystemExit(f"benchmark sites failed: {failed}")
    return results, wall


def decisions_of(results: list[SiteResult], variants: int) -> int:
    return sum(r.samples for r in results) * variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few small sites: seconds, figures only")
    parser.add_argument("--sites", type=int, default=50, help="sites in the fleet run (default 50)")
    parser.add_argument("--days", type=float, default=7.0, help="days of 10-second samples per site (default 7)")
    parser.add_argument("--cores", type=int, nargs="+", default=[8, 32, 128], help="core counts to project to")
    args = parser.parse_args()
    if args.quick:
        args.sites, args.days = 4, 0.5
    small_sites, small_days = (2, 0.5) if args.quick else (4, args.days)
    fleet_sweep = SMALL_SWEEP if args.quick else FLEET_SWEEP
    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    print(f"backtest benchmark: {cores} cores here, load average {load:.2f} at the start (other work shares them)")

    with tempfile.TemporaryDirectory(prefix="hyops-backtest-bench-") as tmp:
        small = write_fleet(Path(tmp) / "small", small_sites, small_days, seed=11)
        spec = spec_for(SMALL_SWEEP)
        variants = len(spec.grid)

        # 1. One worker through the backtest path, beside simulate alone (before and after: the best of the two).
        alone = [simulate_alone(spec, small)]
        one, wall_one = fleet(spec, small, 1)
        alone.append(simulate_alone(spec, small))
        n = decisions_of(one, variants)
        alone_rate = max(d / s for d, s in alone)
        busy = sum(r.busy_s for r in one)
        print(f"\n{small_sites} sites × {small_days:g} days × {variants} variants = {n:,} sample-decisions")
        print(f"  simulate alone (this process)     {alone_rate:>10,.0f} sample-decisions/s (best of 2)")
        print(f"  backtest path, 1 worker, on task  {n / busy:>10,.0f} sample-decisions/s (task time, parse included)")
        replaying = busy - sum(r.parse_s for r in one)
        print(f"  backtest path, 1 worker, replays  {n / replaying:>10,.0f} sample-decisions/s (task time less the parse)")
        print(f"  backtest path, 1 worker, wall     {n / wall_one:>10,.0f} sample-decisions/s ({wall_one:.2f} s, pool start in)")

        # 2. Scaling: the same fleet on 2 workers.
        two, wall_two = fleet(spec, small, 2)
        assert [r.variants for r in two] == [r.variants for r in one], "the results depend on the number of workers"
        print(f"  backtest path, 2 workers, wall    {n / wall_two:>10,.0f} sample-decisions/s ({wall_two:.2f} s)")
        print(f"  scaling 1 -> 2 workers: {wall_one / wall_two:.2f}x (wall time on 1 / wall time on 2)")

        # 3. The fleet run.
        began = time.perf_counter()
        paths = write_fleet(Path(tmp) / "fleet", args.sites, args.days, seed=12)
        generated = time.perf_counter() - began
        spec = spec_for(fleet_sweep)
        variants = len(spec.grid)
        results, wall = fleet(spec, paths, cores)
        n = decisions_of(results, variants)
        samples = sum(r.samples for r in results)
        busy = sum(r.busy_s for r in results)
        per_worker = n / busy
        print(
            f"\nfleet: {args.sites} sites × {args.days:g} days ({samples:,} samples; generated in {generated:.1f} s) "
            f"× {variants} variants = {n:,} sample-decisions on {cores} local workers"
        )
        print(f"  wall {wall:.1f} s: {n / wall:,.0f} sample-decisions/s; per worker on task {per_worker:,.0f}/s")
        print(f"  peak RSS of a worker: {max(r.peak_rss_kib for r in results) / 1024:.1f} MiB")
        per_site_year = YEAR_DAYS * DAY // STEP
        year = args.sites * variants * per_site_year
        print(
            f"projection to a year per site: {args.sites} sites × {variants} variants × {per_site_year:,} samples "
            f"= {year:,} sample-decisions"
        )
        rate = n / wall
        print(f"  here ({cores} workers, the measured {rate:,.0f}/s): {year:,} / {rate:,.0f} = {year / rate / 3600:.2f} h")
        print(f"  one core at {per_worker:,.0f}/s: {year / per_worker / 3600:.2f} core-hours")
        for count in args.cores:
            print(
                f"  {count} cores at {per_worker:,.0f}/s each: {year:,} / ({per_worker:,.0f} × {count}) = "
                f"{year / (per_worker * count) / 60:.1f} min (linear scaling assumed)"
            )


if __name__ == "__main__":
    main()
