"""The ``netbox`` driver: ``ipam/address@v1`` as an IP address object in NetBox's global table, via pynetbox.

The desired state is one IP address object whose ``address`` is exactly the input (a bare IP means the /32 or
/128 NetBox stores for a host), in no VRF, with the input ``status`` and ``description`` (the profile puts the run
id in the description, so the record says which run last claimed the address). Other fields are left alone.

pynetbox is blocking: every operation runs in a worker thread (``asyncio.to_thread``) on a fresh ``requests``
session whose every request carries ``config.timeout`` (connect and read), so a thread gives up on a silent
NetBox by itself instead of lingering past the runner's step timeout; its connections carry TCP_USER_TIMEOUT =
``config.timeout`` (drivers/sockets.py), so a write the kernel could not deliver dies instead of landing late.
The token (a SecretRef in the config) is resolved at each use; pynetbox sends a v2 token (``nbt_<key>.<secret>``)
as ``Authorization: Bearer ...`` and a legacy v1 token as ``Token ...``. No message this module raises or
returns contains the token.

Fencing: the run's fencing token goes into the integer custom field ``hyops_fencing_token`` of the address, in
the same POST or PATCH as the change. check() and apply() refuse (``Fenced``) an address stamped with a newer
token than the run's; verify() wants the run's own token there. The field is the one NetBox setup step (see
README): NetBox lists every custom field defined for IP addresses in ``custom_fields``, so its absence is seen
there, and then the driver works unstamped and says so in apply()'s log instead of failing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import pynetbox  # type: ignore[import-untyped]
import requests
from pynetbox.core.query import Request  # type: ignore[import-untyped]

from hybridops_daemon.drivers import sockets
from hybridops_daemon.drivers.base import (
    ApplyResult,
    CheckResult,
    CredentialsUnavailable,
    DriverError,
    NoCompensation,
    ProbeResult,
    RateLimited,
    Readiness,
    Refused,
    StepContext,
    Unavailable,
    clipped,
    refuse_newer_stamp,
    scrubbed,
    secret,
    stamp_mismatch,
)
from hybridops_daemon.drivers.declarations.netbox import NetboxDriverConfig
from hybridops_daemon.drivers.modules import IpamAddress, validate_inputs

MODULE = "ipam/address@v1"
FENCING_FIELD = "hyops_fencing_token"  # an integer custom field on ipam.ipaddress (README: the NetBox setup step)
_HAS_FIELD = "_has_fencing_field"  # in a state dict: does NetBox define FENCING_FIELD? (never in observed)
T = TypeVar("T")


class _TimeoutSession(requests.Session):
    """A session whose requests all carry ``timeout``: requests has no session-wide default, pynetbox sets none."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    # Every keyword passes through unchanged; restating requests' long signature would only drift from it.
    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, *args, **kwargs)


def _desired(step: StepContext) -> tuple[IpamAddress, str]:
    """The validated inputs and the address as NetBox stores it: a bare IP is a host, /32 or /128."""
    inputs = validate_inputs(step.module, step.inputs)
    if not isinstance(inputs, IpamAddress):
        raise Refused(f"the netbox driver runs {MODULE} only, not {step.module}")
    return inputs, str(ipaddress.ip_interface(inputs.address))


def _state(record: Any) -> dict[str, Any]:
    """The fields this module manages (plus identity, change time and the fencing stamp) from a pynetbox record."""
    data = dict(record)
    status = data.get("status")
    vrf = data.get("vrf")
    custom = data.get("custom_fields")
    custom = custom if isinstance(custom, Mapping) else {}
    stamp = custom.get(FENCING_FIELD)
    return {
        "id": data.get("id"),
        "address": data.get("address"),
        "status": status.get("value") if isinstance(status, Mapping) else status,
        "description": data.get("description") or "",
        "vrf": vrf.get("name") if isinstance(vrf, Mapping) else vrf,
        "last_updated": data.get("last_updated"),
        "fencing_token": stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else None,
        _HAS_FIELD: FENCING_FIELD in custom,
    }


