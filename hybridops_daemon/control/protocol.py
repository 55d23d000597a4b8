"""Wire format of the control socket, shared by the server and ``hyopsctl``.

One request per connection: the client writes one line of UTF-8 JSON ``{"cmd": "<name>", "args": {...}}`` ending
in ``\\n``; the server answers one line, ``{"ok": true, "result": <json>}`` or ``{"ok": false, "code": "<code>",
"error": "<message>"}``, and closes. Requests are validated here in full, so anything that reaches the daemon is
well-formed. Nothing in this module touches a socket except ``peer_credentials``.
"""

from __future__ import annotations

import json
import pwd
import re
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from hybridops_daemon import limits

MAX_REQUEST_BYTES: Final = limits.CONTROL_REQUEST.max_bytes  # without the newline
_MAX_MESSAGE_CHARS = 300
_UCRED = struct.Struct("iII")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}, same size as "3i"
_LANE = re.compile(r"[a-z][a-z0-9_-]{0,62}")


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    REFUSED = "refused"
    NOT_FOUND = "not_found"
    UNCONFIRMED = "unconfirmed"
    INTERNAL = "internal"


class ControlError(Exception):
    """A request answered with an error reply. The message is shown to the operator as is: one line, no internals."""

    code: ClassVar[ErrorCode]


class BadRequest(ControlError):
    code = ErrorCode.BAD_REQUEST


class CommandRefused(ControlError):
    """Raised by the backend to refuse a well-formed command (wrong state, cooldown, approval expired...)."""

    code = ErrorCode.REFUSED


class Unconfirmed(ControlError):
    """The command was decided but its outcome is not known yet (a run not yet in the lane's handover): look before
    asking again."""

    code = ErrorCode.UNCONFIRMED


class NotFound(ControlError):
    """Raised by the backend for an unknown lane, run or approval step."""

    code = ErrorCode.NOT_FOUND


# --------------------------------------------------------------------------------------------- requests


def _lane_name(value: str) -> str:
    # fullmatch, not a "^...$" pattern: "$" would let a trailing newline through
    if not _LANE.fullmatch(value):
        raise ValueError("must be a lane name: a lowercase letter, then up to 62 of a-z 0-9 _ -")
    return value


LaneName = Annotated[str, AfterValidator(_lane_name)]
# run ids and step names are minted by the chain runner; bound them and keep control characters out of logs
Token = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


class Args(BaseModel):
    # strict: a JSON "true" string or 1 is not a confirmation, "20" is not a limit
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class StatusArgs(Args):
    pass


class DrillArgs(Args):
    lane: LaneName


class CutoverArgs(Args):
    lane: LaneName
    confirm: bool = False

    @model_validator(mode="after")
    def _confirmed(self) -> CutoverArgs:
        if not self.confirm:
            raise ValueError("cutover needs --confirm")
        return self


class FailbackArgs(Args):
    lane: LaneName


class PauseArgs(Args):
    lane: LaneName | None = None  # None: every lane


class ResumeArgs(Args):
    lane: LaneName | None = None  # None: every lane


class ReadyArgs(Args):
    lane: LaneName | None = None  # None: every lane


class TeardownArgs(Args):
    lane: LaneName


class RunAbandonArgs(Args):
    run_id: Token
    reason: Annotated[str, Field(min_length=3, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$")]


class ApproveArgs(Args):
    run_id: Token
    step: Token


class RejectArgs(Args):
    run_id: Token
    step: Token


class JournalListArgs(Args):
    lane: LaneName | None = None
    limit: int = Field(default=20, ge=1, le=1000)


class JournalShowArgs(Args):
    run_id: Token


class JournalVerifyArgs(Args):
    pass


class JournalRunRecordsArgs(Args):
    run_id: Token


COMMANDS: Final[Mapping[str, type[Args]]] = {
    "status": StatusArgs,
    "drill": DrillArgs,
    "cutover": CutoverArgs,
    "failback": FailbackArgs,
    "pause": PauseArgs,
    "resume": ResumeArgs,
    "teardown": TeardownArgs,
    "ready": ReadyArgs,
    "run_abandon": RunAbandonArgs,
    "approve": ApproveArgs,
    "reject": RejectArgs,
    "journal_list": JournalListArgs,
    "journal_show": JournalShowArgs,
    "journal_verify": JournalVerifyArgs,
    "journal_run_records": JournalRunRecordsArgs,
}
MUTATING: Final = frozenset(
    {"drill", "cutover", "failback", "pause", "resume", "teardown", "run_abandon", "approve", "reject"}
)


@dataclass(frozen=True, slots=True)
class Request:
    cmd: str
    args: Args


def one_line(text: str) -> str:
    """Collapse whitespace (a newline in a key name, say) and bound the length of an operator-facing message."""
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_MESSAGE_CHARS else flat[: _MAX_MESSAGE_CHARS - 1] + "…"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        ctx = err.get("ctx", {})
        # our own validators' ValueError text is written for operators; pydantic would prefix "Value error, "
        msg = str(ctx["error"]) if err["type"] == "value_error" and "error" in ctx else err["msg"]
        loc = ".".join(str(part) for part in err["loc"])
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_request(line: bytes) -> Request:
    """Decode and validate one request line. Raises BadRequest with an operator-facing message."""
    try:
        data = limits.loads(line.removesuffix(b"\n"), limits.CONTROL_REQUEST, "request")
    except limits.InputRejected as exc:
        raise BadRequest(str(exc)) from None
    except UnicodeDecodeError:
        raise BadRequest("request is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"request is not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cmd"), str):
        raise BadRequest('request must be a JSON object {"cmd": "<name>", "args": {...}}')
    if unexpected := sorted(set(data) - {"cmd", "args"}):
        raise BadRequest(f"unexpected request keys: {', '.join(unexpected)}")
    cmd: str = data["cmd"]
    model = COMMANDS.get(cmd)
    if model is None:
        raise BadRequest(f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise BadRequest("args must be a JSON object")
    try:
        return Request(cmd, model.model_validate(args))
    except ValidationError as exc:
        raise BadRequest(_describe(exc)) from None


def encode_request(cmd: str, args: Mapping[str, Any]) -> bytes:
    return json.dumps({"cmd": cmd, "args": dict(args)}, separators=(",", ":")).encode() + b"\n"


def encode_result(result: Any) -> bytes:
    """Raises TypeError/ValueError if ``result`` is not JSON-serialisable (a backend bug, answered as internal)."""
    return json.dumps({"ok": True, "result": result}, separators=(",", ":")).encode() + b"\n"


def encode_error(code: ErrorCode, message: str) -> bytes:
    reply = {"ok": False, "code": code.value, "error": one_line(message)}
    return json.dumps(reply, separators=(",", ":")).encode() + b"\n"


# --------------------------------------------------------------------------------------------- actor


@dataclass(frozen=True, slots=True)
class Actor:
    """Who sent a request, from the kernel (SO_PEERCRED), not from anything the client claims."""

    uid: int
    gid: int
    pid: int
    user: str

    def __str__(self) -> str:
        return f"uid={self.uid}({self.user}) pid={self.pid}"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a connected Unix socket (Linux)."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid, gid


def user_name(uid: int) -> str:
    """The passwd name for ``uid``, or the number itself when there is no entry (a container's uid, say)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
