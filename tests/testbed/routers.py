"""What the FRR and BIRD BGP pairs (frr.py, bird.py) share: a router per namespace of ``netns_pair``, whose daemons
run in the foreground under ``Process`` and are ready once their control socket answers; a pair booted side by side
in a short private directory, Established on both sides before the test starts, stopped and removed afterwards.

Router A (AS 65001, 10.99.0.1) and B (AS 65002, 10.99.0.2) peer over the veth; each announces its lo /24.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from tests.testbed.netns import NetnsPair, Peer, netns_exec
from tests.testbed.process import ComponentFailed, Process
from tests.testbed.wait import eventually_sync

AS_A, AS_B = 65001, 65002


@dataclass
class Router:
    """One side: ``side`` is "a" or "b"; its state lives in ``root / side``."""

    side: str
    peer: Peer  # its namespace and addresses
    neighbor: Peer
    asn: int
    remote_as: int
    root: Path
    processes: dict[str, Process] = field(default_factory=dict)  # in start order

    @property
    def dir(self) -> Path:
        return self.root / self.side

    @property
    def network(self) -> str:
        """The lo /24 it announces."""
        return self.peer.inner.rsplit(".", 1)[0] + ".0/24"

    def boot(self) -> None:
        raise NotImplementedError

    def established(self) -> bool:
        raise NotImplementedError

    def start(self, daemon: str, argv: list[str], ready: Callable[[], bool]) -> Process:
        """Run ``argv`` in the router's namespace; ready once ``ready()`` (its control socket answers). A daemon that
        dies on its config fails here at once."""
        proc = Process(f"{daemon}@{self.peer.ns}", [*netns_exec(self.peer.ns), *argv], self.root / f"{self.side}-{daemon}.log")
        self.processes[daemon] = proc
        eventually_sync(f"{daemon} in {self.peer.ns} to answer on its control socket", ready, within=15, proc=proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.processes.values()):  # FRR: bgpd before zebra, which it talks to on its way out
            proc.stop(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {name} ({proc.log}):\n{proc.log_tail()}" for name, proc in self.processes.items())


R = TypeVar("R", bound=Router)


@dataclass
class RouterPair(Generic[R]):
    kind: ClassVar[str]
    pair: NetnsPair
    a: R
    b: R

    def wait_established(self, timeout: float = 20.0) -> None:
        try:
            eventually_sync(
                f"the {self.kind} session A↔B to be Established on both sides",
                lambda: self.a.established() and self.b.established(),
                within=timeout,
            )
        except ComponentFailed as exc:
            raise ComponentFailed(f"{exc}\n{self.a.logs()}\n{self.b.logs()}") from None


P = TypeVar("P", bound=RouterPair)  # type: ignore[type-arg]


@contextmanager
def booted(net: NetnsPair, router: type[R], pair: Callable[[NetnsPair, R, R], P], prefix: str) -> Iterator[P]:
    """Both routers booted and Established; both stopped and their directory removed at the end."""
    # Not pytest's tmp_path: its 0700 parents keep FRR's user out, and its long paths break the 107-byte limit of a
    # Unix socket path.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    a = router("a", net.a, net.b, AS_A, AS_B, root)
    b = router("b", net.b, net.a, AS_B, AS_A, root)
    try:
        a.boot()
        b.boot()
        both = pair(net, a, b)
        both.wait_established()
        yield both
    finally:
        for side in (b, a):
            side.stop()
        shutil.rmtree(root, ignore_errors=True)
