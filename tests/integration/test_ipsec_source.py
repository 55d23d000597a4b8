"""IpsecPoller against real charons (tests/testbed/strongswan.py), and its time bound against stuck VICI peers.

Each charon test gets a fresh namespace pair with the tunnel ``dr``/``net`` up (about 0.5 s to set up); the
poller asks A's VICI socket every 0.25 s. swanctl calls block, so they run in a thread under a timeout.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest

from hybridops_daemon.config.sources import IpsecSource, IpsecTunnel
from hybridops_daemon.signals.base import UpstreamError
from hybridops_daemon.signals.ipsec import IpsecPoller
from tests.testbed.sources import running
from tests.testbed.strongswan import CharonPair
from tests.testbed.wait import eventually

INTERVAL = 0.25
TIMEOUT = 1.0
# a change must show within a few polls once charon has it: 3 intervals plus one poll's own time
PROMPT = 3 * INTERVAL + TIMEOUT


def make_poller(vici: Path, *tunnels: tuple[str, str | None, str]) -> IpsecPoller:
    spec = IpsecSource(
        type="ipsec",
        vici=vici,
        interval=INTERVAL,
        timeout=TIMEOUT,
        tunnels=tuple(IpsecTunnel(ike=ike, child=child, signal=signal) for ike, child, signal in tunnels),
    )
    return IpsecPoller(spec, "edge01")


async def blocking(call: Callable[[], object], within: float = 30.0) -> None:
    await asyncio.wait_for(asyncio.to_thread(call), within)


async def test_tunnel_down_and_up_again(charon_pair: CharonPair) -> None:
    poller = make_poller(charon_pair.vici, ("dr", "net", "tunnel_up"), ("dr", None, "ike_up"))
    async with running(poller) as samples:
        await samples.first("tunnel_up", 1.0, within=PROMPT)
        await samples.first("ike_up", 1.0, within=PROMPT)

        await blocking(charon_pair.terminate)
        mark = samples.mark()
        await samples.first("tunnel_up", 0.0, mark, within=PROMPT)
        await samples.first("ike_up", 0.0, mark, within=PROMPT)

        await blocking(charon_pair.initiate)
        mark = samples.mark()
        await samples.first("tunnel_up", 1.0, mark, within=PROMPT)
        await samples.first("ike_up", 1.0, mark, within=PROMPT)
    assert poller.health.malformed == 0
    assert poller.health.failures == 0
    assert all(s.source == "ipsec" and s.edge == "edge01" for s in samples.samples)


async def test_child_not_installed_while_ike_is_up(charon_pair: CharonPair) -> None:
    poller = make_poller(charon_pair.vici, ("dr", "net", "tunnel_up"), ("dr", None, "ike_up"))
    async with running(poller) as samples:
        await samples.first("tunnel_up", 1.0, within=PROMPT)

        await blocking(charon_pair.terminate_child)  # the IKE SA stays ESTABLISHED without a CHILD SA
        mark = samples.mark()
        await samples.first("tunnel_up", 0.0, mark, within=PROMPT)
        # from then on: the child reads down while the IKE SA reads up, in the same polls
        mark = samples.mark()
        await samples.first("ike_up", 1.0, mark, within=PROMPT)
        assert not [s for s in samples.samples[mark:] if s.signal == "tunnel_up" and s.value != 0.0]

        await blocking(charon_pair.initiate_child)
        await samples.first("tunnel_up", 1.0, samples.mark(), within=PROMPT)
    assert poller.health.malformed == 0


async def test_unknown_names_read_unknown_and_are_counted(charon_pair: CharonPair) -> None:
    poller = make_poller(
        charon_pair.vici,
        ("dr", "net", "tunnel_up"),
        ("nope", None, "typo_ike"),
        ("dr", "other", "typo_child"),
    )
    async with running(poller) as samples:
        await samples.first("typo_ike", None, within=PROMPT)
        await samples.first("typo_child", None, within=PROMPT)
        await samples.first("tunnel_up", 1.0, within=PROMPT)  # a bad name does not hide the good ones
        polls = poller.health.malformed
        await samples.first("typo_ike", None, samples.mark(), within=PROMPT)
    assert poller.health.malformed > polls >= 1  # counted on every poll (logged once)
    assert not poller.health.upstream_down
    assert {s.value for s in samples.samples if s.signal in ("typo_ike", "typo_child")} == {None}


async def test_charon_stopped_means_no_samples_and_upstream_down(charon_pair: CharonPair) -> None:
    poller = make_poller(charon_pair.vici, ("dr", "net", "tunnel_up"))
    async with running(poller) as samples:
        await samples.first("tunnel_up", 1.0, within=PROMPT)

        await blocking(charon_pair.a.stop)
        await samples.until("upstream_down after charon stopped", lambda: poller.health.upstream_down, within=PROMPT)
        mark, failures = samples.mark(), poller.health.failures
        await samples.until("two more failed polls", lambda: poller.health.failures >= failures + 2)
        assert samples.samples[mark:] == [], "a source without its upstream must emit nothing (UNKNOWN by age)"
    assert poller.health.failures >= 1
    # the poll after the stop that was still answered (if any) read the tunnel down, never UNKNOWN
    assert all(s.value in (0.0, 1.0) for s in samples.samples)


# --- the time bound, against VICI peers that misbehave (no charon needed) ---


@pytest.fixture
def vici_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hyvici-") as directory:  # short: Unix socket paths max 107 bytes
        yield Path(directory) / "charon.vici"


def vici_threads() -> list[str]:
    """Threads currently inside vici's blocking read: what a hung poll would leave behind."""
    return [
        str(ident)
        for ident, frame in sys._current_frames().items()
        if any(f.f_code.co_name == "_recvall" and "vici" in f.f_code.co_filename for f in _stack(frame))
    ]


