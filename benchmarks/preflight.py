"""Readiness cost (issue #13): a full preflight of the testbed's prod lane, the load it puts on each target, and the
decision path's latency while preflights run.

The lane is tests/e2e/test_real_chain.py's, built in-process the way the daemon builds it (``build_drivers`` from
the lane's drivers config, ``Preflights(...).check(profile)``: both chains' steps at once): the GCP and Hetzner
fakes (in this process, on threads of their own; ``--fakes-apart``: each in a process of its own), a real PostgreSQL
primary + streaming replica, a real PowerDNS and, unless left out, a real NetBox (its start costs ~20 s, so
``--quick`` leaves it out and the ipam steps with it).

1. ``--rounds`` full preflights one after another: wall time p50/p99, and per target what one preflight sent:
   the fakes' call counters; PostgreSQL's ``pg_stat_database`` (sessions, transactions: the driver runs autocommit,
   so one per statement; rows written) on each server, less what reading it costs; PowerDNS's API requests (its
   request log) and its DNS query counters; NetBox's API requests (its request log). Mutating requests must be 0.
2. The decision path (benchmarks/decision_path.py's: sample → store → decide() → signed journal record, durable) in
   this asyncio loop, every ``--gap`` ms, in blocks that alternate: quiet, and with preflights running back to
   back in the background. "path" is the work itself; "from due" adds the wait for the loop (preflights share it).
   The difference of the two kinds' p99 is set beside the spread of p99 between blocks of the same kind.

    python -m benchmarks.preflight [--rounds 50] [--blocks 10] [--runs 500] [--gap 2] [--no-netbox] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.decision_path import DecisionPath, block_arguments, interleaved, percentile, print_blocks
from hybridops_daemon.chain.preflight import NOT_CHECKED, READY, Preflights, StepReadiness
from hybridops_daemon.config.models import LaneConfig
from hybridops_daemon.config.profile import Profile
from hybridops_daemon.drivers.registry import build_drivers
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.journal.store import Journal
from tests.e2e.test_real_chain import profile as real_chain_profile
from tests.fakes.gcp_compute import READ_ONLY_POSTS as GCP_READ_POSTS
from tests.fakes.gcp_compute import GcpComputeFake
from tests.fakes.hcloud_api import API as HCLOUD_API
from tests.fakes.hcloud_api import DEFAULT_TOKEN as HCLOUD_TOKEN
from tests.fakes.hcloud_api import HcloudFake
from tests.testbed.netbox import NetboxTestbed
from tests.testbed.postgres import PgPair, make_template, start_pair
from tests.testbed.powerdns import PowerDns, cleanup, start_powerdns
from tests.testbed.process import Process, free_port
from tests.testbed.wait import eventually_sync

LANE = "prod"
# Back-to-back preflights would drain the Hetzner fake's 3600 requests/hour (the real API's limit) in minutes.
HCLOUD_RATE = 10**9
BUDGET = 30.0  # ReadinessConfig's default per-step timeout
REQUEST_LINE = re.compile(r'"([A-Z]+) ([^ ?"]+)[^ "]* HTTP/1\.[01]" (\d{3})')  # NetBox's runserver and PowerDNS alike
READS = frozenset({"GET", "HEAD", "OPTIONS"})
PDNS_STATISTICS = "/api/v1/servers/localhost/statistics"  # our own reads of PowerDNS's counters, left out
PDNS_COUNTERS = ("udp-queries", "tcp-queries", "dnsupdate-queries")
PG_COUNTERS = "sessions, xact_commit + xact_rollback, tup_inserted + tup_updated + tup_deleted"


def log_requests(log: Path, offset: int) -> Counter[str]:
    """``"METHOD /path"`` → how many requests a request log shows past ``offset`` (query strings dropped)."""
    with log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    return Counter(f"{m[1]} {m[2]}" for m in REQUEST_LINE.finditer(text))


def pg_counters(pair: PgPair) -> Counter[str]:
    """Each server's sessions, transactions and rows written in the database the driver connects to."""
    counts: Counter[str] = Counter()
    for site in ("primary", "replica"):
        [row] = pair.sql(site, f"SELECT {PG_COUNTERS} FROM pg_stat_database WHERE datname = 'postgres'")  # type: ignore[arg-type]
        for name, value in zip(("sessions", "transactions", "rows written"), row, strict=True):
            counts[f"{site} {name}"] = int(value)
    return counts


