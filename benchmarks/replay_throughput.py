"""Replay throughput of ``hyops-daemon simulate`` on the year-long scenario (a year of 10-second probe samples, two
real outages), one core, beside two baselines measured in the same run on the same trace:

- "parse": reading and validating the gzipped trace into columns (what every replay pays first);
- "store only (floor)": the replay's per-sample work without decide(): each sample built, put in the
  ObservationStore, snapshotted and wrapped in an Observation, as the replay does before it calls decide().

"replay" is the whole engine on the parsed trace: one decide() per sample (as the daemon, one per wake), the ticks
in between that could change something, chains and costs. Aim (issue #5): >= 200,000 samples/s through decide().

    python -m benchmarks.replay_throughput [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from hybridops_daemon.config.loader import load_profile
from hybridops_daemon.drivers.registry import DRIVER_MODULES
from hybridops_daemon.observations import ObservationStore
from hybridops_daemon.policy.types import Observation
from hybridops_daemon.signals.sample import Sample
from hybridops_daemon.simulate.engine import replay
from hybridops_daemon.simulate.report import result
from hybridops_daemon.simulate.trace import Trace, load_trace

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "simulations" / "profiles" / "prod-10s.yaml"
TRACE = REPO / "simulations" / "scenarios" / "year.jsonl.gz"
NODE, PEER = "edge01", "edge02"


def store_only(trace: Trace) -> float:
    store = ObservationStore()
    names, edges = trace.signal_names, [NODE if edge is None else edge for edge in trace.edge_names]
    times, signal_ids, values, edge_ids = trace.times, trace.signals, trace.values, trace.edges
    began = time.perf_counter()
    for i in range(len(times)):
        value = values[i]
        store.put(Sample(names[signal_ids[i]], None if value != value else value, times[i], "trace", edges[edge_ids[i]]))
        Observation(store.snapshot(), NODE, PEER, None)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--trace", type=Path, default=TRACE, help="default: the year scenario")
    parser.add_argument("--profile", type=Path, default=PROFILE)
    args = parser.parse_args()
    profile = load_profile(args.profile, DRIVER_MODULES)
    parse, floor, whole = [], [], []
    trace: Trace | None = None
    calls = 0
    for _ in range(args.repeat):  # interleaved, so all three see the same machine conditions
        began = time.perf_counter()
        trace = load_trace(args.trace)
        parse.append(time.perf_counter() - began)
        floor.append(store_only(trace))
        began = time.perf_counter()
        replayed = replay(profile, trace, lane="prod", node=NODE, peer=PEER)
        whole.append(time.perf_counter() - began)
        calls = replayed.decide_calls
    assert trace is not None
    out = result(profile, trace, replayed, tick=1.0, grace=60.0)
    n, days = len(trace), trace.duration / 86400
    print(
        f"replay throughput: {args.trace.name}, {n:,} samples over {days:.1f} days, {profile.ref}, "
        f"best of {args.repeat}, one core"
    )
    print(
        f"  outcome: {out['cutovers']} cutovers, {out['failbacks']} failbacks, detection {out['detection_latency_s']} s, "
        f"{out['false_cutovers']} false; saving {out['cost']['saving_ratio']:.4f} vs always-on"
    )
    print(f"  decide() calls: {calls:,} ({calls - n:,} ticks; the daemon's 1 s tick would make {int(trace.duration):,})")
    for name, times in (("parse (gzip+JSONL)", parse), ("store only (floor)", floor), ("replay through decide()", whole)):
        best = min(times)
        print(f"  {name:24} {n / best:>10,.0f} samples/s   the trace in {best:6.2f} s (median {statistics.median(times):.2f} s)")
    beyond_floor = min(whole) - min(floor)
    print(f"  decide() + engine        {n / beyond_floor:>10,.0f} samples/s   (replay minus the floor; aim: >= 200,000)")
    print(f"  end to end (parse + replay): the trace in {min(parse) + min(whole):.2f} s")


if __name__ == "__main__":
    main()