def _stack(frame: FrameType | None) -> Iterator[FrameType]:
    while frame is not None:
        yield frame
        frame = frame.f_back


async def serve(path: Path, reply: bytes) -> tuple[asyncio.AbstractServer, list[bytes]]:
    """A Unix server that reads the first request, writes ``reply`` once, then holds the connection open."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(4096))
        writer.write(reply)
        await writer.drain()
        seen.append(await reader.read())  # b"" once the client gave up and closed/shut down
        writer.close()

    return await asyncio.start_unix_server(handle, str(path)), seen


@pytest.mark.parametrize(
    "reply",
    [b"", b"\x00\x00\x00\x64\x05"],  # silent; a header promising 100 bytes, then one byte and nothing more
    ids=["silent", "stalls-mid-message"],
)
async def test_a_stuck_vici_peer_times_out_and_frees_the_thread(vici_path: Path, reply: bytes) -> None:
    server, seen = await serve(vici_path, reply)
    async with server:
        poller = make_poller(vici_path, ("dr", None, "ike_up"))
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(poller.poll(), TIMEOUT + 5)  # the outer bound only guards the test
        assert time.monotonic() - started < TIMEOUT + 0.3
        await eventually(
            "the worker thread to leave vici's blocking read after the poll gave up", lambda: vici_threads() == [], within=1.0
        )
        assert seen and seen[0], "the poller never sent its request"
        server.close()


async def test_a_garbled_reply_is_an_upstream_error(vici_path: Path) -> None:
    # a whole frame of packet type 9, which the protocol does not define
    server, _ = await serve(vici_path, b"\x00\x00\x00\x01\x09")
    async with server:
        poller = make_poller(vici_path, ("dr", None, "ike_up"))
        with pytest.raises(UpstreamError):
            await asyncio.wait_for(poller.poll(), TIMEOUT + 5)
        server.close()


async def test_a_missing_socket_is_an_os_error_and_run_emits_nothing(vici_path: Path) -> None:
    poller = make_poller(vici_path, ("dr", None, "ike_up"))
    with pytest.raises(FileNotFoundError):
        await asyncio.wait_for(poller.poll(), TIMEOUT + 5)
    async with running(poller) as samples:
        await samples.until("two failed polls", lambda: poller.health.failures >= 2)
    assert samples.samples == []
    assert poller.health.upstream_down
    assert poller.health.failures >= 1


def test_a_socket_refusing_connections_is_an_os_error(vici_path: Path) -> None:
    # a bound socket nobody listens on: connect() is refused
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(vici_path))
        poller = make_poller(vici_path, ("dr", None, "ike_up"))
        with pytest.raises(ConnectionRefusedError):
            asyncio.run(asyncio.wait_for(poller.poll(), TIMEOUT + 5))
