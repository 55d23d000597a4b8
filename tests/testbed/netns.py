"""Two network namespaces joined by a veth pair: the peers of the BGP and IPsec tests.

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


@dataclass(frozen=True)
class Peer:
    ns: str
    address: str  # on the veth, /30
    inner: str  # a /24 on lo, for IPsec traffic selectors and BGP networks
    router_id: str

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns, *argv, check=check)


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


def make_pair(tag: str) -> NetnsPair:
    require("ip")
    n = next(_counter)
    uid = f"{os.getpid() % 10000}{n}"
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
