"""`status` under load: N clients at once ask a real daemon (a subprocess on the demo's embedded defaults) for its
status over the control socket, as `hyopsctl status` does, round after round; latency from connect to the reply.

Printed beside the floor it cannot beat, measured the same way in the same run: a bare asyncio Unix-socket server (a
subprocess too) that answers every request line with a canned reply of the same size, no parsing, no backend.
Aim (issue #19): p99 under 50 ms with 500 concurrent clients. ``--also-tree DIR`` measures a daemon run from another
checkout too (e.g. the commit before a change), interleaved in the same run, with this checkout's client.

    python -m benchmarks.status_load [--clients 500] [--rounds 5] [--also-tree DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hybridops_daemon.control.client import request
from hybridops_daemon.control.protocol import encode_result

REPO = Path(__file__).resolve().parents[1]
BARE_SERVER = """
import asyncio, sys
reply = sys.stdin.buffer.read()
async def answer(reader, writer):
    await reader.readline()
    writer.write(reply)
    await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_unix_server(answer, path=sys.argv[1], backlog=1024)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def one(socket_path: Path) -> float:
    began = time.perf_counter()
    await request(socket_path, "status", {}, timeout=30.0)
    return (time.perf_counter() - began) * 1000


async def load(socket_path: Path, clients: int, rounds: int) -> list[float]:
    times: list[float] = []
    for _ in range(rounds):
        times.extend(await asyncio.gather(*(one(socket_path) for _ in range(clients))))
    return times


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server behind {path} did not start")
        time.sleep(0.05)


def daemon_config(directory: Path) -> Path:
    config = directory / "daemon.yaml"
    config.write_text(
        f"node: edge01\nstate_dir: {directory / 'state'}\n"
        f"lanes:\n  prod:\n    profile: {REPO / 'policies' / 'prod.yaml'}\n"
        f"  drill:\n    profile: {REPO / 'policies' / 'drill.yaml'}\n"
    )
    return config


def summary(times: list[float]) -> str:
    return f"{statistics.median(times):>9.2f}{percentile(times, 99):>9.2f}{max(times):>9.2f}"


def start_daemon(directory: Path, tree: Path | None) -> tuple[subprocess.Popen[bytes], Path]:
    env = dict(os.environ, PYTHONPATH=str(tree)) if tree is not None else None  # that checkout's package first
    config = daemon_config(directory)
    daemon = subprocess.Popen(
        [Path(sys.executable).parent / "hyops-daemon", "run", "--config", str(config), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    socket_path = directory / "state" / "hyops.sock"
    wait_for_socket(socket_path, daemon)
    time.sleep(0.5)  # the lanes taken, so status is the full answer
    return daemon, socket_path


def start_bare(directory: Path, reply: bytes) -> tuple[subprocess.Popen[bytes], Path]:
    path = directory / "bare.sock"
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(path)], stdin=subprocess.PIPE)
    assert bare.stdin is not None
    bare.stdin.write(reply)
    bare.stdin.close()
    wait_for_socket(path, bare)
    return bare, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--also-tree", type=Path, default=None, help="another checkout whose daemon to measure too")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        servers: dict[str, Path] = {}
        trees = [("daemon status", None)] + ([(f"daemon of {args.also_tree}", args.also_tree)] if args.also_tree else [])
        for name, tree in trees:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hyops-bench-")))
            daemon, servers[name] = start_daemon(directory, tree)
            stack.callback(lambda proc=daemon: (proc.terminate(), proc.wait(20)))
        reply = encode_result(asyncio.run(request(servers["daemon status"], "status", {})))  # the same bytes
        bare, servers["bare Unix server"] = start_bare(Path(stack.enter_context(tempfile.TemporaryDirectory())), reply)
        stack.callback(lambda: (bare.terminate(), bare.wait(10)))
        measured: dict[str, list[float]] = {name: [] for name in servers}
        order = list(servers.items())
        for _ in range(2):  # interleaved, first forwards then backwards: going first costs (measured: ~30% at p50)
            for name, path in order:
                measured[name] += asyncio.run(load(path, args.clients, args.rounds))
            order.reverse()
    print(f"status under load: {args.clients} concurrent clients, {2 * args.rounds} rounds, ms from connect to reply")
    print(f"{'':40}{'p50':>9}{'p99':>9}{'max':>9}")
    for name, times in measured.items():
        print(f"{name:40}{summary(times)}")
    p99 = percentile(measured["daemon status"], 99)
    print(f"daemon p99 {p99:.1f} ms (aim: < 50 ms); {p99 / percentile(measured['bare Unix server'], 99):.2f}x the bare server's")


if __name__ == "__main__":
    main()
