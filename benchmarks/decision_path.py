"""Decision path: a tripping sample enters the observation store → decide() → the decision is durable in the journal.

The journal signs every record (a node with a ``journal_key``); the same path with an unsigned journal is measured
interleaved beside it, so the cost of signing is the difference of the two rows. Printed beside the floor it cannot
beat: a bare SQLite INSERT + COMMIT of a body of the same size, with the same durability
settings (WAL, synchronous=FULL), on the same disk, interleaved run by run in the same process.
Aim (issue #2): p99 ≤ 5 ms and ≤ 3× the bare commit.

    python -m benchmarks.decision_path [--runs 10000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.daemon.decisions import record_decision
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.observations import ObservationStore
from hybridops_daemon.policy.decide import decide
from hybridops_daemon.policy.types import DecisionKind, LaneState, Observation
from hybridops_daemon.signals.sample import Sample

PROFILE = Profile.model_validate(
    {
        "name": "bench",
        "version": 1,
        "signals": {"primary_http": {"max_age": "5s"}},
        "rules": [{"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5}],
        "cooldown": "0s",
        "chains": {
            "cutover": [{"id": "fip", "module": "network/floating-ip@v1", "inputs": {"ip": "203.0.113.10", "target": "edge02"}}],
            "failback": [],
        },
    }
)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1] if len(values) > 1 else values[0]


def run(runs: int, directory: Path) -> dict[str, dict[str, float]]:
    journal = Journal.open(directory / "journal.db", Redactor(), key=b"benchmark journal key, 32 bytes.")
    unsigned = Journal.open(directory / "unsigned.db", Redactor())
    bare = sqlite3.connect(directory / "bare.db", isolation_level=None)
    bare.execute("PRAGMA journal_mode=WAL")
    bare.execute("PRAGMA synchronous=FULL")
    bare.execute("CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    store = ObservationStore()
    path_ms: list[float] = []
    unsigned_ms: list[float] = []
    bare_ms: list[float] = []
    body_size = 0
    for i in range(runs):
        now = 1_800_000_000.0 + i
        state = LaneState(lane="prod", since=now - 60)  # a healthy lane, each run from the same starting point

        began = time.perf_counter_ns()
        store.put(Sample("primary_http", 0.0, now, "http_probe", "edge01"))
        decision, state = decide(state, Observation(store.snapshot(), "edge01"), PROFILE, now)
        record_decision(journal, decision, PROFILE, state, fencing_token=1)
        path_ms.append((time.perf_counter_ns() - began) / 1e6)
        assert decision.kind is DecisionKind.CUTOVER, decision.reason

        began = time.perf_counter_ns()
        store.put(Sample("primary_http", 0.0, now, "http_probe", "edge01"))
        decision, _ = decide(LaneState(lane="prod", since=now - 60), Observation(store.snapshot(), "edge01"), PROFILE, now)
        record_decision(unsigned, decision, PROFILE, state, fencing_token=1)
        unsigned_ms.append((time.perf_counter_ns() - began) / 1e6)

        if not body_size:
            body_size = len(json.dumps(decision.to_dict()))
        payload = "x" * body_size
        began = time.perf_counter_ns()
        bare.execute("BEGIN IMMEDIATE")
        bare.execute("INSERT INTO records (body) VALUES (?)", (payload,))
        bare.execute("COMMIT")
        bare_ms.append((time.perf_counter_ns() - began) / 1e6)
    journal.close()
    unsigned.close()
    bare.close()

    def summary(values: list[float]) -> dict[str, float]:
        return {"p50": statistics.median(values), "p99": percentile(values, 99), "max": max(values)}

    return {
        "decision path": summary(path_ms),
        "  same, unsigned": summary(unsigned_ms),
        "bare insert+commit": summary(bare_ms),
        "body_bytes": {"p50": body_size},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None, help="where the two databases go (default: a temp dir under var/)")
    args = parser.parse_args()
    base = Path("var")
    base.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir or base) as tmp:
        results = run(args.runs, Path(tmp))
    path, bare = results["decision path"], results["bare insert+commit"]
    print(
        f"decision path benchmark: {args.runs} runs, decision body {int(results['body_bytes']['p50'])} bytes, "
        "WAL + synchronous=FULL"
    )
    print(f"{'':24}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for name in ("decision path", "  same, unsigned", "bare insert+commit"):
        r = results[name]
        print(f"{name:24}{r['p50']:>10.3f}{r['p99']:>10.3f}{r['max']:>10.3f}")
    print(f"ratio p50 {path['p50'] / bare['p50']:.2f}x, p99 {path['p99'] / bare['p99']:.2f}x (aim: p99 <= 5 ms and <= 3x)")


if __name__ == "__main__":
    main()
