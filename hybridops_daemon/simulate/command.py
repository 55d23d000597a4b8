"""``hyops-daemon simulate`` and ``hyops-daemon backtest``: load and validate everything first (exit 2 on any invalid
input), then replay."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from hybridops_daemon.config.loader import ConfigInvalid, load_profile
from hybridops_daemon.config.profile import Profile
from hybridops_daemon.drivers.registry import DRIVER_MODULES
from hybridops_daemon.durations import parse_duration
from hybridops_daemon.simulate.burst import burst_result, render_burst, render_burst_table, replay_burst
from hybridops_daemon.simulate.engine import Replay, replay
from hybridops_daemon.simulate.report import render, render_table, result
from hybridops_daemon.simulate.sweep import Axis, SweepError, parse_axes, variants
from hybridops_daemon.simulate.trace import Trace, TraceError, load_trace
from hybridops_daemon.simulate.truth import IntervalError, load_intervals, offset_seconds

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


class InvalidInput(Exception):
    """Input a command refuses before it runs anything (exit 2): the lines to print on stderr."""

    def __init__(self, *lines: str, bare: bool = False) -> None:
        super().__init__(*lines)
        self.lines = lines
        self.bare = bare  # check-config's own `file:line key: message` lines go out as they are

    def report(self, command: str) -> int:
        for line in self.lines:
            print(line if self.bare else f"hyops-daemon {command}: {line}", file=sys.stderr)
        return EXIT_INVALID


def _fail(message: str) -> int:
    return InvalidInput(message).report("simulate")


def timing(tick: str, grace: str) -> tuple[float, float]:
    """``--tick`` and ``--grace`` in seconds. Raises InvalidInput."""
    try:
        tick_s, grace_s = parse_duration(tick), parse_duration(grace)
    except ValueError:
        raise InvalidInput('--tick and --grace take durations like "1s" or "2m"') from None
    if tick_s <= 0:
        raise InvalidInput("--tick must be longer than 0s")
    return tick_s, grace_s


def profile_grid(profile_path: Path, sweeps: Sequence[str]) -> tuple[Profile, list[Axis], list[tuple[dict[str, str], Profile]]]:
    """The profile, the sweep's axes and every variant (the profile alone without a sweep), each validated as
    check-config validates a profile. Raises InvalidInput."""
    try:
        profile = load_profile(profile_path, DRIVER_MODULES)
    except ConfigInvalid as exc:
        raise InvalidInput(*(str(error) for error in exc.errors), bare=True) from None
    try:
        axes = parse_axes(sweeps)
        grid: list[tuple[dict[str, str], Profile]] = [({}, profile)]
        if axes:
            grid = variants(yaml.safe_load(profile_path.read_text(encoding="utf-8")), axes, DRIVER_MODULES)
    except SweepError as exc:
        raise InvalidInput(str(exc)) from None
    return profile, axes, grid


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """What simulate and backtest share, as given on the command line."""

    profile_path: Path
    sweeps: Sequence[str]
    lane: str | None
    tick: str
    node: str
    peer: str
    grace: str
    as_json: bool
    plot_path: Path | None


def run_simulate(
    options: ReplayOptions, *, trace_paths: Sequence[Path], every_tick: bool, faults_path: Path | None = None
) -> int:
    """``hyops-daemon simulate``; ``faults_path``: a file of fault intervals added to every trace's own."""
    lane, node, peer, plot_path = options.lane, options.node, options.peer, options.plot_path
    try:
        tick_s, grace_s = timing(options.tick, options.grace)
        profile, axes, grid = profile_grid(options.profile_path, options.sweeps)
    except InvalidInput as exc:
        return exc.report("simulate")
    if plot_path is not None and (axes or len(trace_paths) > 1):
        return _fail("--plot draws one replay: give one --trace and no --sweep")
    if plot_path is not None and profile.burst is not None:
        return _fail("--plot draws DR lanes; a burst lane's replay is a table (or --json)")
    try:
        traces: list[Trace] = [load_trace(path) for path in trace_paths]
        faults = [interval for interval, _line in load_intervals(faults_path, offset_seconds)] if faults_path else None
    except (TraceError, IntervalError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    if faults is not None:
        for trace in traces:
            trace.add_faults(faults)

    outs: list[dict[str, Any]] = []
    replays: list[Replay] = []
    for label, variant in grid:
        for trace in traces:
            if variant.burst is not None:
                out = burst_result(variant, trace, replay_burst(variant, trace, lane=lane or variant.name, node=node))
                outs.append({"variant": label, **out} if axes else out)
                continue
            replayed = replay(variant, trace, lane=lane or variant.name, node=node, peer=peer, tick=tick_s, every_tick=every_tick)
            out = result(variant, trace, replayed, tick=tick_s, grace=grace_s)
            if plot_path is not None:
                from hybridops_daemon.simulate.plot import plot

                try:
                    plot(plot_path, variant, trace, replayed, out)
                except OSError as exc:
                    return _fail(f"cannot write the plot to {plot_path}: {exc.strerror or exc}")
            outs.append({"variant": label, **out} if axes else out)
            replays.append(replayed)
    single = not axes and len(traces) == 1
    if options.as_json:
        print(json.dumps(outs[0] if single else outs, indent=2))
    elif profile.burst is not None:
        print(render_burst(outs[0]) if single else render_burst_table(outs))
    else:
        print(render(outs[0], replays[0]) if single else render_table(outs))
    return EXIT_OK


def run_backtest(
    options: ReplayOptions, *, trace_patterns: Sequence[str], workers: int | None, scheduler: str | None, stall_timeout: str
) -> int:
    """``hyops-daemon backtest``: every site's trace replayed with every variant, on local workers or a Dask cluster.
    Exit 0 when every site ran, 1 when some site's trace was invalid (reported; the others counted) or the fleet could
    not run, 2 on invalid options or profile (nothing ran)."""
    from hybridops_daemon.simulate.fleet import FleetFailed, FleetSpec, dask_executor, expand, local_executor, run_fleet
    from hybridops_daemon.simulate.fleet_report import fleet_json, render_fleet

    plot_path = options.plot_path
    try:
        tick_s, grace_s = timing(options.tick, options.grace)
        try:
            stall_s = parse_duration(stall_timeout)
        except ValueError:
            raise InvalidInput('--stall-timeout takes a duration like "30m"') from None
        if workers is not None and workers < 1:
            raise InvalidInput("--workers must be at least 1")
        if plot_path is not None and importlib.util.find_spec("matplotlib") is None:  # known before an hour-long run
            raise InvalidInput("--plot needs matplotlib: pip install 'hybridops-daemon[plot]'")
        profile, _, grid = profile_grid(options.profile_path, options.sweeps)
        if profile.burst is not None:
            raise InvalidInput("backtest replays DR lanes; replay a burst lane with simulate")
        try:
            sites = expand(trace_patterns)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    except InvalidInput as exc:
        return exc.report("backtest")
    spec = FleetSpec(tuple(grid), options.lane, options.node, options.peer, tick_s, grace_s)
    progress = _ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    began = time.monotonic()
    try:
        if scheduler is not None:
            cluster = dask_executor(scheduler, timeout=30.0)
            where = f"the Dask cluster at {scheduler}"
        else:
            count = min(workers or len(os.sched_getaffinity(0)), len(sites))
            cluster = local_executor(count)
            where = f"{count} local worker{'s' * (count != 1)}"
        with cluster as executor:
            results = run_fleet(executor, spec, sites, stall_timeout=stall_s, on_progress=progress)
    except FleetFailed as exc:
        print(f"hyops-daemon backtest: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("hyops-daemon backtest: interrupted; no result", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if progress is not None:
            progress.close()
    elapsed = time.monotonic() - began
    out = fleet_json(profile, spec, results)
    if plot_path is not None:
        from hybridops_daemon.simulate.plot import plot_fleet

        try:
            plot_fleet(plot_path, out)
        except OSError as exc:
            return InvalidInput(f"cannot write the plot to {plot_path}: {exc.strerror or exc}").report("backtest")
    if options.as_json:
        print(json.dumps(out, indent=2))
    else:
        decisions = out["samples"] * len(grid)
        print(render_fleet(out))
        print(f"{decisions:,} sample-decisions in {elapsed:.1f} s on {where} ({decisions / max(elapsed, 1e-9):,.0f}/s)")
    return EXIT_FAILED if out["invalid_sites"] else EXIT_OK


class _ProgressBar:
    """``[#####.....] 23/50 sites  41 s`` on one terminal line, rewritten in place (only on a terminal)."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.began = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        filled = self.WIDTH * done // max(total, 1)
        elapsed = time.monotonic() - self.began
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total} sites  {elapsed:.0f} s")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[2K")  # erase the bar: the table follows on a clean line
            self.stream.flush()
