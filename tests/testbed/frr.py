"""Testbed fixtures: an FRR 8.4 BGP pair (zebra + bgpd) in the two namespaces of ``netns_pair``.

A and B (tests/testbed/routers.py) peer with ``timers 1 3`` and ``timers connect 1``. The daemons run in the
foreground (not ``-d``), so the test owns their PIDs and reaps them: nothing is left running after the test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.testbed.netns import NetnsPair
from tests.testbed.process import ComponentFailed, require
from tests.testbed.routers import AS_A, Router, RouterPair, booted

FRR_LIBEXEC = Path("/usr/lib/frr")

BGPD_CONF = """\
frr defaults datacenter
hostname {hostname}
router bgp {asn}
 bgp router-id {router_id}
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor {neighbor} remote-as {remote_as}
 neighbor {neighbor} timers 1 3
 neighbor {neighbor} timers connect 1
 address-family ipv4 unicast
  network {network}
 exit-address-family
"""


def vtysh(socket_dir: Path, *commands: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    argv = [require("vtysh"), "--vty_socket", str(socket_dir), "-d", "bgpd"]
    for command in commands:
        argv += ["-c", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def summary(socket_dir: Path) -> dict[str, object]:
    done = vtysh(socket_dir, "show bgp summary json", timeout=5.0)
    if done.returncode != 0:
        raise RuntimeError(f"vtysh exited {done.returncode}: {done.stderr.strip()}")
    data = json.loads(done.stdout)
    assert isinstance(data, dict)
    return data


def peer_state(socket_dir: Path, neighbor: str) -> str | None:
    table = summary(socket_dir).get("ipv4Unicast")
    peers = table.get("peers", {}) if isinstance(table, dict) else {}
    peer = peers.get(neighbor)
    return peer.get("state") if isinstance(peer, dict) else None


class FrrRouter(Router):
    """zebra + bgpd; its directory is also their vty socket directory (owned by frr)."""

    @property
    def vty_socket(self) -> Path:
        return self.dir

    def boot(self) -> None:
        self.dir.mkdir()
        # FRR drops to user frr and creates its vty sockets and pid files here
        shutil.chown(self.dir, "frr", "frr")
        self._start("zebra", f"hostname {self.peer.ns}\n")
        self._start(
            "bgpd",
            BGPD_CONF.format(
                hostname=self.peer.ns, asn=self.asn, router_id=self.peer.router_id,
                neighbor=self.neighbor.address, remote_as=self.remote_as, network=self.network,
            ),
        )  # fmt: skip

    def _start(self, daemon: str, config: str) -> None:
        conf = self.dir / f"{daemon}.conf"
        conf.write_text(config)
        shutil.chown(conf, "frr", "frr")
        argv = [
            str(FRR_LIBEXEC / daemon),
            "-f", str(conf), "-i", str(self.dir / f"{daemon}.pid"), "-z", str(self.dir / "zserv.api"),
            "--vty_socket", str(self.dir), "-P", "0", "-u", "frr", "-g", "frr", "--log", "stdout",
        ]  # fmt: skip
        self.start(
            daemon,
            argv,
            lambda: (self.dir / f"{daemon}.vty").exists()
            and subprocess.run(
                [require("vtysh"), "--vty_socket", str(self.dir), "-d", daemon, "-c", "show version"],
                capture_output=True, timeout=5,
            ).returncode == 0,
        )  # fmt: skip

    def established(self) -> bool:
        return peer_state(self.dir, self.neighbor.address) == "Established"


@dataclass
class FrrPair(RouterPair[FrrRouter]):
    kind = "FRR"

    @property
    def socket_a(self) -> Path:
        return self.a.vty_socket

    @property
    def socket_b(self) -> Path:
        return self.b.vty_socket

    @property
    def neighbor_of_a(self) -> str:
        return self.pair.b.address

    def state_on_a(self) -> str | None:
        return peer_state(self.socket_a, self.neighbor_of_a)

    def _configure_a(self, line: str) -> None:
        done = vtysh(self.socket_a, "configure terminal", f"router bgp {AS_A}", line)
        output = (done.stdout + done.stderr).strip()
        # vtysh exits 0 on some rejected lines; FRR marks those with a leading '%'
        if done.returncode != 0 or any(s.lstrip().startswith("%") for s in output.splitlines()):
            raise ComponentFailed(f"vtysh '{line}' failed ({done.returncode}): {output}")

    def shutdown_neighbor(self) -> None:
        """Administrative shutdown of B on A (sends a CEASE: B sees it at once too)."""
        self._configure_a(f"neighbor {self.neighbor_of_a} shutdown")

    def enable_neighbor(self) -> None:
        self._configure_a(f"no neighbor {self.neighbor_of_a} shutdown")


@pytest.fixture
def frr_pair(netns_pair: NetnsPair) -> Iterator[FrrPair]:
    """FRR on A (AS 65001) and B (AS 65002), session Established on both sides before the test starts."""
    for daemon in ("zebra", "bgpd"):
        require(str(FRR_LIBEXEC / daemon))
    require("vtysh")
    with booted(netns_pair, FrrRouter, FrrPair, "hyfrr-") as pair:
        yield pair
