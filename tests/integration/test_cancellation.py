"""Cancellation is never swallowed: a source cancelled at any moment ends within a second, against its real upstream.

Python 3.11 loses a cancel in two places (see ``hybridops_daemon.cancel``): ``asyncio.wait_for`` returns normally
when the awaited operation completes in the same loop iteration as an outside cancel (aiomqtt wraps every broker
round trip in it), and a TaskGroup whose child failed as the cancel arrived raises the children's ExceptionGroup. A
source whose cancel was lost goes on running, and the TaskGroup that cancelled it (shutdown, a source restart)
waits forever. Each source runs as the daemon runs it (``async with source: await source.run(emit)``), is cancelled
at a random moment of a window chosen so that cancels land in its connect, request, parse and backoff sleep, and
must end within ``WITHIN``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hybridops_daemon import cancel
from hybridops_daemon.config.sources import (
    AlertmanagerSource,
    BgpSource,
    HttpProbeSource,
    IpsecSource,
    IpsecTunnel,
    MqttBroker,
    MqttSource,
    PeerSource,
    PrometheusSource,
    SourceSpec,
)
from hybridops_daemon.daemon.sources import SourceSupervisor
from hybridops_daemon.signals.alertmanager import AlertmanagerReceiver
from hybridops_daemon.signals.base import Emit, Source
from hybridops_daemon.signals.bgp import BgpPoller
from hybridops_daemon.signals.http_probe import HttpProbe
from hybridops_daemon.signals.ipsec import IpsecPoller
from hybridops_daemon.signals.mqtt import MqttIngest
from hybridops_daemon.signals.peer import PeerLink
from hybridops_daemon.signals.prometheus import PrometheusPoller
from hybridops_daemon.signals.sample import Sample
from tests.integration.test_http_probe import Target
from tests.testbed.bird import BirdPair
from tests.testbed.frr import FrrPair
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.process import free_port
from tests.testbed.prometheus import Exporter, Prometheus
from tests.testbed.strongswan import CharonPair

CANCELS = 1000
WORKERS = 10  # cancels run ten at a time, so the loop is busy as in a daemon with several sources
WITHIN = 1.0
WINDOW = 0.06  # 0-60 ms after start: connecting, subscribing, publishing, reading


def broker(mosquitto: Mosquitto) -> MqttBroker:
    return MqttBroker(host=mosquitto.host, port=mosquitto.port, reconnect_min=0.01, reconnect_max=0.05, keepalive=1)


def peer_link(mosquitto: Mosquitto, n: int) -> PeerLink:
    spec = PeerSource(type="peer", broker=broker(mosquitto), publish_interval=0.001)
    readings = {("primary_http", f"edge{n}"): Sample("primary_http", 1.0, time.time(), "http_probe", f"edge{n}")}
    return PeerLink(spec, f"edge{n}", f"peer{n}", lambda: {"prod": {"primary_http": 3.0}}, lambda: readings)


def mqtt_ingest(mosquitto: Mosquitto, n: int) -> MqttIngest:
    spec = MqttSource.model_validate(
        {"type": "mqtt", "name": f"m{n}", "broker": broker(mosquitto).model_dump(), "topics": [{"filter": "t/+", "signal": "s"}]}
    )
    return MqttIngest(spec, "edge01", f"node{n}")


Alongside = Callable[[Any], Coroutine[Any, Any, None]]  # traffic for the source under test while it runs (a webhook client)


async def cancel_at_random_moments(
    make: Callable[[int], Source],
    seed: int,
    *,
    cancels: int = CANCELS,
    window: float = WINDOW,
    alongside: Alongside | None = None,
) -> list[float]:
    """Start each source as the daemon does, cancel it after a random moment of ``window``, time the end."""
    rng = random.Random(seed)
    slowest: list[float] = []
    stuck: list[str] = []

    async def supervised(source: Source) -> None:
        async with source:
            await source.run(lambda _sample: None)

    async def worker(w: int) -> None:
        for i in range(cancels // WORKERS):
            source = make(w)
            task = asyncio.create_task(supervised(source))
            traffic = asyncio.create_task(alongside(source)) if alongside else None
            await asyncio.sleep(rng.uniform(0.0, window))
            started = time.monotonic()
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=WITHIN)
            elapsed = time.monotonic() - started
            if not done:
                stuck.append(f"worker {w} cancel {i}: still running {WITHIN}s after cancel, at {awaiting(task)}")
                task.cancel()  # let the test end; the failure is recorded
                await asyncio.wait({task}, timeout=WITHIN)
            elif not task.cancelled():
                stuck.append(f"worker {w} cancel {i}: ended without CancelledError: {task.exception()!r}")
            if traffic is not None:
                traffic.cancel()
                await asyncio.wait({traffic}, timeout=WITHIN)
            slowest.append(elapsed)

    async with asyncio.TaskGroup() as group:
        for w in range(WORKERS):
            group.create_task(worker(w))
    assert not stuck, f"{len(stuck)} of {cancels} cancels were swallowed (seed {seed}): {stuck[:3]}"
    assert len(slowest) == cancels
    return sorted(slowest)


def awaiting(task: asyncio.Task[None]) -> str:
    """Where a suspended task waits: every frame of its await chain (``Task.get_stack`` shows only the outermost)."""
    where = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            where.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}")
        awaited = (
            getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None) or getattr(awaited, "gi_yieldfrom", None)
        )
    return " > ".join(where)


def report(what: str, seed: int, times: list[float]) -> None:
    print(
        f"{what}: {len(times)} cancels (seed {seed}), slowest {times[-1] * 1e3:.1f} ms, p50 {times[len(times) // 2] * 1e3:.2f} ms"
    )


async def test_a_peer_link_cancelled_at_any_moment_ends_within_a_second(mosquitto: Mosquitto) -> None:
    seed = random.randrange(2**32)
    report("peer link", seed, await cancel_at_random_moments(lambda n: peer_link(mosquitto, n), seed))


async def test_an_mqtt_source_cancelled_at_any_moment_ends_within_a_second(mosquitto: Mosquitto) -> None:
    seed = random.randrange(2**32)
    report("mqtt", seed, await cancel_at_random_moments(lambda n: mqtt_ingest(mosquitto, n), seed))


# --- polling sources: odd workers ask a closed port / a missing socket, so cancels also land in the backoff sleep --


async def test_a_prometheus_source_cancelled_at_any_moment_ends_within_a_second(
    exporter: Exporter, prometheus: Prometheus
) -> None:
    exporter.start()
    prometheus.start()
    exporter.set("up_metric", 1)
    closed = f"http://127.0.0.1:{free_port()}"
    queries = [{"signal": "up", "query": 'up_metric{job="dr"}'}, {"signal": "bad", "query": "up_metric[1m]"}]  # parse, malformed

    def make(n: int) -> Source:
        url = prometheus.url if n % 2 == 0 else closed
        spec = {"type": "prometheus", "url": url, "interval": 0.01, "timeout": 0.5, "queries": queries}
        return PrometheusPoller(PrometheusSource.model_validate(spec), "edge01")

    seed = random.randrange(2**32)
    report("prometheus", seed, await cancel_at_random_moments(make, seed))


@pytest.fixture
async def targets() -> AsyncIterator[tuple[Target, Target]]:
    fast, slow = Target(), Target()
    await fast.start()
    await slow.start()
    slow.delay = 0.015
    yield fast, slow
    await fast.stop()
    await slow.stop()


async def test_an_http_probe_cancelled_at_any_moment_ends_within_a_second(targets: tuple[Target, Target]) -> None:
    # A third of the workers probe a target slower (15 ms) than their timeout (10 ms): aiohttp's own timeout then
    # fires inside the window, at times in the same loop iteration as the cancel; a third probe a closed port.
    fast, slow = targets
    closed = f"http://127.0.0.1:{free_port()}/health"

    def make(n: int) -> Source:
        url, timeout = ((fast.url, 1.0), (slow.url, 0.01), (closed, 1.0))[n % 3]
        spec = {"type": "http_probe", "signal": "app_up", "url": url, "interval": 0.005, "timeout": timeout}
        return HttpProbe(HttpProbeSource.model_validate(spec), "edge01")

    seed = random.randrange(2**32)
    report("http probe", seed, await cancel_at_random_moments(make, seed))


WEBHOOK = b'{"version": "4", "alerts": [{"status": "firing", "labels": {"alertname": "PrimaryDown"}}]}'


async def trickled() -> AsyncIterator[bytes]:
    """A webhook body sent in two parts 20 ms apart: the request is in flight (its handler reading) for that long."""
    yield WEBHOOK[:20]
    await asyncio.sleep(0.02)
    yield WEBHOOK[20:]


async def test_an_alertmanager_receiver_cancelled_while_it_serves_ends_within_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The window covers the server's start, its idle refresh loop and webhooks in flight: whole, trickled, and
    # trickled by a client that gives up after 10 ms (as Alertmanager's own timeout does), mid-body.
    spec = AlertmanagerSource.model_validate(
        {"type": "alertmanager", "port": 0, "alerts": [{"signal": "primary_db_ok", "match": {"alertname": "PrimaryDown"}}]}
    )
    async with aiohttp.ClientSession() as http:

        async def webhooks(receiver: AlertmanagerReceiver) -> None:
            while receiver.port is None:
                await cancel.sleep(0.001)
            url = f"http://127.0.0.1:{receiver.port}{spec.path}"
            for n in itertools.count():
                try:
                    async with (
                        asyncio.timeout(0.01 if n % 3 == 2 else 2.0),
                        http.post(url, data=trickled() if n % 3 else WEBHOOK) as response,
                    ):
                        await response.read()
                except (aiohttp.ClientError, TimeoutError):
                    pass  # the receiver went away under it, or the client gave up: what this test does
                await cancel.sleep(0.001)

        seed = random.randrange(2**32)
        times = await cancel_at_random_moments(
            lambda _n: AlertmanagerReceiver(spec, "edge01", refresh=0.01), seed, alongside=webhooks
        )
        report("alertmanager", seed, times)
    # A client gone mid-body is the receiver's to count, not aiohttp's to log as a crash with a traceback.
    crashes = [r.getMessage() for r in caplog.records if r.name == "aiohttp.server" and r.levelno >= logging.ERROR]
    assert not crashes, f"{len(crashes)} requests crashed the handler: {crashes[:3]}"


def clients_of(sockets: list[Path]) -> list[str]:
    """vtysh/birdc processes still alive (or zombies) that were asked about one of ``sockets``: none may outlive a cancel."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # it ended while we looked
        if Path(argv[0].decode()).name in ("vtysh", "birdc") and any(str(s).encode() in argv for s in sockets):
            found.append(f"pid {pid} state {state}: {b' '.join(argv).decode()}")
    return found


