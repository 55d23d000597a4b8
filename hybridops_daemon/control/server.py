"""The control socket's server side: accept, validate, hand to the backend, answer.

The server never acts itself. It turns one request line into one backend call and the call's return value into one
reply line; the backend (the daemon) records intent and wakes its loop. Access control is the socket file's owner,
group and mode (0660); the kernel-verified peer credentials are passed on as the ``Actor`` for the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import socket
import stat
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import structlog

from hybridops_daemon import cancel
from hybridops_daemon.control.protocol import (
    MAX_REQUEST_BYTES,
    MUTATING,
    Actor,
    ApproveArgs,
    Args,
    BadRequest,
    ControlError,
    CutoverArgs,
    DrillArgs,
    ErrorCode,
    FailbackArgs,
    JournalListArgs,
    JournalRunRecordsArgs,
    JournalShowArgs,
    JournalVerifyArgs,
    PauseArgs,
    ReadyArgs,
    RejectArgs,
    Request,
    ResumeArgs,
    RunAbandonArgs,
    StatusArgs,
    TeardownArgs,
    encode_error,
    encode_result,
    parse_request,
    peer_credentials,
    user_name,
)

_log = structlog.get_logger()

READ_TIMEOUT_S = 5.0  # a client that connects must send its line promptly; a stuck one must not hold a handler
_IO_TIMEOUT_S = 5.0  # writing the reply, closing, probing an existing socket
_USER_LOOKUP_TIMEOUT_S = 2.0  # NSS may be LDAP/sssd; a slow lookup falls back to the uid number
_SHUTDOWN_GRACE_S = 5.0  # in-flight requests get this long to finish on exit before they are cancelled
# asyncio's default of 100 makes a burst of clients (monitoring polling status from many hosts' agents at once) get
# EAGAIN and back off for 10 ms and more; the kernel caps this at net.core.somaxconn
_BACKLOG = 1024
_INTERNAL_MESSAGE = "internal error in the daemon; see its log"


class ControlSocketError(Exception):
    """The control socket could not be set up (another daemon on it, unknown group, unusable path)."""


class ControlBackend(Protocol):
    """What the daemon implements for the control socket. Every method returns JSON-serialisable data.

    Methods raise ``CommandRefused`` (reply code ``refused``) or ``NotFound`` (``not_found``) with a one-line
    operator-facing message; anything else is logged and answered as ``internal`` without detail. Times are epoch
    seconds (float). Actors are recorded as ``str(actor)``, e.g. ``uid=0(root) pid=4242``.
    """

    async def status(self) -> dict[str, Any]:
        """Node and lane overview. Times are epoch seconds; ``last_decision`` and ``expires_at`` may be None.

        {"node": "edge01",
        "lanes": [{"lane": "prod", "status": "PRIMARY", "since": 1795780800.0, "profile": "prod@v3",
        "active_run": "cutover-20261127T120000-3" | None, "paused_by": "uid=0(root) pid=4242" | None,
        "last_decision": {"kind": "hold", "reason": "...", "at": 1795780800.0} | None}],
        "pending_approvals": [{"run_id": "...", "step": "...", "lane": "prod", "since": 1795780800.0,
        "expires_at": 1795781100.0 | None}]}
        """
        ...

    async def submit(self, command: str, lane: str | None, actor: Actor) -> dict[str, Any]:
        """Record an operator intent: ``command`` is drill, cutover, failback, pause, resume or teardown.

        ``lane`` is None only for pause/resume, meaning every lane (one intent). Returns
        {"intent_id": 42, "decision": {"kind": "drill", "reason": "...", "status_after": "CUTTING_OVER",
        "run_id": "drill-20261127T120000-1" | None} | None}.

        ``decision`` is the loop's decision on this intent if it was taken before the call returned, else None
        (the loop will act on it). A policy refusal is a decision of kind ``refuse``, not an exception; raise
        CommandRefused only when the intent itself cannot be recorded, NotFound for an unknown lane.
        """
        ...

    async def ready(self, lane: str | None) -> list[dict[str, Any]]:
        """Run the preflights of one lane (or every lane) now, read-only: ``[{"lane", "skipped": why none ran (a
        chain is running) | None, "steps": [{"chain", "step", "state": "ready"|"not ready"|"not checked", "reason",
        "checked_at", "duration_s", "observed", "metrics"}]}]``. NotFound for an unknown lane."""
        ...

    async def abandon(self, run_id: str, reason: str, actor: Actor) -> dict[str, Any]:
        """End an orphaned run (unfinished, and no lane of this node works on it) with a journaled ``run.end``, so
        that it no longer holds retention or waits to be resumed. Privileged: root or the daemon's own user, else
        CommandRefused; NotFound for a run the journal does not hold; CommandRefused for one that has ended or that
        a lane still runs. Returns ``{"run_id": ..., "lane": ... | None, "seq": <the run.end record>}``.
        """
        ...

    async def approval(self, run_id: str, step: str, approve: bool, actor: Actor) -> dict[str, Any]:
        """Approve or reject a step waiting for approval. Returns
        ``{"run_id": ..., "step": ..., "lane": ..., "approved": bool}``. NotFound if no such pending step,
        CommandRefused if it was already decided or has expired.
        """
        ...

    async def journal_list(self, lane: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest runs first: ``[{"run_id", "lane", "kind", "chain", "trigger", "actor", "started_at",
        "ended_at" (None while running), "status" ("running"|"succeeded"|"failed"), "reason"}]``.
        """
        ...

    async def journal_show(self, run_id: str) -> list[dict[str, Any]]:
        """Every record of one run in seq order, whole (``journal.store.Record.to_dict``): ``[{"seq", "ts",
        "lane", "run_id", "kind", "body", "prev_hash", "hash"}]``. NotFound for an unknown run. Serves both
        ``journal_show`` and ``journal_run_records`` (the export), so it must not abbreviate anything.
        """
        ...

    async def journal_verify(self) -> dict[str, Any]:
        """``{"ok": bool, "count": int, "head_seq": int, "head_hash": str, "problems": [str, ...]}``."""
        ...


