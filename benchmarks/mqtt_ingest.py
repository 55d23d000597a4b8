"""MQTT ingest throughput: messages from a real Mosquitto into the observation store, with decide() on each sample.

Side by side, against the same broker, in the same run, interleaved:

- "policy on": an ``MqttIngest`` (the daemon's mqtt source) whose emit puts each sample into an
  ``ObservationStore`` and runs ``decide()`` for one lane (a rule on the signal, corroboration, hysteresis);
- "bare": a plain aiomqtt subscriber (``async for message in client.messages``) that only counts;
- "transport floor" (extra): aiomqtt + paho with the source's hand-off (each message counted in paho's callback,
  no task per message), nothing parsed: what MQTT decoding alone costs, the rate no source could beat.

For each pass a separate ``mosquitto_pub -l`` process publishes N lines as fast as it can, at QoS 0: QoS 0 is
what a health publisher sends at high rates, and it measures our ingest rather than the PUBACK round trips of
one publisher. Nothing is retried at QoS 0, so every pass reports received vs published: a loss would show
there, not hide in the rate. The bench broker lifts the per-client queue limits (``max_queued_messages 0``,
``max_queued_bytes 0``) so the broker buffers rather than drops while a subscriber catches up. Both subscribers
subscribe at QoS 1 (the source's default); the delivered QoS is min(publish, subscription) = 0.

The payloads mix the three accepted shapes: ``1``/``0``, a bare number, and JSON with ``ts``. The broker is the
testbed's (tests/testbed/mosquitto.py, ``start_mosquitto``). Aim: >= 20,000 msg/s with policy on, >= 0.7 of
bare, resident memory <= 100 MB and flat.

    python -m benchmarks.mqtt_ingest [--messages 200000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiomqtt

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.config.sources import MqttBroker, MqttSource, MqttTopic
from hybridops_daemon.observations import ObservationStore
from hybridops_daemon.policy.decide import decide
from hybridops_daemon.policy.types import ChainEvent, DecisionKind, LaneState, Observation
from hybridops_daemon.signals.mqtt import MqttIngest
from hybridops_daemon.signals.sample import Sample
from tests.testbed.mosquitto import Mosquitto, cleanup, start_mosquitto

EDGE = "edge01"
TOPIC = "site/ams/health/db"
SIGNAL = "db_up{site=ams}"
BENCH_BROKER = "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 0\n"
PROFILE = Profile.model_validate(
    {
        "name": "bench",
        "version": 1,
        "signals": {SIGNAL: {"max_age": "5s"}},
        "rules": [{"name": "db_down", "signal": SIGNAL, "direction": "below", "trip": 0.5, "clear": 0.9, "consecutive": 3}],
        "cooldown": "500ms",
        "action_limit": {"max_actions": 1000, "window": "24h"},
        "failback": {"automatic": True, "stable_for": "500ms"},
        "chains": {
            "cutover": [{"id": "fip", "module": "network/floating-ip@v1", "inputs": {"ip": "203.0.113.10", "target": "edge02"}}],
            "failback": [{"id": "fip", "module": "network/floating-ip@v1", "inputs": {"ip": "203.0.113.10", "target": EDGE}}],
        },
    }
)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_payloads(path: Path, count: int, seed: int = 11) -> None:
    """One payload per line (``mosquitto_pub -l``): healthy, with rare short runs of 0, so the lane cuts over and fails back."""
    rng = random.Random(seed)
    ts = time.time()
    lines = []
    down = 0
    for i in range(count):
        if down == 0 and rng.random() < 1 / 20_000:  # an outage every ~0.7 s at 30k msg/s
            down = rng.randint(2, 8)
        value = 0 if down else 1
        down = max(0, down - 1)
        kind = i % 3
        if kind == 0:
            lines.append(str(value))
        elif kind == 1:
            lines.append(f"{value * rng.uniform(0.95, 1.0):.3f}")
        else:
            lines.append(f'{{"value": {value}, "ts": {ts + i * 1e-5:.5f}}}')
    path.write_text("\n".join(lines) + "\n")


class Pass:
    """Counts what arrives; notes the first and last arrival and the resident memory after 100k."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.rss_100k: float | None = None
        self.done = asyncio.Event()

    def arrived(self) -> None:
        now = time.perf_counter()
        if self.count == 0:
            self.first = now
        self.count += 1
        self.last = now
        if self.count == 100_000:
            self.rss_100k = rss_mb()
        if self.count == self.expected:
            self.done.set()

    @property
    def rate(self) -> float:
        return (self.count - 1) / (self.last - self.first) if self.count > 1 and self.last > self.first else 0.0


async def publish(broker: Mosquitto, payloads: Path, topic: str = TOPIC) -> None:
    """Every line of ``payloads`` as a message on ``topic``, at QoS 0, from a ``mosquitto_pub -l`` process."""
    pub = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
    with payloads.open("rb") as stdin:
        proc = await asyncio.create_subprocess_exec(
            pub, "-h", broker.host, "-p", str(broker.port), "-t", topic, "-q", "0", "-l", "-i", "bench-publisher",
            stdin=stdin,
        )  # fmt: skip
        if await proc.wait() != 0:
            raise RuntimeError(f"mosquitto_pub exited {proc.returncode}")


