"""The rfc2136 driver's conditional write, against a real PowerDNS: an UPDATE carries the prerequisite that the fence
TXT is still what its sender read, so a stale writer's UPDATE that arrives after a newer writer stamped the name is
refused by the server itself (not by a check of ours that could come too early).

The stale UPDATE is delayed in flight by a proxy (queries pass at once, an UPDATE over TCP is held until released),
as a deposed leader's request would be by a partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import dns.asyncquery
import dns.message
import dns.opcode
import pytest

from hybridops_daemon.drivers.base import Fenced
from tests.integration.test_dns_drivers import ZONE, answer, ctx, rfc_driver
from tests.testbed.powerdns import PowerDns
from tests.testbed.wait import eventually


class _Forward(asyncio.DatagramProtocol):
    """UDP: every query forwarded to the server at once, its answer sent back."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.ensure_future(self._answer(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        response = await dns.asyncquery.udp(dns.message.from_wire(data), self.upstream[0], port=self.upstream[1], timeout=5)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


class HoldingProxy:
    """TCP: each message is read whole and sent on, an UPDATE only once ``release()`` is called; the answer comes back."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.held = 0
        self._release = asyncio.Event()
        self.port = 0

    def release(self) -> None:
        self._release.set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            message = await reader.readexactly(size)
            if (message[2] >> 3) & 0xF == dns.opcode.UPDATE:  # queries pass at once
                self.held += 1
                await self._release.wait()
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            up_writer.write(struct.pack("!H", size) + message)
            answer_size = struct.unpack("!H", await up_reader.readexactly(2))[0]
            writer.write(struct.pack("!H", answer_size) + await up_reader.readexactly(answer_size))
            await writer.drain()
            up_writer.close()
        writer.close()


@contextlib.asynccontextmanager
async def holding_proxy(powerdns: PowerDns) -> AsyncIterator[HoldingProxy]:
    proxy = HoldingProxy(powerdns.host, powerdns.dns_port)
    server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    forward = _Forward(powerdns.host, powerdns.dns_port)
    udp, _ = await loop.create_datagram_endpoint(lambda: forward, local_addr=("127.0.0.1", proxy.port))
    try:
        yield proxy
    finally:
        proxy.release()
        udp.close()
        server.close()


@pytest.mark.parametrize(("stamped_before", "rcode"), [(True, "NXRRSET"), (False, "YXRRSET")])
async def test_a_stale_update_landing_after_a_newer_stamp_is_refused_by_the_server(
    stamped_before: bool, rcode: str, powerdns: PowerDns, tmp_path: Path
) -> None:
    name = f"prereq-{rcode.lower()}"
    fqdn, fence = f"{name}.{ZONE}.", f"_hyops-fence.{name}.{ZONE}."
    newer = rfc_driver(powerdns, tmp_path)
    if stamped_before:  # the stale writer read token 5 (its own earlier stamp); otherwise it read no stamp at all
        await newer.apply(ctx(name, "192.0.2.50", token=5, run_id="run-5"))

    async with holding_proxy(powerdns) as proxy:
        stale = rfc_driver(powerdns, tmp_path, timeout=10.0, server="127.0.0.1", port=proxy.port)  # outlasts the hold
        late = asyncio.ensure_future(stale.apply(ctx(name, "198.51.100.5", token=5, run_id="run-5-late")))
        await eventually("the stale UPDATE held in flight", lambda: proxy.held, within=10)
        await newer.apply(ctx(name, "192.0.2.60", token=6, run_id="run-6"))  # the newer leader, meanwhile
        proxy.release()
        with pytest.raises(Fenced) as refused:
            await late

    assert refused.value.retryable is False and refused.value.code == rcode
    assert str(refused.value).startswith(f"fenced: DNS UPDATE to 127.0.0.1:{proxy.port} refused by its prerequisite ({rcode})")
    # The server applied none of the stale UPDATE: the newer writer's record and stamp stand.
    assert await answer(powerdns, fqdn) == ("NOERROR", ["192.0.2.60"], 60)
    assert (await answer(powerdns, fence, "TXT"))[1] == ['"token=6 run=run-6"']


async def test_an_update_whose_read_saw_a_newer_stamp_is_not_sent(powerdns: PowerDns, tmp_path: Path) -> None:
    """The read before the UPDATE refuses a newer stamp at once: the server never gets an UPDATE from the stale run."""
    driver = rfc_driver(powerdns, tmp_path)
    await driver.apply(ctx("prereq-read", "192.0.2.70", token=8, run_id="run-8"))
    serial = powerdns.serial()
    with pytest.raises(Fenced, match="changed under fencing token 8, newer than this run's 7"):
        await driver.apply(ctx("prereq-read", "198.51.100.7", token=7))
    assert powerdns.serial() == serial