@asynccontextmanager
async def hung_daemon(path: Path) -> AsyncIterator[Path]:
    """A control socket at ``path`` that accepts and never answers, as a hung bgpd/bird would: its client waits until
    it is killed, so every cancel of a poll on it must kill and reap one."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_unix_server(hold, str(path))
    try:
        yield path
    finally:
        server.close()
        for writer in held:
            writer.close()


@pytest.mark.parametrize("daemon", ["frr", "bird"])
async def test_a_bgp_source_cancelled_at_any_moment_ends_within_a_second_and_leaves_no_client(
    daemon: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if daemon == "frr":
        frr: FrrPair = request.getfixturevalue("frr_pair")
        real, peer, hung_at = frr.socket_a, frr.neighbor_of_a, frr.socket_a.parent / "hung"  # vtysh asks <dir>/bgpd.vty
        hung_at.mkdir()
        listener = hung_at / "bgpd.vty"
    else:
        bird: BirdPair = request.getfixturevalue("bird_pair")
        real, peer = bird.ctl_a, bird.proto_a
        hung_at = listener = bird.ctl_a.parent / "hung.ctl"
    missing = real.parent / "no-such-socket"  # the client fails at once: the retry path
    sockets = (real, missing, hung_at)

    def make(n: int) -> Source:
        spec = {"type": "bgp", "daemon": daemon, "socket": str(sockets[n % 3]),
                "interval": 0.01, "timeout": 1.0, "peers": [{"peer": peer, "signal": "bgp_b"}]}  # fmt: skip
        return BgpPoller(BgpSource.model_validate(spec), "edge01")

    # 100 ms: a vtysh round trip takes ~30 ms of fork, exec and answer on this machine, so cancels land in the spawn,
    # the wait for the answer, the parse and the interval sleep; 1,000 cancels take about 20 s (FRR), 8 s (BIRD).
    seed = random.randrange(2**32)
    async with hung_daemon(listener):
        report(f"bgp ({daemon})", seed, await cancel_at_random_moments(make, seed, window=0.1))
        left = clients_of(list(sockets))
        assert not left, f"{len(left)} cancelled polls left their client behind: {left[:3]}"


async def test_an_ipsec_source_cancelled_at_any_moment_ends_within_a_second(charon_pair: CharonPair) -> None:
    missing = charon_pair.vici.parent / "no-such.vici"
    tunnels = (IpsecTunnel(ike="dr", child="net", signal="tunnel_up"), IpsecTunnel(ike="ghost", signal="ghost_up"))

    def make(n: int) -> Source:
        vici = charon_pair.vici if n % 2 == 0 else missing
        return IpsecPoller(IpsecSource(type="ipsec", vici=vici, interval=0.01, timeout=1.0, tunnels=tunnels), "edge01")

    seed = random.randrange(2**32)
    report("ipsec", seed, await cancel_at_random_moments(make, seed))


class Swallowing:
    """A source with the bug this file hunts: cancelled, its ``run`` loses the cancel and ends normally. Only the
    first instance does, so that a supervisor which starts another can still be cancelled and the test ends."""

    name = "swallowing"
    swallowed = False

    async def __aenter__(self) -> Swallowing:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None

    async def run(self, _emit: Emit) -> None:
        if Swallowing.swallowed:
            await asyncio.sleep(3600)
        Swallowing.swallowed = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)


async def test_the_supervisor_ends_on_cancel_even_when_its_source_swallowed_it() -> None:
    # The daemon's supervisor would otherwise take the normal end for a finished run and start the source again.
    spec = HttpProbeSource.model_validate({"type": "http_probe", "signal": "app_up", "url": "http://127.0.0.1:1/"})
    builds = 0

    def build(_spec: SourceSpec) -> Source:
        nonlocal builds
        builds += 1
        return Swallowing()

    task = asyncio.create_task(SourceSupervisor(build, lambda _sample: None).run(spec))
    await asyncio.sleep(0.01)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=WITHIN)
    where = awaiting(task)
    if not done:
        task.cancel()  # the second source does not swallow: the test ends, the failure is recorded below
        await asyncio.wait({task}, timeout=WITHIN)
    assert done and task.cancelled(), f"the supervisor ran on after its cancel ({builds} builds), at {where}"
    assert builds == 1
