"""Two drivers for ``dns/record@v1``: ``powerdns`` (the PowerDNS Authoritative HTTP API, here) and ``rfc2136``
(DNS UPDATE, optionally TSIG-signed, to any primary that accepts it: ``drivers/rfc2136.py``, on this module's parts).

They differ only in how they change a record. How they prove it is shared, and is the point: check() and
verify() RESOLVE the name, non-recursively, against every configured authoritative server and compare the
answer set AND the TTL with the desired ones. Reading the API back is not enough: it says what the database
holds, not what the servers answer (a disabled record, a stale packet cache or a secondary that never got
the NOTIFY all read back fine through the API). Every server must agree for verify() to pass.

Record content is parsed with dnspython as presentation format with names taken as absolute (``CNAME`` to
``target.example.org`` means ``target.example.org.``), so "the same record" means the same rdata whatever
its spelling, and PowerDNS is sent the canonical text it expects (absolute names, quoted TXT).

Fencing: each change also REPLACEs a TXT record beside the name, ``_hyops-fence.<name>``, holding
``"token=<N> run=<run_id>"`` (the run's fencing token), in the same change as the record (one PATCH of both
rrsets; one UPDATE message with both), so both land or neither. check() resolves it with the record and refuses
(``Fenced``) a name stamped with a newer token than the run's; verify() wants the run's own token there. The
stamp belongs to the name, so records of two types at one name share it. The rfc2136 driver's UPDATE is also
conditional on the stamp it read (an RFC 2136 prerequisite, checked by the server); the PowerDNS API has no such
precondition (a PATCH takes no If-Match, expected content or serial), so the powerdns driver's write stays
check-then-write. PowerDNS itself accepts RFC 2136 (``dnsupdate=yes``): the rfc2136 driver pointed at it writes
conditionally.

Errors, in the shared vocabulary of ``drivers.base``: retryable ``Unavailable`` (5xx, refused connections,
timeouts, SERVFAIL) and ``RateLimited`` (429); permanent ``CredentialsUnavailable`` (API key or TSIG secret
unresolvable or rejected), ``NotFound`` (no such zone), ``Refused`` (the record, or the update, refused),
``NoCompensation``. No message carries a secret: the API key and TSIG secret are resolved by reference at each
use and never formatted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.resolver

from hybridops_daemon import cancel
from hybridops_daemon.drivers import sockets
from hybridops_daemon.drivers.base import (
    ApplyResult,
    CheckResult,
    CredentialsUnavailable,
    DriverError,
    NoCompensation,
    NotFound,
    ProbeResult,
    RateLimited,
    Readiness,
    Refused,
    StepContext,
    Unavailable,
    clipped,
    parse_stamp,
    refuse_newer_stamp,
    secret,
    stamp_mismatch,
)
from hybridops_daemon.drivers.declarations.dns import PowerDnsDriverConfig
from hybridops_daemon.drivers.modules import DnsRecord, inputs_of

MODULE = "dns/record@v1"
DEFAULT_TIMEOUT = 5.0  # seconds per HTTP request / DNS exchange; see the constructors
_SETTLE_INTERVAL = 0.5  # seconds between verify()'s probes while the servers converge
FENCE_LABEL = "_hyops-fence"  # the stamp of <name> lives at _hyops-fence.<name>, TXT "token=<N> run=<run_id>"
_TOKEN = re.compile(r"(?:^|\s)token=([0-9]+)(?:\s|$)")


# --------------------------------------------------------------------------------------------- shared helpers


@dataclass(frozen=True, slots=True)
class _Record:
    """The desired record, parsed: the name, the type and the one rdata the rrset must hold."""

    inputs: DnsRecord
    name: dns.name.Name
    zone: dns.name.Name
    rdtype: dns.rdatatype.RdataType
    rdata: dns.rdata.Rdata
    fence: dns.name.Name  # _hyops-fence.<name>: where the fencing stamp is

    @property
    def content(self) -> str:
        """Canonical presentation text: absolute names, quoted strings."""
        return self.rdata.to_text()

    def outputs(self) -> dict[str, Any]:
        return {"fqdn": self.inputs.fqdn, "type": self.inputs.type, "content": self.inputs.content, "ttl": self.inputs.ttl}

    def describe(self) -> str:
        return f"{self.inputs.fqdn} {self.inputs.type} {self.content} (ttl {self.inputs.ttl})"


def _record(step: StepContext) -> _Record:
    inputs = inputs_of("DNS", step.module, step.inputs, DnsRecord)
    try:
        rdtype = dns.rdatatype.from_text(inputs.type)
        # Names in content are absolute, as in every DNS API (PowerDNS insists on it): relative to the root.
        rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, inputs.content, origin=dns.name.root, relativize=False)
        name = dns.name.from_text(inputs.fqdn)
        zone = dns.name.from_text(inputs.zone)
    except (dns.exception.DNSException, ValueError) as exc:
        raise Refused(f"DNS: {inputs.fqdn} {inputs.type}: content does not parse as that type ({exc})") from None
    if not name.is_subdomain(zone):
        raise Refused(f"DNS: {inputs.fqdn} is not inside zone {inputs.zone}")
    try:
        fence = dns.name.from_text(FENCE_LABEL, origin=name)
    except dns.exception.DNSException:
        raise Refused(f"DNS: {inputs.fqdn} is too long to hold its fencing stamp at {FENCE_LABEL}.{inputs.fqdn}") from None
    return _Record(inputs, name, zone, rdtype, rdata, fence)


def _fence_rdata(step: StepContext) -> dns.rdata.Rdata:
    """The stamp: one TXT string (at most 255 bytes, so a very long run id is cut; the token always fits)."""
    text = f"token={step.fencing_token} run={step.run_id}".encode()[:255]
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [text])


def _host_port(entry: str, default_port: int = 53) -> tuple[str, int]:
    """``host``, ``host:port``, ``v6addr``, ``[v6addr]:port`` → (host, port)."""
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port_text = rest.removeprefix(":") or str(default_port)
    elif entry.count(":") == 1:
        host, port_text = entry.split(":")
    else:  # a bare name, IPv4 or IPv6 address
        host, port_text = entry, str(default_port)
    if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"nameserver {entry!r} is not host, host:port or [v6]:port")
    return host, int(port_text)


async def _address(host: str, seconds: float) -> str:
    """An IP literal as is; a host name through the system resolver (dnspython talks to addresses only)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    async with asyncio.timeout(seconds):
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    if not infos:
        raise OSError(f"{host} has no address")
    return str(infos[0][4][0])


