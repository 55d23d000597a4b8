"""The Alertmanager source: a webhook receiver that turns alerts into per-route signals.

Alertmanager POSTs its webhook (``version: "4"``) to ``spec.path``. Each route (``spec.alerts``) watches the
alerts whose labels equal all of its ``match`` pairs. The receiver keeps the set of currently firing alerts
(keyed by fingerprint, or by the label set when there is none): ``status: firing`` adds an alert,
``resolved`` removes it. Each route's value is ``route.firing`` while any matching alert fires, else
``route.resolved``.

When a route is emitted, and what UNKNOWN means:

- A route becomes *known* with the first webhook carrying an alert that matches it (firing or resolved).
  Before that its signal is absent, i.e. UNKNOWN: having heard no alert is not evidence that none fires
  (after a daemon restart, Alertmanager re-sends a still-firing alert only at its ``repeat_interval``). An
  unrelated webhook says Alertmanager is alive, not that this route's alerts are quiet.
- After every webhook, every known route is emitted with its current value; and every ``refresh`` seconds
  (5 s) every known route is re-emitted, so a still-firing (or still-resolved) state that Alertmanager stays
  quiet about does not go stale. The re-emission is our own memory, not new evidence: if Alertmanager dies,
  the last state is repeated until the daemon restarts. Pair this source with a watchdog alert when that
  matters.

Requests: a bearer token (``spec.token``, resolved once at start) is checked first (missing/wrong → 401);
a body over ``spec.max_body_bytes`` → 413, without ever holding more than that in memory; malformed JSON or
not the webhook shape → 400; a good webhook → 200. Rejected requests are counted in ``health.malformed`` and
logged once per transition.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from hybridops_daemon import limits
from hybridops_daemon.config.sources import AlertmanagerSource, AlertRoute
from hybridops_daemon.secrets import resolve
from hybridops_daemon.signals.base import Emit, InputHealth, SourceContext
from hybridops_daemon.signals.sample import Sample

REFRESH_SECONDS = 5.0

AlertKey = str | tuple[tuple[str, str], ...]


class BadWebhook(Exception):
    """The body parsed as JSON but is not an Alertmanager webhook; the message says why (short, for a 400)."""


class AlertmanagerReceiver:
    """Use as ``async with AlertmanagerReceiver(spec, edge) as receiver: await receiver.run(emit)``.

    The server listens from ``__aenter__`` on (``.port`` is the bound port, useful with ``port: 0``); webhooks
    that arrive before ``run()`` update the state and are emitted when ``run()`` starts.
    """

    @classmethod
    def from_context(cls, spec: AlertmanagerSource, context: SourceContext) -> Self:
        return cls(spec, context.node, context.clock)

    def __init__(
        self, spec: AlertmanagerSource, edge: str, clock: Callable[[], float] = time.time, refresh: float = REFRESH_SECONDS
    ) -> None:
        if refresh <= 0:
            raise ValueError("refresh must be positive")
        self.spec = spec
        self.name = spec.name
        self.edge = edge
        self.health = InputHealth(spec.name)
        self.port: int | None = None
        self._clock = clock
        self._refresh = refresh
        self._limits = dataclasses.replace(limits.WEBHOOK, max_bytes=spec.max_body_bytes)
        self._token: bytes | None = None
        self._runner: web.AppRunner | None = None
        self._emit: Emit | None = None
        self._firing: dict[AlertKey, Mapping[str, str]] = {}  # only alerts matching some route are kept
        self._known: set[int] = set()  # indexes of routes that a webhook has spoken about

    async def __aenter__(self) -> Self:
        # Resolved once: a missing secret fails the start loudly instead of answering every webhook 401.
        self._token = None if self.spec.token is None else resolve(f"{self.name}.token", self.spec.token).encode()
        # client_max_size bounds request.read(): aiohttp stops reading at the limit and raises 413, so a
        # chunked body (no Content-Length) cannot make us buffer more than max_body_bytes either.
        app = web.Application(client_max_size=self.spec.max_body_bytes)
        app.router.add_post(self.spec.path, self._handle)
        # A short grace at cleanup: our handler never awaits once it has the body, and a body still arriving when
        # the server stops never completes (aiohttp drops a closing connection's data), so the grace only delays
        # the source's cancel (shutdown, restart) while a webhook is in flight. Alertmanager re-sends a cut one.
        self._runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.spec.listen, self.spec.port).start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def run(self, emit: Emit) -> None:
        """Serve until cancelled: webhooks emit as they arrive; known routes are re-emitted every ``refresh`` s."""
        if self._runner is None:
            raise RuntimeError("AlertmanagerReceiver.run called outside `async with`")
        self._emit = emit
        try:
            while True:
                self._emit_known()
                await asyncio.sleep(self._refresh)
        finally:
            self._emit = None

    def value(self, route: AlertRoute) -> float:
        """The route's current value (whether or not it is known yet)."""
        firing = any(_matches(route, labels) for labels in self._firing.values())
        return route.firing if firing else route.resolved

    # ------------------------------------------------------------------------------------------ requests

    async def _handle(self, request: web.Request) -> web.Response:
        if self._token is not None and not self._authorized(request.headers.get("Authorization", "")):
            self.health.malformed_input("webhook without a valid bearer token")
            return web.Response(status=401, text="missing or wrong bearer token\n", headers={"WWW-Authenticate": "Bearer"})
        if request.content_length is not None and request.content_length > self.spec.max_body_bytes:
            # Refused before reading a byte of it.
            return self._too_large()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses the shutdown's cancel of this handler when it
            # arrives as the read completes. A client trickling its body gets cut off.
            async with asyncio.timeout(10.0):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        except TimeoutError:
            self.health.malformed_input("webhook body not received within 10s")
            return web.Response(status=408, text="request body timeout\n")
        except ConnectionResetError:  # left to aiohttp, it would log a traceback
            self.health.malformed_input("webhook client went away before its body arrived")
            return web.Response(status=400, text="connection lost\n")  # to nobody: aiohttp drops it
        try:
            alerts = _parse(body, self._limits)
        except BadWebhook as exc:
            self.health.malformed_input(f"not an Alertmanager webhook: {exc}")
            return web.Response(status=400, text=f"{exc}\n")
        self.health.good_input()
        self._apply(alerts)
        self._emit_known()
        return web.Response(text="ok\n")

    def _authorized(self, header: str) -> bool:
        assert self._token is not None
        scheme, _, credentials = header.partition(" ")
        # Constant-time comparison: the response time must not reveal how much of a guess was right.
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self._token)

    def _too_large(self) -> web.Response:
        self.health.malformed_input(f"webhook body over {self.spec.max_body_bytes} bytes")
        return web.Response(status=413, text=f"body over {self.spec.max_body_bytes} bytes\n")

    # ------------------------------------------------------------------------------------------ state

    def _apply(self, alerts: list[tuple[str, AlertKey, dict[str, str]]]) -> None:
        for status, key, labels in alerts:
            matching = [i for i, route in enumerate(self.spec.alerts) if _matches(route, labels)]
            self._known.update(matching)
            if status == "resolved":
                self._firing.pop(key, None)
            elif matching:  # an alert no route watches is not kept: the state stays bounded by what matters
                self._firing[key] = labels

    def _emit_known(self) -> None:
        if self._emit is None:
            return
        now = self._clock()
        for index in sorted(self._known):
            route = self.spec.alerts[index]
            self._emit(Sample(route.signal, self.value(route), now, self.name, self.edge))