@dataclass
class Target:
    """One target's counters: ``read()`` → every count so far; which keys are mutating."""

    name: str
    read: Callable[[], Counter[str]]
    mutating: Callable[[str], bool]
    unit: str = "requests"


def fake_target(fake: GcpComputeFake | HcloudFake) -> Target:
    """An in-process fake, counted by its own ``mutating_calls()``."""

    def key(call: str | tuple[str, str]) -> str:
        return call if isinstance(call, str) else " ".join(call)

    if isinstance(fake, GcpComputeFake):
        return Target(
            "gcp (fake)",
            lambda: Counter({key(c): n for c, n in fake.call_counts().items()}),
            lambda k: k in {key(c) for c in fake.mutating_calls()},
        )
    return Target("hcloud (fake)", lambda: Counter(fake.all_calls()), lambda k: k in fake.mutating_calls())  # fmt: skip


class FakeProcess:
    """A fake in a ``python -m`` process of its own (``--fakes-apart``): its work off this process's GIL, as a
    remote API's is. Counted over its ``/_fake/calls``."""

    def __init__(self, module: str, args: list[str], scratch: Path, stack: ExitStack) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        process = Process(module, [sys.executable, "-m", module, "--port", str(port), *args], scratch / f"{module}.log")
        stack.callback(process.stop)
        eventually_sync(f"{module} on port {port}", self.calls, within=30, proc=process)

    def calls(self) -> Any:
        with urllib.request.urlopen(f"{self.url}/_fake/calls", timeout=5) as answer:
            return json.load(answer)

    def gcp_counts(self) -> Counter[str]:
        return Counter({f"{c['method']} {c['path']}": c["count"] for c in self.calls()["calls"]})


class Testbed:
    """The prod lane's targets and the lane's drivers config pointing at them."""

    def __init__(self, stack: ExitStack, netbox: bool, fakes_apart: bool, scratch: Path) -> None:
        if fakes_apart:
            gcp = FakeProcess("tests.fakes.gcp_compute", ["--instance", "cloud-standby=TERMINATED"], scratch, stack)
            hcloud = FakeProcess("tests.fakes.hcloud_api", ["--rate-limit", str(HCLOUD_RATE)], scratch, stack)
            self.gcp_endpoint, self.hcloud_endpoint, self.hcloud_token = gcp.url, hcloud.url + HCLOUD_API, HCLOUD_TOKEN
            self.fakes = [
                Target(
                    "gcp (fake)", gcp.gcp_counts, lambda key: key.split()[0] != "GET" and key.split()[1] not in GCP_READ_POSTS
                ),
                Target("hcloud (fake)", lambda: Counter(hcloud.calls()["calls"]), lambda key: not key.startswith("GET ")),
            ]
        else:
            self.gcp = GcpComputeFake("dr-project", "europe-west3-a", {"cloud-standby": "TERMINATED"}).start()
            stack.callback(self.gcp.stop)
            self.hcloud = HcloudFake(rate_limit=HCLOUD_RATE).start()
            stack.callback(self.hcloud.stop)
            self.gcp_endpoint, self.hcloud_endpoint, self.hcloud_token = (
                self.gcp.endpoint,
                self.hcloud.endpoint,
                self.hcloud.token,
            )
            self.fakes = [fake_target(self.gcp), fake_target(self.hcloud)]
        template_dir = Path(tempfile.mkdtemp(prefix="hyops-pfbench-pg-"))
        stack.callback(shutil.rmtree, template_dir, ignore_errors=True)
        self.pg = start_pair(make_template(template_dir))
        stack.callback(self.pg.teardown)
        self.pdns = start_powerdns()
        stack.callback(cleanup, self.pdns)
        # loglevel 6 logs each API request (PowerDNS counts DNS queries, not API requests); stop/start keep everything.
        self.pdns.stop()
        with (self.pdns.directory / "pdns.conf").open("a") as conf:
            conf.write("loglevel=6\n")
        self.pdns.start()
        self.pdns.tamper("app.dr.example.", "192.0.2.20", ttl=60)  # the record the dns steps manage, as the e2e test has it
        self.netbox: NetboxTestbed | None = None
        self.netbox_url = self.netbox_token = ""
        self.netbox_seconds = 0.0
        if netbox:
            began = time.monotonic()
            self.netbox = NetboxTestbed(scratch)
            stack.callback(self.netbox.stop)
            instance = self.netbox.start()
            self.netbox_url, self.netbox_token = instance.url, instance.token
            self.netbox_seconds = time.monotonic() - began
        os.environ.update(HCLOUD_TOKEN=self.hcloud_token, PDNS_KEY=self.pdns.api_key, NETBOX_TOKEN=self.netbox_token)

    def drivers_config(self) -> dict[str, Any]:
        """As tests/e2e/test_real_chain.py's World configures the lane (NetBox only when started)."""
        drivers: dict[str, Any] = {
            "gcp": {"project": "dr-project", "zone": "europe-west3-a", "endpoint": self.gcp_endpoint, "poll_interval": "200ms"},
            "postgres": {
                "clusters": {"app-db": {"onprem": {"dsn": self.pg.primary_dsn}, "cloud": {"dsn": self.pg.replica_dsn}}},
                "connect_timeout": "2s",
            },
            "hcloud": {"endpoint": self.hcloud_endpoint, "token": {"env": "HCLOUD_TOKEN"}, "poll_interval": "100ms"},
            "powerdns": {"api_url": self.pdns.api_url, "api_key": {"env": "PDNS_KEY"}, "nameservers": [self.pdns.nameserver]},
        }
        if self.netbox is not None:
            drivers["netbox"] = {"url": self.netbox_url, "token": {"env": "NETBOX_TOKEN"}}
        return drivers

    def targets(self) -> list[Target]:
        pdns: PowerDns = self.pdns

        def pdns_read() -> Counter[str]:
            status, items = pdns.api("GET", PDNS_STATISTICS)
            assert status == 200, items
            found = {item["name"]: int(item["value"]) for item in items if item["name"] in PDNS_COUNTERS}
            requests = log_requests(pdns.log, 0)
            del requests[f"GET {PDNS_STATISTICS}"]
            return requests + Counter({f"DNS {name}": value for name, value in found.items()})

        found = [
            *self.fakes,
            Target("postgresql", lambda: pg_counters(self.pg), lambda key: key.endswith("rows written"), "sessions"),
            Target("powerdns", pdns_read, lambda key: key.split()[0] not in READS | {"DNS"} or key.endswith("dnsupdate-queries")),
        ]
        if self.netbox is not None:
            log = self.netbox.workdir / "netbox.log"
            found.append(Target("netbox", lambda: log_requests(log, 0), lambda key: key.split()[0] not in READS))
        return found


