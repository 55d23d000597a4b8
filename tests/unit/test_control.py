"""The control socket over real Unix sockets: round trips, validation, errors, permissions, lifecycle, client errors.

The backend is this file's own recording double for the daemon: the server's job ends at handing it a valid call.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import structlog

from hybridops_daemon.control import server as server_module
from hybridops_daemon.control.client import DaemonNotRunning, DaemonRefused, DaemonTimeout, request
from hybridops_daemon.control.protocol import COMMANDS, MAX_REQUEST_BYTES, Actor, CommandRefused, NotFound
from hybridops_daemon.control.server import ControlServer, ControlSocketError
from hybridops_daemon.policy.types import Command

STATUS: dict[str, Any] = {
    "node": "edge01",
    "lease": "etcd",
    "lanes": [
        {
            "lane": "prod",
            "status": "PRIMARY",
            "since": 1_000.0,
            "profile": "prod@v3",
            "active_run": None,
            "paused_by": None,
            "last_decision": {"kind": "hold", "reason": "all signals healthy", "at": 1_900.0},
            "leadership": {"leading": True, "situation": "leading", "holder": "edge01", "fencing_token": 7, "reason": ""},
        },
        {
            "lane": "drill",
            "status": "PAUSED",
            "since": 1_500.0,
            "profile": "drill@v1",
            "active_run": None,
            "paused_by": "uid=0(root) pid=4242",
            "last_decision": None,
            "leadership": {
                "leading": False,
                "situation": "no quorum",
                "holder": None,
                "fencing_token": 5,
                "reason": "cannot campaign: no answer from etcd within 1s (no quorum?)",
            },
        },
    ],
    "pending_approvals": [{"run_id": "cutover-1", "step": "promote-db", "lane": "prod", "since": 1_950.0, "expires_at": 2_100.0}],
}
RUNS = [
    {
        "run_id": "drill-20261127T120000-1",
        "lane": "drill",
        "kind": "drill",
        "chain": "cutover",
        "trigger": "operator",
        "actor": "uid=0(root) pid=4242",
        "started_at": 1_795_780_800.0,
        "ended_at": 1_795_780_842.5,
        "status": "succeeded",
        "reason": "operator drill on lane drill",
        "outcome": "cutover chain completed: 4 steps",
    }
]
RECORDS = [
    {
        "seq": 7,
        "ts": 1_795_780_800.0,
        "lane": "drill",
        "run_id": "drill-20261127T120000-1",
        "kind": "run.start",
        "body": {"run_id": "drill-20261127T120000-1", "lane": "drill", "reason": "operator drill", "steps": ["fip"]},
        "prev_hash": "0" * 64,
        "hash": "a" * 64,
    },
    {
        "seq": 8,
        "ts": 1_795_780_801.0,
        "lane": "drill",
        "run_id": "drill-20261127T120000-1",
        "kind": "step.done",
        "body": {"step": "fip", "outcome": "applied", "outputs": {"ip": "192.0.2.1"}},
        "prev_hash": "a" * 64,
        "hash": "b" * 64,
    },
]
VERIFY = {"ok": True, "count": 8, "head_seq": 8, "head_hash": "b" * 64, "problems": []}


class RecordingBackend:
    """Records every call; ``error`` makes the next calls raise; ``delay`` makes them slow."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.actors: list[Actor] = []
        self.error: BaseException | None = None
        self.delay = 0.0
        self.decision: dict[str, Any] | None = {
            "kind": "drill",
            "reason": "operator drill on lane drill",
            "status_after": "CUTTING_OVER",
            "run_id": "drill-20261127T120000-1",
        }
        self.verify: dict[str, Any] = VERIFY
        self.decisions: list[dict[str, Any]] | None = None  # per lane, as the daemon answers pause/resume of every lane
        self.entered = asyncio.Event()

    async def _called(self, *call: Any) -> None:
        self.calls.append(call)
        self.entered.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error

    async def status(self) -> dict[str, Any]:
        await self._called("status")
        return STATUS

    async def submit(self, command: str, lane: str | None, actor: Actor) -> dict[str, Any]:
        self.actors.append(actor)
        await self._called("submit", command, lane)
        result: dict[str, Any] = {"intent_id": 42, "decision": self.decision}
        if self.decisions is not None:
            result["decisions"] = self.decisions
        return result

    async def approval(self, run_id: str, step: str, approve: bool, actor: Actor) -> dict[str, Any]:
        self.actors.append(actor)
        await self._called("approval", run_id, step, approve)
        return {"run_id": run_id, "step": step, "lane": "prod", "approved": approve}

    async def journal_list(self, lane: str | None, limit: int) -> list[dict[str, Any]]:
        await self._called("journal_list", lane, limit)
        return RUNS

    async def journal_show(self, run_id: str) -> list[dict[str, Any]]:
        await self._called("journal_show", run_id)
        return RECORDS

    async def journal_verify(self) -> dict[str, Any]:
        await self._called("journal_verify")
        return self.verify

    async def ready(self, lane: str | None) -> list[dict[str, Any]]:
        await self._called("ready", lane)
        return [{"lane": lane or "prod", "skipped": None, "steps": []}]

    async def abandon(self, run_id: str, reason: str, actor: Actor) -> dict[str, Any]:
        self.actors.append(actor)
        await self._called("abandon", run_id, reason)
        return {"run_id": run_id, "lane": "gone", "seq": 7}


