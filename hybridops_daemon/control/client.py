"""Client side of the control socket: one request, one reply, typed errors for each way it can go wrong."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hybridops_daemon import limits
from hybridops_daemon.control.protocol import encode_request

MAX_REPLY_BYTES = limits.CONTROL_REPLY.max_bytes  # a whole run's records for export; anything bigger is not ours
BACKLOG_RETRY_S = 1.0  # how long a connect keeps retrying while the daemon's accept queue is full
_CHECK = "check `systemctl status hybridops-daemon` and --socket / $HYOPS_SOCKET"


class ControlClientError(Exception):
    """Base of everything ``request`` raises."""


class DaemonUnavailable(ControlClientError):
    """No answer could be had from the daemon (hyopsctl exit code 3)."""


class DaemonNotRunning(DaemonUnavailable):
    """Nothing listens on the socket path."""


class DaemonTimeout(DaemonUnavailable):
    """The daemon did not answer within the timeout."""


class DaemonRefused(ControlClientError):
    """The daemon answered with an error reply; ``code`` is bad_request, refused, not_found, unconfirmed or internal."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ProtocolError(ControlClientError):
    """The daemon's answer was not a reply line of this protocol."""


# the timeout parameter is the interface hyopsctl and scripts want; it covers connect, send and reply together
async def request(path: Path, cmd: str, args: Mapping[str, Any], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
    """Send one command to the daemon at ``path`` and return its ``result``. Raises ControlClientError."""
    try:
        async with asyncio.timeout(timeout):
            line = await _exchange(path, encode_request(cmd, args))
    except TimeoutError:
        raise DaemonTimeout(
            f"no answer from the daemon on {path} within {timeout:g}s: it is busy (try a larger --timeout) or hung"
            " (check its log: journalctl -u hybridops-daemon)"
        ) from None
    return _result(line)


def request_sync(path: Path, cmd: str, args: Mapping[str, Any], timeout: float = 10.0) -> Any:
    return asyncio.run(request(path, cmd, args, timeout))


async def _connect(path: Path) -> socket.socket:
    """A connected socket. Connected here, not by asyncio: asyncio takes a Unix socket's EAGAIN (the daemon's accept
    queue is full) for a connect in progress, and the first write then fails with ENOTCONN."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + BACKLOG_RETRY_S
    delay = 0.01
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(str(path))  # a Unix connect never waits: it succeeds or fails at once
            return sock
        except BlockingIOError:
            sock.close()
            if loop.time() >= give_up:
                raise DaemonUnavailable(
                    f"{path} accepts no connections (listen backlog full): the daemon is overloaded or hung;"
                    " check its log: journalctl -u hybridops-daemon"
                ) from None
        except BaseException:
            sock.close()
            raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


async def _exchange(path: Path, payload: bytes) -> bytes:
    try:
        reader, writer = await asyncio.open_unix_connection(sock=await _connect(path), limit=MAX_REPLY_BYTES)
    except FileNotFoundError:
        raise DaemonNotRunning(f"{path} does not exist: the daemon does not appear to be running; {_CHECK}") from None
    except ConnectionRefusedError:
        raise DaemonNotRunning(
            f"nothing listens on {path} (connection refused): the daemon does not appear to be running; {_CHECK}"
        ) from None
    except PermissionError:
        raise DaemonUnavailable(f"permission denied on {path}: run as root or as a member of the socket's group") from None
    except OSError as exc:
        raise DaemonUnavailable(f"cannot connect to {path}: {exc.strerror or exc}; {_CHECK}") from None
    try:
        # the daemon may answer (a too large request, say) and close before taking all of it: read the reply anyway
        with contextlib.suppress(ConnectionError):
            writer.write(payload)
            await writer.drain()
        # read up to the newline rather than to EOF: the reply is complete there, whatever the close looks like
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        raise DaemonUnavailable(f"the daemon on {path} closed the connection without answering") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError(f"the reply from {path} is larger than {MAX_REPLY_BYTES} bytes") from None
    except OSError as exc:  # reset, broken pipe, not connected
        raise DaemonUnavailable(f"connection to the daemon on {path} failed: {exc.strerror or exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _result(line: bytes) -> Any:
    try:
        reply = limits.loads(line.removesuffix(b"\n"), limits.CONTROL_REPLY, "the daemon's reply")
    except limits.InputRejected as exc:
        raise ProtocolError(str(exc)) from None
    except ValueError:
        raise ProtocolError("the daemon's reply is not JSON") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ProtocolError("the daemon's reply is not a control protocol reply")
    if reply["ok"]:
        return reply.get("result")
    raise DaemonRefused(str(reply.get("code", "internal")), str(reply.get("error", "no message")))
