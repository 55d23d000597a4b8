"""``hyopsctl`` as a process: every way of not reaching the daemon is exit 3 and one line saying what to check, a
closed stdout ends quietly, and never a traceback. Also what ``pause``/``resume`` print for every lane."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hybridops_daemon.control.protocol import CommandRefused
from tests.unit.test_control import RecordingBackend
from tests.unit.test_ctl_cli import ctl, quiet_server  # noqa: F401  (autouse: the server's log off hyopsctl's stdout)

REPO = Path(__file__).resolve().parents[2]
ENTRY = "import sys; from hybridops_daemon.cli.ctl import main; sys.exit(main())"


async def hyopsctl(*argv: str, stdout: int = asyncio.subprocess.PIPE) -> tuple[int, str, str]:
    """Run hyopsctl as its console script does, in a child process; the test's loop keeps serving meanwhile."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ENTRY, *argv, stdout=stdout, stderr=asyncio.subprocess.PIPE, env=env
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, (out or b"").decode(), err.decode()


def one_line_without_traceback(err: str) -> str:
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith("hyopsctl: ")
    return err


async def test_a_missing_socket_exits_3_with_one_line(sock_path: Path) -> None:
    code, _, err = await hyopsctl("--socket", str(sock_path), "status")
    assert code == 3
    assert "does not appear to be running" in one_line_without_traceback(err)


async def test_a_refused_connection_exits_3_with_one_line(sock_path: Path) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()
    code, _, err = await hyopsctl("--socket", str(sock_path), "status")
    assert code == 3
    assert "connection refused" in one_line_without_traceback(err)


@pytest.fixture
def full_backlog(sock_path: Path) -> Iterator[Path]:
    """A socket that listens and never accepts, its accept queue filled: connect() fails with EAGAIN."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(0)
    queued: list[socket.socket] = []
    try:
        while True:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            try:
                client.connect(str(sock_path))
            except BlockingIOError:
                client.close()
                break
            queued.append(client)
        yield sock_path
    finally:
        for client in queued:
            client.close()
        listener.close()


async def test_a_full_backlog_exits_3_naming_it(full_backlog: Path) -> None:
    code, _, err = await hyopsctl("--socket", str(full_backlog), "--timeout", "5", "status")
    assert code == 3
    assert "backlog full" in one_line_without_traceback(err)


async def test_a_daemon_that_never_answers_exits_3_with_one_line(sock_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(8)  # queued by the kernel, never accepted, never answered
    try:
        code, _, err = await hyopsctl("--socket", str(sock_path), "--timeout", "0.3", "status")
    finally:
        listener.close()
    assert code == 3
    assert "within 0.3s" in one_line_without_traceback(err)


async def test_a_closed_stdout_ends_quietly(served: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `hyopsctl journal list | head -1` once head has exited
    try:
        code, _, err = await hyopsctl("--socket", str(served), "journal", "list", stdout=write_end)
    finally:
        os.close(write_end)
    assert (code, err) == (141, "")


# --------------------------------------------------------------------------------------------- pause/resume output

REFUSED_RESUME = {"kind": "refuse", "reason": "resume refused: lane is PRIMARY, not paused", "status_after": "PRIMARY"}


async def test_a_policy_refusal_is_said_once(served: Path, backend: RecordingBackend, capsys: pytest.CaptureFixture[str]) -> None:
    backend.decision = {**REFUSED_RESUME, "run_id": None}
    assert await ctl("--socket", str(served), "resume", "--lane", "prod") == 1
    assert capsys.readouterr().out == "resume refused (intent #42): lane is PRIMARY, not paused\n"


async def test_resume_of_every_lane_says_what_happened_on_each(
    served: Path, backend: RecordingBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    backend.decision = {**REFUSED_RESUME, "run_id": None}  # the last lane's, as the daemon answers
    backend.decisions = [
        {"lane": "prod", "kind": "hold", "reason": "resumed by uid=0(root) pid=1; lane is ON_STANDBY"},
        {"lane": "drill", **REFUSED_RESUME},
    ]
    assert await ctl("--socket", str(served), "resume") == 0  # prod was resumed: not a refusal
    assert capsys.readouterr().out.splitlines() == [
        "resume accepted on lane prod: resumed by uid=0(root) pid=1; lane is ON_STANDBY",
        "resume refused on lane drill: lane is PRIMARY, not paused",
    ]


async def test_a_refusal_the_daemon_raises_says_refused_once(
    served: Path, backend: RecordingBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    backend.error = CommandRefused("resume refused: lane is PRIMARY, not paused")  # every lane refused it
    assert await ctl("--socket", str(served), "resume", "--lane", "prod") == 1
    assert capsys.readouterr().err == "hyopsctl: resume refused: lane is PRIMARY, not paused\n"
    backend.error = CommandRefused("drill needs --lane")
    assert await ctl("--socket", str(served), "drill", "--lane", "prod") == 1
    assert capsys.readouterr().err == "hyopsctl: refused: drill needs --lane\n"


async def test_a_deeply_nested_reply_is_a_protocol_error_not_a_traceback(sock_path: Path) -> None:
    async def nested(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b'{"ok": true, "result": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")
        await writer.drain()
        writer.close()

    async with await asyncio.start_unix_server(nested, path=str(sock_path)):
        code, _, err = await hyopsctl("--socket", str(sock_path), "status")
    assert code == 1
    assert "the daemon's reply: nesting depth over the limit of 32" in one_line_without_traceback(err)