def present(path: Path) -> bool:
    return os.path.lexists(path)


async def raw_exchange(path: Path, payload: bytes, *, half_close: bool = False) -> dict[str, Any]:
    """Send bytes as they are and return the decoded reply line."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(payload)
            await writer.drain()
            if half_close:
                writer.write_eof()
        async with asyncio.timeout(5):
            line = await reader.readuntil(b"\n")
        reply: dict[str, Any] = json.loads(line)
        return reply
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# --------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("cmd", "args", "call", "result"),
    [
        ("status", {}, ("status",), STATUS),
        ("drill", {"lane": "drill"}, ("submit", "drill", "drill"), None),
        ("cutover", {"lane": "prod", "confirm": True}, ("submit", "cutover", "prod"), None),
        ("failback", {"lane": "prod"}, ("submit", "failback", "prod"), None),
        ("pause", {"lane": "prod"}, ("submit", "pause", "prod"), None),
        ("pause", {}, ("submit", "pause", None), None),
        ("resume", {"lane": None}, ("submit", "resume", None), None),
        ("approve", {"run_id": "cutover-1", "step": "promote-db"}, ("approval", "cutover-1", "promote-db", True), None),
        ("reject", {"run_id": "cutover-1", "step": "promote-db"}, ("approval", "cutover-1", "promote-db", False), None),
        ("journal_list", {}, ("journal_list", None, 20), RUNS),
        ("journal_list", {"lane": "drill", "limit": 1000}, ("journal_list", "drill", 1000), RUNS),
        ("journal_show", {"run_id": "drill-20261127T120000-1"}, ("journal_show", "drill-20261127T120000-1"), RECORDS),
        ("journal_run_records", {"run_id": "r-1"}, ("journal_show", "r-1"), RECORDS),
        ("journal_verify", {}, ("journal_verify",), VERIFY),
    ],
)
async def test_each_command_reaches_the_backend_through_a_real_socket(
    server: ControlServer,
    backend: RecordingBackend,
    cmd: str,
    args: dict[str, Any],
    call: tuple[Any, ...],
    result: Any,
) -> None:
    answer = await request(server.path, cmd, args)
    assert backend.calls == [call]
    if result is not None:
        assert answer == result


async def test_the_backend_sees_the_kernel_verified_actor(server: ControlServer, backend: RecordingBackend) -> None:
    await request(server.path, "drill", {"lane": "drill"})
    (actor,) = backend.actors
    assert (actor.uid, actor.gid, actor.pid) == (os.getuid(), os.getgid(), os.getpid())
    assert actor.user == pwd.getpwuid(os.getuid()).pw_name
    assert str(actor) == f"uid={os.getuid()}({actor.user}) pid={os.getpid()}"


async def test_only_commands_that_change_something_look_the_user_up(
    server: ControlServer, backend: RecordingBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read's actor only reaches the log; the NSS lookup (a thread hop each) would queue a burst of status polls."""
    looked_up: list[int] = []

    def user_name(uid: int) -> str:
        looked_up.append(uid)
        return "someone"

    monkeypatch.setattr(server_module, "user_name", user_name)
    with structlog.testing.capture_logs() as logs:
        assert await request(server.path, "status", {}) == STATUS
    assert looked_up == []
    (done,) = [entry for entry in logs if entry["event"] == "control request done"]
    assert done["actor"] == f"uid={os.getuid()} pid={os.getpid()}"
    await request(server.path, "drill", {"lane": "drill"})
    assert looked_up == [os.getuid()]
    assert backend.actors[-1].user == "someone"