class ControlServer:
    """Serves the control socket at ``path`` while the context is entered."""

    def __init__(
        self,
        path: Path,
        backend: ControlBackend,
        *,
        group: str | None = None,
        mode: int = 0o660,
        request_timeout: float = 30.0,
    ) -> None:
        self._path = path
        self._backend = backend
        self._group = group
        self._mode = mode
        self._request_timeout = request_timeout
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def path(self) -> Path:
        return self._path

    async def __aenter__(self) -> ControlServer:
        gid = group_id(self._group) if self._group is not None else None
        await clear_stale_socket(self._path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # bind, set mode and group, and only then listen: until listen() every connect is refused, so there
            # is no window in which the socket is reachable with the umask's permissions
            try:
                sock.bind(str(self._path))
                self._inode = os.stat(self._path).st_ino
                os.chmod(self._path, self._mode)
                if gid is not None and os.stat(self._path).st_gid != gid:
                    os.chown(self._path, -1, gid)  # skipped when it already has the group: the unit's seccomp allows no chown
            except OSError as exc:
                raise ControlSocketError(f"cannot set up the control socket {self._path}: {exc.strerror or exc}") from exc
            self._server = await asyncio.start_unix_server(self._on_connect, sock=sock, limit=MAX_REQUEST_BYTES, backlog=_BACKLOG)
        except BaseException:
            sock.close()
            self._unlink()
            raise
        _log.info("control socket listening", path=str(self._path), mode=oct(self._mode), group=self._group)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        try:
            if self._handlers:
                _, pending = await asyncio.wait(set(self._handlers), timeout=_SHUTDOWN_GRACE_S)
                for task in pending:
                    task.cancel()
                if pending:
                    _log.warning("control requests cancelled at shutdown", count=len(pending))
                    await asyncio.wait(pending, timeout=_IO_TIMEOUT_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_IO_TIMEOUT_S):
                    await server.wait_closed()
        finally:
            self._unlink()

    def _unlink(self) -> None:
        """Remove the socket file, but only if it is still the one we bound (never a successor's)."""
        try:
            if self._inode is not None and os.lstat(self._path).st_ino == self._inode:
                self._path.unlink()
        except FileNotFoundError:
            pass
        self._inode = None

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # a plain callback that creates and keeps the task itself, so shutdown can wait for (or cancel) every handler
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._answer(reader, writer)
            if reply is not None:
                writer.write(reply)
                if writer.transport.get_write_buffer_size():  # a reply the socket took whole needs no drain and no timer
                    async with asyncio.timeout(_IO_TIMEOUT_S):
                        await writer.drain()
        except (ConnectionError, TimeoutError) as exc:
            _log.debug("control client went away", error=repr(exc))
        except Exception:
            cancel.raise_if_cancelled()  # as in _dispatch: a swallowed shutdown cancel is not a failed connection
            _log.exception("control connection failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(_IO_TIMEOUT_S):
                    await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
        """The reply for one connection, or None when there is nobody to answer."""
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None  # connected and left without a word: a liveness probe such as clear_stale_socket's
            return encode_error(ErrorCode.BAD_REQUEST, "request must be one line of JSON ending in a newline")
        except asyncio.LimitOverrunError:
            await _skip_line(reader)
            return encode_error(ErrorCode.BAD_REQUEST, f"request larger than {MAX_REQUEST_BYTES} bytes")
        except TimeoutError:
            return encode_error(ErrorCode.BAD_REQUEST, f"no complete request line within {READ_TIMEOUT_S:g}s")
        try:
            request = parse_request(line)
        except BadRequest as exc:
            _log.debug("control request rejected", error=str(exc))
            return encode_error(exc.code, str(exc))
        return await self._dispatch(request, writer)

    async def _dispatch(self, request: Request, writer: asyncio.StreamWriter) -> bytes:
        log = _log.bind(cmd=request.cmd)
        deadline = asyncio.timeout(self._request_timeout)
        try:
            if request.cmd in MUTATING:
                actor = await _actor(writer)
                log = log.bind(actor=str(actor))
                call = self._mutate(request.args, actor)
            else:
                # a read's actor only reaches the log: the kernel's word will do, without the user name's NSS lookup
                # and its hop to a thread, which a burst of status polls would queue behind the executor
                pid, uid, _ = peer_credentials(writer.get_extra_info("socket"))
                log = log.bind(actor=f"uid={uid} pid={pid}")
                call = self._read(request.args)
            async with deadline:
                result = await call
            reply = encode_result(result)
        except ControlError as exc:
            log.info("control request refused", code=exc.code.value, error=str(exc))
            return encode_error(exc.code, str(exc))
        except TimeoutError:
            if not deadline.expired():
                log.exception("control request failed")
                return encode_error(ErrorCode.INTERNAL, _INTERNAL_MESSAGE)
            log.warning("control request timed out", timeout_s=self._request_timeout)
            # a mutating command may have been recorded before the deadline: say so rather than invite a blind retry
            return encode_error(
                ErrorCode.INTERNAL,
                f"the daemon did not finish {request.cmd} within {self._request_timeout:g}s;"
                " check hyopsctl status before retrying",
            )
        except Exception:
            # A backend TaskGroup whose child failed as shutdown cancelled this handler raises the child's error, not
            # the cancel (Python 3.11): that is the shutdown, not a failed request.
            cancel.raise_if_cancelled()
            log.exception("control request failed")
            return encode_error(ErrorCode.INTERNAL, _INTERNAL_MESSAGE)
        # reads are polled by monitoring; only commands that change something are worth an info line each
        (log.info if request.cmd in MUTATING else log.debug)("control request done")
        return reply

    async def _read(self, args: Args) -> Any:
        backend = self._backend
        match args:
            case StatusArgs():
                return await backend.status()
            case JournalListArgs(lane=lane, limit=limit):
                return await backend.journal_list(lane, limit)
            case JournalShowArgs(run_id=run_id) | JournalRunRecordsArgs(run_id=run_id):
                return await backend.journal_show(run_id)
            case JournalVerifyArgs():
                return await backend.journal_verify()
            case ReadyArgs(lane=lane):  # runs the preflights, which only read
                return await backend.ready(lane)
        raise AssertionError(f"no backend read for {type(args).__name__}")

    async def _mutate(self, args: Args, actor: Actor) -> Any:
        backend = self._backend
        match args:
            case DrillArgs(lane=lane):
                return await backend.submit("drill", lane, actor)
            case CutoverArgs(lane=lane):
                return await backend.submit("cutover", lane, actor)
            case FailbackArgs(lane=lane):
                return await backend.submit("failback", lane, actor)
            case PauseArgs(lane=lane):
                return await backend.submit("pause", lane, actor)
            case ResumeArgs(lane=lane):
                return await backend.submit("resume", lane, actor)
            case TeardownArgs(lane=lane):
                return await backend.submit("teardown", lane, actor)
            case RunAbandonArgs(run_id=run_id, reason=reason):
                return await backend.abandon(run_id, reason, actor)
            case ApproveArgs(run_id=run_id, step=step):
                return await backend.approval(run_id, step, True, actor)
            case RejectArgs(run_id=run_id, step=step):
                return await backend.approval(run_id, step, False, actor)
        raise AssertionError(f"no backend call for {type(args).__name__}")


async def _actor(writer: asyncio.StreamWriter) -> Actor:
    pid, uid, gid = peer_credentials(writer.get_extra_info("socket"))
    try:
        async with asyncio.timeout(_USER_LOOKUP_TIMEOUT_S):
            user = await asyncio.to_thread(user_name, uid)
    except TimeoutError:
        user = str(uid)
    return Actor(uid=uid, gid=gid, pid=pid, user=user)


async def _skip_line(reader: asyncio.StreamReader) -> None:
    """Consume the rest of an oversized request, unparsed. Closing with unread input makes the kernel reset the
    connection, and a client still sending would lose the reply."""
    with contextlib.suppress(ConnectionError, TimeoutError):
        async with asyncio.timeout(READ_TIMEOUT_S):
            while chunk := await reader.read(MAX_REQUEST_BYTES):
                if b"\n" in chunk:
                    return


def group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ControlSocketError(f"unknown group {group!r} for the control socket") from None


async def clear_stale_socket(path: Path) -> None:
    """Remove a socket file nobody listens on; refuse if a daemon answers there or the path is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket; refusing to replace it")
    try:
        async with asyncio.timeout(_IO_TIMEOUT_S):
            _, writer = await asyncio.open_unix_connection(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        _log.info("removing stale control socket", path=str(path))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except TimeoutError:
        # a full accept backlog: somebody is listening, just not keeping up
        raise ControlSocketError(f"another daemon is listening on {path}") from None
    except OSError as exc:
        raise ControlSocketError(f"cannot check whether a daemon is listening on {path}: {exc.strerror or exc}") from exc
    writer.close()
    with contextlib.suppress(ConnectionError, TimeoutError):
        async with asyncio.timeout(_IO_TIMEOUT_S):
            await writer.wait_closed()
    raise ControlSocketError(f"another daemon is listening on {path}")