def lane_profile(netbox: bool) -> Profile:
    document = real_chain_profile()
    if not netbox:
        document["chains"] = {chain: [s for s in steps if s["driver"] != "netbox"] for chain, steps in document["chains"].items()}
    return Profile.model_validate(document)


class Load:
    """What the targets saw between ``begin()`` and ``end()``, less what reading the counters costs (PostgreSQL: a
    session and a transaction per read, measured by two reads back to back)."""

    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets

    def _read(self) -> dict[str, Counter[str]]:
        return {target.name: target.read() for target in self.targets}

    def begin(self) -> None:
        first = self._read()
        self.start = self._read()
        self.overhead = {name: self.start[name] - first[name] for name in first}

    def end(self) -> dict[str, Counter[str]]:
        time.sleep(0.5)  # PostgreSQL publishes a backend's counts when it exits, just after the driver disconnects
        last = self._read()
        return {name: last[name] - self.start[name] - self.overhead[name] for name in last}


def summary(values: list[float]) -> str:
    return f"p50 {statistics.median(values):8.2f}  p99 {percentile(values, 99):8.2f}  max {max(values):8.2f}"


async def full_preflights(
    preflights: Preflights, profile: Profile, rounds: int, load: Load
) -> tuple[list[float], dict[str, Counter[str]]]:
    load.begin()
    took: list[float] = []
    for _ in range(rounds):
        began = time.perf_counter()
        results = await preflights.check(profile)
        took.append((time.perf_counter() - began) * 1000)
        broken = [f"{r.chain}/{r.step}: {r.reason}" for r in results if r.state not in (READY, NOT_CHECKED)]
        assert not broken, f"a preflight found the testbed broken: {broken}"
    return took, load.end()


async def back_to_back(preflights: Preflights, profile: Profile, stop: asyncio.Event) -> int:
    """Full preflights one after another until ``stop``; how many ran."""
    ran = 0
    while not stop.is_set():
        await preflights.check(profile)
        ran += 1
    return ran


