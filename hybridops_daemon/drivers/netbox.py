"""The ``netbox`` driver: ``ipam/address@v1`` as an IP address object in NetBox's global table, via pynetbox.

The desired state is one IP address object whose ``address`` is exactly the input (a bare IP means the /32 or
/128 NetBox stores for a host), in no VRF, with the input ``status`` and ``description`` (the profile puts the run
id in the description, so the record says which run last claimed the address). Other fields are left alone.

pynetbox is blocking: every operation runs in a worker thread (``asyncio.to_thread``) on a fresh ``requests``
session whose every request carries ``config.timeout`` (connect and read), so a thread gives up on a silent
NetBox by itself instead of lingering past the runner's step timeout. The token (a SecretRef in the config)
is resolved at each use; pynetbox sends a v2 token (``nbt_<key>.<secret>``) as ``Authorization: Bearer ...``
and a legacy v1 token as ``Token ...``. No message this module raises or returns contains the token.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import pynetbox  # type: ignore[import-untyped]
import requests

from hybridops_daemon.config.models import NetboxDriverConfig
from hybridops_daemon.drivers.base import (
    ApplyResult,
    CheckResult,
    DriverError,
    PermanentDriverError,
    ProbeResult,
    StepContext,
)
from hybridops_daemon.drivers.modules import IpamAddress, validate_inputs
from hybridops_daemon.secrets import SecretUnavailable, resolve

MODULE = "ipam/address@v1"
T = TypeVar("T")


class NetboxUnavailable(DriverError):
    """NetBox could not be reached or failed on its side (refused/reset connection, 5xx, 429, a non-JSON
    answer): retryable."""


class NetboxTimeout(NetboxUnavailable):
    """NetBox did not connect or answer within ``config.timeout``: retryable (the write may still land,
    which the runner's re-check finds)."""


class NetboxAuthFailed(PermanentDriverError):
    """The token is missing, unknown, expired or lacks the permission (HTTP 401/403): retrying cannot help."""


class NetboxRejected(PermanentDriverError):
    """NetBox refused the request (HTTP 400 and other 4xx, e.g. a status that is not a valid choice, or the
    address already exists with another prefix length); the message carries NetBox's own explanation."""


class NetboxAmbiguous(PermanentDriverError):
    """More than one IP address object holds the address in the global table: an operator must choose."""


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
        raise PermanentDriverError(f"the netbox driver runs {MODULE} only, not {step.module}")
    return inputs, str(ipaddress.ip_interface(inputs.address))


def _state(record: Any) -> dict[str, Any]:
    """The fields this module manages (plus identity and change time) from a pynetbox record."""
    data = dict(record)
    status = data.get("status")
    vrf = data.get("vrf")
    return {
        "id": data.get("id"),
        "address": data.get("address"),
        "status": status.get("value") if isinstance(status, Mapping) else status,
        "description": data.get("description") or "",
        "vrf": vrf.get("name") if isinstance(vrf, Mapping) else vrf,
        "last_updated": data.get("last_updated"),
    }


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


def _netbox_message(response: Any) -> str:
    """NetBox's explanation from an error response: ``field: message`` pairs for validation errors."""
    try:
        body = response.json()
    except ValueError:
        return " ".join(str(response.text).split())[:300] or str(response.reason)
    if isinstance(body, Mapping):
        if "detail" in body:
            return str(body["detail"])
        parts = []
        for key, value in body.items():
            text = "; ".join(map(str, value)) if isinstance(value, list) else str(value)
            parts.append(text if key == "__all__" else f"{key}: {text}")
        return ", ".join(parts)[:500]
    return json.dumps(body)[:500]


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


class NetboxDriver:
    """``ipam/address@v1`` against one NetBox (``config.url``) with the token ``config.token`` refers to."""

    name = "netbox"
    modules = frozenset({MODULE})

    def __init__(self, config: NetboxDriverConfig) -> None:
        if config.timeout <= 0:
            raise ValueError("timeout must be > 0")
        self._config = config
        self._url = config.url.rstrip("/")

    async def check(self, step: StepContext) -> CheckResult:
        """Does NetBox hold the address, in the global table, with the desired status and description?

        Read-only and idempotent. Budget: one GET (``config.timeout``). Raises NetboxAuthFailed,
        NetboxRejected, NetboxAmbiguous (permanent); NetboxUnavailable / NetboxTimeout (retryable);
        PermanentDriverError on invalid inputs or an unavailable token.
        """
        inputs, address = _desired(step)
        state = await self._call("check", lambda api: self._find(api, address))
        satisfied = _matches(state, inputs, address)
        return CheckResult(satisfied=satisfied, observed=state or {}, outputs=self._outputs(state) if satisfied and state else {})

    async def apply(self, step: StepContext) -> ApplyResult:
        """Create the address, or PATCH its status and description in place; write nothing when already right.

        Idempotent: it re-reads first, so a retry after a timed-out write that landed changes nothing, and a
        later run updates the one existing object rather than adding a second. Budget: one GET plus at most
        one POST or PATCH, each ``config.timeout``. Raises as check(); NetboxRejected carries NetBox's reason
        (e.g. ``status: x is not a valid choice.``).
        """
        inputs, address = _desired(step)

        def write(api: Any) -> tuple[dict[str, Any], str]:
            found = self._find(api, address)
            if found is None:
                created = api.ipam.ip_addresses.create(address=address, status=inputs.status, description=inputs.description)
                return _state(created), f"created {address} in NetBox (status {inputs.status})"
            if _matches(found, inputs, address):
                return found, f"{address} already {inputs.status} in NetBox (id {found['id']}): nothing written"
            was = _difference(found, inputs, address)
            updated = api.ipam.ip_addresses.update(
                [{"id": found["id"], "status": inputs.status, "description": inputs.description}]
            )
            return _state(updated[0]), f"updated {address} in NetBox (id {found['id']}; {was})"

        state, line = await self._call("apply", write)
        return ApplyResult(log=(line,), outputs=self._outputs(state))

    async def verify(self, step: StepContext) -> ProbeResult:
        """Find the address afresh, then GET the object by id (a new request, never apply()'s answer) and compare.

        Read-only and idempotent. Budget: two GETs, each ``config.timeout``. Raises as check().
        """
        inputs, address = _desired(step)

        def probe(api: Any) -> dict[str, Any] | None:
            found = self._find(api, address)
            if found is None:
                return None
            record = api.ipam.ip_addresses.get(found["id"])  # None when deleted in between
            return None if record is None else _state(record)

        state = await self._call("verify", probe)
        ok = _matches(state, inputs, address)
        where = f"id {state['id']}" if state else "no object"
        detail = (
            f"NetBox holds {address} as {inputs.status} with the desired description ({where})"
            if ok
            else f"NetBox does not hold {address} as desired: {_difference(state, inputs, address)}"
        )
        return ProbeResult(ok=ok, probe="netbox GET /api/ipam/ip-addresses/{id}/", observed=state or {}, detail=detail)

    async def compensate(self, step: StepContext) -> ApplyResult:
        """Not defined: an IPAM record of what a run did is history, not an effect to undo. Always raises."""
        raise PermanentDriverError(f"no compensation for {MODULE}")

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
            raise NetboxAmbiguous(f"NetBox holds {address} {len(exact)} times in the global table (ids {ids})")
        return exact[0] if exact else None

    def _token(self) -> str:
        try:
            return resolve("netbox.token", self._config.token)
        except SecretUnavailable as exc:
            raise NetboxAuthFailed(str(exc)) from None

    async def _call(self, what: str, operation: Callable[[Any], T]) -> T:
        """Run ``operation(api)`` in a worker thread; translate every failure into this module's typed errors."""

        def run() -> T:
            token = self._token()
            session = _TimeoutSession(self._config.timeout)
            api = pynetbox.api(self._url, token=token)
            api.http_session = session
            try:
                return operation(api)
            except DriverError as exc:
                raise type(exc)(str(exc).replace(token, "<token>")) from None
            except Exception as exc:
                raise self._translate(what, exc, token) from None
            finally:
                session.close()

        return await asyncio.to_thread(run)

    def _translate(self, what: str, exc: Exception, token: str) -> DriverError:
        error: DriverError
        if isinstance(exc, requests.exceptions.Timeout):
            error = NetboxTimeout(f"NetBox {self._url} did not answer within {self._config.timeout:g}s ({what})")
        elif isinstance(exc, requests.exceptions.RequestException):
            error = NetboxUnavailable(f"cannot reach NetBox {self._url} ({what}): {_root_cause(exc)}")
        elif isinstance(exc, pynetbox.RequestError | pynetbox.AllocationError):
            status = int(exc.req.status_code)
            message = f"NetBox answered HTTP {status} to {what}: {_netbox_message(exc.req)}"
            if status in (401, 403):
                error = NetboxAuthFailed(f"{message} (check the API token the netbox driver's config refers to)")
            elif status == 429 or status >= 500:
                error = NetboxUnavailable(message)
            else:
                error = NetboxRejected(message)
        elif isinstance(exc, pynetbox.ContentError):
            error = NetboxUnavailable(f"{self._url} did not answer {what} with NetBox's JSON API (is it NetBox?)")
        else:
            # Not a failure we know (a pynetbox or parsing surprise): untyped and retryable, the re-check decides.
            error = DriverError(f"NetBox {what} failed unexpectedly: {type(exc).__name__}: {exc}")
        # NetBox never echoes a token, but a proxy or a future version might: never let it through.
        return type(error)(str(error).replace(token, "<token>"))
