"""`status` under load: N clients at once ask a real daemon (a subprocess on the demo's embedded defaults) for its
status over the control socket, round after round; latency from connect to the reply, and the server's CPU time per
request. The clients are plain non-blocking sockets in one selector loop by default, so little of the figure is
theirs; ``--client hyopsctl`` uses hyopsctl's asyncio client instead (500 of them in this one process).

Printed beside the floor it cannot beat, measured the same way in the same run: a bare asyncio Unix-socket server (a
subprocess too) that answers every request line with a canned reply of the same size, no parsing, no backend.
When every client asks at once, the last answer waits for all the others': p99 is N times the server's CPU per
request at the least, so the bare server's CPU column says what this machine allows.
Aim (issue #19): p99 under 50 ms with 500 concurrent clients. ``--also-tree DIR`` measures a daemon run from another
checkout too (e.g. the commit before a change), interleaved in the same run, with this checkout's client.

    python -m benchmarks.status_load [--clients 500] [--rounds 5] [--also-tree DIR] [--client raw|hyopsctl]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hybridops_daemon.control.client import request
from hybridops_daemon.control.protocol import encode_request, encode_result

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


STATUS_REQUEST = encode_request("status", {})


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def one(socket_path: Path) -> float:
    began = time.perf_counter()
    await request(socket_path, "status", {}, timeout=30.0)
    return (time.perf_counter() - began) * 1000


async def hyopsctl_load(socket_path: Path, clients: int, rounds: int) -> list[float]:
    times: list[float] = []
    for _ in range(rounds):
        times.extend(await asyncio.gather(*(one(socket_path) for _ in range(clients))))
    return times


def raw_load(socket_path: Path, clients: int, rounds: int) -> list[float]:
    times: list[float] = []
    for _ in range(rounds):
        times.extend(raw_round(socket_path, clients))
    return times


def raw_round(socket_path: Path, clients: int) -> list[float]:
    """``clients`` status requests at once from plain non-blocking sockets in one selector loop: a few microseconds
    of client work each, so the server under test is what is measured. A connect refused for a full backlog is
    retried after 10 ms, doubling, as hyopsctl does."""
    selector = selectors.DefaultSelector()
    retries: list[tuple[float, float, float]] = [(time.perf_counter(), 0.0, 0.01) for _ in range(clients)]
    times: list[float] = []
    give_up = time.monotonic() + 30
    while len(times) < clients:
        if time.monotonic() > give_up:
            raise SystemExit(f"{socket_path}: {clients - len(times)} clients unanswered after 30 s")
        now = time.perf_counter()
        due = [entry for entry in retries if entry[1] <= now]
        retries = [entry for entry in retries if entry[1] > now]
        for began, _, delay in due:
            if not raw_connect(socket_path, selector, began):
                retries.append((began, now + delay, min(delay * 2, 0.2)))
        wait = min((entry[1] for entry in retries), default=now + 0.05) - now
        for key, _ in selector.select(max(wait, 0.0)):
            began, reply = key.data
            chunk = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
            if not chunk:
                raise SystemExit(f"{socket_path} closed a connection without answering")
            reply += chunk
            if reply.endswith(b"\n"):
                times.append((time.perf_counter() - began) * 1000)
                if not reply.startswith(b'{"ok":true'):
                    raise SystemExit(f"{socket_path} answered {bytes(reply[:200])!r}")
                selector.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
    selector.close()
    return times


def raw_connect(socket_path: Path, selector: selectors.BaseSelector, began: float) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(str(socket_path))  # a Unix connect succeeds at once or fails with EAGAIN (backlog full)
    except BlockingIOError:
        sock.close()
        return False
    sock.send(STATUS_REQUEST)  # a few bytes into an empty buffer: never short
    selector.register(sock, selectors.EVENT_READ, (began, bytearray()))
    return True


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def measure(args: argparse.Namespace, servers: dict[str, tuple[Path, int]]) -> dict[str, tuple[list[float], float]]:
    """Each server's latencies and its CPU time per request, interleaved, forwards then backwards: going first costs
    (measured: ~30% at p50 even against a copy of itself)."""
    times: dict[str, list[float]] = {name: [] for name in servers}
    cpu = dict.fromkeys(servers, 0.0)
    order = list(servers.items())
    for _ in range(2):
        for name, (path, pid) in order:
            before = cpu_seconds(pid)
            if args.client == "raw":
                times[name] += raw_load(path, args.clients, args.rounds)
            else:
                times[name] += asyncio.run(hyopsctl_load(path, args.clients, args.rounds))
            cpu[name] += cpu_seconds(pid) - before
        order.reverse()
    return {name: (times[name], cpu[name] * 1e6 / len(times[name])) for name in servers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--also-tree", type=Path, default=None, help="another checkout whose daemon to measure too")
    parser.add_argument(
        "--client",
        choices=("raw", "hyopsctl"),
        default="raw",
        help="raw: plain sockets in one selector loop (the server is what is measured); hyopsctl: the asyncio client"
        " hyopsctl uses, 500 of them in this one process, whose own work then weighs on the figures",
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        servers: dict[str, tuple[Path, int]] = {}
        trees = [("daemon status", None)] + ([(f"daemon of {args.also_tree}", args.also_tree)] if args.also_tree else [])
        for name, tree in trees:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hyops-bench-")))
            daemon, path = start_daemon(directory, tree)
            servers[name] = (path, daemon.pid)
            stack.callback(lambda proc=daemon: (proc.terminate(), proc.wait(20)))
        reply = encode_result(asyncio.run(request(servers["daemon status"][0], "status", {})))  # the same bytes
        bare, path = start_bare(Path(stack.enter_context(tempfile.TemporaryDirectory())), reply)
        servers["bare Unix server"] = (path, bare.pid)
        stack.callback(lambda: (bare.terminate(), bare.wait(10)))
        measured = measure(args, servers)
    print(
        f"status under load: {args.clients} concurrent clients ({args.client} client), {2 * args.rounds} rounds,"
        f" ms from connect to reply; the server's CPU per request ({len(reply)}-byte reply)"
    )
    print(f"{'':40}{'p50':>9}{'p99':>9}{'max':>9}{'cpu/req':>10}")
    for name, (times, cpu_us) in measured.items():
        print(f"{name:40}{summary(times)}{cpu_us:>8.0f}us")
    p99 = percentile(measured["daemon status"][0], 99)
    bare_p99 = percentile(measured["bare Unix server"][0], 99)
    print(f"daemon p99 {p99:.1f} ms (aim: < 50 ms); {p99 / bare_p99:.2f}x the bare server's")


if __name__ == "__main__":
    main()