def _matches(route: AlertRoute, labels: Mapping[str, str]) -> bool:
    return all(labels.get(name) == value for name, value in route.match.items())


def _parse(body: bytes, bounds: limits.JsonLimits) -> list[tuple[str, AlertKey, dict[str, str]]]:
    """The webhook's alerts as (status, key, labels). Raises BadWebhook with a short reason."""
    try:
        payload: Any = limits.loads(body, bounds, "webhook")
    except limits.InputRejected as exc:
        raise BadWebhook(str(exc)) from None
    except ValueError:  # also UnicodeDecodeError
        raise BadWebhook("malformed JSON") from None
    if not isinstance(payload, dict):
        raise BadWebhook("body is not a JSON object")
    if payload.get("version") != "4":
        raise BadWebhook(f"unsupported webhook version {payload.get('version')!r:.20} (expected '4')")
    raw_alerts = payload.get("alerts")
    if not isinstance(raw_alerts, list):
        raise BadWebhook("'alerts' is not a list")
    if len(raw_alerts) > limits.MAX_WEBHOOK_ALERTS:
        raise BadWebhook(str(limits.InputRejected("webhook", "alerts", limits.MAX_WEBHOOK_ALERTS, len(raw_alerts))))
    alerts: list[tuple[str, AlertKey, dict[str, str]]] = []
    for i, alert in enumerate(raw_alerts):
        if not isinstance(alert, dict):
            raise BadWebhook(f"alerts[{i}] is not an object")
        status = alert.get("status")
        if status not in ("firing", "resolved"):
            raise BadWebhook(f"alerts[{i}].status is not 'firing' or 'resolved'")
        labels = alert.get("labels")
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise BadWebhook(f"alerts[{i}].labels is not an object of strings")
        fingerprint = alert.get("fingerprint")
        key: AlertKey = fingerprint if isinstance(fingerprint, str) and fingerprint else tuple(sorted(labels.items()))
        alerts.append((status, key, labels))
    return alerts
