"""The decision path's p99 while the journal view is being loaded in a loop (the on-call issue). The daemon serves the
view and decides on one event loop: while a page renders, no decision is made.

One process, one event loop, one journal, as in the daemon: web_view.py's journal (100,000 records) behind the real
aiohttp server and templates, and decision_path.py's path (``DecisionPath``, its decisions signed and durable in that
same journal) paced by the loop every ``--gap`` ms. Blocks alternate, as preflight.py's do: the view idle, and a client
in a process of its own (a browser's place) loading the overview, the timeline and a run page back to back over one
keep-alive connection. "path" is the work itself; "from due" adds the wait for the loop, which is where the view shows.

    python -m benchmarks.web_view_load                                          # 100,000 records, 10+10 blocks of 500
    python -m benchmarks.web_view_load --records 5000 --blocks 2 --runs 100     # the quick mode `make test` runs
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import itertools
import multiprocessing
import tempfile
import time
import urllib.parse
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path

from benchmarks.decision_path import DecisionPath, block_arguments, interleaved, print_blocks
from benchmarks.web_view import fill
from hybridops_daemon.config.models import WebConfig
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.web.server import WebServer
from tests.unit.test_web_view import backend_for

PAGES = ("/", "/timeline", "/runs/prod-1")  # the overview, the timeline's newest page, the run web_view.fill writes
CLIENT_DEADLINE_S = 900.0  # the client stops by itself even if this process died without telling it
CLIENT_WAIT_S = 30.0


def load_pages(urls: Connection, go: Event, busy: Event, idle: Event, stop: Event, loaded: Synchronized[int]) -> None:
    """The client: the pages one after another while ``go`` is set; ``busy`` set while it loads, ``idle`` while not."""
    url = urllib.parse.urlsplit(urls.recv())
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    deadline = time.monotonic() + CLIENT_DEADLINE_S
    try:
        for path in itertools.cycle(PAGES):
            while not go.is_set():
                busy.clear()
                idle.set()
                if stop.is_set() or time.monotonic() > deadline:
                    return
                go.wait(0.05)
            idle.clear()
            busy.set()
            conn.request("GET", path)
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200, (path, answer.status)
            with loaded.get_lock():
                loaded.value += 1
    finally:
        conn.close()


class Client:
    """The client process, started before the journal is filled (its imports take a second), paused between blocks."""

    def __init__(self) -> None:
        spawn = multiprocessing.get_context("spawn")  # nothing of this process's loop or SQLite handles in the child
        self._urls, urls = spawn.Pipe()
        self._go, self._busy, self._idle, self._stop = spawn.Event(), spawn.Event(), spawn.Event(), spawn.Event()
        self._loaded = spawn.Value("i", 0)
        events = (self._go, self._busy, self._idle, self._stop)
        self._process = spawn.Process(target=load_pages, args=(urls, *events, self._loaded))
        self._process.start()

    def begin(self, url: str) -> None:
        self._urls.send(url)

    async def load(self, stop: asyncio.Event) -> int:
        """A busy block: load pages until ``stop``, then wait for the page in flight; how many pages loaded."""
        before = int(self._loaded.value)
        self._go.set()
        assert await asyncio.to_thread(self._busy.wait, CLIENT_WAIT_S), "the page client did not start loading"
        await stop.wait()
        self._go.clear()
        assert await asyncio.to_thread(self._idle.wait, CLIENT_WAIT_S), "the page client did not stop loading"
        return int(self._loaded.value) - before

    async def warm_up(self) -> None:
        """Each page once, not counted: a template compiles on its first render."""
        at_once = asyncio.Event()
        at_once.set()
        for _ in PAGES:
            await self.load(at_once)  # one page a call: the one in flight when asked to stop

    def close(self) -> None:
        self._stop.set()
        self._go.clear()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
        assert self._process.exitcode == 0, f"the page client failed (exit code {self._process.exitcode})"


async def measure(journal: Journal, client: Client, args: argparse.Namespace) -> None:
    async with WebServer(WebConfig(port=0), backend_for(journal), journal) as server:
        assert server.url is not None
        client.begin(server.url)
        await client.warm_up()
        gc.freeze()  # as the daemon does once started (daemon/app.py): start-up objects out of the collector's sight
        blocks = await interleaved(DecisionPath(journal), client.load, args.blocks, args.runs, args.gap / 1000)
    print_blocks(blocks, args.gap, ("view idle", "view loaded"), f"pages loaded ({', '.join(PAGES)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000, help="the journal's size before the decisions")
    block_arguments(parser)
    args = parser.parse_args()
    began = time.monotonic()
    base = Path("var")
    base.mkdir(exist_ok=True)
    client = Client()
    try:
        with (
            tempfile.TemporaryDirectory(dir=base) as tmp,
            Journal.open(Path(tmp) / "journal.db", Redactor(), key=b"benchmark journal key, 32 bytes.") as journal,
        ):
            fill(journal, args.records)
            print(f"web view load benchmark: {args.records} records, journal on {tmp}, WAL + synchronous=FULL")
            asyncio.run(measure(journal, client, args))
    finally:
        client.close()
    print(f"done in {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()