@dataclass(frozen=True, slots=True)
class _Answer:
    """What one nameserver answered. ``reachable`` False: we learned nothing (timeout, I/O error, SERVFAIL)."""

    status: str  # "ok", "nxdomain", "noanswer", "refused", "not-authoritative", "timeout", "unreachable", "servfail", ...
    reachable: bool
    rdatas: tuple[dns.rdata.Rdata, ...] = ()
    ttl: int | None = None

    def matches(self, want: _Record) -> bool:
        return self.status == "ok" and set(self.rdatas) == {want.rdata} and self.ttl == want.inputs.ttl

    def observed(self) -> dict[str, Any]:
        seen: dict[str, Any] = {"status": self.status}
        if self.status == "ok":
            seen["content"] = sorted(rdata.to_text() for rdata in self.rdatas)
            seen["ttl"] = self.ttl
        return seen

    def describe(self) -> str:
        if self.status == "ok":
            return f"answers {', '.join(sorted(r.to_text() for r in self.rdatas))} (ttl {self.ttl})"
        return {
            "nxdomain": "says the name does not exist (NXDOMAIN)",
            "noanswer": "has the name but no record of that type (NOANSWER)",
            "refused": "refused the query (not authoritative for the zone?)",
            "not-authoritative": "answered without the AA flag (not authoritative for the zone)",
            "timeout": "did not answer in time",
        }.get(self.status, f"failed: {self.status}")


def _stamp(answers: Mapping[str, _Answer]) -> int | None:
    """The newest token any server holds at the fence name (a server lagging behind must not hide a newer one);
    None when none holds a parsable one."""
    return _newest_token(rdata for answer in answers.values() if answer.status == "ok" for rdata in answer.rdatas)


def _newest_token(rdatas: Iterable[dns.rdata.Rdata]) -> int | None:
    """The newest ``token=<N>`` in these fence TXT records; None when none holds a parsable one."""
    tokens = []
    for rdata in rdatas:
        text = b"".join(getattr(rdata, "strings", ())).decode(errors="replace")
        found = _TOKEN.search(text)
        token = parse_stamp(found.group(1)) if found else None
        if token is not None:
            tokens.append(token)
    return max(tokens, default=None)


