"""Fixtures of the end-to-end tests: the probed primary and single daemons; for the edge pair, PowerDNS on the edge
bridge and two daemons on the edge testbed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.edge_pair import Pair, Targets
from tests.e2e.harness import DaemonProcess, Primary, free_port
from tests.testbed.edgenet import BRIDGE_ADDRESS, EdgeTestbed
from tests.testbed.powerdns import PowerDns, cleanup, start_powerdns


@pytest.fixture
def primary() -> Iterator[Primary]:
    target = Primary(free_port())
    target.start()
    yield target
    target.stop()


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemons a test started, stopped after it."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()


@pytest.fixture(scope="module")
def edge_powerdns(edge_net: EdgeTestbed) -> Iterator[PowerDns]:
    server = start_powerdns(host=BRIDGE_ADDRESS)  # on the bridge: reachable from both edges' namespaces
    try:
        yield server
    finally:
        cleanup(server)


@pytest.fixture
def pair(tmp_path: Path, edge_net: EdgeTestbed, edge_powerdns: PowerDns) -> Iterator[Pair]:
    """edge01 and edge02 running (edge01 started first, so it usually leads) on a fresh key prefix and fresh fakes."""
    edge_net.ensure_healthy()
    targets = Targets(edge_powerdns)
    built = Pair(tmp_path, edge_net, targets)
    try:
        built.start()
        yield built
    finally:
        try:
            for edge in built:
                if edge.frozen:
                    edge.thaw()
            built.stop()
        finally:
            targets.close()
            edge_net.ensure_healthy()
