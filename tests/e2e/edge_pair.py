"""The edge pair: two `hyops-daemon` processes, each in its own network namespace with its etcd member, acting on the
same targets (the fake Hetzner and GCP APIs, driven through their SDKs, and a real PowerDNS, all on the bridge).

Everything is observed from outside: `hyopsctl` over each daemon's socket, each journal read-only from its file, call
counts on the fakes, DNS answers from PowerDNS itself.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import yaml

from hybridops_daemon.control.client import ControlClientError, request_sync
from tests.e2e.harness import CTL, DAEMON, wait_for
from tests.fakes.gcp_compute import GcpComputeFake
from tests.fakes.hcloud_api import HcloudFake
from tests.testbed.edgenet import BRIDGE_ADDRESS, EdgeTestbed
from tests.testbed.etcd import PREFIX
from tests.testbed.powerdns import PowerDns

LANE = "prod"
FIP = "203.0.113.10"
NAME = "app.dr.example."
CLOUD_ADDRESS, ONPREM_ADDRESS = "198.51.100.20", "192.0.2.20"
TTL = 2.0  # etcd 3.4 raises shorter leases to its minimum, so this is the shortest honest TTL here
STEPS = ("capacity", "floating-ip", "dns")


def profile() -> dict[str, Any]:
    """Operator-driven cutover and failback over three targets; each step is slow enough (action and operation
    delays on the fakes) that a fault can land between or inside steps."""

    def step(sid: str, module: str, driver: str, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"id": sid, "module": module, "driver": driver, "inputs": inputs, "timeout": "10s", "backoff": "200ms"}

    def chain(state: str, server: str, address: str) -> list[dict[str, Any]]:
        return [
            step("capacity", "compute/capacity@v1", "gcp", {"name": "cloud-standby", "state": state}),
            step("floating-ip", "network/floating-ip@v1", "hcloud", {"ip": FIP, "target": server}),
            step("dns", "dns/record@v1", "rfc2136", {"zone": "dr.example.", "name": NAME, "content": address, "ttl": 60}),
        ]

    return {
        "name": LANE,
        "version": 1,
        "signals": {},
        "rules": [],
        "cooldown": "0s",
        "chains": {
            "cutover": chain("running", "edge02", CLOUD_ADDRESS),
            "failback": list(reversed(chain("stopped", "edge01", ONPREM_ADDRESS))),
        },
    }


class Targets:
    """The outside world both edges act on, reachable from the namespaces through the bridge."""

    def __init__(self, powerdns: PowerDns) -> None:
        self.powerdns = powerdns
        self.gcp = GcpComputeFake(
            "dr-project", "europe-west3-a", {"cloud-standby": "TERMINATED"}, host=BRIDGE_ADDRESS, pending_for=0.3, running_for=0.4
        ).start()
        # Hetzner's 3600 requests an hour would run out at about cycle 190 of the fault schedule (some 3,600 requests
        # in half an hour: the 200-cycle run stopped there, its lane paused by the daemon's rate-limit rule as it should
        # be). The schedule tests fencing, so its project gets ten times the budget; the limit has its own tests.
        self.hcloud = HcloudFake(host=BRIDGE_ADDRESS, action_delay=0.5, rate_limit=36_000).start()
        powerdns.tamper(NAME, ONPREM_ADDRESS, ttl=60)
        powerdns.allow_updates("dr.example.")  # the dns step sends RFC 2136 UPDATEs: conditional on the fence stamp

    def drivers(self) -> dict[str, Any]:
        # Every request deadline (and so its connections' TCP_USER_TIMEOUT) below the 2 s TTL: bytes a deposed edge
        # could not deliver die with their connection instead of landing after a heal.
        bound = "1500ms"
        return {
            "gcp": {
                "project": "dr-project",
                "zone": "europe-west3-a",
                "endpoint": self.gcp.endpoint,
                "poll_interval": "100ms",
                "request_timeout": bound,
            },
            "hcloud": {
                "endpoint": self.hcloud.endpoint,
                "token": {"env": "HCLOUD_TOKEN"},
                "poll_interval": "100ms",
                "request_timeout": bound,
            },
            "rfc2136": {
                "server": self.powerdns.host,
                "port": self.powerdns.dns_port,
                "tsig_name": self.powerdns.tsig_name,
                "tsig_algorithm": self.powerdns.tsig_algorithm,
                "tsig_secret": {"env": "TSIG_SECRET"},
                "nameservers": [self.powerdns.nameserver],
                "timeout": bound,
            },
        }

    def env(self) -> dict[str, str]:
        return {"HCLOUD_TOKEN": self.hcloud.token, "TSIG_SECRET": self.powerdns.tsig_secret}

    def close(self) -> None:
        self.gcp.stop()
        self.hcloud.stop()

    # independent reads and counts
    def effects(self) -> dict[str, int]:
        """Calls that change something, counted by the fakes themselves."""
        with self.hcloud._lock:
            assigns = sum(1 for action in self.hcloud.actions.values() if action.command == "assign_floating_ip")
        return {
            # operations that moved the instance: a deposed leader's stop landing after its successor's changes nothing
            "gcp_start": self.gcp.changes("start"),
            "gcp_stop": self.gcp.changes("stop"),
            "hcloud_assign": assigns,  # actions the API accepted (a request refused as `locked` changes nothing)
        }

    def resolve(self, name: str = NAME, rtype: str = "A") -> list[str]:
        host, port = self.powerdns.nameserver.rsplit(":", 1)
        answer = dns.query.udp(dns.message.make_query(name, rtype), host, port=int(port), timeout=2)
        return sorted(r.to_text() for rrset in answer.answer for r in rrset)

    def stamp(self) -> tuple[int | None, int | None]:
        """The fencing tokens written beside the changes: the floating IP's label and the DNS name's TXT record."""
        label = self.hcloud.labels(FIP).get("hybridops/fencing-token")
        txt = self.resolve(f"_hyops-fence.{NAME}", "TXT")
        dns_token = int(txt[0].strip('"').split()[0].removeprefix("token=")) if txt else None
        return (int(label) if label is not None else None), dns_token

    def consistent(self, cut_over: bool) -> dict[str, Any]:
        """Where each target stands; the caller compares it with the lane's status."""
        return {
            "capacity": self.gcp.status("cloud-standby"),
            "floating_ip": self.hcloud.assigned_to(FIP),
            "dns": self.resolve(),
        }


