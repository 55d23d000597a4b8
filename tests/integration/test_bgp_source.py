"""The BGP source against a real FRR 8.4 pair and a real BIRD 2.0 pair in two network namespaces.

Router A (the one polled) peers with B over a veth. Each session is taken down three ways: an
administrative shutdown on A, a link cut (``NetnsPair.cut()``: both veth ends down) and a silent partition
(``NetnsPair.silence()``: links up, frames dropped), which only the 3 s hold timer can notice. Flip times are
measured from the moment the fault is injected to the first 0.0 sample, and printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from hybridops_daemon.config.sources import BgpSource
from hybridops_daemon.signals.base import UpstreamError
from hybridops_daemon.signals.bgp import BgpPoller, run_bounded
from hybridops_daemon.signals.sample import Sample
from tests.testbed.bird import BirdPair
from tests.testbed.frr import FrrPair
from tests.testbed.netns import NetnsPair
from tests.testbed.process import Process
from tests.testbed.sources import Seen, running

INTERVAL = 0.25
HOLD = 3.0  # both fixtures: FRR "timers 1 3", BIRD "hold time 3" / "keepalive time 1"
KEEPALIVE = 1.0
MARGIN = 0.5  # vtysh/birdc run time and scheduling on a busy 2-core machine
FLIP_LIMIT = HOLD + 2 * INTERVAL + MARGIN

FLIPS: dict[str, float] = {}


@dataclass
class Router:
    """What the tests need from either pair: A's socket, B as A names it, and the faults to inject."""

    kind: str
    socket: Path
    peer: str  # BgpPeer.peer for B on A: FRR the neighbor address, BIRD the protocol name
    ghost: str  # a peer A does not have
    net: NetnsPair
    shutdown: Callable[[], None]
    enable: Callable[[], None]
    daemon: Process  # bgpd / bird on A


@pytest.fixture(params=["frr", "bird"])
def router(request: pytest.FixtureRequest) -> Router:
    if request.param == "frr":
        frr: FrrPair = request.getfixturevalue("frr_pair")
        return Router("frr", frr.socket_a, frr.neighbor_of_a, "10.99.0.77", frr.pair,
                      frr.shutdown_neighbor, frr.enable_neighbor, frr.a.processes["bgpd"])  # fmt: skip
    bird: BirdPair = request.getfixturevalue("bird_pair")
    return Router("bird", bird.ctl_a, bird.proto_a, "no_such_proto", bird.pair, bird.disable, bird.enable,
                  bird.a.processes["bird"])  # fmt: skip


def spec(router: Router, timeout: float = 1.0) -> BgpSource:
    return BgpSource.model_validate(
        {
            "type": "bgp", "daemon": router.kind, "socket": str(router.socket), "interval": INTERVAL,
            "timeout": timeout,
            "peers": [{"peer": router.peer, "signal": "bgp_b"}, {"peer": router.ghost, "signal": "bgp_ghost"}],
        }
    )  # fmt: skip


def partner(seen: Seen, sample: Sample, signal: str) -> Sample:
    """The sample of ``signal`` from the same poll (same observed_at)."""
    return next(s for s in seen.samples if s.signal == signal and s.observed_at == sample.observed_at)


async def up_with_prefixes(seen: Seen, since: int = 0, within: float = 15.0) -> None:
    def check() -> bool:
        return any(s.value == 1.0 and (partner(seen, s, "bgp_b_prefixes").value or 0) >= 1 for s in seen.of("bgp_b", since))

    await seen.until("bgp_b == 1.0 with bgp_b_prefixes >= 1", check, within)


async def off_loop(action: Callable[[], None]) -> None:
    """Run a blocking fixture action (vtysh, birdc, ip) in a thread: the poller keeps its cadence meanwhile."""
    async with asyncio.timeout(30):
        await asyncio.to_thread(action)


