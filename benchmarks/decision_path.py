"""Decision path: a tripping sample enters the observation store → decide() → the decision is durable in the journal.

The journal signs every record (a node with a ``journal_key``); the same path with an unsigned journal is measured
interleaved beside it, so the cost of signing is the difference of the two rows. Printed beside the floor it cannot
beat: a bare SQLite INSERT + COMMIT of a body of the same size, with the same durability
settings (WAL, synchronous=FULL), on the same disk, interleaved run by run in the same process.
Aim (issue #2): p99 ≤ 5 ms and ≤ 3× the bare commit.

``DecisionPath`` is this measurement for the other benchmarks too: ``block()`` paces it by an event loop, and
``interleaved()`` alternates quiet blocks with blocks under a load that shares the loop (preflight.py, web_view_load.py).

    python -m benchmarks.decision_path [--runs 10000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class DecisionPath:
    """The path measured: a tripping sample into the store → decide() → the decision durable in ``journal``."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.store = ObservationStore()
        self.runs = 0
        self.body_bytes = 0

    def once(self) -> float:
        """One run, from a healthy lane each time so that every run starts alike; its milliseconds."""
        self.runs += 1
        now = 1_800_000_000.0 + self.runs
        state = LaneState(lane="prod", since=now - 60)
        began = time.perf_counter_ns()
        self.store.put(Sample("primary_http", 0.0, now, "http_probe", "edge01"))
        decision, state = decide(state, Observation(self.store.snapshot(), "edge01"), PROFILE, now)
        record_decision(self.journal, decision, PROFILE, state, fencing_token=1)
        took = (time.perf_counter_ns() - began) / 1e6
        assert decision.kind is DecisionKind.CUTOVER, decision.reason
        self.body_bytes = self.body_bytes or len(json.dumps(decision.to_dict()))
        return took

    async def block(self, runs: int, gap: float) -> tuple[list[float], list[float]]:
        """``runs`` runs, each due ``gap`` seconds after the last one ended: the path's milliseconds, and those from
        the moment it was due (the path plus the wait for the event loop, which whatever shares the loop adds to)."""
        path_ms: list[float] = []
        due_ms: list[float] = []
        for _ in range(runs):
            due = time.perf_counter() + gap
            await asyncio.sleep(gap)
            path_ms.append(self.once())
            due_ms.append((time.perf_counter() - due) * 1000)
        return path_ms, due_ms


@dataclass
class Block:
    busy: bool
    path_ms: list[float]
    due_ms: list[float]  # from the moment the sample was due: the path plus the wait for the loop
    work: int  # how much of the load ran meanwhile (preflights, pages)
    seconds: float


Load = Callable[[asyncio.Event], Coroutine[Any, Any, int]]  # runs until the event is set; returns how much of its work ran


async def interleaved(path: DecisionPath, load: Load, blocks: int, runs: int, gap: float) -> list[Block]:
    """Quiet, busy, busy, quiet, ...: each kind as often first as second, so a drift in the machine's load (other
    people's tests) falls on both alike. A busy block runs ``load`` in this loop beside the path."""
    await path.block(runs, gap)  # warm-up, not counted: the journal's first pages, the first decisions
    done: list[Block] = []
    for i in range(2 * blocks):
        busy = i % 4 in (1, 2)
        stop = asyncio.Event()
        began = time.perf_counter()
        task = asyncio.create_task(load(stop)) if busy else None
        path_ms, due_ms = await path.block(runs, gap)
        stop.set()
        ran = await task if task is not None else 0  # the work in flight finishes: the next quiet block is quiet
        done.append(Block(busy, path_ms, due_ms, ran, time.perf_counter() - began))
    return done


def block_arguments(parser: argparse.ArgumentParser) -> None:
    """``interleaved()``'s options, for the benchmarks that run it."""
    parser.add_argument("--blocks", type=int, default=10, help="decision-path blocks of each kind")
    parser.add_argument("--runs", type=int, default=500, help="decisions per block")
    parser.add_argument("--gap", type=float, default=2.0, help="ms between decisions")


def print_blocks(blocks: list[Block], gap_ms: float, kinds: tuple[str, str], work: str) -> None:
    """The two kinds side by side (``kinds``: the quiet one's name, the busy one's), and the difference of their p99
    from due beside the spread of p99 between quiet blocks: the noise."""
    print(f"decision path, a sample every {gap_ms:g} ms, {len(blocks)} blocks of {len(blocks[0].path_ms)} interleaved:")
    print(f"{'':10}{kinds[0]:>30}   {kinds[1]:>30}")
    print((f"{'ms':10}" + f"{'p50':>10}{'p99':>10}{'max':>10}   " * 2).rstrip())
    mine = {busy: [b for b in blocks if b.busy == busy] for busy in (False, True)}
    for name in ("path", "from due"):
        row = f"{name:10}"
        for busy in (False, True):
            pooled = [v for b in mine[busy] for v in (b.path_ms if name == "path" else b.due_ms)]
            row += f"{statistics.median(pooled):>10.2f}{percentile(pooled, 99):>10.2f}{max(pooled):>10.2f}   "
        print(row.rstrip())
    block_p99 = {busy: [percentile(b.due_ms, 99) for b in mine[busy]] for busy in (False, True)}
    for busy in (False, True):
        print(f"from due, p99 per block, {kinds[busy]}: {' '.join(f'{v:.2f}' for v in block_p99[busy])}")
    pooled_p99 = {busy: percentile([v for b in mine[busy] for v in b.due_ms], 99) for busy in (False, True)}
    difference, spread = pooled_p99[True] - pooled_p99[False], max(block_p99[False]) - min(block_p99[False])
    verdict = "within" if abs(difference) <= spread else "outside"
    print(
        f"p99 from due: {kinds[1]} {difference:+.2f} ms vs {kinds[0]}; spread of {kinds[0]} block p99s {spread:.2f} ms: "
        f"the difference is {verdict} the noise"
    )
    ran, seconds = sum(b.work for b in mine[True]), sum(b.seconds for b in mine[True])
    print(f"{kinds[1]}: {ran} {work} in {seconds:.1f} s ({ran / seconds:.1f}/s)")


def run(runs: int, directory: Path) -> dict[str, dict[str, float]]:
    journal = Journal.open(directory / "journal.db", Redactor(), key=b"benchmark journal key, 32 bytes.")
    unsigned = Journal.open(directory / "unsigned.db", Redactor())
    bare = sqlite3.connect(directory / "bare.db", isolation_level=None)
    bare.execute("PRAGMA journal_mode=WAL")
    bare.execute("PRAGMA synchronous=FULL")
    bare.execute("CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    signed_path, unsigned_path = DecisionPath(journal), DecisionPath(unsigned)
    path_ms: list[float] = []
    unsigned_ms: list[float] = []
    bare_ms: list[float] = []
    for _ in range(runs):
        path_ms.append(signed_path.once())
        unsigned_ms.append(unsigned_path.once())
        payload = "x" * signed_path.body_bytes
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
        "body_bytes": {"p50": signed_path.body_bytes},
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