async def _ask(server: str, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, seconds: float) -> _Answer:
    """Resolve ``name``/``rdtype`` at one server, without recursion, within ``seconds`` (name lookup included)."""
    host, port = _host_port(server)
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        address = await _address(host, seconds)
    except (OSError, TimeoutError) as exc:
        return _Answer(f"unresolvable nameserver host ({exc or 'timeout'})", reachable=False)
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(address, port)]
    resolver.flags = dns.flags.Flag(0)  # no RD: the server's own data, not what it might fetch from elsewhere
    resolver.timeout = resolver.lifetime = max(0.1, seconds - (loop.time() - began))  # one budget, lookup included
    resolver.cache = None  # every probe is fresh
    try:
        answer = await resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        cancel.raise_if_cancelled()  # dnspython's asyncio backend waits with wait_for, which on 3.11 loses cancels
    except dns.resolver.NXDOMAIN:
        return _Answer("nxdomain", reachable=True)
    except dns.resolver.LifetimeTimeout:
        return _Answer("timeout", reachable=False)
    except dns.resolver.NoNameservers as exc:
        # One server and it failed: its rcode (REFUSED, SERVFAIL, ...) or the I/O error is in `errors`.
        errors = exc.kwargs.get("errors") or [("", False, 0, "no answer", None)]
        problem = errors[-1][3]
        if isinstance(problem, str):
            rcode = problem.lower()
            return _Answer(rcode, reachable=rcode not in ("servfail",))
        return _Answer(f"unreachable ({type(problem).__name__}: {problem})", reachable=False)
    except dns.exception.DNSException as exc:
        return _Answer(f"unusable answer ({type(exc).__name__}: {exc})", reachable=False)
    if not answer.response.flags & dns.flags.AA:
        return _Answer("not-authoritative", reachable=True)
    if answer.rrset is None:
        return _Answer("noanswer", reachable=True)
    return _Answer("ok", reachable=True, rdatas=tuple(answer.rrset), ttl=answer.rrset.ttl)


