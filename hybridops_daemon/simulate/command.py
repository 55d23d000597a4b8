"""``hyops-daemon simulate``: load and validate everything first (exit 2 on any invalid input), then replay."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from hybridops_daemon.config.loader import ConfigInvalid, load_profile
from hybridops_daemon.config.profile import Profile
from hybridops_daemon.drivers.registry import DRIVER_MODULES
from hybridops_daemon.durations import parse_duration
from hybridops_daemon.simulate.burst import burst_result, render_burst, render_burst_table, replay_burst
from hybridops_daemon.simulate.engine import Replay, replay
from hybridops_daemon.simulate.report import render, render_table, result
from hybridops_daemon.simulate.sweep import SweepError, parse_axes, variants
from hybridops_daemon.simulate.trace import Trace, TraceError, load_trace
from hybridops_daemon.simulate.truth import IntervalError, load_intervals, offset_seconds

EXIT_OK, EXIT_INVALID = 0, 2


def _fail(message: str) -> int:
    print(f"hyops-daemon simulate: {message}", file=sys.stderr)
    return EXIT_INVALID


def run_simulate(
    *,
    profile_path: Path,
    trace_paths: Sequence[Path],
    lane: str | None,
    as_json: bool,
    plot_path: Path | None,
    sweeps: Sequence[str],
    tick: str,
    node: str,
    peer: str,
    grace: str,
    every_tick: bool,
    faults_path: Path | None = None,
) -> int:
    try:
        tick_s, grace_s = parse_duration(tick), parse_duration(grace)
    except ValueError:
        return _fail('--tick and --grace take durations like "1s" or "2m"')
    if tick_s <= 0:
        return _fail("--tick must be longer than 0s")
    try:
        profile = load_profile(profile_path, DRIVER_MODULES)
    except ConfigInvalid as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return EXIT_INVALID
    try:
        axes = parse_axes(sweeps)
        grid: list[tuple[dict[str, str], Profile]] = [({}, profile)]
        if axes:
            grid = variants(yaml.safe_load(profile_path.read_text(encoding="utf-8")), axes, DRIVER_MODULES)
    except SweepError as exc:
        return _fail(str(exc))
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
    if as_json:
        print(json.dumps(outs[0] if single else outs, indent=2))
    elif profile.burst is not None:
        print(render_burst(outs[0]) if single else render_burst_table(outs))
    else:
        print(render(outs[0], replays[0]) if single else render_table(outs))
    return EXIT_OK
