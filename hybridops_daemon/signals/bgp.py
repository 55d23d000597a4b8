"""The BGP source: asks the local FRR or BIRD daemon for its sessions and reports each configured peer.

For every configured peer it emits ``signal`` = 1.0 while the session is Established, else 0.0, and
``<signal>_prefixes`` = the prefixes received from that peer (0 while not Established).

What is *not* a 0.0:
- the daemon does not answer (socket missing, vtysh/birdc exit non-zero, timeout): ``UpstreamError`` → no
  samples at all, so the signals go UNKNOWN by age (``health.upstream_down``);
- output we cannot parse: counted as malformed input, no samples;
- a configured peer the router does not know (a neighbor address FRR does not list, a BIRD protocol name
  that is not a BGP protocol): a configuration problem, not evidence that the session is down. Counted as
  malformed input (logged once per transition) and both of its signals are emitted as None (UNKNOWN) — never
  1.0, and not 0.0 either, which would read as a session loss and could trigger a cutover.

The daemon is asked once per poll for all peers (FRR: ``show bgp summary json``; BIRD:
``show protocols all``), so every peer of one poll shares one observation time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

from hybridops_daemon.config.sources import BgpSource
from hybridops_daemon.signals.base import PollingSource, SourceContext, UpstreamError
from hybridops_daemon.signals.sample import Sample

VTYSH = "vtysh"
BIRDC = "birdc"
FRR_COMMAND = "show bgp summary json"
BIRD_COMMAND = ("show", "protocols", "all")


@dataclass(frozen=True, slots=True)
class PeerState:
    established: bool
    prefixes: int  # received (FRR ``pfxRcd``) / imported (BIRD ``Routes: N imported``); 0 unless established


class MalformedOutput(ValueError):
    """The daemon answered, but not in the shape we parse: counted as malformed input, never a 0.0."""


def peer_key(peer: str) -> str:
    """Neighbor addresses compare canonically (``FD00:0::2`` is FRR's ``fd00::2``); other names as written."""
    try:
        return str(ipaddress.ip_address(peer))
    except ValueError:
        return peer  # an FRR unnumbered interface or a BIRD protocol name


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:80] if lines else "(empty)"


# --- FRR --------------------------------------------------------------------------------------------------


def parse_frr_summary(text: str) -> dict[str, PeerState]:
    """Parse FRR 8.4 ``show bgp summary json``: ``{"<afi>": {"peers": {"<addr>": {"state", "pfxRcd", ...}}}}``.

    A peer appears once per address family it is activated in (``ipv4Unicast``, ``ipv6Unicast``, ...). The
    session state is per peer, so it is Established if Established under any family; the prefix count is the
    sum of ``pfxRcd`` over the families. ``{}`` (no BGP instance, or one without neighbors) is well-formed and
    simply knows no peers.
    """
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedOutput(f"FRR summary is not JSON ({exc.msg}): {_first_line(text)!r}") from None
    if not isinstance(data, dict):
        raise MalformedOutput("FRR summary is not a JSON object")
    established: dict[str, bool] = {}
    prefixes: dict[str, int] = {}
    for afi, table in data.items():
        # Strict on purpose: an unexpected top-level shape (a newer FRR, an error object) must read UNKNOWN,
        # not "these peers are gone".
        if not isinstance(table, dict) or not isinstance(table.get("peers"), dict):
            raise MalformedOutput(f"FRR summary: {afi!r} is not an address family with 'peers'")
        for name, peer in table["peers"].items():
            if not isinstance(peer, dict) or not isinstance(peer.get("state"), str):
                raise MalformedOutput(f"FRR summary: {afi}.peers[{name!r}] has no 'state'")
            up = peer["state"] == "Established"  # else Idle, "Idle (Admin)", "Idle (PfxCt)", Connect, Active, Open*
            count = peer.get("pfxRcd")
            if up and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
                # Without it we cannot tell "no prefixes" from "field renamed": refuse rather than report 0.
                raise MalformedOutput(f"FRR summary: established {afi}.peers[{name!r}] has no integer 'pfxRcd'")
            key = peer_key(name)
            established[key] = established.get(key, False) or up
            prefixes[key] = prefixes.get(key, 0) + (count if up and isinstance(count, int) else 0)
    return {key: PeerState(up, prefixes[key] if up else 0) for key, up in established.items()}


# --- BIRD -------------------------------------------------------------------------------------------------

_BIRD_HEADER = re.compile(r"^Name\s+Proto\s+Table\s+State\s+Since\s+Info\s*$")
_BIRD_BGP_STATE = re.compile(r"^\s+BGP state:\s+(\S+)")
_BIRD_ROUTES = re.compile(r"^\s+Routes:\s+(\d+) imported\b")