async def wait_for_pass(run: Pass, idle: float = 3.0) -> None:
    """Until every message arrived, or none arrived for ``idle`` seconds (then the pass reports the loss)."""
    seen = -1
    while not run.done.is_set() and seen != run.count:
        seen = run.count
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.done.wait(), idle)


async def policy_pass(broker: Mosquitto, payloads: Path, count: int) -> tuple[Pass, Counter[str], MqttIngest]:
    run = Pass(count)
    store = ObservationStore()
    state = LaneState(lane="prod", since=time.time())
    kinds: Counter[str] = Counter()
    clock: Callable[[], float] = time.time

    event: ChainEvent | None = None

    def emit(sample: Sample) -> None:
        nonlocal state, event
        store.put(sample)
        decision, state = decide(state, Observation(store.snapshot(), EDGE, None, event), PROFILE, clock())
        event = None
        if decision.kind is not DecisionKind.HOLD:
            kinds[decision.kind.value] += 1
            if decision.run_id is not None:  # the chain "finishes" at once, so the lane walks its state machine
                event = ChainEvent("prod", decision.run_id, ok=True, detail="simulated")
        run.arrived()

    spec = MqttSource(
        type="mqtt",
        name="bench",
        broker=MqttBroker(host=broker.host, port=broker.port),
        topics=(MqttTopic(filter="site/+/health/db", signal="db_up", labels=("site",)),),
    )
    async with MqttIngest(spec, EDGE, "bench") as source:
        task = asyncio.create_task(source.run(emit))
        while not source.connected:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        await asyncio.gather(publish(broker, payloads), wait_for_pass(run))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert store.received[SIGNAL] == run.count
    return run, kinds, source


async def bare_pass(broker: Mosquitto, payloads: Path, count: int) -> Pass:
    run = Pass(count)

    async def consume(client: aiomqtt.Client) -> None:
        async for _ in client.messages:
            run.arrived()

    async with aiomqtt.Client(broker.host, broker.port, identifier="bench-bare") as client:
        await client.subscribe("site/+/health/db", qos=1)
        consumer = asyncio.create_task(consume(client))
        await asyncio.gather(publish(broker, payloads), wait_for_pass(run))
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    return run


async def floor_pass(broker: Mosquitto, payloads: Path, count: int) -> Pass:
    run = Pass(count)

    class Count(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            run.arrived()

    async with aiomqtt.Client(broker.host, broker.port, identifier="bench-floor", queue_type=Count) as client:
        await client.subscribe("site/+/health/db", qos=1)
        await asyncio.gather(publish(broker, payloads), wait_for_pass(run))
    return run


async def main_async(messages: int, repeat: int) -> None:
    broker = start_mosquitto(BENCH_BROKER)
    directory = Path(tempfile.mkdtemp(prefix="hyops-bench-"))
    try:
        payloads = directory / "payloads.txt"
        write_payloads(payloads, messages)
        print(f"MQTT ingest: {messages:,} messages per pass, QoS 0, mosquitto_pub -l → Mosquitto 127.0.0.1:{broker.port}")
        print(f"  resident memory at start: {rss_mb():.1f} MB")
        policy_runs: list[Pass] = []
        bare_runs: list[Pass] = []
        floor_runs: list[Pass] = []

        def line(number: int, name: str, run: Pass, extra: str = "") -> None:
            counts = f"{run.count:,}/{messages:,} received"
            print(f"  pass {number} {name:10} {counts}, {run.rate:>7,.0f} msg/s, RSS {rss_mb():.1f} MB{extra}")

        for i in range(repeat):  # interleaved, so all three see the same machine conditions
            write_payloads(payloads, messages)  # fresh ts, so the JSON samples are not stale by age
            rss_before = rss_mb()
            run, kinds, source = await policy_pass(broker, payloads, messages)
            policy_runs.append(run)
            line(i + 1, "policy on", run, f" (at its start {rss_before:.1f}, after 100k {run.rss_100k or float('nan'):.1f})")
            print(f"    malformed {source.health.malformed}, decisions other than hold: {dict(kinds)}")
            bare_runs.append(await bare_pass(broker, payloads, messages))
            line(i + 1, "bare", bare_runs[-1])
            floor_runs.append(await floor_pass(broker, payloads, messages))
            line(i + 1, "floor", floor_runs[-1])
        best_policy = max(r.rate for r in policy_runs)
        best_bare = max(r.rate for r in bare_runs)
        best_floor = max(r.rate for r in floor_runs)
        lost = sum(messages - r.count for r in policy_runs + bare_runs + floor_runs)
        print(f"  best policy on (store + decide() per sample): {best_policy:>7,.0f} msg/s  (aim >= 20,000)")
        print(f"  best bare aiomqtt subscriber (count only):   {best_bare:>7,.0f} msg/s")
        print(f"  transport floor (decode + count, no parse):  {best_floor:>7,.0f} msg/s")
        print(f"  ratio policy on / bare: {best_policy / best_bare:.2f} (aim >= 0.7)")
        print(f"  ratio policy on / transport floor: {best_policy / best_floor:.2f}")
        print(f"  messages lost over all passes: {lost} of {messages * 3 * repeat:,}")
        print(f"  resident memory at the end: {rss_mb():.1f} MB  (aim <= 100 MB, flat)")
    finally:
        cleanup(broker)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main_async(args.messages, args.repeat))


if __name__ == "__main__":
    main()
