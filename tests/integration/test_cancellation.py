"""Cancellation is never swallowed: a source cancelled at any moment ends within a second, against a real broker.

Python 3.11's ``asyncio.wait_for`` returns normally when the awaited operation completes in the same loop
iteration as an outside cancel (the cancel is lost); aiomqtt wraps every broker round trip in it. A peer link or
MQTT source whose cancel was lost goes on running, and the TaskGroup that cancelled it waits forever.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from hybridops_daemon.config.sources import MqttBroker, MqttSource, PeerSource
from hybridops_daemon.signals.mqtt import MqttIngest
from hybridops_daemon.signals.peer import PeerLink
from hybridops_daemon.signals.sample import Sample
from tests.testbed.mosquitto import Mosquitto

CANCELS = 1000
WORKERS = 10  # cancels run ten at a time, so the loop is busy as in a daemon with several sources
WITHIN = 1.0


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


async def cancel_at_random_moments(make: Callable[[int], PeerLink | MqttIngest], seed: int) -> list[float]:
    """Start, run for a random moment (0-60 ms: connecting, subscribing, publishing, reading), cancel, time the end."""
    rng = random.Random(seed)
    slowest: list[float] = []
    stuck: list[str] = []

    async def worker(w: int) -> None:
        for i in range(CANCELS // WORKERS):
            source = make(w)
            task = asyncio.create_task(source.run(lambda _sample: None))
            await asyncio.sleep(rng.uniform(0.0, 0.06))
            started = time.monotonic()
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=WITHIN)
            elapsed = time.monotonic() - started
            if not done:
                stuck.append(f"worker {w} cancel {i}: still running {WITHIN}s after cancel: {task.get_stack()}")
                task.cancel()  # let the test end; the failure is recorded
                await asyncio.wait({task}, timeout=WITHIN)
            slowest.append(elapsed)

    async with asyncio.TaskGroup() as group:
        for w in range(WORKERS):
            group.create_task(worker(w))
    assert not stuck, f"{len(stuck)} of {CANCELS} cancels were swallowed (seed {seed}): {stuck[:3]}"
    assert len(slowest) == CANCELS
    return sorted(slowest)


async def test_a_peer_link_cancelled_at_any_moment_ends_within_a_second(mosquitto: Mosquitto) -> None:
    seed = random.randrange(2**32)
    times = await cancel_at_random_moments(lambda n: peer_link(mosquitto, n), seed)
    print(f"peer link: {CANCELS} cancels (seed {seed}), slowest {times[-1] * 1e3:.1f} ms, p50 {times[CANCELS // 2] * 1e3:.2f} ms")


async def test_an_mqtt_source_cancelled_at_any_moment_ends_within_a_second(mosquitto: Mosquitto) -> None:
    seed = random.randrange(2**32)
    times = await cancel_at_random_moments(lambda n: mqtt_ingest(mosquitto, n), seed)
    print(f"mqtt: {CANCELS} cancels (seed {seed}), slowest {times[-1] * 1e3:.1f} ms, p50 {times[CANCELS // 2] * 1e3:.2f} ms")