def _observed(state: Mapping[str, Any] | None) -> dict[str, Any]:
    """What check() and verify() report: the state as NetBox holds it, with the stamp (None when absent)."""
    if state is None:
        return {"fencing_token": None}
    return {key: value for key, value in state.items() if key != _HAS_FIELD}


def _stamp_of(state: Mapping[str, Any] | None) -> int | None:
    return None if state is None else state["fencing_token"]


def _what(address: str) -> str:
    return f"NetBox IP address {address}"


_UNSTAMPED = f"not stamped: NetBox defines no custom field {FENCING_FIELD} for IP addresses (see README, NetBox)"


def _field_missing(exc: Exception) -> bool:
    """NetBox's 400 for a custom field it does not define: ``{"custom_fields": {FIELD: "... does not exist ..."}}``."""
    if not isinstance(exc, pynetbox.RequestError) or int(exc.req.status_code) != 400:
        return False
    try:
        body = exc.req.json()
    except ValueError:
        return False
    custom = body.get("custom_fields") if isinstance(body, Mapping) else None
    return isinstance(custom, Mapping) and FENCING_FIELD in custom


def _same_address(stored: Any, address: str) -> bool:
    try:
        return ipaddress.ip_interface(str(stored)) == ipaddress.ip_interface(address)
    except ValueError:
        return False


def _matches(state: Mapping[str, Any] | None, inputs: IpamAddress, address: str) -> bool:
    return (
        state is not None
        and _same_address(state["address"], address)
        and state["status"] == inputs.status
        and state["description"] == inputs.description
    )


def _difference(state: Mapping[str, Any] | None, inputs: IpamAddress, address: str) -> str:
    if state is None:
        return f"{address} is absent"
    wrong = [
        f"{name} is {state[name]!r}, not {wanted!r}"
        for name, wanted in (("status", inputs.status), ("description", inputs.description))
        if state[name] != wanted
    ]
    if not _same_address(state["address"], address):
        wrong.insert(0, f"address is {state['address']!r}, not {address!r}")
    return "; ".join(wrong) or "as desired"