class _ResolvingVerifier:
    """check / verify / compensate, shared: resolve at every authoritative server and compare."""

    modules = frozenset({MODULE})
    name: str
    _nameservers: tuple[str, ...]
    _timeout: float
    _settle: float

    async def _probe(self, want: _Record) -> tuple[dict[str, _Answer], dict[str, _Answer]]:
        """What every server answers for the record and for its fence name (the stamp), all concurrently, so a
        dead server costs one timeout in total, not one per server and question."""
        servers = self._nameservers
        asked = [_ask(server, want.name, want.rdtype, self._timeout) for server in servers]
        asked += [_ask(server, want.fence, dns.rdatatype.TXT, self._timeout) for server in servers]
        answers = await asyncio.gather(*asked)
        return dict(zip(servers, answers[: len(servers)], strict=True)), dict(zip(servers, answers[len(servers) :], strict=True))

    @staticmethod
    def _observed(answers: Mapping[str, _Answer], stamp: int | None) -> dict[str, Any]:
        return {**{server: answer.observed() for server, answer in answers.items()}, "fencing_token": stamp}

    async def check(self, step: StepContext) -> CheckResult:
        """Do all authoritative servers already answer exactly the desired record and TTL? Read-only, idempotent.

        The stamp at ``_hyops-fence.<name>`` is resolved alongside: a name stamped with a newer fencing token
        than the step's (at any server) raises Fenced, satisfied or not. Budget: two DNS exchanges per server,
        all concurrently, each within ``timeout``. Raises Unavailable when a server cannot tell us (timeout,
        unreachable, SERVFAIL): unknown is neither satisfied nor not. Refused on bad inputs.
        """
        want = _record(step)
        answers, fences = await self._probe(want)
        silent = [f"{server} {answer.describe()}" for server, answer in answers.items() if not answer.reachable]
        silent += [f"{server} {fence.describe()} for {want.fence}" for server, fence in fences.items() if not fence.reachable]
        if silent:
            raise Unavailable(f"DNS: cannot check {want.inputs.fqdn} {want.inputs.type}: {'; '.join(silent)}")
        stamp = _stamp(fences)
        refuse_newer_stamp(f"DNS name {want.inputs.fqdn}", stamp, step)
        satisfied = all(answer.matches(want) for answer in answers.values())
        return CheckResult(
            satisfied=satisfied,
            observed=self._observed(answers, stamp),
            outputs=want.outputs() if satisfied else {},
        )

    async def verify(self, step: StepContext) -> ProbeResult:
        """Resolve afresh (never apply()'s word) at every authoritative server; ok only if all answer exactly
        the desired record set with the desired TTL, and the name's stamp is the step's own fencing token (the
        newest any server holds; it came in the same change). Read-only, idempotent.

        Budget: two DNS exchanges per server, all concurrently, each within ``timeout``; with ``settle`` > 0, the
        servers are asked again every 0.5 s until they all agree or ``settle`` has passed (so at most
        ``settle + timeout``: keep it under the step's timeout). A server that does not answer makes the probe
        fail (ok False, named in ``detail``) rather than raise, so the journal keeps what every other server
        said. Refused on bad inputs.
        """
        want = _record(step)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settle
        what = f"DNS name {want.inputs.fqdn}"

        def converged(answers: Mapping[str, _Answer], fences: Mapping[str, _Answer]) -> bool:
            return all(a.matches(want) for a in answers.values()) and not stamp_mismatch(what, _stamp(fences), step)

        answers, fences = await self._probe(want)
        # Secondaries converge after NOTIFY + transfer: within `settle`, ask again until all agree.
        while not converged(answers, fences) and loop.time() + _SETTLE_INTERVAL < deadline:
            await cancel.sleep(_SETTLE_INTERVAL)
            answers, fences = await self._probe(want)
        stamp = _stamp(fences)
        servers = ", ".join(self._nameservers)
        wrong = [f"{server} {answer.describe()}" for server, answer in answers.items() if not answer.matches(want)]
        unstamped = stamp_mismatch(what, stamp, step)
        if wrong:
            detail = f"want {want.describe()}, but " + "; ".join(wrong)
        else:
            detail = f"all {len(answers)} authoritative server(s) answer {want.describe()}"
            detail += f", but {unstamped}" if unstamped else f", stamped with fencing token {stamp}"
        return ProbeResult(
            ok=not wrong and not unstamped,
            probe=f"resolve {want.inputs.fqdn} {want.inputs.type} and {want.fence} TXT at {servers} (no recursion)",
            observed=self._observed(answers, stamp),
            detail=detail,
        )

    async def compensate(self, step: StepContext) -> ApplyResult:
        """Never undoes a record: the failback chain points DNS back. Raises NoCompensation."""
        raise NoCompensation(f"{self.name}: no compensation for {MODULE}: the failback chain sets DNS back")


# --------------------------------------------------------------------------------------------- powerdns


