"""The IPsec source: asks the local strongSwan charon over VICI whether each configured tunnel is up.

Every ``interval`` it opens the VICI Unix socket, runs ``list-sas`` (and ``list-conns`` only when some tunnel
is not up, to tell "down" from "no such name"), closes the socket, and emits per configured tunnel:

- ``1.0``: an IKE SA named ``ike`` is up (ESTABLISHED, or REKEYING: a rekey in flight keeps the old SA and
  its CHILD SAs in use) and, if ``child`` is named, that IKE SA carries a CHILD SA of that name that is
  INSTALLED (or REKEYING, likewise). Several SAs of one name (a rekey's old and new) count as up if any is.
- ``0.0``: charon answered and the tunnel is not up: no such SA, or it is CONNECTING/DELETING, or the child
  is missing. This is evidence about the tunnel.
- ``None`` (UNKNOWN): the IKE name is neither an SA nor a loaded connection (or the child name is not a
  child of that loaded connection). That is a configuration mismatch, not evidence: counted as malformed
  input (logged once per transition), emitted as None every poll so the profile's ``unknown`` rule applies.

When charon cannot be asked (socket missing, refused, no answer within ``timeout``, an unreadable reply) the
poll raises and nothing is emitted: the tunnel signals go UNKNOWN by age, and ``health.upstream_down`` is
set. A dead local charon is not evidence about the path to the peer, so it must not read as 0.0.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Self

import vici  # type: ignore[import-untyped]  # the vici package ships no type hints
from vici.exception import (  # type: ignore[import-untyped]
    CommandException,
    DeserializationException,
    EventUnknownException,
    SessionException,
)

from hybridops_daemon.config.sources import IpsecSource
from hybridops_daemon.signals.base import PollingSource, SourceContext, UpstreamError
from hybridops_daemon.signals.sample import Sample

TunnelKey = tuple[str, str | None]  # (IKE name, CHILD name or None)

# States in which an SA carries traffic. REKEYING is included: the SA stays in use until the new one replaces
# it, so counting it down would flap the signal on every (routine, hourly) rekey.
IKE_UP = frozenset({"ESTABLISHED", "REKEYING"})
CHILD_UP = frozenset({"INSTALLED", "REKEYING"})

# All mean "charon answered, but not usefully". vici has its own types for protocol trouble; a garbled or
# truncated frame surfaces from its parser as struct.error or UnicodeDecodeError (a ValueError).
_VICI_ERRORS: tuple[type[Exception], ...] = (
    SessionException,
    CommandException,
    DeserializationException,
    EventUnknownException,
    struct.error,
    ValueError,
)


def _text(value: object, what: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise UpstreamError(f"list-sas: {what} is not UTF-8") from None
    if isinstance(value, str):
        return value
    raise UpstreamError(f"list-sas: {what} is {type(value).__name__}, not a string")


def _section(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise UpstreamError(f"vici reply: {what} is {type(value).__name__}, not a section")
    return value


def decode_sas(sas: Iterable[object]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """``list-sas`` events → ``[(ike name, ike state, [(child name, child state), ...]), ...]``.

    Each event is ``{ike_name: {"state": b"ESTABLISHED", "child-sas": {"net-1": {"name": b"net",
    "state": b"INSTALLED", ...}}, ...}}``; child-sas keys are ``<name>-<uniqueid>``, so the name is read from
    the ``name`` field. Values may be bytes (as vici yields them) or str. Raises UpstreamError on a wrong shape.
    """
    decoded = []
    for event in sas:
        for ike_name, ike in _section(event, "list-sa event").items():
            ike = _section(ike, f"IKE SA {ike_name!r}")
            children = [
                (_text(child.get("name"), "child name"), _text(child.get("state"), "child state"))
                for child in (_section(c, "CHILD SA") for c in _section(ike.get("child-sas", {}), "child-sas").values())
            ]
            decoded.append((str(ike_name), _text(ike.get("state"), f"state of {ike_name!r}"), children))
    return decoded


def decode_conns(conns: Iterable[object]) -> dict[str, frozenset[str]]:
    """``list-conns`` events → loaded connection name → its child names (keys of ``children``)."""
    known: dict[str, frozenset[str]] = {}
    for event in conns:
        for name, conn in _section(event, "list-conn event").items():
            known[str(name)] = frozenset(str(c) for c in _section(conn, f"conn {name!r}").get("children", {}))
    return known


def tunnel_states(
    sas: Iterable[object], tunnels: Iterable[TunnelKey], conns: Iterable[object] | None = None
) -> dict[TunnelKey, bool | None]:
    """Per tunnel ``(ike, child)``: True up, False down, None when charon knows no such name.

    Names are judged unknown only when ``conns`` (the ``list-conns`` events) is given; without it a tunnel
    that is not up reads False. Pure: the same inputs give the same answer.
    """
    decoded = decode_sas(sas)
    known = decode_conns(conns) if conns is not None else None
    states: dict[TunnelKey, bool | None] = {}
    for ike, child in tunnels:
        up = any(
            name == ike
            and state in IKE_UP
            and (child is None or any(c == child and c_state in CHILD_UP for c, c_state in children))
            for name, state, children in decoded
        )
        if not up and known is not None:
            in_sas = any(name == ike for name, _, _ in decoded)
            if (not in_sas and ike not in known) or (child is not None and ike in known and child not in known[ike]):
                states[(ike, child)] = None
                continue
        states[(ike, child)] = up
    return states


class IpsecPoller(PollingSource):
    """Polls charon's VICI socket; one signal per configured tunnel. Use as ``async with`` then ``run(emit)``."""

    @classmethod
    def from_context(cls, spec: IpsecSource, context: SourceContext) -> Self:
        return cls(spec, context.node, context.clock)

    def __init__(self, spec: IpsecSource, edge: str, clock: Callable[[], float] = time.time) -> None:
        super().__init__(spec.name, edge, spec.interval, spec.timeout, clock)
        self.spec = spec
        self._keys: list[TunnelKey] = [(t.ike, t.child) for t in spec.tunnels]

    async def poll(self) -> list[Sample]:
        """One bounded VICI round trip. Raises OSError/TimeoutError/UpstreamError when charon can't be asked."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            async with asyncio.timeout_at(deadline):
                await loop.sock_connect(sock, str(self.spec.vici))
        except BaseException:
            sock.close()
            raise
        # vici is blocking: its session runs in a thread. The socket timeout bounds each wait for a reply's
        # first byte, but vici clears it mid-message, so if we give up (timeout or cancel) we also shut the
        # socket down, which wakes the thread's recv at once; the thread then closes the socket itself.
        sock.settimeout(max(0.01, deadline - loop.time()))
        try:
            async with asyncio.timeout_at(deadline):
                states = await asyncio.to_thread(self._query, sock)
        except BaseException:
            with contextlib.suppress(OSError):  # already closed by the thread
                sock.shutdown(socket.SHUT_RDWR)
            raise
        observed_at = self.clock()
        samples = []
        unknown = []
        for tunnel in self.spec.tunnels:
            up = states[(tunnel.ike, tunnel.child)]
            if up is None:
                unknown.append(tunnel.ike if tunnel.child is None else f"{tunnel.ike}/{tunnel.child}")
            samples.append(self.sample(tunnel.signal, None if up is None else float(up), observed_at))
        if unknown:
            self.health.malformed_input(f"charon has no connection named {', '.join(unknown)}")
        else:
            self.health.good_input()
        return samples

    def _query(self, sock: socket.socket) -> dict[TunnelKey, bool | None]:
        """Runs in a worker thread: list-sas, and list-conns only if a tunnel is not up. Closes ``sock``."""
        try:
            session = vici.Session(sock)
            sas = list(session.list_sas())
            states = tunnel_states(sas, self._keys)
            if not all(states.values()):
                states = tunnel_states(sas, self._keys, list(session.list_conns()))
            return states
        except _VICI_ERRORS as exc:
            raise UpstreamError(f"vici: {type(exc).__name__}: {exc}") from None
        finally:
            sock.close()