def children(*names: str) -> list[tuple[int, str, str]]:
    """This process's children named ``names`` (pid, comm, state), zombies included."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == os.getpid() and comm in names:
            found.append((int(entry.name), comm, state))
    return found


async def test_session_up_shutdown_cut_and_silent_partition(router: Router) -> None:
    poller = BgpPoller(spec(router), "edge01")
    with capture_logs() as logs:
        async with running(poller) as seen:
            await up_with_prefixes(seen)
            up = seen.of("bgp_b")[-1]
            assert (up.source, up.edge) == ("bgp", "edge01")

            # A peer the router does not know: UNKNOWN (None) for both signals, counted as malformed, never 1.
            ghosts = [s.value for s in seen.of("bgp_ghost") + seen.of("bgp_ghost_prefixes")]
            assert ghosts and all(value is None for value in ghosts)
            assert poller.health.malformed >= 1 and not poller.health.upstream_down

            for fault, inject, repair in (
                ("admin shutdown", router.shutdown, router.enable),
                ("link cut", router.net.cut, router.net.heal),
                ("silent partition", router.net.silence, router.net.unsilence),
            ):
                mark, started = seen.mark(), time.monotonic()
                await off_loop(inject)
                down = await seen.first("bgp_b", 0.0, since=mark, within=FLIP_LIMIT + 5)
                flip = seen.arrival(down) - started
                FLIPS[f"{router.kind} {fault}"] = flip
                print(f"\n{router.kind}: {fault} → bgp_b 0.0 after {flip:.3f}s")
                assert partner(seen, down, "bgp_b_prefixes").value == 0.0
                if fault == "admin shutdown":  # the router drops the session at once; only our polling delays it
                    assert flip <= 2 * INTERVAL + MARGIN, flip
                else:
                    assert flip <= FLIP_LIMIT, flip
                if fault == "silent partition":  # the hold timer, not an interface event, ended the session
                    assert flip >= HOLD - KEEPALIVE - 0.3, flip
                mark = seen.mark()
                await off_loop(repair)
                await up_with_prefixes(seen, since=mark, within=20)

    assert poller.health.failures == 0
    malformed_logs = [e for e in logs if e["event"].startswith("malformed input")]
    assert len(malformed_logs) == 1, "the unknown peer is logged once, then only counted"
    assert router.ghost in malformed_logs[0]["reason"]


async def test_daemon_hung_then_stopped_emits_nothing(router: Router) -> None:
    poller = BgpPoller(spec(router, timeout=0.5), "edge01")
    poller.max_backoff = 1.0  # the default 30 s cap would outlast the test
    with capture_logs() as logs:
        await hang_then_stop(router, poller)
    reasons = [e["reason"] for e in logs if e["event"].startswith("upstream lost")]
    assert len(reasons) == 2, reasons
    client = {"frr": "vtysh", "bird": "birdc"}[router.kind]
    assert reasons[0] == f"{client} did not answer within 0.45s", reasons  # hung: the client was killed
    assert reasons[1].startswith(f"{client} exited 1: "), reasons  # stopped: the client failed at once
    assert children("vtysh", "birdc") == [], "no client outlives the poller"


async def hang_then_stop(router: Router, poller: BgpPoller) -> None:
    async with running(poller) as seen:
        await up_with_prefixes(seen)

        # Hung daemon: the client connects but never gets an answer; each poll times out and kills it.
        os.kill(router.daemon.pid, signal.SIGSTOP)
        try:
            await seen.until("upstream down (hung daemon)", lambda: poller.health.upstream_down, within=5)
            count, failures = len(seen.samples), poller.health.failures
            await seen.until("two more timed-out polls", lambda: poller.health.failures >= failures + 2, within=5)
            assert len(seen.samples) == count, "nothing is emitted while the daemon does not answer"
            assert poller.health.failures >= 2
            zombies = [c for c in children("vtysh", "birdc") if c[2] == "Z"]
            assert not zombies, zombies
            assert len(children("vtysh", "birdc")) <= 1, "at most the one in-flight client"
        finally:
            os.kill(router.daemon.pid, signal.SIGCONT)
        await seen.until("samples again", lambda: len(seen.samples) > count and not poller.health.upstream_down)

        # Stopped daemon: the client fails at once (socket gone or refused).
        await off_loop(router.daemon.stop)
        await seen.until("upstream down (stopped daemon)", lambda: poller.health.upstream_down, within=5)
        count, failures = len(seen.samples), poller.health.failures
        await seen.until("two more failed polls", lambda: poller.health.failures >= failures + 2, within=5)
        assert len(seen.samples) == count, "nothing is emitted while the daemon is stopped"
        assert poller.health.failures > failures


@pytest.mark.parametrize("daemon", ["frr", "bird"])
async def test_missing_socket_is_upstream_error(daemon: str, tmp_path: Path) -> None:
    source = BgpSource.model_validate(
        {"type": "bgp", "daemon": daemon, "socket": str(tmp_path / "absent"), "interval": INTERVAL,
         "peers": [{"peer": "10.99.0.2", "signal": "bgp_b"}]}
    )  # fmt: skip
    poller = BgpPoller(source, "edge01")
    with pytest.raises(UpstreamError, match="exited 1"):
        await poller.poll()
    async with running(poller) as seen:
        await seen.until("upstream down", lambda: poller.health.upstream_down, within=5)
    assert seen.samples == []


async def test_run_bounded_kills_and_reaps_on_its_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamError, match=r"did not answer within 0\.3s"):
        await run_bounded(["sleep", "30"], 0.3)
    assert time.monotonic() - started < 2
    assert children("sleep") == []


async def test_run_bounded_kills_and_reaps_when_cancelled() -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):  # the caller's timeout (PollingSource.run), not run_bounded's own
            await run_bounded(["sleep", "30"], 10)
    assert children("sleep") == []


async def test_run_bounded_reports_a_failing_client() -> None:
    with pytest.raises(UpstreamError, match="exited 3: boom"):
        await run_bounded(["sh", "-c", "echo boom >&2; exit 3"], 5)
    assert await run_bounded(["echo", "hi"], 5) == "hi\n"


@pytest.fixture(scope="module", autouse=True)
def report_flips() -> Iterator[None]:
    yield
    if FLIPS:
        print("\nBGP flip times (fault → first 0.0 sample): "
              + ", ".join(f"{k} {v:.3f}s" for k, v in FLIPS.items()))  # fmt: skip