class PowerDnsDriver(_ResolvingVerifier):
    """``dns/record@v1`` through the PowerDNS Authoritative HTTP API (``X-API-Key``), proved by resolving.

    ``timeout`` bounds every HTTP request and every DNS exchange; ``settle`` is how long verify() waits for
    all nameservers to agree (0: one probe). Keyword-only until the config carries them.
    """

    name = "powerdns"

    def __init__(self, config: PowerDnsDriverConfig, *, timeout: float = DEFAULT_TIMEOUT, settle: float = 0.0) -> None:
        if timeout <= 0 or settle < 0:
            raise ValueError("timeout must be > 0 and settle >= 0")
        for server in config.nameservers:
            _host_port(server)  # a malformed entry fails at start-up, not in the middle of a cutover
        self._config = config
        self._nameservers = tuple(config.nameservers)
        self._timeout = timeout
        self._settle = settle
        self._api = config.api_url.rstrip("/")

    def _zone_url(self, zone: str) -> str:
        server = urllib.parse.quote(self._config.server_id, safe="")
        return f"{self._api}/api/v1/servers/{server}/zones/{urllib.parse.quote(zone + '.', safe='.')}"

    async def preflight(self, step: StepContext) -> Readiness:
        """Could the change land now? Read-only (drivers/dns_preflight.py): one GET of the zone's metadata (the API
        key accepted, the zone there), then a SOA query to each nameserver, concurrently, each within ``timeout``.
        Not ready, naming it, when a nameserver is silent or not authoritative; raises as apply() on the API's answer."""
        from hybridops_daemon.drivers import dns_preflight  # it builds on this module's helpers: imported at first use

        return await dns_preflight.powerdns(self, step)

    async def apply(self, step: StepContext) -> ApplyResult:
        """REPLACE the rrset (name, type) with the one desired record and TTL, and the fence TXT beside it with
        the step's stamp: one PATCH to the zone (PowerDNS applies a PATCH's rrsets in one transaction).

        Idempotent in effect (the same REPLACE twice leaves the same rrset; PowerDNS bumps the zone serial
        each time, which is why the runner calls check() first). Budget: one HTTP request within ``timeout``.
        Raises Unavailable (5xx, connection refused, timeout), RateLimited (429), CredentialsUnavailable
        (401/403, API key unresolvable), NotFound (404: no such zone), Refused (400/422/other 4xx).
        """
        want = _record(step)
        fence = _fence_rdata(step)
        body = {
            "rrsets": [
                {
                    "name": want.name.to_text(),
                    "type": want.inputs.type,
                    "ttl": want.inputs.ttl,
                    "changetype": "REPLACE",
                    "records": [{"content": want.content, "disabled": False}],
                },
                {
                    "name": want.fence.to_text(),
                    "type": "TXT",
                    "ttl": want.inputs.ttl,
                    "changetype": "REPLACE",
                    "records": [{"content": fence.to_text(), "disabled": False}],
                },
            ]
        }
        key = secret("powerdns", "powerdns.api_key", self._config.api_key)
        status, text = await self._request("PATCH", self._zone_url(want.inputs.zone), key, body)
        if 200 <= status < 300:
            return ApplyResult(
                log=(
                    f"PowerDNS {self._config.server_id}: zone {want.inputs.zone}. REPLACE {want.describe()}"
                    f" and {want.fence} TXT {fence.to_text()}",
                ),
                outputs=want.outputs(),
            )
        raise self._http_error(status, _error_text(text, key), want.inputs.zone, want.describe())

    async def _request(self, method: str, url: str, key: str, body: Any = None) -> tuple[int, str]:
        """One API request within ``timeout``: (status, body text). Unavailable when there is no answer."""
        try:
            # asyncio.timeout with aiohttp's timers off: on 3.11 aiohttp's timer, firing as the caller's cancel
            # arrives, turns the cancel into a TimeoutError and withdraws it (see signals/http_probe.py).
            async with (
                asyncio.timeout(self._timeout),
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(), connector=self._connector()) as session,
                session.request(method, url, json=body, headers={"X-API-Key": key}, allow_redirects=False) as response,
            ):
                return response.status, await response.text(errors="replace")
        except TimeoutError:
            raise Unavailable(f"PowerDNS API at {self._api} did not answer within {self._timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise Unavailable(f"PowerDNS API at {self._api} unreachable: {type(exc).__name__}: {exc}") from None

    def _connector(self) -> aiohttp.TCPConnector:
        """A fresh connector (the session owns and closes it) whose sockets carry TCP_USER_TIMEOUT = ``timeout``."""
        return aiohttp.TCPConnector(socket_factory=sockets.aiohttp_factory(self._timeout))

    def _http_error(self, status: int, error: str, zone: str, what: str) -> DriverError:
        """The error for a non-2xx answer about ``zone``; ``what`` names what was asked for (in a Refused)."""
        where = f"PowerDNS API at {self._api}"
        if status in (401, 403):
            return CredentialsUnavailable(f"{where} rejected the API key (HTTP {status})", code=status)
        if status == 404:
            return NotFound(
                f"{where}: no zone {zone}. on server {self._config.server_id!r} (HTTP 404; or a wrong api_url)",
                code=status,
            )
        if status == 429:
            return RateLimited(f"{where} answered HTTP {status}: {error}", code=status)
        if status >= 500:
            return Unavailable(f"{where} answered HTTP {status}: {error}", code=status)
        return Refused(f"{where} rejected {what} (HTTP {status}): {error}", code=status)


def _error_text(text: str, key: str) -> str:
    """PowerDNS's ``{"error": ...}`` or the raw body, short, and scrubbed of the key should a proxy echo it."""
    try:
        parsed = json.loads(text)
        error = str(parsed.get("error", text)) if isinstance(parsed, dict) else text
    except ValueError:
        error = text
    return clipped(error.strip(), 300, key, "[redacted]") or "(empty body)"
