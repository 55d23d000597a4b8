"""The ``rfc2136`` driver: ``dns/record@v1`` by DNS UPDATE (RFC 2136) over TCP, TSIG-signed when configured.

It changes a record the way its server accepts; it proves the change as ``powerdns`` does, by resolving at every
authoritative server (``drivers/dns.py``: the shared record model, probes, fencing stamp and errors).

The write is conditional: apply() reads the fence TXT (``_hyops-fence.<name>``) at the update server and sends the
UPDATE with the RFC 2136 prerequisite that the fence rrset is still exactly that (or still absent). An UPDATE that
arrives after another writer stamped the name, a deposed leader's delayed one say, is refused by the server
(NXRRSET / YXRRSET) and reported as Fenced, never retried.
"""

from __future__ import annotations

import asyncio
import binascii
import socket

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from hybridops_daemon import cancel
from hybridops_daemon.drivers import sockets
from hybridops_daemon.drivers.base import (
    ApplyResult,
    CredentialsUnavailable,
    Fenced,
    NotFound,
    Readiness,
    Refused,
    StepContext,
    Unavailable,
    refuse_newer_stamp,
    secret,
)
from hybridops_daemon.drivers.declarations.dns import Rfc2136DriverConfig
from hybridops_daemon.drivers.dns import (
    DEFAULT_TIMEOUT,
    _address,
    _fence_rdata,
    _host_port,
    _newest_token,
    _Record,
    _record,
    _ResolvingVerifier,
)


