"""Testbed fixtures: a BIRD 2.0 BGP pair in the two namespaces of ``netns_pair``.

A and B (tests/testbed/routers.py) each run one ``bgp`` protocol towards the other (``hold time 3``, ``connect retry
time 1``) and export their lo /24 from a ``static`` protocol. BIRD runs in the foreground (``-f``), so the test owns
and reaps it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.testbed.netns import NetnsPair
from tests.testbed.process import ComponentFailed, require
from tests.testbed.routers import Router, RouterPair, booted

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


class BirdRouter(Router):
    @property
    def proto(self) -> str:
        """The name of its bgp protocol towards the other router: ``to_b`` on A, ``to_a`` on B."""
        return "to_b" if self.side == "a" else "to_a"

    @property
    def ctl(self) -> Path:
        return self.dir / "r.ctl"

    def boot(self) -> None:
        self.dir.mkdir()
        conf = self.dir / "r.conf"
        conf.write_text(
            BIRD_CONF.format(
                router_id=self.peer.router_id, network=self.network, proto=self.proto, address=self.peer.address,
                asn=self.asn, neighbor=self.neighbor.address, remote_as=self.remote_as,
            )
        )  # fmt: skip
        argv = [require("bird"), "-f", "-c", str(conf), "-s", str(self.ctl), "-P", str(self.dir / "r.pid")]
        self.start("bird", argv, lambda: birdc(self.ctl, "show", "status", timeout=5.0).returncode == 0)

    def established(self) -> bool:
        return protocol_state(self.ctl, self.proto) == ("up", "Established")


@dataclass
class BirdPair(RouterPair[BirdRouter]):
    kind = "BIRD"

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


@pytest.fixture
def bird_pair(netns_pair: NetnsPair) -> Iterator[BirdPair]:
    """BIRD on A (AS 65001, protocol ``to_b``) and B (AS 65002, ``to_a``), Established before the test starts."""
    require("bird")
    require("birdc")
    with booted(netns_pair, BirdRouter, BirdPair, "hybird-") as pair:
        yield pair
