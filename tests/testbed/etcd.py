"""Testbed fixture: a real three-member etcd 3.4 cluster, members stoppable, killable and freezable one by one.

By default on free loopback ports (``etcd_cluster``). Given ``Placement``s, each member runs on its own host address
behind a command prefix: ``tests/testbed/edgenet.py`` puts one member in each edge's network namespace
(``ip netns exec NS etcd ...``, listening on ``http://10.77.0.N:2379`` and ``:2380`` there).

Module-scoped (a cluster takes a second or two to form); ``ensure_running()`` heals what a failed test left stopped.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.testbed.process import ComponentFailed, Process, free_port, require
from tests.testbed.wait import eventually_sync

# etcd's defaults, spelled out because timings in the tests derive from them: an election after 1 s without the
# leader's heartbeat. etcd raises every lease TTL to at least ceil(1.5 × election timeout) = 2 s (a 1 s grant → TTL 2).
HEARTBEAT_MS = 100
ELECTION_MS = 1000
MIN_LEASE_TTL = 2


@dataclass(frozen=True)
class Placement:
    """Where a member runs: its listen/advertise address, ports, and a prefix for its command line."""

    host: str = "127.0.0.1"
    client_port: int = 2379
    peer_port: int = 2380
    prefix: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", NS)


@dataclass
class _Member:
    name: str
    place: Placement
    process: Process | None = None

    @property
    def client_url(self) -> str:
        return f"http://{self.place.host}:{self.place.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.place.host}:{self.place.peer_port}"


class EtcdCluster:
    def __init__(self, root: Path, size: int = 3, placements: Sequence[Placement] | None = None,
                 extra_args: Sequence[str] = ()) -> None:  # fmt: skip
        """``size`` members on free loopback ports, or one member per placement (``size`` is then ignored)."""
        self._binary = require("etcd")
        self._root = root
        if placements is None:
            placements = [Placement(client_port=free_port(), peer_port=free_port()) for _ in range(size)]
        self._members = [_Member(f"e{i + 1}", place) for i, place in enumerate(placements)]
        self._initial = ",".join(f"{m.name}={m.peer_url}" for m in self._members)
        self._extra = list(extra_args)
        self._frozen: set[int] = set()

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self._members]

    def name(self, i: int) -> str:
        return self._members[i].name

    def process(self, i: int) -> Process | None:
        """Member ``i``'s process (its PID is etcd's own: ``ip netns exec`` execs, and each member leads its group)."""
        return self._members[i].process

    def running(self, i: int) -> bool:
        process = self._members[i].process
        return process is not None and process.alive()

    def healthy(self, i: int) -> bool:
        """``GET /health`` from here (the root namespace); true only while the member has a leader and quorum."""
        with urllib.request.urlopen(f"{self._members[i].client_url}/health", timeout=2) as resp:
            return bool(json.load(resp).get("health") == "true")

    def start(self, i: int) -> None:
        """Start member ``i`` (again: same address, same data dir) without waiting; ``wait_healthy`` waits."""
        member = self._members[i]
        if self.running(i):
            return
        self._frozen.discard(i)
        argv = [
            *member.place.prefix, self._binary, "--name", member.name, "--data-dir", str(self._root / member.name),
            "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", self._initial, "--initial-cluster-token", "hyops-test", "--initial-cluster-state", "new",
            "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS), *self._extra,
        ]  # fmt: skip
        member.process = Process(member.name, argv, self._root / f"{member.name}.log")

    def wait_healthy(self, timeout: float = 20.0) -> None:
        for i, member in enumerate(self._members):
            eventually_sync(
                f"etcd {member.name} healthy", functools.partial(self.healthy, i), within=timeout, proc=member.process
            )

    def stop(self, i: int) -> None:
        self.thaw(i)  # a stopped process would not act on SIGTERM until killed
        process = self._members[i].process
        if process is not None:
            process.stop()

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` (its whole process group) and reap it: a crash, no goodbye to its peers."""
        process = self._members[i].process
        if process is not None and process.alive():
            os.killpg(process.pid, signal.SIGKILL)
            process.popen.wait(timeout=5)
        self._frozen.discard(i)

    def freeze(self, i: int) -> None:
        process = self._members[i].process
        if process is None or not process.alive():
            raise ComponentFailed(f"cannot freeze etcd {self._members[i].name}: not running")
        os.killpg(process.pid, signal.SIGSTOP)
        self._frozen.add(i)

    def thaw(self, i: int) -> None:
        process = self._members[i].process
        if i in self._frozen and process is not None and process.alive():
            os.killpg(process.pid, signal.SIGCONT)
        self._frozen.discard(i)

    def ensure_running(self) -> None:
        for i in range(len(self._members)):
            self.thaw(i)
            self.start(i)
        self.wait_healthy()

    def stop_all(self) -> None:
        for i in range(len(self._members)):
            self.stop(i)


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    try:
        for i in range(3):
            cluster.start(i)
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.stop_all()
