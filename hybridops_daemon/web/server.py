"""The read-only journal view: an aiohttp server owned by the daemon's exit stack, beside ``MetricsServer``.

Loopback by default; ``web.socket`` puts it on a Unix socket with the control socket's group instead. With
``web.token`` every request must carry ``Authorization: Bearer <token>`` (a reverse proxy adds it for remote users).
Only GET and HEAD are served, every page is autoescaped, and every answer carries a strict Content-Security-Policy:
scripts and styles from this server's /static/ only, nothing inline, no framing, no form posting elsewhere.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from hybridops_daemon.config.models import WebConfig
from hybridops_daemon.control.backend import DaemonBackend
from hybridops_daemon.control.server import clear_stale_socket, group_id
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.journal.verify import readonly_connection
from hybridops_daemon.secrets import resolve
from hybridops_daemon.web.pages import Pages
from hybridops_daemon.web.queries import JournalReader

log = structlog.get_logger("hybridops.web")

STATIC = Path(__file__).parent / "static"
MAX_QUERY_CHARS = 1024  # a longer query string is no filter this view makes: refused before it is parsed
SOCKET_MODE = 0o660
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # the pages show live state, and may show it to someone behind a token
}


class WebServer:
    """The journal view on ``config.listen:config.port`` (port 0: an ephemeral one, see ``url``) or ``config.socket``."""

    def __init__(self, config: WebConfig, backend: DaemonBackend, journal: Journal, group: str | None = None) -> None:
        self._config = config
        self._backend = backend
        self._journal = journal
        self._group = group
        self._runner: web.AppRunner | None = None
        self._stack = contextlib.ExitStack()
        self._token: bytes | None = None
        self.url: str | None = None

    async def __aenter__(self) -> Self:
        self._token = resolve("web.token", self._config.token).encode() if self._config.token is not None else None
        reader = JournalReader(self._stack.enter_context(readonly_connection(self._journal.path)))
        app = web.Application(middlewares=[self._guard])
        app.add_routes([*Pages(self._backend, self._journal, reader).routes(), web.static("/static", STATIC)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            if self._config.socket is not None:
                site: web.BaseSite = web.SockSite(runner, await self._unix_socket(self._config.socket))
            else:
                site = web.TCPSite(runner, self._config.listen, self._config.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            self._stack.close()
            raise
        self._runner = runner
        if self._config.socket is not None:
            self.url = f"unix:{self._config.socket}"
        else:
            host, port = runner.addresses[0][:2]
            self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        log.info("journal view listening", url=self.url, auth="bearer" if self._token is not None else "none")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._config.socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self._config.socket.unlink()
        self._stack.close()

    async def _unix_socket(self, path: Path) -> socket.socket:
        """Bound with its mode and group set before anyone can connect (SockSite listens), as the control socket."""
        gid = group_id(self._group) if self._group is not None else None
        await clear_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, SOCKET_MODE)
            if gid is not None and os.stat(path).st_gid != gid:
                os.chown(path, -1, gid)
        except BaseException:
            sock.close()
            raise
        return sock

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Token, method and size checks before any page, and the security headers on every answer, errors too."""
        try:
            if self._token is not None and not self._authorized(request):
                raise web.HTTPUnauthorized(text="a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
            if request.method not in ("GET", "HEAD"):
                raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"], text="this view is read-only")
            if len(request.query_string) > MAX_QUERY_CHARS:
                raise web.HTTPRequestURITooLong(text=f"query longer than {MAX_QUERY_CHARS} characters")
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:  # answered as a plain response: aiohttp's own would lack the headers
            response = web.Response(status=exc.status, reason=exc.reason, text=exc.text, headers=exc.headers)
        response.headers.update(HEADERS)
        return response

    def _authorized(self, request: web.Request) -> bool:
        assert self._token is not None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)
