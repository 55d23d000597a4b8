"""Testbed fixtures: a BIRD 2.0 BGP pair in the two namespaces of ``netns_pair``.

Router A (AS 65001, 10.99.0.1) and B (AS 65002, 10.99.0.2) each run one ``bgp`` protocol towards the other
(``hold time 3``, ``connect retry time 1``) and export their lo /24 from a ``static`` protocol. BIRD runs in
the foreground (``-f``) under ``Process``, so the test owns and reaps it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.testbed.netns import NetnsPair, Peer
from tests.testbed.process import ComponentFailed, Process, require, wait_until

AS_A, AS_B = 65001, 65002

BIRD_CONF = """\
router id {router_id};
log stderr {{ info, remote, warning, error, auth, fatal, bug }};
protocol device {{ scan time 10; }}
protocol static lo_net {{ ipv4; route {network} blackhole; }}
protocol bgp {proto} {{
  local {address} as {asn};
  neighbor {neighbor} as {remote_as};
  hold time 3;
  keepalive time 1;
  connect retry time 1;
  # The defaults (connect delay 5 s, error wait 60-300 s after a hold-timer expiry) would make every
  # re-establishment in a test take a minute; 1 s keeps recovery as quick as FRR's "timers connect 1".
  connect delay time 1;
  error wait time 1, 2;
  ipv4 {{ import all; export where proto = "lo_net"; }};
}}
"""


def birdc(ctl: Path, *command: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("birdc"), "-s", str(ctl), *command], capture_output=True, text=True, timeout=timeout)


def protocol_state(ctl: Path, proto: str) -> tuple[str, str] | None:
    """(protocol state, BGP state) from ``show protocols all <proto>``; None if BIRD does not answer."""
    done = birdc(ctl, "show", "protocols", "all", proto, timeout=5.0)
    if done.returncode != 0:
        return None
    state = bgp = ""
    for line in done.stdout.splitlines():
        if line.startswith(proto + " "):
            state = line.split()[3]
        elif line.strip().startswith("BGP state:"):
            bgp = line.split(":", 1)[1].strip()
    return state, bgp


@dataclass
class BirdRouter:
    peer: Peer
    neighbor: Peer
    asn: int
    proto: str  # the name of its bgp protocol towards the other router
    dir: Path
    process: Process | None = field(default=None)

    @property
    def ctl(self) -> Path:
        return self.dir / "r.ctl"

    def boot(self, remote_as: int) -> None:
        self.dir.mkdir()
        conf = self.dir / "r.conf"
        conf.write_text(
            BIRD_CONF.format(
                router_id=self.peer.router_id, network=self.peer.inner.rsplit(".", 1)[0] + ".0/24",
                proto=self.proto, address=self.peer.address, asn=self.asn, neighbor=self.neighbor.address,
                remote_as=remote_as,
            )
        )  # fmt: skip
        argv = ["ip", "netns", "exec", self.peer.ns, require("bird"), "-f",
                "-c", str(conf), "-s", str(self.ctl), "-P", str(self.dir / "r.pid")]  # fmt: skip
        self.process = Process(f"bird@{self.peer.ns}", argv, self.dir.parent / f"{self.dir.name}-bird.log")
        wait_until(f"bird in {self.peer.ns} to answer on {self.ctl}",
                   lambda: birdc(self.ctl, "show", "status", timeout=5.0).returncode == 0,
                   timeout=15, proc=self.process)  # fmt: skip

    def established(self) -> bool:
        return protocol_state(self.ctl, self.proto) == ("up", "Established")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10)

    def logs(self) -> str:
        return f"--- bird@{self.peer.ns}:\n{self.process.log_tail()}" if self.process else ""


@dataclass
class BirdPair:
    pair: NetnsPair
    a: BirdRouter
    b: BirdRouter
    root: Path

    @property
    def ctl_a(self) -> Path:
        return self.a.ctl

    @property
    def ctl_b(self) -> Path:
        return self.b.ctl

    @property
    def proto_a(self) -> str:
        """A's protocol towards B: the ``peer`` a BgpSource names for BIRD."""
        return self.a.proto

    def state_on_a(self) -> tuple[str, str] | None:
        return protocol_state(self.ctl_a, self.proto_a)

    def _control_a(self, verb: str) -> None:
        done = birdc(self.ctl_a, verb, self.proto_a)
        if done.returncode != 0 or f"{self.proto_a}: {verb}d" not in done.stdout:
            raise ComponentFailed(f"birdc {verb} {self.proto_a} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def disable(self) -> None:
        """``birdc disable`` on A: an administrative shutdown (B receives a CEASE)."""
        self._control_a("disable")

    def enable(self) -> None:
        self._control_a("enable")

    def wait_established(self, timeout: float = 20.0) -> None:
        try:
            wait_until("the BIRD session A↔B to be up/Established on both sides",
                       lambda: self.a.established() and self.b.established(), timeout=timeout)  # fmt: skip
        except ComponentFailed as exc:
            raise ComponentFailed(f"{exc}\n{self.a.logs()}\n{self.b.logs()}") from None


@pytest.fixture
def bird_pair(netns_pair: NetnsPair) -> Iterator[BirdPair]:
    """BIRD on A (AS 65001, protocol ``to_b``) and B (AS 65002, ``to_a``), Established before the test starts."""
    require("bird")
    require("birdc")
    # A short private dir, not tmp_path: Unix socket paths are limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="hybird-"))
    a = BirdRouter(netns_pair.a, netns_pair.b, AS_A, "to_b", root / "a")
    b = BirdRouter(netns_pair.b, netns_pair.a, AS_B, "to_a", root / "b")
    try:
        a.boot(AS_B)
        b.boot(AS_A)
        pair = BirdPair(netns_pair, a, b, root)
        pair.wait_established()
        yield pair
    finally:
        for router in (b, a):
            router.stop()
        shutil.rmtree(root, ignore_errors=True)
