"""The control socket's input limits through a real Unix socket: a request over a bound gets an error reply naming
it, never reaches the backend, and the server keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridops_daemon.control.client import request
from hybridops_daemon.control.server import ControlServer
from tests.unit.test_control import STATUS, RecordingBackend, raw_exchange


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b'{"cmd":"status","args":' + b"[" * 30_000 + b"]" * 30_000 + b"}\n", "request: nesting depth over the limit of 8"),
        (b'{"cmd":"status","args":{"a":[' + b"1," * 1000 + b"1]}}\n", "request: entries in an array or object over"),
        (
            b'{"cmd":"status","args":{"a":' + b"7" * (sys.get_int_max_str_digits() + 1) + b"}}\n",
            "request: digits in a number over the limit",
        ),
    ],
)
async def test_a_request_over_a_bound_is_answered_and_the_server_keeps_serving(
    server: ControlServer, backend: RecordingBackend, payload: bytes, needle: str
) -> None:
    with structlog.testing.capture_logs() as logs:
        reply = await raw_exchange(server.path, payload)
    assert reply["ok"] is False
    assert reply["code"] == "bad_request"
    assert needle in reply["error"]
    assert not [entry for entry in logs if entry["log_level"] == "error"]  # no traceback in the daemon's log
    assert backend.calls == []
    assert await request(server.path, "status", {}) == STATUS


# --------------------------------------------------------------------------------------------- fuzz


@pytest.fixture
def threaded_server(sock_path: Path) -> Iterator[Path]:
    """A server on its own loop in a thread, so hypothesis's synchronous examples can talk to it with plain sockets."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async with ControlServer(sock_path, RecordingBackend()):
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield sock_path
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def exchange(path: Path, payload: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        with contextlib.suppress(ConnectionError):
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # a payload without a newline is answered at EOF
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, f"no reply to {payload[:80]!r}"
            reply += chunk
    answer: dict[str, Any] = json.loads(reply)
    return answer


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)


def nested(depth: int, opener: str) -> bytes:
    closer = {"[": "]", "{": "}"}[opener]
    inner = '{"a":' * depth + "1" + "}" * depth if opener == "{" else opener * depth + closer * depth
    return f'{{"cmd":"status","args":{{"x":{inner}}}}}'.encode()


REQUESTS = st.one_of(
    st.binary(max_size=2000),
    st.builds(lambda cmd, args: json.dumps({"cmd": cmd, "args": args}).encode(), st.sampled_from(["status", "drill", "x"]), JSON),
    st.builds(nested, st.integers(1, 20_000), st.sampled_from("[{")),
    st.text(alphabet='[]{},"\\:1 ', max_size=3000).map(str.encode),
).map(lambda body: body + b"\n")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(REQUESTS)
def test_fuzz_every_request_gets_a_reply_and_the_server_keeps_serving(threaded_server: Path, payload: bytes) -> None:
    with structlog.testing.capture_logs() as logs:
        reply = exchange(threaded_server, payload)
        assert isinstance(reply["ok"], bool)
        assert exchange(threaded_server, b'{"cmd":"status"}\n') == {"ok": True, "result": STATUS}
    assert not [entry for entry in logs if entry["log_level"] == "error"]
