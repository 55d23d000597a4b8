"""One MQTT broker connection, for the ``mqtt`` and ``peer`` sources: connect within a deadline, leave cleanly.

aiomqtt's own per-call timeout is switched off (``math.inf``) on purpose: it is ``asyncio.wait_for``, which on
Python 3.11 loses a cancel that arrives as the call completes (see ``hybridops_daemon.cancel``). Every call a
caller makes on the client must be bounded by its own ``asyncio.timeout``; with aiomqtt's timeout off, its calls
are plain awaits and a cancel always propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt

from hybridops_daemon.config.sources import MqttBroker
from hybridops_daemon.retry import Backoff
from hybridops_daemon.secrets import resolve

STABLE_AFTER = 10.0  # a connection that lasted this long resets the reconnect backoff; a flapping one does not


def client_kwargs(broker: MqttBroker, client_id: str) -> dict[str, Any]:
    """Keyword arguments for ``aiomqtt.Client`` from a broker config.

    The result holds the resolved password: pass it to the client, never log it. Raises ``SecretUnavailable``
    when the password reference points at nothing, ``ValueError`` for a password without a username.
    """
    kwargs: dict[str, Any] = {
        "hostname": broker.host,
        "port": broker.port,
        "identifier": client_id,
        "keepalive": max(1, math.ceil(broker.keepalive)) if broker.keepalive > 0 else 0,
        "timeout": math.inf,  # bounded by the caller's asyncio.timeout, never by aiomqtt's wait_for (see above)
    }
    if broker.password is not None and broker.username is None:
        # MQTT 3.1.1 sends a password only with a username; paho would silently drop it.
        raise ValueError("an MQTT broker password needs a username")
    if broker.username is not None:
        kwargs["username"] = broker.username
        if broker.password is not None:
            kwargs["password"] = resolve("mqtt password", broker.password)
    if broker.tls is not None:
        tls = broker.tls
        kwargs["tls_params"] = aiomqtt.TLSParameters(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
        )
    return kwargs


def reconnect_backoff(broker: MqttBroker) -> Backoff:
    """Full jitter, so that reconnecting edges spread out instead of stampeding; never a hot loop whatever the
    config says; reset only by a connection that lasted ``STABLE_AFTER`` (a flapping broker keeps its backoff)."""
    return Backoff(max(broker.reconnect_min, 0.05), broker.reconnect_max, jitter=True, healthy_after=STABLE_AFTER)


@contextlib.asynccontextmanager
async def connection(broker: MqttBroker, client_id: str, **extra: Any) -> AsyncIterator[aiomqtt.Client]:
    """A client connected within ``connect_timeout`` (TimeoutError otherwise), disconnected on the way out.

    ``extra`` goes to ``aiomqtt.Client`` (a will, a queue type). Raises what ``client_kwargs`` raises,
    ``aiomqtt.MqttError`` and ``TimeoutError``; whatever an attempt leaves behind is released however it ends.
    """
    client = aiomqtt.Client(**client_kwargs(broker, client_id), **extra)
    client._client.connect_timeout = broker.connect_timeout  # paho's TCP connect, in aiomqtt's executor thread
    try:
        async with asyncio.timeout(broker.connect_timeout):
            await client.__aenter__()
    except BaseException:
        _discard(client)
        raise
    try:
        yield client
    finally:
        await _close(client, broker.connect_timeout)


async def _close(client: aiomqtt.Client, within: float) -> None:
    """Leave a connected client: a DISCONNECT if the broker is still there, waited for at most ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            await client.__aexit__(None, None, None)
    except (aiomqtt.MqttError, TimeoutError):
        pass
    finally:
        _discard(client)


def _discard(client: aiomqtt.Client) -> None:
    """Release whatever a connection attempt left behind (aiomqtt private state, aiomqtt <3 / paho 2).

    aiomqtt keeps the socket, reader and keepalive task of an attempt that timed out or was cancelled between TCP
    connect and CONNACK; a cancelled attempt may even open its socket later, from the executor thread running
    paho's connect(). A cancelled attempt also leaves aiomqtt's connection future cancelled, which its callbacks
    cannot read: an abandoned client gets no more callbacks. And it may hold a disconnection error nobody
    retrieves ("exception never retrieved").
    """
    paho = client._client
    paho.on_socket_open = _close_late_socket
    paho.on_connect = paho.on_disconnect = None
    paho._sock_close()  # calls aiomqtt's on_socket_close: removes the reader, cancels the keepalive task
    for future in (client._connected, client._disconnected):
        if future.done() and not future.cancelled():
            future.exception()  # mark retrieved


def _close_late_socket(_client: Any, _userdata: Any, sock: Any) -> None:
    sock.close()  # paho's connect() then fails in its thread, unobserved: the attempt was abandoned
