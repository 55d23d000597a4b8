"""Two network namespaces joined by a veth pair: the peers of the BGP and IPsec tests; and the helpers every namespace
fixture shares (``sh``, unique names, ``ip netns exec``, silent ARP black holes).

Only these namespaces and loopback carry test traffic. Names are unique per test so parallel or aborted runs
never collide, and everything is deleted afterwards (deleting a namespace deletes its end of the veth).
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.testbed.process import ComponentFailed, require

_counter = itertools.count(1)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise ComponentFailed(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def unique_id() -> str:
    """A short id unique to this process and call, for names of namespaces and links (a link name has ≤ 15 chars)."""
    return f"{os.getpid() % 10000}{next(_counter)}"


def netns_exec(ns: str) -> list[str]:
    """The command prefix that runs a program inside namespace ``ns`` (``ip`` execs it: same PID, same process group)."""
    return ["ip", "netns", "exec", ns]


def black_hole(ns: str | None, dev: str, address: str, mac: str) -> None:
    """Make ``ns`` (None: the root namespace) send frames for ``address`` over ``dev`` to ``mac``, which nobody owns:
    they are dropped silently.

    No interface or route changes, so nothing but a timeout notices (the kernel here has neither netem nor tc
    classifiers). ``unblack_hole`` undoes it; the next frame then resolves the address by ARP again.
    """
    prefix = netns_exec(ns) if ns is not None else []
    sh(*prefix, "ip", "neigh", "replace", address, "lladdr", mac, "dev", dev, "nud", "permanent")


def unblack_hole(ns: str | None, dev: str, address: str) -> None:
    prefix = netns_exec(ns) if ns is not None else []
    sh(*prefix, "ip", "neigh", "del", address, "dev", dev, check=False)


@dataclass(frozen=True)
class Peer:
    ns: str
    address: str  # on the veth, /30
    inner: str  # a /24 on lo, for IPsec traffic selectors and BGP networks
    router_id: str

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(*netns_exec(self.ns), *argv, check=check)


@dataclass(frozen=True)
class NetnsPair:
    a: Peer
    b: Peer
    veth_a: str
    veth_b: str

    def cut(self) -> None:
        """Take the link down on both sides: a partition."""
        self.a.run("ip", "link", "set", self.veth_a, "down")
        self.b.run("ip", "link", "set", self.veth_b, "down")

    def heal(self) -> None:
        self.a.run("ip", "link", "set", self.veth_a, "up")
        self.b.run("ip", "link", "set", self.veth_b, "up")

    def silence(self) -> None:
        """A partition with every link up: frames between A and B are dropped silently (see ``black_hole``)."""
        black_hole(self.a.ns, self.veth_a, self.b.address, "02:00:00:00:00:0b")
        black_hole(self.b.ns, self.veth_b, self.a.address, "02:00:00:00:00:0a")

    def unsilence(self) -> None:
        unblack_hole(self.a.ns, self.veth_a, self.b.address)
        unblack_hole(self.b.ns, self.veth_b, self.a.address)


def make_pair(tag: str) -> NetnsPair:
    require("ip")
    uid = unique_id()
    a = Peer(f"hy{tag}a{uid}", "10.99.0.1", "10.98.1.1", "10.99.0.1")
    b = Peer(f"hy{tag}b{uid}", "10.99.0.2", "10.98.2.1", "10.99.0.2")
    veth_a, veth_b = f"hva{uid}"[:15], f"hvb{uid}"[:15]
    sh("ip", "netns", "add", a.ns)
    sh("ip", "netns", "add", b.ns)
    sh("ip", "link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
    sh("ip", "link", "set", veth_a, "netns", a.ns)
    sh("ip", "link", "set", veth_b, "netns", b.ns)
    for peer, veth in ((a, veth_a), (b, veth_b)):
        peer.run("ip", "addr", "add", f"{peer.address}/30", "dev", veth)
        peer.run("ip", "addr", "add", f"{peer.inner}/24", "dev", "lo")
        peer.run("ip", "link", "set", "lo", "up")
        peer.run("ip", "link", "set", veth, "up")
    return NetnsPair(a, b, veth_a, veth_b)


def delete_pair(pair: NetnsPair) -> None:
    for peer in (pair.a, pair.b):
        sh("ip", "netns", "del", peer.ns, check=False)


@pytest.fixture
def netns_pair(request: pytest.FixtureRequest) -> Iterator[NetnsPair]:
    """A fresh pair per test: A at 10.99.0.1 (lo 10.98.1.1/24), B at 10.99.0.2 (lo 10.98.2.1/24)."""
    pair = make_pair("t")
    try:
        yield pair
    finally:
        delete_pair(pair)