def parse_bird_protocols(text: str) -> dict[str, PeerState]:
    """Parse BIRD 2.0 ``show protocols all [name]`` (text; birdc has no JSON). Only BGP protocols are returned.

    Shape: a ``BIRD 2.0.12 ready.`` banner, the ``Name Proto Table State Since Info`` header, then one block
    per protocol: an unindented line ``name proto table state since info`` followed by indented details, of
    which we read ``BGP state: <state>`` and, per channel, ``Routes: N imported, [M filtered,] K exported,
    P preferred`` (absent while the channel is down). Established = protocol state ``up`` and BGP state
    ``Established``; prefixes = imported routes summed over the channels. Plain ``show protocols`` (no
    ``all``) lacks the BGP state and is rejected as malformed.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _BIRD_HEADER.match(line)), None)
    if start is None:
        raise MalformedOutput(f"BIRD output has no protocol table header: {_first_line(text)!r}")
    blocks: list[tuple[list[str], list[str]]] = []  # (header fields, detail lines)
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        if not line[0].isspace():
            fields = line.split()
            if len(fields) < 4:
                raise MalformedOutput(f"BIRD protocol line too short: {line[:80]!r}")
            blocks.append((fields, []))
        elif not blocks:
            raise MalformedOutput(f"BIRD detail line before any protocol: {line[:80]!r}")
        else:
            blocks[-1][1].append(line)
    result: dict[str, PeerState] = {}
    for (name, proto, _table, state, *_), details in blocks:
        if proto != "BGP":
            continue
        bgp_state = next((m.group(1) for m in map(_BIRD_BGP_STATE.match, details) if m), None)
        if bgp_state is None:
            raise MalformedOutput(f"BIRD protocol {name!r} has no 'BGP state:' line (not 'show protocols all'?)")
        up = state == "up" and bgp_state == "Established"
        imported = sum(int(m.group(1)) for m in map(_BIRD_ROUTES.match, details) if m)
        result[name] = PeerState(up, imported if up else 0)
    return result


# --- the poller -------------------------------------------------------------------------------------------


class BgpPoller(PollingSource):
    """Polls one FRR (vtysh) or BIRD (birdc) daemon every ``spec.interval``, each poll bounded by ``spec.timeout``."""

    @classmethod
    def from_context(cls, spec: BgpSource, context: SourceContext) -> Self:
        return cls(spec, context.node, context.clock)

    def __init__(self, spec: BgpSource, edge: str, clock: Callable[[], float] = time.time) -> None:
        super().__init__(spec.name, edge, spec.interval, spec.timeout, clock)
        self.spec = spec
        self._parse = parse_frr_summary if spec.daemon == "frr" else parse_bird_protocols

    def command(self) -> list[str]:
        if self.spec.daemon == "frr":
            # -d bgpd: ask bgpd alone, so a stopped zebra does not fail a question zebra cannot answer.
            return [VTYSH, "--vty_socket", str(self.spec.socket), "-d", "bgpd", "-c", FRR_COMMAND]
        return [BIRDC, "-s", str(self.spec.socket), *BIRD_COMMAND]

    async def poll(self) -> list[Sample]:
        # A little inside the loop's own bound (spec.timeout), so a hung daemon is reported as "vtysh did not
        # answer within ..." rather than the loop's bare TimeoutError.
        text = await run_bounded(self.command(), self.timeout * 0.9)
        observed_at = self.clock()
        try:
            states = self._parse(text)
        except MalformedOutput as exc:
            self.health.malformed_input(str(exc))
            return []
        samples: list[Sample] = []
        unknown: list[str] = []
        for peer in self.spec.peers:
            state = states.get(peer_key(peer.peer))
            if state is None:
                unknown.append(peer.peer)
                samples.append(self.sample(peer.signal, None, observed_at))
                samples.append(self.sample(f"{peer.signal}_prefixes", None, observed_at))
                continue
            samples.append(self.sample(peer.signal, 1.0 if state.established else 0.0, observed_at))
            samples.append(self.sample(f"{peer.signal}_prefixes", float(state.prefixes), observed_at))
        if unknown:
            self.health.malformed_input(f"{self.spec.daemon} does not know configured peer(s): {', '.join(unknown)}")
        else:
            self.health.good_input()
        return samples


async def run_bounded(argv: Sequence[str], within: float) -> str:
    """Run a CLI client, return its stdout; ``UpstreamError`` on a non-zero exit or after ``within`` seconds.

    The child is killed and reaped on every way out (timeout, cancellation by the caller's own timeout or a
    shutdown), so a hung daemon never leaves vtysh/birdc processes or zombies behind.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(within):
            out, err = await proc.communicate()
    except TimeoutError:
        raise UpstreamError(f"{argv[0]} did not answer within {within:g}s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it may have exited since
                proc.kill()
            try:
                # Reap it; bounded, because a cancelled caller must not hang here. Should this wait itself be
                # cancelled, asyncio's child watcher still reaps the killed process.
                async with asyncio.timeout(5.0):
                    await proc.wait()
            except TimeoutError:
                pass
    if proc.returncode != 0:
        why = (err or out).decode(errors="replace").strip().splitlines()
        raise UpstreamError(f"{argv[0]} exited {proc.returncode}: {why[-1][:200] if why else '(no output)'}")
    return out.decode(errors="replace")