EXAMPLE_ARGS: dict[str, dict[str, Any]] = {
    "status": {},
    "drill": {"lane": "drill"},
    "cutover": {"lane": "prod", "confirm": True},
    "failback": {"lane": "prod"},
    "pause": {},
    "resume": {"lane": "prod"},
    "teardown": {"lane": "drill"},
    "ready": {},
    "run_abandon": {"run_id": "gone-1", "reason": "lane removed"},
    "approve": {"run_id": "r", "step": "s"},
    "reject": {"run_id": "r", "step": "s"},
    "journal_list": {},
    "journal_show": {"run_id": "r"},
    "journal_verify": {},
    "journal_run_records": {"run_id": "r"},
}


async def test_every_command_reaches_the_backend(server: ControlServer, backend: RecordingBackend) -> None:
    """A command the protocol accepts but the server does not route (a read routed as a change, say) answers
    `internal`: each one is sent once and must get the backend's answer."""
    assert set(EXAMPLE_ARGS) == set(COMMANDS)
    for cmd, args in EXAMPLE_ARGS.items():
        await request(server.path, cmd, args)
    assert len(backend.calls) == len(COMMANDS)


def test_submit_commands_are_the_policy_commands() -> None:
    """The server passes command names as strings; they must stay the ones the daemon's policy knows."""
    assert {"drill", "cutover", "failback", "pause", "resume", "teardown"} == {c.value for c in Command}


# --------------------------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"not json\n", "not JSON"),
        (b"\xff\xfe\n", "not UTF-8"),
        (b"[1, 2]\n", "JSON object"),
        (b'{"args": {}}\n', "JSON object"),
        (b'{"cmd": "status", "extra": 1}\n', "unexpected request keys: extra"),
        (b'{"cmd": "selfdestruct"}\n', "unknown command 'selfdestruct'"),
        (b'{"cmd": "status", "args": []}\n', "args must be a JSON object"),
        (b'{"cmd": "status", "args": {"verbose": true}}\n', "verbose: Extra inputs are not permitted"),
        (b'{"cmd": "drill", "args": {}}\n', "lane: Field required"),
        (b'{"cmd": "drill", "args": {"lane": "Prod"}}\n', "lane: must be a lane name"),
        (b'{"cmd": "drill", "args": {"lane": "prod\\n"}}\n', "lane: must be a lane name"),
        (b'{"cmd": "drill", "args": {"lane": "' + b"a" * 64 + b'"}}\n', "lane: must be a lane name"),
        (b'{"cmd": "drill", "args": {"lane": 7}}\n', "lane: Input should be a valid string"),
        (b'{"cmd": "cutover", "args": {"lane": "prod", "confirm": "yes"}}\n', "confirm: Input should be a valid"),
        (b'{"cmd": "journal_list", "args": {"limit": 0}}\n', "limit: Input should be greater than or equal to 1"),
        (b'{"cmd": "journal_list", "args": {"limit": 1001}}\n', "limit: Input should be less than or equal to 1000"),
        (b'{"cmd": "journal_list", "args": {"limit": "20"}}\n', "limit: Input should be a valid integer"),
        (b'{"cmd": "approve", "args": {"run_id": "", "step": "s"}}\n', "run_id: String should have at least 1"),
        (b'{"cmd": "approve", "args": {"run_id": "r\\u0007", "step": "s"}}\n', "run_id: String should match"),
    ],
)
async def test_malformed_requests_get_bad_request_and_never_reach_the_backend(
    server: ControlServer, backend: RecordingBackend, payload: bytes, needle: str
) -> None:
    reply = await raw_exchange(server.path, payload)
    assert reply["ok"] is False
    assert reply["code"] == "bad_request"
    assert needle in reply["error"]
    assert "\n" not in reply["error"]
    assert backend.calls == []


