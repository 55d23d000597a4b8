"""Takeover time (issue #7): from the leader's death to the new leader's first verified step, beside the lease TTL.

The edge pair of the e2e tests (tests/e2e/edge_pair.py): two ``hyops-daemon`` processes, edge01 and edge02, each in
its own network namespace with its member of a three-member etcd, leading the lane through an etcd lease; the lane's
chain has three steps (fake GCP capacity, fake Hetzner floating IP, a real PowerDNS). Each run:

- on the leader, start a chain: ``cutover`` while the lane is PRIMARY, ``failback`` while ON_STANDBY (so they alternate);
- once the leader's journal shows the first step done, ``kill -9`` it (mid-chain; the wall-clock time just before
  the signal is the kill time);
- from the other edge's journal (same host, same clock): its ``lease.status`` "leading" after the kill (leadership
  won), its ``run.start`` continuing the run, and its first ``step.verify`` ok of the run (the first verified step);
- wait for the chain to settle on the new leader, check the targets, restart the killed edge and wait until it follows.

Takeover = first verified step - kill, split into kill -> leadership won and won -> first verified step. The TTL is the
floor: a successor can only win once etcd expires the dead leader's key, ``ttl`` after its last refresh (refreshes go
every ttl/3, so a kill just before one makes it up to a third less). Percentiles are nearest-rank: with 20 runs, p99
is the max. At the end, every run must have completed its chain with each effect once (one GCP start per cutover, one
stop per failback, one floating IP assignment per chain): a benchmark of a broken takeover is worthless.

Each mode runs on a testbed of its own, one after the other (the edge network exists once per machine), and the figures
are printed side by side: ``plaintext`` (etcd open to anyone, as before TLS) and ``mutual TLS`` (TLS between members
and to clients, a client certificate per edge whose CN is its etcd user, a role per edge: the default).

    python -m benchmarks.takeover [--runs 20] [--mode both|plaintext|tls] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from hybridops_daemon.config.models import EtcdLeaseConfig
from hybridops_daemon.simulate.fleet_report import percentile  # nearest rank, as the backtest reports it
from tests.e2e.edge_pair import EXPECTED, Edge, Pair, Record, Targets, wait_for_record
from tests.e2e.harness import wait_for
from tests.testbed.edgenet import BRIDGE_ADDRESS, MUTUAL_TLS, start_edge_testbed, stop_edge_testbed
from tests.testbed.etcd import Secure
from tests.testbed.powerdns import cleanup, start_powerdns

VERB = {"PRIMARY": "cutover", "ON_STANDBY": "failback"}
SETTLES_IN = {"cutover": "ON_STANDBY", "failback": "PRIMARY"}
MODES: dict[str, Secure | None] = {"plaintext": None, "mutual TLS": MUTUAL_TLS}
ONCE = {
    "cutover": {"gcp_start": 1, "gcp_stop": 0, "hcloud_assign": 1},
    "failback": {"gcp_start": 0, "gcp_stop": 1, "hcloud_assign": 1},
}


@dataclass
class Run:
    index: int
    verb: str
    killed: str  # the leader killed
    successor: str
    done_before: str  # the steps the killed leader had finished, in its journal
    verified_step: str  # the successor's first verified step
    won_s: float  # kill -> the successor's lease.status "leading"
    continued_s: float  # kill -> its run.start continuing the run
    verified_s: float  # kill -> its first step.verify ok of the run: the takeover
    effects: dict[str, int]  # what the run changed on the targets, counted by the fakes

    @property
    def once(self) -> bool:
        return self.effects == ONCE[self.verb]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values)}


def first(edge: Edge, kind: str, predicate: Any) -> Record:
    found = next((r for r in edge.records(kind) if predicate(r)), None)
    assert found is not None, f"no {kind} in {edge.name}'s journal"
    return found


def one_run(pair: Pair, index: int) -> Run:
    leader = pair.leader()
    successor = pair.other(leader)
    lane = leader.lane()
    assert lane is not None and lane["active_run"] is None, lane
    verb = VERB[lane["status"]]
    before = pair.targets.effects()
    run_id = leader.start_chain(verb)
    assert run_id, f"{verb} refused on {leader.name}:\n{leader.logs()[-2000:]}"

    wait_for_record(leader, "step.done", lambda r: r.run_id == run_id)  # the first step: the kill lands mid-chain
    killed_at = time.time()
    leader.kill9()
    done_before = "+".join(r.body["step"] for r in leader.records("step.done", run_id=run_id))

    assert pair.settled(SETTLES_IN[verb]) is successor
    won = first(successor, "lease.status", lambda r: r.ts >= killed_at and r.body["situation"] == "leading")
    continued = first(successor, "run.start", lambda r: r.run_id == run_id and "continued_from" in r.body)
    verified = first(successor, "step.verify", lambda r: r.run_id == run_id and r.body["ok"])
    end = first(successor, "run.end", lambda r: r.run_id == run_id)
    assert end.body["ok"], end.body
    after = pair.targets.effects()
    targets = pair.targets.consistent(verb == "cutover")
    assert targets == EXPECTED[verb == "cutover"], targets

    leader.start()
    wait_for(
        f"{leader.name} to follow {successor.name}",
        lambda: leader.situation() == f"following {successor.name}",
        interval=0.05,
    )
    return Run(
        index=index,
        verb=verb,
        killed=leader.name,
        successor=successor.name,
        done_before=done_before,
        verified_step=verified.body["step"],
        won_s=won.ts - killed_at,
        continued_s=continued.ts - killed_at,
        verified_s=verified.ts - killed_at,
        effects={key: after[key] - before[key] for key in after},
    )


def measure(runs: int, root: Path, secure: Secure | None) -> tuple[EtcdLeaseConfig, list[Run], float]:
    """The lease as configured, the runs, and how long they took (set-up and tear-down excluded)."""
    (root / "edgenet").mkdir()
    # waits while another edge testbed (a test run) holds the machine
    bed = start_edge_testbed(root / "edgenet", secure=secure)
    try:
        powerdns = start_powerdns(host=BRIDGE_ADDRESS)  # on the bridge: reachable from both edges' namespaces
        try:
            targets = Targets(powerdns)
            try:
                pair = Pair(root / "pair", bed, targets)
                lease = EtcdLeaseConfig.model_validate(yaml.safe_load(pair.edges["edge01"].config.read_text())["lease"])
                try:
                    pair.start()
                    began, results = time.monotonic(), []
                    for i in range(1, runs + 1):
                        results.append(one_run(pair, i))
                        print(line(results[-1]), flush=True)
                    took = time.monotonic() - began
                finally:
                    pair.stop()
            finally:
                targets.close()
        finally:
            cleanup(powerdns)
    finally:
        stop_edge_testbed(bed)
    return lease, results, took


HEADER = f"{'run':>4}  {'chain':9}{'killed':8}{'done before':24}{'won s':>7}{'continued s':>13}{'verified s':>12}  first verified"


def line(run: Run) -> str:
    return (
        f"{run.index:>4}  {run.verb:9}{run.killed:8}{run.done_before:24}{run.won_s:>7.3f}{run.continued_s:>13.3f}"
        f"{run.verified_s:>12.3f}  {run.verified_step} on {run.successor}{'' if run.once else f'  EFFECTS {run.effects}'}"
    )


def figures(runs: list[Run]) -> dict[str, dict[str, float]]:
    return {
        "kill -> leadership won": summary([r.won_s for r in runs]),
        "won -> first verified step": summary([r.verified_s - r.won_s for r in runs]),
        "takeover (kill -> verified)": summary([r.verified_s for r in runs]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="runs per mode")
    parser.add_argument("--mode", choices=["both", "plaintext", "tls"], default="both", help="etcd's transport")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    modes = {name: secure for name, secure in MODES.items() if args.mode in ("both", "tls" if secure else "plaintext")}
    base = Path("var")
    base.mkdir(exist_ok=True)
    print(f"takeover benchmark: {args.runs} runs per mode ({', '.join(modes)}), kill -9 of the leading edge mid-chain "
          "(seconds from the kill)")  # fmt: skip
    results: dict[str, tuple[EtcdLeaseConfig, list[Run], float, float]] = {}
    for name, secure in modes.items():
        print(f"-- etcd {name}")
        print(HEADER, flush=True)
        began = time.monotonic()
        with tempfile.TemporaryDirectory(dir=base) as tmp:
            lease, runs, took = measure(args.runs, Path(tmp).resolve(), secure)
        results[name] = (lease, runs, took, time.monotonic() - began)

    lease = next(iter(results.values()))[0]
    print(
        f"lease TTL {lease.ttl:.3f} s (the floor: etcd expires the key TTL after the dead leader's last refresh, so up to "
        f"TTL/3 = {lease.ttl / 3:.3f} s before the kill), campaign every {lease.campaign_every:.3f} s, "
        f"op_timeout {lease.op_timeout:.3f} s"
    )
    columns = {name: figures(runs) for name, (_, runs, _, _) in results.items()}
    print(f"{'':30}" + "".join(f"{name:>27}" for name in columns))
    print(f"{'':30}" + f"{'p50 s':>9}{'p99 s':>9}{'max s':>9}" * len(columns))
    for what in next(iter(columns.values())):
        cells = (f"{column[what][q]:>9.3f}" for column in columns.values() for q in ("p50", "p99", "max"))
        print(f"{what:30}" + "".join(cells))
    print(f"{'lease TTL (the floor)':30}" + f"{lease.ttl:>9.3f}" * 3 * len(columns))
    broken = []
    for name, (_, runs, took, wall) in results.items():
        takeover = columns[name]["takeover (kill -> verified)"]
        failed = [r for r in runs if not r.once]
        broken += [(name, r.index, r.verb, r.effects) for r in failed]
        print(
            f"{name}: takeover over the TTL floor p50 +{takeover['p50'] - lease.ttl:.3f} s "
            f"({takeover['p50'] / lease.ttl:.2f}x), p99 +{takeover['p99'] - lease.ttl:.3f} s "
            f"({takeover['p99'] / lease.ttl:.2f}x); {len(runs) - len(failed)}/{len(runs)} runs completed their chain "
            f"with each effect once; the runs {took:.1f} s, wall {wall:.1f} s"
        )
    print("(each effect once: cutover one GCP start, failback one GCP stop, each one floating IP assignment; "
          "nearest-rank percentiles; wall includes set-up, tear-down and any wait for the testbed)")  # fmt: skip
    if args.json:
        document = {
            name: {
                "runs": len(runs),
                "ttl_s": lease.ttl,
                "campaign_every_s": lease.campaign_every,
                "figures_s": columns[name],
                "effects_once": all(r.once for r in runs),
                "runs_s": took,
                "wall_s": wall,
                "per_run": [asdict(r) for r in runs],
            }
            for name, (lease, runs, took, wall) in results.items()
        }
        print(json.dumps(document))
    assert not broken, f"runs without each effect once: {broken}"


if __name__ == "__main__":
    main()