def _netbox_message(response: Any, token: str) -> str:
    """NetBox's explanation from an error response: ``field: message`` pairs for validation errors. Short, with the
    token masked before the cut (see ``clipped``): an error body may echo the request."""
    try:
        body = response.json()
    except ValueError:
        return clipped(" ".join(str(response.text).split()), 300, token, "<token>") or str(response.reason)
    if isinstance(body, Mapping):
        if "detail" in body:
            return clipped(str(body["detail"]), 500, token, "<token>")
        parts = []
        for key, value in body.items():
            text = "; ".join(map(str, value)) if isinstance(value, list) else str(value)
            parts.append(text if key == "__all__" else f"{key}: {text}")
        return clipped(", ".join(parts), 500, token, "<token>")
    return clipped(json.dumps(body), 500, token, "<token>")


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error ("[Errno 111] Connection refused"), not its wrapper soup."""
    seen: set[int] = set()
    current: BaseException = exc
    while id(current) not in seen:
        seen.add(id(current))
        reason = getattr(current, "reason", None)
        inner = reason if isinstance(reason, BaseException) else current.__cause__ or current.__context__
        if inner is None and current.args and isinstance(current.args[0], BaseException):
            inner = current.args[0]
        if inner is None:
            break
        current = inner
    text = str(current)
    # urllib3 prefixes the connection object's repr: keep only the human part.
    return text.split(": ", 1)[1] if text.startswith("<") and ": " in text else text


def _field_fault(fields: Sequence[Mapping[str, Any]]) -> str:
    """Why the fencing stamp could not be written: "" when ``FENCING_FIELD`` is an integer field on IP addresses."""
    if not fields:
        return f"NetBox defines no custom field {FENCING_FIELD}: apply would write unstamped, unfenced (see README, NetBox)"
    kind = fields[0].get("type")
    kind = kind.get("value") if isinstance(kind, Mapping) else kind
    on = fields[0].get("object_types") or []
    if kind != "integer" or "ipam.ipaddress" not in on:
        where = ", ".join(on) or "no object type"
        return f"NetBox's custom field {FENCING_FIELD} is of type {kind} on {where}: the stamp needs integer on ipam.ipaddress"
    return ""


def _write_fault(actions: Mapping[str, Any], verb: str, inputs: IpamAddress) -> str:
    """Why apply's POST (create) or PATCH (change) would be refused, from NetBox's OPTIONS answer: "" when it would not.

    NetBox lists a write method under ``actions`` only when the token may use it (write-enabled, with the object
    permission), and with it the status choices the API accepts."""
    if verb not in actions:
        what = "add" if verb == "POST" else "change"
        return f"the NetBox token may not {what} IP addresses (NetBox's OPTIONS answer offers no {verb})"
    status = actions[verb].get("status")
    offered = [str(choice.get("value")) for choice in status.get("choices", [])] if isinstance(status, Mapping) else []
    if offered and inputs.status not in offered:
        return f"status {inputs.status!r} is not one NetBox accepts ({', '.join(offered)})"
    return ""


class NetboxDriver:
    """``ipam/address@v1`` against one NetBox (``config.url``) with the token ``config.token`` refers to."""

    name = "netbox"
    modules = frozenset({MODULE})

    def __init__(self, config: NetboxDriverConfig) -> None:
        self._config = config
        self._url = config.url.rstrip("/")

    async def preflight(self, step: StepContext) -> Readiness:
        """Would apply() succeed now, and be fenced? Read-only: GETs and one OPTIONS, never a write.

        The token is accepted (a 401/403 raises CredentialsUnavailable, as check()); the custom field
        ``hyops_fencing_token`` is defined, integer, on IP addresses (else apply would go unstamped: not ready);
        NetBox's OPTIONS answer grants the write apply would make (POST to create, PUT/PATCH to change) and offers
        the step's status. A missing address is ready, since apply creates it, unless NetBox holds the same host
        with another prefix length in the global table (ENFORCE_GLOBAL_UNIQUE, on by default, refuses the create). The stamp
        found is reported, never held against a preflight (its fencing token 0 is no run's). The description is
        not compared: profiles put ``${run.id}`` in it, unrendered here.
        Budget: three or four requests, each ``config.timeout``. Raises as check(), never Fenced.
        """
        inputs, address = _desired(step)

        def look(api: Any) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[str], Mapping[str, Any]]:
            found = self._find(api, address)
            fields = [dict(field) for field in api.extras.custom_fields.filter(name=FENCING_FIELD)]
            host = address.split("/")[0]
            others = [] if found else [str(r.address) for r in api.ipam.ip_addresses.filter(address=host, vrf_id="null")]
            key = None if found is None else found["id"]
            answer = Request(base=api.ipam.ip_addresses.url, key=key, token=api.token, http_session=api.http_session)
            actions = answer.options().get("actions") or {}
            return found, fields, others, actions if isinstance(actions, Mapping) else {}

        found, fields, others, actions = await self._call("preflight", look)
        verb = "POST" if found is None else "PUT"  # NetBox lists PATCH's permission as PUT
        faults = [fault for fault in (_field_fault(fields), _write_fault(actions, verb, inputs)) if fault]
        if others:
            faults.append(
                f"NetBox holds {', '.join(others)} in the global table: creating {address} would be a refused duplicate"
            )
        observed = _observed(found) | {"fencing_field": bool(fields), "writable": verb in actions, "same_host": others}
        if faults:
            return Readiness(False, "; ".join(faults), observed)
        if found is None:
            return Readiness(True, f"{address} is not in NetBox yet: apply would create it, stamped", observed)
        stamp = "unstamped" if found["fencing_token"] is None else f"stamped with fencing token {found['fencing_token']}"
        held = f"NetBox holds {address} (id {found['id']}, {found['status']}, {stamp})"
        return Readiness(True, f"{held}: apply may change it", observed)

    async def check(self, step: StepContext) -> CheckResult:
        """Does NetBox hold the address, in the global table, with the desired status and description?

        An address stamped with a newer fencing token than the step's raises Fenced, satisfied or not.
        Read-only and idempotent. Budget: one GET (``config.timeout``). Raises Fenced, CredentialsUnavailable
        (token unresolvable, HTTP 401/403), Refused (other 4xx, invalid inputs, the address held more than once),
        permanent; Unavailable (unreachable, no answer within ``config.timeout``, 5xx), RateLimited (429),
        retryable.
        """
        inputs, address = _desired(step)
        state = await self._call("check", lambda api: self._find(api, address))
        refuse_newer_stamp(_what(address), _stamp_of(state), step)
        satisfied = _matches(state, inputs, address)
        outputs = self._outputs(state) if satisfied and state else {}
        return CheckResult(satisfied=satisfied, observed=_observed(state), outputs=outputs)

    async def apply(self, step: StepContext) -> ApplyResult:
        """Create the address, or PATCH its status and description in place, with the step's fencing token in
        the same request; write nothing when already right (not even the stamp).

        Idempotent: it re-reads first, so a retry after a timed-out write that landed changes nothing, and a
        later run updates the one existing object rather than adding a second. The re-read also refuses
        (Fenced) an address stamped with a newer token, as check(). Budget: one GET plus at most one POST or
        PATCH, each ``config.timeout`` (a second POST when NetBox lacks the custom field for a new address: the
        first is refused, nothing created). Raises as check(); Refused carries NetBox's reason (e.g.
        ``status: x is not a valid choice.``).
        """
        inputs, address = _desired(step)
        stamp = {FENCING_FIELD: step.fencing_token}
        stamped = f"stamped fencing token {step.fencing_token}"

        def write(api: Any) -> tuple[dict[str, Any], str]:
            found = self._find(api, address)
            refuse_newer_stamp(_what(address), _stamp_of(found), step)
            if found is None:
                fields = {"address": address, "status": inputs.status, "description": inputs.description}
                try:
                    created, note = api.ipam.ip_addresses.create(**fields, custom_fields=stamp), stamped
                except pynetbox.RequestError as exc:
                    if not _field_missing(exc):
                        raise
                    created, note = api.ipam.ip_addresses.create(**fields), _UNSTAMPED
                return _state(created), f"created {address} in NetBox (status {inputs.status}); {note}"
            if _matches(found, inputs, address):
                return found, f"{address} already {inputs.status} in NetBox (id {found['id']}): nothing written"
            was = _difference(found, inputs, address)
            change = {"id": found["id"], "status": inputs.status, "description": inputs.description}
            if found[_HAS_FIELD]:
                before = found["fencing_token"]
                change["custom_fields"], note = stamp, f"{stamped} (was {'none' if before is None else before})"
            else:
                note = _UNSTAMPED
            updated = api.ipam.ip_addresses.update([change])
            return _state(updated[0]), f"updated {address} in NetBox (id {found['id']}; {was}); {note}"

        state, line = await self._call("apply", write)
        return ApplyResult(log=(line,), outputs=self._outputs(state))

    async def verify(self, step: StepContext) -> ProbeResult:
        """Find the address afresh, then GET the object by id (a new request, never apply()'s answer) and compare;
        where NetBox defines the custom field, the stamp must be the step's own token.

        Read-only and idempotent. Budget: two GETs, each ``config.timeout``. Raises as check(), but never
        Fenced: a newer stamp is a failed probe (ok False), named in ``detail``.
        """
        inputs, address = _desired(step)

        def probe(api: Any) -> dict[str, Any] | None:
            found = self._find(api, address)
            if found is None:
                return None
            record = api.ipam.ip_addresses.get(found["id"])  # None when deleted in between
            return None if record is None else _state(record)

        state = await self._call("verify", probe)
        has_field = state is not None and state[_HAS_FIELD]
        unstamped = stamp_mismatch(_what(address), _stamp_of(state), step) if has_field else ""
        matches = _matches(state, inputs, address)
        where = f"id {state['id']}" if state else "no object"
        if not matches:
            detail = f"NetBox does not hold {address} as desired: {_difference(state, inputs, address)}"
        else:
            detail = f"NetBox holds {address} as {inputs.status} with the desired description ({where})"
            if unstamped:
                detail += f", but {unstamped}"
            else:
                detail += f", stamped with fencing token {_stamp_of(state)}" if has_field else f"; {_UNSTAMPED}"
        ok = matches and not unstamped
        return ProbeResult(ok=ok, probe="netbox GET /api/ipam/ip-addresses/{id}/", observed=_observed(state), detail=detail)

    async def compensate(self, step: StepContext) -> ApplyResult:
        """Not defined: an IPAM record of what a run did is history, not an effect to undo. Always raises NoCompensation."""
        raise NoCompensation(f"netbox: no compensation for {MODULE}")

    # ------------------------------------------------------------------------------------------ internals

    @staticmethod
    def _outputs(state: Mapping[str, Any] | None) -> dict[str, Any]:
        if state is None:
            return {}
        return {"id": state["id"], "address": state["address"], "status": state["status"]}

    @staticmethod
    def _find(api: Any, address: str) -> dict[str, Any] | None:
        """The one object holding exactly ``address`` in the global table, or None.

        With a prefix length NetBox's ``address`` filter matches exactly; ``vrf_id=null`` keeps VRFs out.
        The client-side comparison guards against a server that filters more loosely.
        """
        records = [_state(record) for record in api.ipam.ip_addresses.filter(address=address, vrf_id="null")]
        exact = [state for state in records if _same_address(state["address"], address) and state["vrf"] is None]
        if len(exact) > 1:
            ids = ", ".join(str(state["id"]) for state in exact)
            raise Refused(f"NetBox holds {address} {len(exact)} times in the global table (ids {ids})")
        return exact[0] if exact else None

    async def _call(self, what: str, operation: Callable[[Any], T]) -> T:
        """Run ``operation(api)`` in a worker thread; translate every failure into this module's typed errors."""

        def run() -> T:
            token = secret("netbox", "netbox.token", self._config.token)
            session = sockets.mount(_TimeoutSession(self._config.timeout), self._config.timeout)
            api = pynetbox.api(self._url, token=token)
            api.http_session = session
            try:
                return operation(api)
            except DriverError as exc:
                raise scrubbed(exc, token, "<token>") from None
            except Exception as exc:
                raise self._translate(what, exc, token) from None
            finally:
                session.close()

        return await asyncio.to_thread(run)

    def _translate(self, what: str, exc: Exception, token: str) -> DriverError:
        error: DriverError
        if isinstance(exc, requests.exceptions.Timeout):
            error = Unavailable(f"NetBox {self._url} did not answer within {self._config.timeout:g}s ({what})")
        elif isinstance(exc, requests.exceptions.RequestException):
            error = Unavailable(f"cannot reach NetBox {self._url} ({what}): {_root_cause(exc)}")
        elif isinstance(exc, pynetbox.RequestError | pynetbox.AllocationError):
            status = int(exc.req.status_code)
            message = f"NetBox answered HTTP {status} to {what}: {_netbox_message(exc.req, token)}"
            if status in (401, 403):
                hint = "check the API token the netbox driver's config refers to"
                error = CredentialsUnavailable(f"{message} ({hint})", code=status)
            elif status == 429:
                error = RateLimited(message, code=status)
            elif status >= 500:
                error = Unavailable(message, code=status)
            else:
                error = Refused(message, code=status)
        elif isinstance(exc, pynetbox.ContentError):
            error = Unavailable(f"{self._url} did not answer {what} with NetBox's JSON API (is it NetBox?)")
        else:
            # Not a failure we know (a pynetbox or parsing surprise): untyped and retryable, the re-check decides.
            error = DriverError(f"NetBox {what} failed unexpectedly: {type(exc).__name__}: {exc}")
        # NetBox never echoes a token, but a proxy or a future version might: never let it through.
        return scrubbed(error, token, "<token>")