EXPECTED = {
    True: {"capacity": "RUNNING", "floating_ip": "edge02", "dns": [CLOUD_ADDRESS]},
    False: {"capacity": "TERMINATED", "floating_ip": "edge01", "dns": [ONPREM_ADDRESS]},
}


@dataclass
class Record:
    seq: int
    ts: float
    kind: str
    lane: str | None
    run_id: str | None
    body: dict[str, Any]


class Edge:
    """One edge's daemon: a real process inside the edge's namespace, driven only through `hyopsctl`."""

    def __init__(self, name: str, root: Path, bed: EdgeTestbed, targets: Targets, prefix: str) -> None:
        self.name = name
        self.root = root
        self.state = root / "state"
        self.socket = self.state / "hyops.sock"
        self.journal_path = self.state / "journal.db"
        self.log_path = root / "daemon.log"
        self.prefix = bed.net.exec_prefix(name)
        self.env = {**os.environ, **targets.env(), "PYTHONUNBUFFERED": "1"}
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self.refusal = ""  # hyopsctl's words when it last refused to start a chain
        (root / "policies").mkdir(parents=True, exist_ok=True)
        (root / "policies" / f"{LANE}.yaml").write_text(yaml.safe_dump(profile(), sort_keys=False))
        config = {
            "node": name,
            "peer": "edge02" if name == "edge01" else "edge01",
            "state_dir": "state",
            "tick": "200ms",
            "shutdown_grace": "3s",
            "lease": {
                "type": "etcd",
                "endpoints": bed.endpoints,
                "prefix": prefix,
                "ttl": f"{TTL:g}s",
                "op_timeout": "500ms",
                "campaign_every": "200ms",
                **bed.etcd.lease_config(name, root / "etcd"),  # over TLS as its own etcd user (unless plaintext)
            },
            "lanes": {LANE: {"profile": f"policies/{LANE}.yaml", "drivers": targets.drivers()}},
        }
        self.config = root / "daemon.yaml"
        self.config.write_text(yaml.safe_dump(config))

    # ---------------------------------------------------------------------------------------- process

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            argv = [*self.prefix, DAEMON, "run", "--config", str(self.config), "--no-pretty"]
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=self.env)
        self.frozen = False
        wait_for(f"{self.name}'s control socket", lambda: self.status() is not None or not self.alive(), timeout=30)
        assert self.alive(), f"{self.name} exited early:\n{self.logs()[-3000:]}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.frozen = False

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.frozen:
            self.thaw()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError(f"{self.name} did not stop within 20 s of SIGTERM") from None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ---------------------------------------------------------------------------------------- control

    def ctl(self, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CTL, "--socket", str(self.socket), *args], capture_output=True, text=True, timeout=timeout)

    def status(self) -> dict[str, Any] | None:
        """The daemon's status, or None if it does not answer (not started, dead, frozen)."""
        if self.frozen or not self.alive():
            return None
        # The socket protocol hyopsctl speaks, in-process: polling through a new hyopsctl each time costs 0.2 s a call.
        try:
            status: dict[str, Any] = request_sync(self.socket, "status", {}, timeout=3)
        except (ControlClientError, OSError):
            return None
        return status

    def lane(self) -> dict[str, Any] | None:
        status = self.status()
        return next(lane for lane in status["lanes"] if lane["lane"] == LANE) if status else None

    def leads(self) -> bool:
        lane = self.lane()
        return bool(lane and lane["leadership"]["leading"])

    def command(self, verb: str) -> subprocess.CompletedProcess[str]:
        extra = ["--confirm"] if verb == "cutover" else []
        return self.ctl("--json", verb, "--lane", LANE, *extra)

    def start_chain(self, verb: str) -> str | None:
        """``verb`` ("cutover" or "failback") through hyopsctl; the id of the run it started, None if refused."""
        done = self.command(verb)
        if done.returncode != 0:
            self.refusal = done.stderr.strip()
            return None
        run_id: str | None = json.loads(done.stdout)["decision"]["run_id"]
        return run_id

    def situation(self) -> str | None:
        """The lane's leadership here: "leading", "following edge0N" or "no quorum"; None if it does not answer."""
        lane = self.lane()
        return str(lane["leadership"]["situation"]) if lane else None

    # ---------------------------------------------------------------------------------------- journal

    def records(self, *kinds: str, run_id: str | None = None) -> list[Record]:
        """Records straight from the journal file, read-only (works while the daemon is dead or frozen)."""
        if not self.journal_path.exists():
            return []
        sql, params = "SELECT seq, ts, kind, lane, run_id, body FROM records", []
        where = []
        if kinds:
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            params += list(kinds)
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute(sql + " ORDER BY seq", params).fetchall()
        return [Record(seq, ts, kind, lane, run, json.loads(body)) for seq, ts, kind, lane, run, body in rows]

    def verify(self) -> subprocess.CompletedProcess[str]:
        argv = [DAEMON, "journal", "verify", "--db", str(self.journal_path)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    def unfinished(self) -> list[str]:
        """Runs this node started (or continued) and has not ended or released: work it may still be doing."""
        open_runs: dict[str, bool] = {}
        for record in self.records("run.start", "run.end", "run.released"):
            if record.run_id is not None:
                open_runs[record.run_id] = record.kind == "run.start"
        return [run for run, still_open in open_runs.items() if still_open]

    def in_flight(self) -> set[str]:
        """Steps of this node's unfinished runs that began and have not ended: calls it may still have on the wire."""
        began: dict[tuple[str | None, str], bool] = {}
        unfinished = set(self.unfinished())  # read once: the journal grows with every cycle
        ends = ("step.done", "step.failed", "step.refused")
        for record in self.records("step.intent", *ends):
            if record.run_id in unfinished:
                began[(record.run_id, record.body["step"])] = record.kind == "step.intent"
        return {step for (_, step), open_ in began.items() if open_}

    def applied(self, run_id: str | None = None) -> list[tuple[str | None, str]]:
        """(run, step) of every apply() this node's journal says succeeded."""
        return [(r.run_id, r.body["step"]) for r in self.records("step.apply", run_id=run_id) if r.body.get("ok")]


class Pair:
    def __init__(self, root: Path, bed: EdgeTestbed, targets: Targets) -> None:
        prefix = f"{PREFIX}/test-{uuid.uuid4().hex[:8]}"  # a fresh key space per test: no handover from an earlier one
        self.bed, self.targets = bed, targets
        self.edges = {name: Edge(name, root / name, bed, targets, prefix) for name in ("edge01", "edge02")}

    def __iter__(self) -> Iterator[Edge]:
        return iter(self.edges.values())

    def start(self) -> None:
        for edge in self:
            edge.start()

    def leader(self, timeout: float = 15.0) -> Edge:
        """The one edge that says it leads the lane (asserting that never both do)."""

        def one() -> Edge | None:
            leading = [edge for edge in self if edge.leads()]
            assert len(leading) <= 1, f"both edges say they lead {LANE}"
            return leading[0] if leading else None

        found: Edge = wait_for("an edge to lead the lane", one, timeout=timeout)
        return found

    def other(self, edge: Edge) -> Edge:
        return next(e for e in self if e is not edge)

    def settled(self, status: str, timeout: float = 30.0, context: str = "") -> Edge:
        """Wait until the leader reports the lane in ``status`` with no run active; that leader. A lane the leader
        paused (a failed run) fails at once: it will not settle by itself."""

        def done() -> Edge | None:
            for edge in self:
                lane = edge.lane()
                if not lane or not lane["leadership"]["leading"]:
                    continue
                if lane["status"] == status and lane["active_run"] is None:
                    return edge
                if lane["status"] == "PAUSED":
                    raise AssertionError(f"{context}: the lane paused on {edge.name}: {lane['last_decision']}")
            return None

        try:
            found: Edge = wait_for(f"the lane to settle in {status} ({context})", done, timeout=timeout, interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe()}") from None
        return found

    def describe(self, records: int = 25, log_lines: int = 15) -> str:
        """Where each edge stands, for a failure message: its lane as status shows it, the tail of its journal, and
        its log's last warnings (CI keeps no temporary files, so the message must carry what a diagnosis needs)."""
        lines = []
        for edge in self:
            lines.append(f"--- {edge.name} (alive: {edge.alive()}, frozen: {edge.frozen}) lane: {edge.lane()}")
            for r in edge.records()[-records:]:
                brief = {k: r.body[k] for k in ("step", "ok", "reason", "situation", "fencing_token", "kind") if k in r.body}
                lines.append(f"  {r.seq} {r.ts:.3f} {r.kind} {r.run_id or ''} {brief}")
            noisy = [line for line in edge.logs().splitlines() if '"level": "info"' not in line]
            lines.extend(f"  log: {line[:400]}" for line in noisy[-log_lines:])
        return "\n".join(lines)

    def applied(self, run_id: str | None = None) -> list[tuple[str | None, str, str]]:
        """(edge, run, step) of every successful apply() across both journals."""
        return [(edge.name, run, step) for edge in self for run, step in edge.applied(run_id)]

    def stop(self) -> None:
        for edge in self:
            edge.stop()


def wait_for_record(edge: Edge, kind: str, predicate: Any = None, timeout: float = 20.0) -> Record:
    def find() -> Record | None:
        return next((r for r in edge.records(kind) if predicate is None or predicate(r)), None)

    found: Record = wait_for(f"{kind} in {edge.name}'s journal", find, timeout=timeout, interval=0.05)
    return found