@pytest.mark.parametrize("args", [{"lane": "prod"}, {"lane": "prod", "confirm": False}])
async def test_cutover_without_confirm_is_a_bad_request(
    server: ControlServer, backend: RecordingBackend, args: dict[str, Any]
) -> None:
    with pytest.raises(DaemonRefused) as refused:
        await request(server.path, "cutover", args)
    assert (refused.value.code, refused.value.message) == ("bad_request", "cutover needs --confirm")
    assert backend.calls == []


@pytest.mark.parametrize("size", [MAX_REQUEST_BYTES + 2, 70 * 1024, 1024 * 1024])
async def test_an_oversized_request_is_refused_unread(server: ControlServer, backend: RecordingBackend, size: int) -> None:
    prefix = b'{"cmd": "drill", "args": {"lane": "'
    payload = prefix + b"a" * (size - len(prefix) - 4) + b'"}}\n'
    assert len(payload) == size
    reply = await raw_exchange(server.path, payload)
    assert reply == {"ok": False, "code": "bad_request", "error": f"request larger than {MAX_REQUEST_BYTES} bytes"}
    assert backend.calls == []
    assert await request(server.path, "status", {}) == STATUS  # the server is unharmed


async def test_a_request_of_exactly_the_limit_is_read(server: ControlServer, backend: RecordingBackend) -> None:
    prefix = b'{"cmd": "status", "args": {}}'
    payload = prefix + b" " * (MAX_REQUEST_BYTES - len(prefix)) + b"\n"
    reply = await raw_exchange(server.path, payload)
    assert reply["ok"] is True
    assert backend.calls == [("status",)]


async def test_a_request_without_newline_is_a_bad_request(server: ControlServer, backend: RecordingBackend) -> None:
    reply = await raw_exchange(server.path, b'{"cmd": "status"}', half_close=True)
    assert reply["code"] == "bad_request"
    assert "newline" in reply["error"]
    assert backend.calls == []


async def test_a_silent_client_is_answered_after_the_read_timeout(
    server: ControlServer, backend: RecordingBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "READ_TIMEOUT_S", 0.1)
    reply = await raw_exchange(server.path, b'{"cmd": ')
    assert reply["code"] == "bad_request"
    assert "no complete request line within 0.1s" in reply["error"]
    assert backend.calls == []


# --------------------------------------------------------------------------------------------- backend errors


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (CommandRefused("lane prod is in cooldown for 4m"), "refused", "lane prod is in cooldown for 4m"),
        (NotFound("no lane named staging"), "not_found", "no lane named staging"),
    ],
)
async def test_backend_refusals_reach_the_client_with_their_message(
    server: ControlServer, backend: RecordingBackend, error: Exception, code: str, message: str
) -> None:
    backend.error = error
    with pytest.raises(DaemonRefused) as refused:
        await request(server.path, "drill", {"lane": "prod"})
    assert (refused.value.code, refused.value.message) == (code, message)


@pytest.mark.parametrize("error", [RuntimeError("password=hunter2 in /etc/secret"), TimeoutError("db lock hunter2")])
async def test_an_unexpected_backend_error_is_internal_and_leaks_nothing(
    server: ControlServer, backend: RecordingBackend, error: Exception
) -> None:
    backend.error = error
    with structlog.testing.capture_logs() as logs, pytest.raises(DaemonRefused) as refused:
        await request(server.path, "status", {})
    assert refused.value.code == "internal"
    assert refused.value.message == "internal error in the daemon; see its log"
    (failure,) = [entry for entry in logs if entry["log_level"] == "error"]
    assert failure["event"] == "control request failed"
    assert failure["cmd"] == "status"
    assert failure["exc_info"] is True
    backend.error = None
    assert await request(server.path, "status", {}) == STATUS  # the handler failed, the server did not


async def test_a_result_that_is_not_json_is_internal(server: ControlServer, backend: RecordingBackend) -> None:
    backend.verify = {"ok": object()}
    with pytest.raises(DaemonRefused) as refused:
        await request(server.path, "journal_verify", {})
    assert refused.value.code == "internal"