class Rfc2136Driver(_ResolvingVerifier):
    """``dns/record@v1`` by DNS UPDATE (RFC 2136) over TCP, TSIG-signed when ``tsig_name`` is set.

    ``nameservers`` for check/verify default to the update server itself. ``timeout`` bounds every DNS
    exchange; ``settle`` is how long verify() waits for all nameservers to agree (0: one probe).
    Keyword-only until the config carries them.
    """

    name = "rfc2136"

    def __init__(self, config: Rfc2136DriverConfig, *, timeout: float = DEFAULT_TIMEOUT, settle: float = 0.0) -> None:
        if timeout <= 0 or settle < 0:
            raise ValueError("timeout must be > 0 and settle >= 0")
        if (config.tsig_name is None) != (config.tsig_secret is None):
            raise ValueError("rfc2136: tsig_name and tsig_secret go together (set both or neither)")
        server = f"[{config.server}]" if ":" in config.server else config.server
        self._nameservers = tuple(config.nameservers) or (f"{server}:{config.port}",)
        for entry in self._nameservers:
            _host_port(entry)
        try:
            self._algorithm = dns.name.from_text(config.tsig_algorithm)
            probe = dns.tsig.Key("probe.", b"\0" * 32, self._algorithm)
            dns.tsig.get_context(probe)  # type: ignore[no-untyped-call]  # unsupported algorithm: NotImplementedError
        except (dns.exception.DNSException, NotImplementedError):
            raise ValueError(f"rfc2136: unsupported TSIG algorithm {config.tsig_algorithm!r}") from None
        self._config = config
        self._timeout = timeout
        self._settle = settle

    def _sign(self, message: dns.message.Message) -> None:
        """Sign ``message`` with the configured TSIG key (if any); CredentialsUnavailable when the secret is unusable."""
        config = self._config
        if config.tsig_name is None or config.tsig_secret is None:
            return
        tsig = secret("rfc2136", "rfc2136.tsig_secret", config.tsig_secret)
        try:
            keyring = dns.tsigkeyring.from_text({config.tsig_name: tsig})
        except (binascii.Error, ValueError, dns.exception.DNSException):
            raise CredentialsUnavailable("rfc2136: the TSIG secret is not valid base64") from None
        message.use_tsig(keyring, keyname=dns.name.from_text(config.tsig_name), algorithm=self._algorithm)

    def _message(self, want: _Record, fence: dns.rdata.Rdata, seen: tuple[dns.rdata.Rdata, ...]) -> dns.update.UpdateMessage:
        message = dns.update.UpdateMessage(want.zone)
        self._sign(message)
        # The prerequisite: the fence rrset exactly as read (value-dependent), or absent. A newer writer's stamp in
        # between, and the server refuses the whole update (NXRRSET / YXRRSET): this write is conditional.
        if seen:
            message.present(want.fence, *seen)
        else:
            message.absent(want.fence, dns.rdatatype.TXT)
        message.replace(want.name, want.inputs.ttl, want.rdata)
        message.replace(want.fence, want.inputs.ttl, fence)  # the stamp, in the same (atomic) update
        return message

    async def preflight(self, step: StepContext) -> Readiness:
        """Could the update land now? Read-only, no UPDATE (drivers/dns_preflight.py): a SOA query to the update server,
        TSIG-signed (the key accepted, the zone served), then one to each nameserver, concurrently, each within
        ``timeout``. Not ready, naming it, when a server fails; CredentialsUnavailable when the key is rejected."""
        from hybridops_daemon.drivers import dns_preflight  # it builds on this module's helpers: imported at first use

        return await dns_preflight.rfc2136(self, step)

    async def apply(self, step: StepContext) -> ApplyResult:
        """Read the fence TXT at the update server, then send one UPDATE that replaces the rrset (name, type) with
        the desired record and TTL, and the fence TXT beside it with the step's stamp, on the prerequisite that the
        fence is still exactly what was read (or still absent).

        Idempotent (delete-rrset + add, twice, in one atomic update: both land or neither). Budget: two TCP exchanges
        (the signed read, the UPDATE), each within ``timeout``. Raises Fenced (the read shows a newer token; or the
        server refused the prerequisite, NXRRSET / YXRRSET: another writer stamped the name since), Unavailable
        (timeout, connection refused/reset, SERVFAIL), Refused (REFUSED, NOTAUTH, FORMERR and other rcodes, to the
        read or the UPDATE), CredentialsUnavailable (TSIG rejected, secret unavailable or not base64), NotFound
        (NOTZONE).
        """
        want = _record(step)
        fence = _fence_rdata(step)
        where, signed = self._where, self._signed
        seen = await self._read_fence(want)
        refuse_newer_stamp(f"DNS name {want.inputs.fqdn}", _newest_token(seen), step)
        response = await self._exchange(self._message(want, fence, seen), "DNS UPDATE")
        rcode = response.rcode()
        was = ", ".join(rdata.to_text() for rdata in seen) or "absent"
        if rcode == dns.rcode.NOERROR:
            return ApplyResult(
                log=(
                    f"DNS UPDATE to {where}{signed}: zone {want.inputs.zone}. replace {want.describe()}"
                    f" and {want.fence} TXT {fence.to_text()} (on the prerequisite that it still was {was})",
                ),
                outputs=want.outputs(),
            )
        text = dns.rcode.to_text(rcode)
        if rcode in (dns.rcode.NXRRSET, dns.rcode.YXRRSET):
            raise Fenced(
                f"fenced: DNS UPDATE to {where} refused by its prerequisite ({text}): {want.fence} TXT is no longer "
                f"{was} as this attempt read it; another writer stamped {want.inputs.fqdn} since; not retried",
                code=text,
            )
        if rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH):
            raise Refused(f"DNS UPDATE to {where}{signed} for zone {want.inputs.zone}: {text}", code=text)
        if rcode == dns.rcode.SERVFAIL:
            raise Unavailable(f"DNS UPDATE to {where}: SERVFAIL", code=text)
        if rcode == dns.rcode.NOTZONE:
            raise NotFound(f"DNS UPDATE to {where}: {want.inputs.fqdn} is not in zone {want.inputs.zone} (NOTZONE)", code=text)
        raise Refused(f"DNS UPDATE to {where}: {text} for {want.describe()}", code=text)

    async def _read_fence(self, want: _Record) -> tuple[dns.rdata.Rdata, ...]:
        """The fence rrset as the update server holds it now (empty: none), by a query signed and sent like the UPDATE
        (a server may answer only its key holders, and its copy is the one the prerequisite is checked against)."""
        query = dns.message.make_query(want.fence, dns.rdatatype.TXT)
        query.flags &= ~dns.flags.RD
        self._sign(query)
        response = await self._exchange(query, "DNS UPDATE (reading the fence first)")
        rcode = response.rcode()
        if rcode == dns.rcode.SERVFAIL:
            raise Unavailable(f"DNS UPDATE to {self._where}: SERVFAIL reading {want.fence} TXT", code="SERVFAIL")
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) or not response.flags & dns.flags.AA:
            text = dns.rcode.to_text(rcode) if rcode != dns.rcode.NOERROR else "NOERROR without the AA flag"
            where = f"{self._where}{self._signed}"
            raise Refused(f"DNS UPDATE to {where} for zone {want.inputs.zone}: {text} reading {want.fence} TXT", code=text)
        found = response.get_rrset(response.answer, want.fence, dns.rdataclass.IN, dns.rdatatype.TXT)
        return tuple(found) if found is not None else ()

    @property
    def _where(self) -> str:
        host, port = self._config.server, self._config.port
        return f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"

    @property
    def _signed(self) -> str:
        return f" (TSIG {self._config.tsig_name})" if self._config.tsig_name else ""

    async def _exchange(self, message: dns.message.Message, what: str) -> dns.message.Message:
        """Send ``message`` to the server over TCP, one exchange within ``timeout`` (name lookup included), and
        return the answer, its TSIG verified when signed. Raises Unavailable (timeout, connection refused/reset),
        CredentialsUnavailable (TSIG rejected) and Refused (an unsigned answer that does not parse)."""
        where, signed = self._where, self._signed
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            address = await _address(self._config.server, self._timeout)
            remaining = max(0.1, self._timeout - (loop.time() - began))  # one budget, name lookup included
            family, destination = dns.inet.af_for_address(address), (address, self._config.port)
            backend = dns.asyncbackend.get_backend("asyncio")
            connecting = backend.make_socket(family, socket.SOCK_STREAM, 0, None, destination, remaining)  # type: ignore[no-untyped-call]
            async with await connecting as stream:
                sockets.bound(stream.writer.get_extra_info("socket"), self._timeout)  # before the first byte is sent
                remaining = max(0.1, self._timeout - (loop.time() - began))
                response = await dns.asyncquery.tcp(message, address, timeout=remaining, sock=stream)
            cancel.raise_if_cancelled()  # dnspython waits with wait_for: a cancel as the answer came in is lost
        except (dns.exception.Timeout, TimeoutError):
            raise Unavailable(f"{what} to {where}: no answer within {self._timeout:g}s") from None
        except (OSError, EOFError) as exc:
            raise Unavailable(f"{what} to {where}: {type(exc).__name__}: {exc}") from None
        except dns.tsig.PeerError as exc:  # the server said BADKEY / BADSIG / BADTIME in a signed answer
            raise CredentialsUnavailable(f"{what} to {where}{signed}: TSIG rejected ({type(exc).__name__})") from None
        except (dns.tsig.BadSignature, dns.exception.FormError) as exc:
            if not signed:
                raise Refused(f"{what} to {where}: malformed answer ({exc})") from None
            # A server that rejects our key answers REFUSED/NOTAUTH unsigned; dnspython then refuses to parse it.
            raise CredentialsUnavailable(
                f"{what} to {where}{signed}: refused without a valid signature (wrong TSIG key name, secret or algorithm?)"
            ) from None
        return response
