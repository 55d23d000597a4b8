"""decide() throughput on a recorded-like stream, one core, beside two baselines run on the same stream:

- "store only": putting each sample in the observation store and building the Observation, nothing decided
  (the floor of the daemon's per-sample work outside decide());
- "naive threshold": what a keepalived track script does (compare the value against a level, no windows,
  no hysteresis, no corroboration, no state), the cheapest "decision" there is.

The stream is seeded and shaped like an edge's history: three signals at 1 Hz / 1 Hz / 0.5 Hz over ~22 h,
healthy most of the time, with primary outages, WAN-loss bursts and replica-lag spikes; chain runs finish
5 s after each cutover or failback so the lane walks its whole state machine. Aim (issue #2): ≥ 200,000
samples/s.

    python -m benchmarks.decide_throughput [--samples 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import Counter

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.observations import ObservationStore
from hybridops_daemon.policy.decide import decide
from hybridops_daemon.policy.types import ChainEvent, Decision, DecisionKind, LaneState, Observation
from hybridops_daemon.signals.sample import Sample

EDGE = "edge01"
PROFILE = Profile.model_validate(
    {
        "name": "bench",
        "version": 1,
        "signals": {"primary_http": {"max_age": "5s"}, "wan_loss": {"max_age": "5s"}, "replica_lag": {"max_age": "10s"}},
        "rules": [
            {"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5, "for": "3s", "consecutive": 3},
            {"name": "wan_loss_high", "signal": "wan_loss", "direction": "above", "trip": 30, "clear": 5, "for": "10s"},
            {"name": "replica_lagging", "signal": "replica_lag", "direction": "above", "trip": 60, "clear": 10, "for": "30s"},
        ],
        "corroboration": {"min_rules": 1, "rules": ["primary_down", "wan_loss_high"]},
        "cooldown": "5m",
        "action_limit": {"max_actions": 50, "window": "24h"},
        "failback": {"automatic": True, "stable_for": "10m"},
        "chains": {
            "cutover": [{"id": "fip", "module": "network/floating-ip@v1", "inputs": {"ip": "203.0.113.10", "target": "edge02"}}],
            "failback": [{"id": "fip", "module": "network/floating-ip@v1", "inputs": {"ip": "203.0.113.10", "target": EDGE}}],
        },
    }
)


def recorded_like_stream(count: int, seed: int = 7) -> list[Sample]:
    rng = random.Random(seed)
    samples: list[Sample] = []
    t = 1_800_000_000.0
    outage_until = wan_burst_until = lag_until = 0.0
    second = 0
    while len(samples) < count:
        second += 1
        now = t + second
        if now > outage_until and rng.random() < 1 / 7200:  # a primary outage every ~2 h, 30-300 s long
            outage_until = now + rng.uniform(30, 300)
        if now > wan_burst_until and rng.random() < 1 / 1800:
            wan_burst_until = now + rng.uniform(2, 40)
        if now > lag_until and rng.random() < 1 / 3600:
            lag_until = now + rng.uniform(10, 120)
        up = now > outage_until and rng.random() > 0.002  # plus the odd lone failed probe
        samples.append(Sample("primary_http", 1.0 if up else 0.0, now + rng.uniform(0, 0.05), "http_probe", EDGE))
        loss = rng.uniform(30, 80) if now < wan_burst_until else max(0.0, rng.gauss(0.5, 0.5))
        samples.append(Sample("wan_loss", loss, now + 0.3, "prometheus", EDGE))
        if second % 2 == 0:
            lag = rng.uniform(60, 300) if now < lag_until else abs(rng.gauss(1, 1))
            samples.append(Sample("replica_lag", lag, now + 0.6, "prometheus", EDGE))
    return samples[:count]


def run_policy(stream: list[Sample]) -> tuple[float, Counter[str]]:
    store = ObservationStore()
    state = LaneState(lane="prod", since=stream[0].observed_at)
    kinds: Counter[str] = Counter()
    pending_end: tuple[float, str] | None = None
    began = time.perf_counter()
    for sample in stream:
        store.put(sample)
        now = sample.observed_at
        event = None
        if pending_end is not None and now >= pending_end[0]:
            event = ChainEvent("prod", pending_end[1], ok=True, detail="simulated")
            pending_end = None
        decision: Decision
        decision, state = decide(state, Observation(store.snapshot(), EDGE, None, event), PROFILE, now)
        if decision.kind is not DecisionKind.HOLD:
            kinds[decision.kind.value] += 1
            if decision.run_id is not None:
                pending_end = (now + 5.0, decision.run_id)
    return time.perf_counter() - began, kinds


def run_store_only(stream: list[Sample]) -> float:
    store = ObservationStore()
    began = time.perf_counter()
    for sample in stream:
        store.put(sample)
        Observation(store.snapshot(), EDGE)
    return time.perf_counter() - began


def run_naive(stream: list[Sample]) -> tuple[float, int]:
    failing = 0
    began = time.perf_counter()
    for sample in stream:
        if sample.signal == "primary_http" and sample.value is not None and sample.value < 0.5:
            failing += 1
    return time.perf_counter() - began, failing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    stream = recorded_like_stream(args.samples)
    span_h = (stream[-1].observed_at - stream[0].observed_at) / 3600
    policy, store_only, naive = [], [], []
    kinds: Counter[str] = Counter()
    for _ in range(args.repeat):  # interleaved, so the three see the same machine conditions
        elapsed, kinds = run_policy(stream)
        policy.append(elapsed)
        store_only.append(run_store_only(stream))
        naive.append(run_naive(stream)[0])
    n = len(stream)
    print(f"decide() throughput: {n} samples ({span_h:.1f} h of a 3-signal edge), best of {args.repeat}, one core")
    print(f"  decisions other than hold per pass: {dict(kinds)}")
    for name, times in (("store + decide()", policy), ("store only (floor)", store_only), ("naive threshold", naive)):
        best = min(times)
        per_sample = f"{best * 1e6 / n:.2f} us/sample, median pass {statistics.median(times):.3f} s"
        print(f"  {name:20} {n / best:>12,.0f} samples/s  ({per_sample})")
    decide_only = min(policy) - min(store_only)
    print(f"  decide() alone       {n / decide_only:>12,.0f} samples/s  (store+decide minus the floor; aim: >= 200,000)")


if __name__ == "__main__":
    main()
