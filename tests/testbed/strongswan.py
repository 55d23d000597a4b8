"""Two real strongSwan charons, one per network namespace, with an IKEv2 PSK tunnel ``dr`` (child ``net``) up.

Each charon runs in its own mount namespace with a tmpfs on /run, so the two instances (and any system-wide
one) never share /run/charon.pid or the stroke socket. The kernel has XFRM but no ESP, so charon uses the
userspace ``kernel-libipsec`` plugin (a TUN device inside the namespace). Everything else a charon writes —
its VICI socket, config and log — lives in a short private temp dir (a Unix socket path must fit 107 bytes,
which pytest's tmp_path may not). The tunnel's traffic selectors are the namespaces' lo /24s, never the veth
peer addresses, so the IKE traffic itself is not captured by the tunnel.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.testbed.netns import NetnsPair, Peer
from tests.testbed.process import ComponentFailed, Process, require
from tests.testbed.wait import eventually_sync

CHARON = "/usr/lib/ipsec/charon"
PSK = "a-test-only-psk"
IKE = "dr"
CHILD = "net"

STRONGSWAN_CONF = """\
charon {{
  load_modular = yes
  filelog {{
    log {{
      path = {dir}/charon.log
      default = 1
      ike = 2
    }}
  }}
  plugins {{
    include /etc/strongswan.d/charon/*.conf
    kernel-libipsec {{
      load = yes
    }}
    vici {{
      socket = unix://{dir}/charon.vici
    }}
  }}
}}
"""

SWANCTL_CONF = """\
connections {{
  {ike} {{
    version = 2
    local_addrs = {local}
    remote_addrs = {remote}
    proposals = aes256-sha256-modp2048
    local {{
      auth = psk
      id = {local_id}
    }}
    remote {{
      auth = psk
      id = {remote_id}
    }}
    children {{
      {child} {{
        local_ts = {local_ts}
        remote_ts = {remote_ts}
        esp_proposals = aes256gcm16
      }}
    }}
  }}
}}
secrets {{
  ike-{ike} {{
    id-a = r1
    id-b = r2
    secret = "{psk}"
  }}
}}
"""


def _subnet(inner: str) -> str:
    """``10.98.1.1`` → ``10.98.1.0/24``: the peer's lo /24."""
    return inner.rsplit(".", 1)[0] + ".0/24"


@dataclass
class Charon:
    """One charon in one namespace. ``vici`` is a host path: the test process connects to it directly."""

    peer: Peer
    dir: Path
    process: Process | None = None

    @property
    def vici(self) -> Path:
        return self.dir / "charon.vici"

    @property
    def uri(self) -> str:
        return f"unix://{self.vici}"

    def swanctl(self, *args: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([require("swanctl"), *args, "--uri", self.uri], capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            # swanctl's stderr opens with a "plugin '...': failed to load" line per optional plugin: noise
            stderr = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("plugin '"))
            raise ComponentFailed(
                f"swanctl {' '.join(args)} on {self.peer.ns} failed ({done.returncode}):\n"
                f"{done.stdout.strip()}\n{stderr.strip()}\n--- charon log ---\n{self.log_tail()}"
            )
        return done

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join((self.dir / "charon.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no charon.log)"

    def start(self, remote: Peer, local_id: str, remote_id: str) -> None:
        self.dir.chmod(0o700)
        conf = self.dir / "strongswan.conf"
        conf.write_text(STRONGSWAN_CONF.format(dir=self.dir))
        (self.dir / "swanctl.conf").write_text(
            SWANCTL_CONF.format(
                ike=IKE,
                child=CHILD,
                local=self.peer.address,
                remote=remote.address,
                local_id=local_id,
                remote_id=remote_id,
                local_ts=_subnet(self.peer.inner),
                remote_ts=_subnet(remote.inner),
                psk=PSK,
            )
        )
        require(CHARON)
        require("unshare")
        # A private mount namespace with its own /run: charon writes /run/charon.pid and the stroke socket there.
        script = f"mount -t tmpfs tmpfs /run && STRONGSWAN_CONF={conf} exec {CHARON}"
        self.process = Process(
            f"charon[{self.peer.ns}]",
            ["ip", "netns", "exec", self.peer.ns, "unshare", "-m", "--propagation", "private", "sh", "-c", script],
            self.dir / "charon.stdout",
        )
        try:
            eventually_sync(
                f"charon's VICI socket in {self.peer.ns}",
                lambda: self.swanctl("--list-sas", check=False, timeout=5).returncode == 0,
                within=20,
                proc=self.process,
            )
        except ComponentFailed as exc:
            raise ComponentFailed(f"{exc}\n--- charon log ---\n{self.log_tail()}") from None
        self.swanctl("--load-all", "--file", str(self.dir / "swanctl.conf"))

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10)


def _ike_established(charon: Charon) -> bool:
    out = charon.swanctl("--list-sas", "--ike", IKE, check=False, timeout=5).stdout
    return "ESTABLISHED" in out


def _child_installed(charon: Charon) -> bool:
    out = charon.swanctl("--list-sas", "--ike", IKE, check=False, timeout=5).stdout
    return "ESTABLISHED" in out and f"{CHILD}:" in out and "INSTALLED" in out


@dataclass
class CharonPair:
    """A (initiator, 10.99.0.1) and B (responder, 10.99.0.2); tunnel ``dr``/``net`` established by ``start``."""

    net: NetnsPair
    a: Charon
    b: Charon
    dirs: list[Path] = field(default_factory=list)

    @property
    def vici(self) -> Path:
        """A's VICI socket: the one the daemon on edge A would poll."""
        return self.a.vici

    def _wait_both(self, what: str, check: Callable[[Charon], bool], timeout: float) -> None:
        for side in (self.a, self.b):
            eventually_sync(f"{what} on {side.peer.ns}", functools.partial(check, side), within=timeout, proc=side.process)

    def initiate(self, timeout: float = 20.0) -> None:
        """Bring ``dr`` with its child ``net`` up from A and wait until both ends list it installed."""
        self.a.swanctl("--initiate", "--child", CHILD, "--ike", IKE, "--timeout", "15", timeout=timeout)
        self._wait_both(f"{IKE}/{CHILD} installed", _child_installed, timeout)

    def terminate(self, timeout: float = 20.0) -> None:
        """Delete the IKE SA ``dr`` (and its children) from A; wait until neither end lists it."""
        self.a.swanctl("--terminate", "--ike", IKE, "--timeout", "10", timeout=timeout)
        self._wait_both(f"{IKE} gone", lambda side: not _ike_established(side), timeout)

    def terminate_child(self, timeout: float = 20.0) -> None:
        """Delete only the CHILD SA ``net`` from A: the IKE SA stays ESTABLISHED without any CHILD SA."""
        self.a.swanctl("--terminate", "--child", CHILD, "--timeout", "10", timeout=timeout)
        self._wait_both(f"{CHILD} gone, {IKE} kept", lambda side: _ike_established(side) and not _child_installed(side), timeout)

    def initiate_child(self, timeout: float = 20.0) -> None:
        """Re-create the CHILD SA ``net`` inside the existing IKE SA."""
        self.a.swanctl("--initiate", "--child", CHILD, "--timeout", "15", timeout=timeout)
        self._wait_both(f"{CHILD} installed", _child_installed, timeout)

    def stop(self) -> None:
        """Stop both charons and remove their dirs (idempotent)."""
        for charon in (self.a, self.b):
            charon.stop()
        for directory in self.dirs:
            shutil.rmtree(directory, ignore_errors=True)


def start_charon_pair(net: NetnsPair) -> CharonPair:
    """Start both charons, load ``dr`` on both, initiate it from A. On failure nothing is left running."""
    dirs = [Path(tempfile.mkdtemp(prefix="hyss-")) for _ in range(2)]
    pair = CharonPair(net, Charon(net.a, dirs[0]), Charon(net.b, dirs[1]), dirs)
    try:
        pair.a.start(net.b, "r1", "r2")
        pair.b.start(net.a, "r2", "r1")
        pair.initiate()
    except BaseException as exc:
        logs = "\n".join(f"--- {c.peer.ns} charon log ---\n{c.log_tail()}" for c in (pair.a, pair.b))
        pair.stop()
        if isinstance(exc, Exception):
            raise ComponentFailed(f"the strongSwan pair did not come up: {exc}\n{logs}") from exc
        raise
    return pair


@pytest.fixture
def charon_pair(netns_pair: NetnsPair) -> Iterator[CharonPair]:
    """Charons in both namespaces with ``dr``/``net`` established (A initiated). Stopped afterwards."""
    pair = start_charon_pair(netns_pair)
    try:
        yield pair
    finally:
        pair.stop()