def print_load(load: dict[str, Counter[str]], targets: list[Target], rounds: int) -> int:
    """Per target, per preflight; returns the number of mutating requests seen."""
    print(f"\nload per full preflight (mean over {rounds}; PostgreSQL: pg_stat_database, database 'postgres'):")
    mutating = 0
    for target in targets:
        counts = {key: n for key, n in load[target.name].items() if n}
        writes = sum(n for key, n in counts.items() if target.mutating(key))
        mutating += writes
        if target.unit == "sessions":
            total = sum(n for key, n in counts.items() if key.endswith("sessions"))
        else:
            total = sum(n for key, n in counts.items() if not key.startswith("DNS "))
        print(f"  {target.name:16}{total / rounds:6.2f} {target.unit:9} mutating: {writes}")
        for key, n in sorted(counts.items()):
            print(f"  {'':18}{n / rounds:8.2f}  {key}")
    return mutating


def print_steps(results: list[StepReadiness]) -> None:
    print("steps (first round):")
    for r in results:
        print(f"  {r.chain:9}{r.step:13}{r.state:12}{r.duration_s * 1000:7.1f} ms  {r.reason[:90]}")


def scratch_dir(stack: ExitStack, parent: Path) -> Path:
    return Path(stack.enter_context(tempfile.TemporaryDirectory(dir=parent)))


async def measure(args: argparse.Namespace, bed: Testbed, journal: Journal, scratch: Path) -> None:
    profile = lane_profile(args.netbox)
    lane_config = LaneConfig.model_validate({"profile": "prod.yaml", "drivers": bed.drivers_config()})
    # As the config loader does: paths (the always-present sandbox driver's world) resolve against a folder.
    lane_config = lane_config.model_copy(update={"drivers": lane_config.drivers.resolved(scratch, scratch, LANE)})
    preflights = Preflights(LANE, build_drivers(LANE, lane_config), BUDGET, Redactor())
    targets = bed.targets()
    whole = Load(targets)
    whole.begin()
    print_steps(await preflights.check(profile))  # also the warm-up: SDK imports, first connections

    took, load = await full_preflights(preflights, profile, args.rounds, Load(targets))
    steps = len(profile.chain("cutover")) + len(profile.chain("failback"))
    print(f"\nfull preflight ({steps} steps, both chains at once), {args.rounds} rounds one after another (ms):")
    print(f"  wall time       {summary(took)}")
    mutating = print_load(load, targets, args.rounds)

    print()
    preflighting = functools.partial(back_to_back, preflights, profile)
    blocks = await interleaved(DecisionPath(journal), preflighting, args.blocks, args.runs, args.gap / 1000)
    print_blocks(blocks, args.gap, ("quiet", "with preflights"), "preflights ran")

    total = whole.end()
    everything = sum(n for t in targets for key, n in total[t.name].items() if t.mutating(key) and n)
    print(f"\nmutating requests over the whole run, every preflight included: {everything}")
    assert mutating == 0 and everything == 0, "a preflight changed a target"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50, help="full preflights timed one after another")
    block_arguments(parser)
    parser.add_argument("--netbox", action=argparse.BooleanOptionalAction, default=True, help="start NetBox (~20 s)")
    parser.add_argument("--fakes-apart", action="store_true", help="serve the GCP and Hetzner fakes from processes of their own")
    parser.add_argument("--quick", action="store_true", help="a few seconds: 10 rounds, 4+4 blocks of 150, no NetBox")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.blocks, args.runs, args.netbox = 10, 4, 150, False
    base = Path("var").absolute()  # NetBox's setup takes absolute paths only
    base.mkdir(exist_ok=True)
    began = time.monotonic()
    with ExitStack() as stack:
        scratch = scratch_dir(stack, base)
        bed = Testbed(stack, args.netbox, args.fakes_apart, scratch)
        journal = Journal.open(scratch / "journal.db", Redactor(), key=b"benchmark journal key, 32 bytes.")
        stack.callback(journal.close)
        started = time.monotonic() - began
        netbox = f" (NetBox {bed.netbox_seconds:.0f} s)" if args.netbox else "; NetBox left out, and the ipam steps with it"
        print(f"preflight benchmark: lane {LANE} of tests/e2e/test_real_chain.py, testbed up in {started:.1f} s{netbox}")
        asyncio.run(measure(args, bed, journal, scratch))
    print(f"done in {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
