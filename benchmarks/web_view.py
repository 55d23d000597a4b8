"""The journal view on a large journal: each page's render time (request to last byte, through the real aiohttp
server and templates) beside the query alone. Target (issue #15): p95 < 100 ms per page on a 100,000-record journal.

    python -m benchmarks.web_view                      # 100,000 records, 200 requests per page
    python -m benchmarks.web_view --records 5000 --requests 20   # the quick mode `make test` runs
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from hybridops_daemon.config.models import WebConfig
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.journal.verify import readonly_connection
from hybridops_daemon.policy.types import DecisionKind, Trigger
from hybridops_daemon.web.queries import JournalReader, TimelineFilter
from hybridops_daemon.web.server import WebServer
from tests.unit.test_web_view import backend_for, decision, hostile_run


def fill(journal: Journal, records: int) -> int:
    """``records`` records: a decision in five, the rest operator noise; returns the seq of a deep timeline cursor."""
    journal._conn.execute("PRAGMA synchronous=OFF")  # building the fixture only: no fsync per record
    kinds, triggers = list(DecisionKind), list(Trigger)
    for i in range(records):
        lane = ("prod", "drill")[i % 2]
        if i % 5 == 0:
            body = decision(i, lane, kinds[i % len(kinds)], triggers[i % len(triggers)])
            journal.append("decision", body, ts=1000.0 + i, lane=lane)
        else:
            journal.append("operator", {"noise": i}, ts=1000.0 + i, lane=lane)
    hostile_run(journal, "prod-1", "prod", at=1000.0 + records / 2)
    journal._conn.execute("PRAGMA synchronous=FULL")  # what is written after it is durable, as in the daemon
    return records // 10


async def timed(what: Callable[[], Awaitable[object]], requests: int) -> tuple[float, float]:
    took = []
    for _ in range(requests):
        began = time.perf_counter()
        await what()
        took.append((time.perf_counter() - began) * 1000)
    took.sort()
    return statistics.median(took), took[max(0, int(len(took) * 0.95) - 1)]


async def main(records: int, requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, Journal.open(Path(tmp) / "journal.db") as journal:
        began = time.perf_counter()
        deep = fill(journal, records)
        print(f"{records} records written in {time.perf_counter() - began:.1f} s")
        pages = {
            "overview": "/",
            "timeline": "/timeline",
            "timeline deep page": f"/timeline?before={deep}",
            "timeline lane+kind+trigger": "/timeline?lane=drill&kind=refuse&trigger=operator",
            "timeline time window": f"/timeline?since={1000 + records // 3}&until={1000 + records // 2}",
            "run": "/runs/prod-1",
        }
        async with (
            WebServer(WebConfig(port=0), backend_for(journal), journal) as server,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        ):
            for name, path in pages.items():

                async def get(path: str = path) -> None:
                    async with session.get(f"{server.url}{path.lstrip('/')}") as answer:
                        assert answer.status == 200, (path, answer.status)
                        await answer.read()

                p50, p95 = await timed(get, requests)
                print(f"{name:28} page p50 {p50:7.2f} ms  p95 {p95:7.2f} ms")
        with readonly_connection(journal.path) as conn:
            reader = JournalReader(conn)
            filtered = {"lane": "drill", "kind": "refuse", "trigger": "operator"}
            for name, query in (("timeline", {}), ("timeline lane+kind+trigger", filtered)):

                async def alone(query: dict[str, str] = query) -> None:
                    reader.timeline(TimelineFilter.parse(query))

                p50, p95 = await timed(alone, requests)
                print(f"{name:28} query alone p50 {p50:7.2f} ms  p95 {p95:7.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.records, args.requests))
