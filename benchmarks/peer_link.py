"""Peer link message rate with end-to-end authentication (HMAC-SHA256) beside without, in one run, interleaved.

- "codec": what checking costs on its own, on one core: ``open()`` of a peer summary (8 signals, ~500 bytes) by
  the receiver's codec, MAC check, bounded parse and the order checks included; and ``seal()`` on the sender's side.
- "link": messages through a real Mosquitto into a real ``PeerLink`` (the daemon's peer source): a separate
  ``mosquitto_pub -l`` process publishes N summaries of edge02 as fast as it can at QoS 0, sealed beforehand (each
  with its own sequence number) or plain, and edge01's link opens each and turns it into samples. The rate is first
  to last arrival; every pass reports received vs published and any drop, so a loss shows instead of hiding in the
  rate. The bench broker lifts the per-client queue limits so it buffers rather than drops.

The link's ``max_skew`` is raised to 10 minutes here: the batch is sealed before it is published, and a long pass
must not turn its own tail stale. The broker is the testbed's (tests/testbed/mosquitto.py).

    python -m benchmarks.peer_link [--messages 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.mqtt_ingest import BENCH_BROKER, Pass, publish, wait_for_pass
from hybridops_daemon import limits
from hybridops_daemon.config.sources import PeerSource
from hybridops_daemon.signals.peer import PeerLink, summary
from hybridops_daemon.signals.peer_auth import Codec, HmacCodec, PlainCodec
from hybridops_daemon.signals.sample import Sample
from tests.testbed.mosquitto import Mosquitto, cleanup, start_mosquitto

TOPIC = "hybridops/peer/prod/edge02"
SIGNALS = {f"signal_{i}": 5.0 for i in range(8)}
MAX_SKEW = 600.0


def body(now: float) -> dict[str, Any]:
    readings = {(s, "edge02"): Sample(s, 1.0, now - 0.25, "bench", "edge02") for s in SIGNALS}
    return summary("edge02", "prod", SIGNALS, readings, now)


def codecs(key: bytes | None) -> tuple[Codec, Codec]:
    """edge02's (the sender) and edge01's (the receiver)."""
    if key is None:
        return PlainCodec(), PlainCodec()
    return HmacCodec(key, "edge02", "edge01", MAX_SKEW), HmacCodec(key, "edge01", "edge02", MAX_SKEW)


def codec_pass(key: bytes | None, count: int) -> tuple[float, float]:
    """(seal/s, open/s) on one core."""
    sender, receiver = codecs(key)
    message = body(time.time())
    began = time.perf_counter()
    payloads = [sender.seal(TOPIC, message) for _ in range(count)]
    sealed = time.perf_counter() - began
    began = time.perf_counter()
    for payload in payloads:
        receiver.open(TOPIC, payload, limits.PEER_SUMMARY, "summary")
    opened = time.perf_counter() - began
    return count / sealed, count / opened


async def link_pass(broker: Mosquitto, key: tuple[Path, bytes] | None, count: int, directory: Path) -> tuple[Pass, PeerLink]:
    """``key``: the key's file (for the link's config) and the key (for the sender); None: no auth."""
    auth = {"key": {"file": str(key[0])}, "max_skew": f"{MAX_SKEW}s"} if key else None
    spec = PeerSource.model_validate({"type": "peer", "broker": {"host": broker.host, "port": broker.port}, "auth": auth})
    link = PeerLink(spec, "edge01", "edge02", dict, dict)  # publishes nothing: no lanes, no journal head
    sender, _ = codecs(key[1] if key else None)
    probe, run = Pass(1), Pass(count)

    def emit(sample: Sample) -> None:
        if sample.signal == "signal_0":  # a summary emits a sample per signal: count each summary once
            (run if probe.done.is_set() else probe).arrived()

    async with link:
        task = asyncio.create_task(link.run(emit))
        try:
            while not probe.done.is_set():  # subscribed: a probe came through (its seq below the batch's)
                await publish(broker, lines(directory / "probe.txt", [sender.seal(TOPIC, body(time.time()))]), TOPIC)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(probe.done.wait(), 0.2)
            batch = [sender.seal(TOPIC, body(time.time())) for _ in range(count)]
            await asyncio.gather(publish(broker, lines(directory / "batch.txt", batch), TOPIC), wait_for_pass(run))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return run, link


def lines(path: Path, payloads: list[bytes]) -> Path:
    """The payloads, one a line, as ``mosquitto_pub -l`` reads them (a sealed message is JSON: no newline in it)."""
    path.write_bytes(b"\n".join(payloads) + b"\n")
    return path


async def main_async(messages: int, repeat: int) -> None:
    broker = start_mosquitto(BENCH_BROKER)
    directory = Path(tempfile.mkdtemp(prefix="hyops-bench-"))
    key_file = directory / "peer-key"
    key_file.write_text(secrets.token_hex(32))
    key = key_file.read_text().encode()
    size = len(codecs(key)[0].seal(TOPIC, body(time.time())))
    plain_size = len(PlainCodec().seal(TOPIC, body(time.time())))
    try:
        print(f"Peer link: {messages:,} summaries of 8 signals per pass ({plain_size} bytes plain, {size} signed)")
        rates: dict[str, list[float]] = {"codec plain": [], "codec hmac": [], "link plain": [], "link hmac": []}
        lost = dropped = 0
        for i in range(repeat):  # interleaved, so both see the same machine conditions
            for name, secret in (("plain", None), ("hmac", key)):
                seal_rate, open_rate = codec_pass(secret, messages)
                rates[f"codec {name}"].append(open_rate)
                print(f"  pass {i + 1} codec {name:5}  open {open_rate:>9,.0f} msg/s   seal {seal_rate:>9,.0f} msg/s")
            for name, secret_file in (("plain", None), ("hmac", (key_file, key))):
                arrivals, link = await link_pass(broker, secret_file, messages, directory)
                rates[f"link {name}"].append(arrivals.rate)
                lost += messages - arrivals.count
                drops = {reason: n for reason, n in link.health.dropped.items() if n}
                dropped += sum(drops.values())
                print(
                    f"  pass {i + 1} link  {name:5}  {arrivals.count:,}/{messages:,} received, "
                    f"{arrivals.rate:>9,.0f} msg/s, dropped {drops or 0}"
                )
        best = {name: max(values) for name, values in rates.items()}
        per_message = (1 / best["codec hmac"] - 1 / best["codec plain"]) * 1e6
        print(f"  best codec: plain {best['codec plain']:,.0f} msg/s, hmac {best['codec hmac']:,.0f} msg/s "
              f"(checking costs {per_message:.1f} µs per message)")  # fmt: skip
        print(f"  best link:  plain {best['link plain']:,.0f} msg/s, hmac {best['link hmac']:,.0f} msg/s "
              f"(ratio hmac / plain {best['link hmac'] / best['link plain']:.2f})")  # fmt: skip
        print(f"  messages lost over all link passes: {lost}, dropped: {dropped} (both should be 0)")
    finally:
        cleanup(broker)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main_async(args.messages, args.repeat))


if __name__ == "__main__":
    main()
