"""Testbed fixtures: an FRR 8.4 BGP pair (zebra + bgpd) in the two namespaces of ``netns_pair``.

Router A (AS 65001, 10.99.0.1) and B (AS 65002, 10.99.0.2) peer over the veth with ``timers 1 3`` and
``timers connect 1``; each announces its lo /24. The daemons run in the foreground under ``Process`` (not
``-d``), so the test owns their PIDs and reaps them: nothing is left running after the test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.testbed.netns import NetnsPair, Peer
from tests.testbed.process import ComponentFailed, Process, require, wait_until

FRR_LIBEXEC = Path("/usr/lib/frr")
AS_A, AS_B = 65001, 65002

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


@dataclass
class FrrRouter:
    peer: Peer  # its namespace and addresses
    neighbor: Peer
    asn: int
    dir: Path  # state dir = vty socket dir (owned by frr)
    processes: dict[str, Process] = field(default_factory=dict)  # zebra, bgpd

    @property
    def vty_socket(self) -> Path:
        return self.dir

    def start(self, daemon: str, config: str) -> Process:
        conf = self.dir / f"{daemon}.conf"
        conf.write_text(config)
        shutil.chown(conf, "frr", "frr")
        argv = [
            "ip", "netns", "exec", self.peer.ns, str(FRR_LIBEXEC / daemon),
            "-f", str(conf), "-i", str(self.dir / f"{daemon}.pid"), "-z", str(self.dir / "zserv.api"),
            "--vty_socket", str(self.dir), "-P", "0", "-u", "frr", "-g", "frr", "--log", "stdout",
        ]  # fmt: skip
        proc = Process(f"{daemon}@{self.peer.ns}", argv, self.dir.parent / f"{self.dir.name}-{daemon}.log")
        self.processes[daemon] = proc
        # Its vty socket answering is readiness; a daemon that dies on its config fails here at once.
        wait_until(
            f"{daemon} in {self.peer.ns} to answer on its vty socket",
            lambda: (self.dir / f"{daemon}.vty").exists()
            and subprocess.run(
                [require("vtysh"), "--vty_socket", str(self.dir), "-d", daemon, "-c", "show version"],
                capture_output=True, timeout=5,
            ).returncode == 0,
            timeout=15, proc=proc,
        )  # fmt: skip
        return proc

    def stop(self) -> None:
        for name in ("bgpd", "zebra"):  # bgpd first: it talks to zebra on its way out
            if name in self.processes:
                self.processes[name].stop(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {name} ({proc.log}):\n{proc.log_tail()}" for name, proc in self.processes.items())


@dataclass
class FrrPair:
    pair: NetnsPair
    a: FrrRouter
    b: FrrRouter
    root: Path

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

    def wait_established(self, timeout: float = 20.0) -> None:
        def both() -> bool:
            return (
                peer_state(self.socket_a, self.pair.b.address) == "Established"
                and peer_state(self.socket_b, self.pair.a.address) == "Established"
            )

        try:
            wait_until("the FRR session A↔B to be Established on both sides", both, timeout=timeout)
        except ComponentFailed as exc:
            raise ComponentFailed(f"{exc}\n{self.a.logs()}\n{self.b.logs()}") from None


def _boot(router: FrrRouter, remote_as: int) -> None:
    router.dir.mkdir()
    # FRR drops to user frr and creates its vty sockets and pid files here
    shutil.chown(router.dir, "frr", "frr")
    router.start("zebra", f"hostname {router.peer.ns}\n")
    network = router.peer.inner.rsplit(".", 1)[0] + ".0/24"
    router.start(
        "bgpd",
        BGPD_CONF.format(
            hostname=router.peer.ns, asn=router.asn, router_id=router.peer.router_id,
            neighbor=router.neighbor.address, remote_as=remote_as, network=network,
        ),
    )  # fmt: skip


@pytest.fixture
def frr_pair(netns_pair: NetnsPair) -> Iterator[FrrPair]:
    """FRR on A (AS 65001) and B (AS 65002), session Established on both sides before the test starts."""
    for daemon in ("zebra", "bgpd"):
        require(str(FRR_LIBEXEC / daemon))
    require("vtysh")
    # Not pytest's tmp_path: its 0700 parents keep user frr out, and its long paths break the 107-byte limit
    # of a Unix socket path.
    root = Path(tempfile.mkdtemp(prefix="hyfrr-"))
    root.chmod(0o755)
    a = FrrRouter(netns_pair.a, netns_pair.b, AS_A, root / "a")
    b = FrrRouter(netns_pair.b, netns_pair.a, AS_B, root / "b")
    try:
        _boot(a, AS_B)
        _boot(b, AS_A)
        pair = FrrPair(netns_pair, a, b, root)
        pair.wait_established()
        yield pair
    finally:
        for router in (b, a):
            router.stop()
        shutil.rmtree(root, ignore_errors=True)
