"""Testbed for the edge pair: three network namespaces on one bridge, and a three-member etcd with one member in each.

``EdgeNet``: a Linux bridge in the root namespace (``10.77.0.254/24``: where a test's fake cloud APIs and PowerDNS
listen) and a namespace each for ``edge01``, ``edge02`` and ``witness`` at 10.77.0.1, .2 and .3, each joined to the
bridge by a veth pair. Names are unique per run; ``close()`` deletes everything. The subnet exists once per machine, so
one EdgeNet at a time: another waits for the first to close (a lock across test sessions), then removes what a killed
run may have left.

Two ways to partition a node from all the others (and from the bridge address):

- ``cut(node)``: its veth down on both ends. Nobody is told: established TCP connections only time out. But inside the
  node a *new* connection to anyone else fails at once (``Network is unreachable``: the subnet route went with the link).
- ``silence(node)``: every link stays up; ARP entries pointing at a MAC nobody owns drop its frames both ways
  (``netns.black_hole``), so new connections hang too, as behind a real WAN failure.

In both, the node's own address stays reachable from inside the node (its local route does not depend on the link),
so a daemon keeps talking to the etcd member beside it, which has lost quorum.

``edge_net`` (module-scoped) adds etcd: member e1 in edge01, e2 in edge02, e3 in witness, each on
``https://10.77.0.N:2379`` (peers ``:2380``) inside its namespace, started through ``ip netns exec``. As across the
internet: TLS between members and to clients, ``--client-cert-auth``, and each edge its own etcd user (its certificate's
CN) whose role reaches ``/hybridops/`` only (``tests/testbed/etcd.py``; ``start_edge_testbed(secure=None)`` for
plaintext). With ``--pre-vote`` (etcd 3.5's default, off in 3.4): without it a healed member, whose term rose while it
campaigned alone, deposes the leader on its return and writes stall for about 2 s.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.testbed.etcd import EtcdCluster, Placement, Secure
from tests.testbed.netns import black_hole, netns_exec, sh, unblack_hole, unique_id
from tests.testbed.process import ComponentFailed, require
from tests.testbed.wait import eventually_sync

NODES = ("edge01", "edge02", "witness")
SUBNET = "10.77.0"
BRIDGE_ADDRESS = f"{SUBNET}.254"
_NOWHERE = "02:00:00:00:00:77"  # a MAC nobody owns: frames sent to it are dropped (the bridge floods, nobody takes them)
_ROOT = ""  # the root namespace as a party to a silence: the bridge address
_NS_PREFIX = "hyen-"
_BRIDGE_PREFIX = "hyb"
_LOCK = Path(tempfile.gettempdir()) / "hyops-edgenet.lock"


@dataclass(frozen=True)
class _Link:
    ns: str
    address: str
    root_dev: str  # the veth end enslaved to the bridge
    ns_dev: str  # the end inside the namespace


class EdgeNet:
    bridge_address = BRIDGE_ADDRESS

    def __init__(self, nodes: Sequence[str] = NODES, lock_timeout: float = 600.0) -> None:
        require("ip")
        uid = unique_id()
        self.bridge = f"{_BRIDGE_PREFIX}{uid}"
        self._links: dict[str, _Link] = {}
        self._silenced: set[str] = set()
        self._bridge_made = False
        self._lock: int | None = _hold_machine_lock(lock_timeout)
        try:
            _remove_leftovers()
            self._build(nodes, uid)
        except BaseException:
            self.close()
            raise

    def _build(self, nodes: Sequence[str], uid: str) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self._bridge_made = True
        sh("ip", "addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for i, node in enumerate(nodes, start=1):
            link = _Link(f"{_NS_PREFIX}{node}-{uid}", f"{SUBNET}.{i}", f"hy{uid}r{i}", f"hy{uid}n{i}")
            self._links[node] = link  # before it exists: close() then deletes whatever part of it was made
            sh("ip", "netns", "add", link.ns)
            sh("ip", "link", "add", link.root_dev, "type", "veth", "peer", "name", link.ns_dev)
            sh("ip", "link", "set", link.ns_dev, "netns", link.ns)
            sh("ip", "link", "set", link.root_dev, "master", self.bridge)
            sh("ip", "link", "set", link.root_dev, "up")
            self.run(node, "ip", "addr", "add", f"{link.address}/24", "dev", link.ns_dev)
            self.run(node, "ip", "link", "set", "lo", "up")
            self.run(node, "ip", "link", "set", link.ns_dev, "up")

    @property
    def nodes(self) -> list[str]:
        return list(self._links)

    def address(self, node: str) -> str:
        return self._links[node].address

    def ns(self, node: str) -> str:
        return self._links[node].ns

    def exec_prefix(self, node: str) -> list[str]:
        """Prefix a command line with this to run it inside ``node``'s namespace."""
        return netns_exec(self.ns(node))

    def run(self, node: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(*self.exec_prefix(node), *argv, check=check)

    def cut(self, node: str) -> None:
        """Partition ``node`` from everyone: its link down on the bridge side and in its namespace."""
        link = self._links[node]
        sh("ip", "link", "set", link.root_dev, "down")
        self.run(node, "ip", "link", "set", link.ns_dev, "down")

    def silence(self, node: str) -> None:
        """Partition ``node`` from everyone with every link up: frames between it and anyone are dropped silently."""
        self._silenced.add(node)
        for other in self._others(node):
            self._drop(node, other)
            self._drop(other, node)

    def heal(self, node: str) -> None:
        """Undo ``cut`` and ``silence`` of ``node`` (idempotent); pairs with another silenced node stay partitioned."""
        link = self._links[node]
        sh("ip", "link", "set", link.root_dev, "up")
        self.run(node, "ip", "link", "set", link.ns_dev, "up")
        self._silenced.discard(node)
        for other in self._others(node):
            if other not in self._silenced:
                self._undrop(node, other)
                self._undrop(other, node)

    def close(self) -> None:
        """Delete the namespaces (and with them their veths) and the bridge; idempotent. Stop what runs inside first:
        a namespace outlives ``ip netns del`` while a process is still in it."""
        for link in self._links.values():
            sh("ip", "netns", "del", link.ns, check=False)
            sh("ip", "link", "del", link.root_dev, check=False)  # left in the root namespace if setup failed midway
        self._links.clear()
        if self._bridge_made:
            sh("ip", "link", "del", self.bridge, check=False)
            self._bridge_made = False
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    def _others(self, node: str) -> list[str]:
        return [_ROOT, *(other for other in self._links if other != node)]

    def _where(self, party: str) -> tuple[str | None, str, str]:
        """(namespace or None for root, device, address) of a party to a silence."""
        if party == _ROOT:
            return None, self.bridge, BRIDGE_ADDRESS
        link = self._links[party]
        return link.ns, link.ns_dev, link.address

    def _drop(self, sender: str, receiver: str) -> None:
        ns, dev, _ = self._where(sender)
        black_hole(ns, dev, self._where(receiver)[2], _NOWHERE)

    def _undrop(self, sender: str, receiver: str) -> None:
        ns, dev, _ = self._where(sender)
        unblack_hole(ns, dev, self._where(receiver)[2])


def _hold_machine_lock(timeout: float) -> int:
    """Wait until no other EdgeNet on this machine is up, and keep it so (an flock: it dies with a killed holder)."""
    fd = os.open(_LOCK, os.O_RDWR | os.O_CREAT, 0o644)

    def take() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    try:
        eventually_sync(f"the other EdgeNet on this machine to close ({_LOCK} is locked)", take, within=timeout, every=0.2)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_leftovers() -> None:
    """Delete what a killed run left (only the lock holder calls this: nothing of it is in use): its namespaces and its
    bridge, which would still route the subnet. Fail if anything else on this machine has an address in the subnet."""
    for line in sh("ip", "netns", "list").stdout.splitlines():
        if line.startswith(_NS_PREFIX):
            sh("ip", "netns", "del", line.split()[0], check=False)
    for line in sh("ip", "-o", "-4", "addr", "show").stdout.splitlines():
        _, dev, _, address, *_ = line.split()  # "7: hyb1234    inet 10.77.0.254/24 brd ... scope global hyb1234 ..."
        dev = dev.split("@")[0]
        if address.startswith(f"{SUBNET}."):
            if not dev.startswith(_BRIDGE_PREFIX):
                raise ComponentFailed(f"{dev} has {address} in the edge testbed's subnet {SUBNET}.0/24")
            sh("ip", "link", "del", dev, check=False)


class EdgeTestbed:
    """What ``edge_net`` yields: the network and the etcd cluster in it (member i+1 on node ``NODES[i]``)."""

    def __init__(self, net: EdgeNet, etcd: EtcdCluster) -> None:
        self.net = net
        self.etcd = etcd
        self.endpoints = etcd.endpoints  # the three client URLs, e1 (edge01) first

    def member(self, node: str) -> int:
        """The index of ``node``'s etcd member, for ``etcd.stop``/``kill``/``freeze``/``start``."""
        return self.net.nodes.index(node)

    def endpoint(self, node: str) -> str:
        return self.endpoints[self.member(node)]

    def etcdctl(
        self, node: str | None, *args: str, via: str | None = None, timeout: float = 5.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``etcdctl`` as etcd's root inside ``node``'s namespace (None: the root namespace, over the bridge) against
        the member on ``via`` (default: ``node``'s own; from the root namespace all three), bounded by ``timeout`` seconds
        (dial and command); the caller checks ``returncode``."""
        target = via or node
        endpoints = self.endpoint(target) if target is not None else ",".join(self.endpoints)
        prefix = self.net.exec_prefix(node) if node is not None else []
        argv = [*prefix, require("etcdctl"), "--endpoints", endpoints, *self.etcd.etcdctl_flags(),
                "--dial-timeout", f"{timeout}s", "--command-timeout", f"{timeout}s", *args]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10)

    def leader(self) -> str | None:
        """The node whose member leads, as the members reachable from the root namespace report it; None if they know
        of no leader (or it is one they cannot name because it is unreachable itself)."""
        ids, leaders = self._status()
        named = [node for node, member_id in ids.items() if member_id in leaders]
        return named[0] if named else None

    def move_leader(self, node: str) -> None:
        """Hand leadership to ``node``'s member (``etcdctl move-leader``, sent to the current leader) and wait for it."""
        current = self.leader()
        if current == node:
            return
        if current is None:
            raise ComponentFailed(f"cannot move the etcd leader to {node}: no reachable leader")
        done = self.etcdctl(None, "move-leader", format(self._status()[0][node], "x"), via=current)
        if done.returncode != 0:
            raise ComponentFailed(f"etcdctl move-leader to {node} failed: {done.stderr.strip()}")
        eventually_sync(f"{node}'s etcd member leading", lambda: self.leader() == node, within=10)

    def _status(self) -> tuple[dict[str, int], set[int]]:
        """Each reachable member's id by node, and the leader ids they report."""
        done = self.etcdctl(None, "endpoint", "status", "-w", "json")
        statuses = json.loads(done.stdout or "[]")  # an unreachable member is left out (and etcdctl exits 1)
        nodes = dict(zip(self.endpoints, self.net.nodes, strict=True))
        ids = {nodes[s["Endpoint"]]: int(s["Status"]["header"]["member_id"]) for s in statuses}
        return ids, {int(s["Status"]["leader"]) for s in statuses if s["Status"].get("leader")}

    def ensure_healthy(self) -> None:
        """Heal every node, thaw or start every member, and wait until all three are healthy (tests call it first)."""
        for node in self.net.nodes:
            self.net.heal(node)
        self.etcd.ensure_running()


MUTUAL_TLS = Secure()


def start_edge_testbed(root: Path, pre_vote: bool = True, secure: Secure | None = MUTUAL_TLS) -> EdgeTestbed:
    """Build the network and start etcd in it, healthy; ``stop_edge_testbed`` ends it (this cleans up if it fails).
    ``secure``: how etcd guards itself (default: mutual TLS and a role per edge; None: plaintext, open to all)."""
    net = EdgeNet()
    try:
        placements = [Placement(net.address(node), prefix=tuple(net.exec_prefix(node))) for node in NODES]
        extra = ["--pre-vote"] if pre_vote else []
        bed = EdgeTestbed(net, EtcdCluster(root, placements=placements, extra_args=extra, secure=secure))
    except BaseException:
        net.close()
        raise
    try:
        bed.ensure_healthy()
    except BaseException:
        stop_edge_testbed(bed)
        raise
    return bed


def stop_edge_testbed(bed: EdgeTestbed) -> None:
    try:
        bed.etcd.stop_all()
    finally:
        bed.net.close()


@pytest.fixture(scope="module")
def edge_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeTestbed]:
    bed = start_edge_testbed(tmp_path_factory.mktemp("edgenet"))
    try:
        yield bed
    finally:
        stop_edge_testbed(bed)
