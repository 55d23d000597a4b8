"""preflight() of the ``powerdns`` and ``rfc2136`` drivers (issue #13): could the step's change land now?

Read-only by construction: a GET of the zone (``rrsets=false``: its metadata, not its records) or a SOA query,
and a SOA query to every listed nameserver; no PATCH, no UPDATE, so the zone's serial and records stay as they
were. What it checks:

* the credentials: the API key is accepted (the GET answers 200, not 401); the TSIG key is accepted (PowerDNS
  and BIND verify a signed query and answer NOTAUTH, unsigned or with BADKEY/BADSIG, to a wrong key; the answer's
  own signature is verified);
* the zone exists: the API knows it, or the update server answers its SOA authoritatively;
* every listed nameserver answers the zone's SOA with the AA flag (verify() resolves there, so a server that is
  down, or not authoritative, fails every verify).

Not checked: whether the TSIG key may UPDATE the zone (the server's update policy: only an update tells, and a
preflight sends none) and the fencing stamp (a preflight has no token of its own). The driver's usual errors
(CredentialsUnavailable, NotFound, Unavailable...) propagate: the caller reports them as not ready.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from hybridops_daemon.chain.templating import UnresolvedReference, render
from hybridops_daemon.drivers.base import Readiness, Refused, StepContext, Unavailable, secret
from hybridops_daemon.drivers.dns import MODULE, _ask, _error_text, _record

if TYPE_CHECKING:  # the drivers import this module when preflight() is first called
    from hybridops_daemon.drivers.dns import PowerDnsDriver
    from hybridops_daemon.drivers.rfc2136 import Rfc2136Driver


def _subject(step: StepContext) -> tuple[dns.name.Name, str, str]:
    """(zone, the change the step makes, a note on what was not checked). Refused on bad inputs.

    ``${run.*}`` renders with the preflight's own run. An earlier step's output is known only to the run: then the
    record waits for it, and only the zone (which must be literal) is checked."""
    run = {"id": step.run_id, "lane": step.lane}
    try:
        rendered = render(step.inputs, {}, run)
    except UnresolvedReference as exc:
        if step.module != MODULE:
            raise Refused(f"the DNS driver runs only {MODULE}, not {step.module!r}") from None
        zone = step.inputs.get("zone")
        try:
            name = dns.name.from_text(str(render(zone, {}, run))) if isinstance(zone, str) else None
        except (UnresolvedReference, dns.exception.DNSException):
            name = None
        if name is None:
            raise Refused(f"DNS: the zone must be a literal DNS name, not {zone!r}") from None
        return name, f"a record in zone {name}", f"; the record is not checked: {exc}"
    want = _record(replace(step, inputs=rendered))
    return want.zone, want.describe(), ""


async def _authoritative(nameservers: tuple[str, ...], zone: dns.name.Name, seconds: float) -> tuple[dict[str, Any], list[str]]:
    """Ask every nameserver for the zone's SOA, concurrently (one timeout in all): what each said, and the faults."""
    answers = await asyncio.gather(*(_ask(server, zone, dns.rdatatype.SOA, seconds) for server in nameservers))
    observed: dict[str, Any] = {}
    problems: list[str] = []
    for server, answer in zip(nameservers, answers, strict=True):
        serial = getattr(answer.rdatas[0], "serial", None) if answer.rdatas else None
        observed[server] = {"status": answer.status, "serial": serial}
        if answer.status != "ok":
            problems.append(f"nameserver {server} {answer.describe()}")
    return observed, problems


def _verdict(driver: str, zone: dns.name.Name, found: str, problems: list[str], observed: dict[str, Any], note: str) -> Readiness:
    """Ready when nothing is wrong. ``found`` is what passed (credentials, zone), said when ready."""
    servers: dict[str, Any] = observed["nameservers"]
    serials = [seen["serial"] for seen in servers.values() if seen["serial"] is not None]
    metrics = {
        "nameservers": float(len(servers)),
        "nameservers_authoritative": float(sum(seen["status"] == "ok" for seen in servers.values())),
        # a secondary behind its primary: not a fault by itself (NOTIFY and transfer take a moment)
        "soa_serial_spread": float(max(serials) - min(serials)) if serials else 0.0,
    }
    if problems:
        return Readiness(False, f"{driver}: zone {zone}: {'; '.join(problems)}", observed, metrics)
    ready = f"{driver}: {found}; all {len(servers)} nameserver(s) answer its SOA authoritatively{note}"
    return Readiness(True, ready, observed, metrics)


async def powerdns(driver: PowerDnsDriver, step: StepContext) -> Readiness:
    """The API key and the zone by one GET of the zone's metadata; then the nameservers. See the module docstring."""
    zone, change, note = _subject(step)
    name = zone.to_text(omit_final_dot=True)
    key = secret("powerdns", "powerdns.api_key", driver._config.api_key)
    status, text = await driver._request("GET", driver._zone_url(name) + "?rrsets=false", key)
    if not 200 <= status < 300:
        raise driver._http_error(status, _error_text(text, key), name, f"a read of zone {zone}")
    try:
        meta = json.loads(text)
        serial, kind = meta["serial"], meta["kind"]
    except (ValueError, TypeError, KeyError):
        raise Unavailable(f"PowerDNS API at {driver._api}: zone {zone} answered without its serial and kind") from None
    servers, problems = await _authoritative(driver._nameservers, zone, driver._timeout)
    observed = {"zone": zone.to_text(), "change": change, "api": {"serial": serial, "kind": kind}, "nameservers": servers}
    found = f"API key accepted, zone {zone} exists ({kind}, serial {serial})"
    return _verdict("powerdns", zone, found, problems, observed, note)


async def rfc2136(driver: Rfc2136Driver, step: StepContext) -> Readiness:
    """The TSIG key and the zone by one signed SOA query to the update server; then the nameservers."""
    zone, change, note = _subject(step)
    query = dns.message.make_query(zone, dns.rdatatype.SOA)
    query.flags &= ~dns.flags.RD
    driver._sign(query)
    response = await driver._exchange(query, "SOA query")  # a rejected key raises CredentialsUnavailable here
    soa = response.get_rrset(response.answer, zone, dns.rdataclass.IN, dns.rdatatype.SOA)
    status = _status(response, soa is not None)
    serial = getattr(soa[0], "serial", None) if status == "ok" and soa else None
    where = driver._where
    problems = [] if status == "ok" else [f"update server {where} does not serve the zone ({status})"]
    servers, faults = await _authoritative(driver._nameservers, zone, driver._timeout)
    key = driver._config.tsig_name
    observed = {
        "zone": zone.to_text(),
        "change": change,
        "update_server": {"server": where, "tsig_key": key, "status": status, "serial": serial},
        "nameservers": servers,
    }
    accepted = f"TSIG key {key} accepted by {where}" if key else f"{where} answers (no TSIG key configured)"
    return _verdict("rfc2136", zone, f"{accepted}, zone {zone} served there (serial {serial})", problems + faults, observed, note)


def _status(response: dns.message.Message, has_soa: bool) -> str:
    """ "ok" when the answer is the zone's SOA, authoritatively; else what it was instead."""
    if response.rcode() != dns.rcode.NOERROR:
        return dns.rcode.to_text(response.rcode())
    if not response.flags & dns.flags.AA:
        return "NOERROR without the AA flag: not authoritative"
    return "ok" if has_soa else "NOERROR without a SOA: not the zone's apex"