async def test_a_backend_slower_than_the_request_timeout_is_answered(sock_path: Path, backend: RecordingBackend) -> None:
    backend.delay = 5.0
    async with ControlServer(sock_path, backend, request_timeout=0.1):
        with pytest.raises(DaemonRefused) as refused:
            await request(sock_path, "drill", {"lane": "prod"})
    assert refused.value.code == "internal"
    assert "did not finish drill within 0.1s" in refused.value.message


# --------------------------------------------------------------------------------------------- socket file


async def test_the_socket_is_mode_0660(server: ControlServer) -> None:
    st = os.stat(server.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


async def test_the_socket_is_given_to_the_group(sock_path: Path, backend: RecordingBackend) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    async with ControlServer(sock_path, backend, group=group):
        st = os.stat(sock_path)
        assert st.st_gid == os.getgid()
        assert stat.S_IMODE(st.st_mode) == 0o660


async def test_an_unknown_group_is_a_clear_error(sock_path: Path, backend: RecordingBackend) -> None:
    with pytest.raises(ControlSocketError, match="unknown group 'no-such-group-hyops' for the control socket"):
        async with ControlServer(sock_path, backend, group="no-such-group-hyops"):
            pass
    assert not present(sock_path)


async def test_the_socket_file_is_removed_on_exit(sock_path: Path, backend: RecordingBackend) -> None:
    async with ControlServer(sock_path, backend):
        assert present(sock_path)
    assert not present(sock_path)


async def test_a_second_server_on_a_live_socket_refuses_to_start(server: ControlServer, backend: RecordingBackend) -> None:
    with pytest.raises(ControlSocketError, match=f"another daemon is listening on {server.path}"):
        async with ControlServer(server.path, RecordingBackend()):
            pass
    assert await request(server.path, "status", {}) == STATUS  # the first one still owns its socket
    assert backend.calls == [("status",)]  # the liveness probe is not a request


async def test_a_stale_socket_file_is_replaced(sock_path: Path, backend: RecordingBackend) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()  # what a crashed daemon leaves behind: the file, nobody listening
    async with ControlServer(sock_path, backend):
        assert await request(sock_path, "status", {}) == STATUS


async def test_a_path_that_is_not_a_socket_is_left_alone(sock_path: Path, backend: RecordingBackend) -> None:
    fd = os.open(sock_path, os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    with pytest.raises(ControlSocketError, match="exists and is not a socket"):
        async with ControlServer(sock_path, backend):
            pass
    assert stat.S_ISREG(os.stat(sock_path).st_mode)


async def test_a_missing_directory_is_a_clear_error(sock_path: Path, backend: RecordingBackend) -> None:
    path = sock_path.parent / "missing" / "ctl.sock"
    with pytest.raises(ControlSocketError, match=f"cannot set up the control socket {path}"):
        async with ControlServer(path, backend):
            pass


async def test_exit_lets_an_in_flight_request_finish(sock_path: Path, backend: RecordingBackend) -> None:
    backend.delay = 0.2
    async with ControlServer(sock_path, backend) as srv:
        pending = asyncio.create_task(request(sock_path, "drill", {"lane": "drill"}))
        await backend.entered.wait()
    assert not srv._handlers
    assert (await pending)["intent_id"] == 42


# --------------------------------------------------------------------------------------------- client errors


async def test_the_client_says_when_the_socket_is_missing(sock_path: Path) -> None:
    with pytest.raises(DaemonNotRunning, match=f"{sock_path} does not exist: the daemon does not appear to be running"):
        await request(sock_path, "status", {})


async def test_the_client_says_when_nobody_listens(sock_path: Path) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()
    with pytest.raises(DaemonNotRunning, match=f"nothing listens on {sock_path}"):
        await request(sock_path, "status", {})


async def test_the_client_times_out_on_a_daemon_that_never_answers(sock_path: Path) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()

    mute_server = await asyncio.start_unix_server(mute, path=str(sock_path))
    async with mute_server:
        with pytest.raises(DaemonTimeout, match=f"no answer from the daemon on {sock_path} within 0.2s"):
            await request(sock_path, "status", {}, timeout=0.2)
