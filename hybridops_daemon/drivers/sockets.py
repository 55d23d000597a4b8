"""``TCP_USER_TIMEOUT`` on every driver connection: a request's bytes land promptly or die with their connection.

Without it, bytes the kernel could not deliver (a partition) stay queued and are retransmitted until the link is
back, even after the client gave up and closed the socket (an orphaned socket goes on retransmitting its unsent
data before its FIN): a request a deposed leader sent can land seconds after a heal. With it, data left
unacknowledged for that long aborts the connection, the queued bytes with it, orphaned or not. That is what we
rely on, not SO_LINGER 0 (which acts only at close, so not while a blocked request still holds its socket).

Each driver uses its own request timeout as the bound (``check-config`` warns when it is not below the lease
TTL). Linux only: elsewhere ``TCP_USER_TIMEOUT`` does not exist and only the request deadline is left.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection

SocketOption = tuple[int, int, int]


def user_timeout_ms(seconds: float) -> int:
    """``seconds`` as TCP_USER_TIMEOUT's milliseconds (at least 1: 0 would mean the system default)."""
    return max(1, math.ceil(seconds * 1000))


def options(seconds: float) -> list[SocketOption]:
    """urllib3's default options (TCP_NODELAY) plus TCP_USER_TIMEOUT of ``seconds`` where the platform has it."""
    found = list(HTTPConnection.default_socket_options)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        found.append((socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms(seconds)))
    return found


def bound(sock: socket.socket, seconds: float) -> socket.socket:
    """``sock`` with TCP_USER_TIMEOUT of ``seconds`` (where the platform has it)."""
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms(seconds))
    return sock


class _BoundedAdapter(HTTPAdapter):
    """requests' adapter whose connections (direct or through a proxy) carry ``options(seconds)``."""

    def __init__(self, seconds: float) -> None:
        self._socket_options = options(seconds)  # before super(): it builds the pool manager
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, socket_options=self._socket_options, **kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        return super().proxy_manager_for(proxy, socket_options=self._socket_options, **proxy_kwargs)


def mount(session: requests.Session, seconds: float) -> requests.Session:
    """``session`` with every HTTP(S) connection it opens from now on bounded by TCP_USER_TIMEOUT of ``seconds``."""
    for prefix in ("http://", "https://"):
        session.mount(prefix, _BoundedAdapter(seconds))
    return session


def aiohttp_factory(seconds: float) -> Callable[[tuple[Any, ...]], socket.socket]:
    """A ``socket_factory`` for aiohttp's ``TCPConnector``: sockets as aiohttp makes them, bounded."""

    def factory(addr_info: tuple[Any, ...]) -> socket.socket:
        family, kind, proto, _, _ = addr_info
        return bound(socket.socket(family=family, type=kind, proto=proto), seconds)

    return factory
