"""The ``hcloud`` driver: ``network/floating-ip@v1`` on Hetzner Cloud, through the official ``hcloud`` SDK.

The floating IP is found by its address (the project's floating IPs, page by page) and the target by its
server name. apply() starts the API's ``assign`` action and waits for it with the SDK's polling, bounded by
``action_timeout``; verify() reads the floating IP back by id.

Fencing: the run's fencing token is stamped on the floating IP as the label ``hybridops/fencing-token`` (the
decimal token; the other labels are kept), set just BEFORE the assign (see ``_assign`` for why that order).
check() and apply() read it from the listing they make anyway and refuse (``Fenced``) to touch an IP stamped
with a newer token than the run's; verify() also wants the run's own token on it. The token is resolved from its reference at
every call (a rotated token is picked up) and never appears in a message, an output or a log line.

Threads and time: the SDK is blocking (requests), so each operation runs in a worker thread, and every HTTP
request has its own client-side timeout (``request_timeout``). A caller's ``asyncio.timeout`` abandons the
await at once; the thread then ends by itself within the bounds given per method below, never later. Every
connection carries TCP_USER_TIMEOUT = ``request_timeout`` (drivers/sockets.py): a request the kernel could not
deliver in that time dies with its connection instead of landing after a partition heals.

SDK retries: hcloud 2.27 retries ``rate_limit_exceeded``, ``conflict``, 502/504 and client-side timeouts by
itself, up to 5 times with exponential backoff (about 30 s in all). That would hide a 429 from the journal,
outlast a step's timeout and leave a thread sleeping after its caller gave up, so this driver turns it off and
lets the chain runner retry, with its journaled backoff. hcloud exposes no public setting for that, nor the
response headers (where ``RateLimit-Reset`` lives), nor the session's socket options, so all three are set
on the client's base object (``client._client``): an SDK upgrade that moves them fails every call loudly instead
of silently retrying.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import hcloud
import requests
from hcloud.actions import ActionFailedException, ActionTimeoutException
from hcloud.floating_ips import BoundFloatingIP
from hcloud.servers import BoundServer

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
    parse_stamp,
    refuse_newer_stamp,
    scrubbed,
    secret,
    stamp_mismatch,
)
from hybridops_daemon.drivers.declarations.hcloud import HcloudDriverConfig
from hybridops_daemon.drivers.modules import FloatingIp, inputs_of

MODULE = "network/floating-ip@v1"
PROBE = "hcloud GET /floating_ips/{id}"
FENCING_LABEL = "hybridops/fencing-token"  # a valid Hetzner label key (DNS prefix + name); the value is the token
T = TypeVar("T")


# --------------------------------------------------------------------------------------------- errors

# The API's error codes as the shared kinds; ``code`` keeps the API's own. Busy (locked, conflict) is unavailable
# for now; a token the API does not know is bad credentials, one that may not do this is a refusal.
_BY_CODE: Mapping[str, type[DriverError]] = {
    "locked": Unavailable,
    "conflict": Unavailable,
    "rate_limit_exceeded": RateLimited,
    "server_error": Unavailable,
    "service_error": Unavailable,
    "unavailable": Unavailable,
    "maintenance": Unavailable,
    "timeout": Unavailable,
    "bad_gateway": Unavailable,
    "resource_unavailable": Unavailable,
    "unauthorized": CredentialsUnavailable,
    "forbidden": Refused,
    "token_readonly": Refused,
    "not_found": NotFound,
    "invalid_input": Refused,
    "json_error": Refused,
    "protected": Refused,
    "unsupported_error": Refused,
    "uniqueness_error": Refused,
    "resource_limit_exceeded": Refused,
    "deprecated_api_endpoint": Refused,
    "method_not_allowed": Refused,
    "floating_ip_assigned": Refused,
}
_BY_STATUS: Mapping[int, type[DriverError]] = {
    400: Refused,
    401: CredentialsUnavailable,
    403: Refused,
    404: NotFound,
    409: Unavailable,
    422: Refused,
    423: Unavailable,
    429: RateLimited,
}
_RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def _error_class(code: str | int) -> type[DriverError]:
    if isinstance(code, str):
        return _BY_CODE.get(code, DriverError)  # an unknown code: let the runner's bounded retries decide
    if code in _BY_STATUS:
        return _BY_STATUS[code]
    return Unavailable if code >= 500 else Refused if 400 <= code < 500 else DriverError


def _rate_hint(headers: Mapping[str, str]) -> tuple[str, float | None]:
    """The hint for the message and the seconds until the quota is full again (``RateLimit-Reset`` is a UNIX
    time; the quota refills gradually, so a retry may pass well before that)."""
    try:
        reset_at = float(headers["RateLimit-Reset"])
    except (KeyError, ValueError):
        return "", None
    when = datetime.fromtimestamp(reset_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    quota = ""
    if "RateLimit-Limit" in headers:
        quota = f"{headers.get('RateLimit-Remaining', '?')} of {headers['RateLimit-Limit']} requests left; "
    after = max(0.0, reset_at - time.time())
    return f" ({quota}quota full again at {when}, in {after:.0f}s)", after


# --------------------------------------------------------------------------------------------- the driver


@dataclass(frozen=True, slots=True)
class _Located:
    """The floating IP (as listed) and the target server, with their ids."""

    floating_ip: BoundFloatingIP
    target: BoundServer
    floating_ip_id: int
    target_id: int
    current_id: int | None  # the server the IP is assigned to, None when unassigned
    stamp: int | None  # the fencing token of the FENCING_LABEL, None when absent (or not a decimal)


def _id(value: int | None, what: str) -> int:
    if value is None:
        raise DriverError(f"hcloud: the API returned {what} without an id")
    return int(value)


def _stamp(fip: BoundFloatingIP) -> int | None:
    return parse_stamp((fip.labels or {}).get(FENCING_LABEL))


def _what(inputs: FloatingIp) -> str:
    return f"floating IP {inputs.ip}"


def _no_floating_ip(inputs: FloatingIp) -> str:
    return f"hcloud: no floating IP {inputs.ip} in the token's project"


def _no_server(inputs: FloatingIp) -> str:
    return f"hcloud: no server named {inputs.target!r} in the token's project"


def _covers(listed: str | None, wanted: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An IPv4 floating IP is one address; an IPv6 one is a /64 network holding ``wanted``."""
    if not listed:
        return False
    try:
        if "/" in listed:
            return wanted in ipaddress.ip_network(listed, strict=False)
        return ipaddress.ip_address(listed) == wanted
    except ValueError:
        return False


class HcloudDriver:
    """``network/floating-ip@v1`` (inputs ``ip``, ``target``) against the Hetzner Cloud API.

    ``request_timeout`` bounds every single HTTP request (connect: at most 5 s of it). Outputs of a step:
    ``ip``, ``assigned_to`` (the server name), ``server_id``, ``floating_ip_id``.
    """

    name = "hcloud"
    modules = frozenset({MODULE})

    def __init__(self, config: HcloudDriverConfig, *, request_timeout: float = 10.0) -> None:
        if request_timeout <= 0:
            raise ValueError("request_timeout must be > 0")
        self._config = config
        self._request_timeout = request_timeout
        poll = max(config.poll_interval, 0.01)
        # wait_until_finished() polls, then sleeps poll_interval between polls: this many polls span action_timeout.
        self._poll_max_retries = max(2, math.ceil(config.action_timeout / poll) + 1)
        self._lock = threading.Lock()
        self._client_for: tuple[str, hcloud.Client] | None = None
        self._seen = threading.local()  # the RateLimit-* headers of this worker thread's latest answer

    # ------------------------------------------------------------------------------------------ the contract

    async def check(self, step: StepContext) -> CheckResult:
        """Is the floating IP assigned to the target server? Read-only and idempotent.

        The fencing label comes with the listing: an IP stamped with a newer token than the step's raises
        Fenced, assigned to the target or not. Budget: 2 requests + 1 per 50 floating IPs past the first 50,
        each ≤ ``request_timeout``. Raises Fenced, NotFound (IP or server unknown), CredentialsUnavailable (token
        unknown or unresolvable), Refused (token may not, bad inputs); RateLimited, Unavailable (locked, 5xx, no
        answer within ``request_timeout``), retryable.
        """
        inputs = self._inputs(step)
        found = await self._run("check", lambda client: self._locate(client, inputs))
        refuse_newer_stamp(_what(inputs), found.stamp, step)
        satisfied = found.current_id == found.target_id
        return CheckResult(
            satisfied=satisfied,
            observed=self._observed(inputs, found.floating_ip_id, found.current_id, found.target_id, found.stamp),
            outputs=self._outputs(inputs, found.floating_ip_id, found.target_id) if satisfied else {},
        )

    async def apply(self, step: StepContext) -> ApplyResult:
        """Stamp the floating IP with the step's fencing token, assign it to the target server and wait for the
        API's action to succeed.

        Idempotent: when the IP already is on the target, nothing is written, not even the stamp (and a
        ``floating_ip_assigned`` answer is read as success once a fresh read confirms it); a stamp already
        equal to the token is not written again. Refuses (Fenced) an IP stamped with a newer token, as check().
        Budget: check()'s requests + 1 PUT (the labels) + 1 POST + the action's polling (≤ ``action_timeout`` +
        one ``poll_interval``, each poll ≤ ``request_timeout``); give the step a timeout above that. Raises
        RateLimited, Unavailable (another action runs: code ``locked``; conflict, 5xx, no answer, the action
        ended in error or still runs after ``action_timeout``), retryable; Fenced, NotFound,
        CredentialsUnavailable, Refused (the API refused, e.g. ``invalid_input``), permanent.
        """
        inputs = self._inputs(step)
        return await self._run("apply", lambda client: self._assign(client, inputs, step))

    async def verify(self, step: StepContext) -> ProbeResult:
        """Read the floating IP afresh by id (never apply()'s answer): is it assigned to the target's id, and
        stamped with the step's own fencing token (which apply() wrote before assigning)?

        Read-only and idempotent. Budget: check()'s requests + 1 GET. Raises as check(), but never Fenced: a
        newer stamp is a failed probe (ok False), named in ``detail``.
        """
        inputs = self._inputs(step)

        def probe(client: hcloud.Client) -> tuple[int, int | None, int, int | None]:
            found = self._locate(client, inputs)
            fresh = client.floating_ips.get_by_id(found.floating_ip_id)
            current = None if fresh.server is None else _id(fresh.server.id, "a server")
            return found.floating_ip_id, current, found.target_id, _stamp(fresh)

        fip_id, current, target_id, stamp = await self._run("verify", probe)
        unstamped = stamp_mismatch(_what(inputs), stamp, step)
        ok = current == target_id and not unstamped
        if current == target_id:
            detail = f"{inputs.ip} is assigned to {inputs.target} (server {target_id})"
            detail += f", but {unstamped}" if unstamped else f", stamped with fencing token {stamp}"
        elif current is None:
            detail = f"{inputs.ip} is not assigned to any server, not to {inputs.target} (server {target_id})"
        else:
            detail = f"{inputs.ip} is assigned to server {current}, not to {inputs.target} (server {target_id})"
        observed = self._observed(inputs, fip_id, current, target_id, stamp)
        return ProbeResult(ok=ok, probe=PROBE, observed=observed, detail=detail)

    async def preflight(self, step: StepContext) -> Readiness:
        """Could the step succeed now? Read-only: GET requests only, nothing stamped, no action started.

        Ready when the token is accepted, the floating IP and the target server exist, and, unless the IP already
        is on the target (then apply() writes nothing), neither is locked: not the server (its ``locked`` flag)
        nor the IP (an action still running on it); an assign would meet 423 ``locked`` either way. ``observed``
        says where the IP points now (``server_id``, ``assigned_to``). Not checked: whether the token may write
        (a read-only token passes; only a write could tell) and the fencing stamp (a preflight has no token of
        its own to compare it with). Budget: 4 requests (+1 per 50 floating IPs past the first 50), each ≤
        ``request_timeout``. A missing IP or server, or a lock, is not ready; raises as check() (never Fenced).
        """
        inputs = self._inputs(step)
        return await self._run("preflight", lambda client: self._readiness(client, inputs))

    async def compensate(self, step: StepContext) -> ApplyResult:
        """None: the driver does not know where the IP was before, and moving it back is the failback chain's
        job (a step of its own, checked and verified like this one). Always raises NoCompensation."""
        raise NoCompensation(f"hcloud: no compensation for {MODULE}: the failback chain moves the floating IP back")

    # ------------------------------------------------------------------------------------------ the work (worker thread)

    @staticmethod
    def _floating_ip(client: hcloud.Client, inputs: FloatingIp) -> BoundFloatingIP | None:
        wanted = ipaddress.ip_address(inputs.ip)
        return next((f for f in client.floating_ips.get_all() if _covers(f.ip, wanted)), None)

    def _locate(self, client: hcloud.Client, inputs: FloatingIp) -> _Located:
        fip = self._floating_ip(client, inputs)
        if fip is None:
            raise NotFound(_no_floating_ip(inputs), code="not_found")
        server: BoundServer | None = client.servers.get_by_name(inputs.target)
        if server is None:
            raise NotFound(_no_server(inputs), code="not_found")
        current = None if fip.server is None else _id(fip.server.id, "a server")
        return _Located(fip, server, _id(fip.id, "a floating IP"), _id(server.id, "a server"), current, _stamp(fip))

    def _readiness(self, client: hcloud.Client, inputs: FloatingIp) -> Readiness:
        """preflight()'s reads, each fault answered as soon as it is seen (later reads could not change the answer)."""
        fip = self._floating_ip(client, inputs)
        if fip is None:
            return Readiness(False, _no_floating_ip(inputs), {"ip": inputs.ip, "target": inputs.target})
        fip_id = _id(fip.id, "a floating IP")
        current = None if fip.server is None else _id(fip.server.id, "a server")
        server: BoundServer | None = client.servers.get_by_name(inputs.target)
        if server is None:
            observed = {"ip": inputs.ip, "floating_ip_id": fip_id, "server_id": current, "target": inputs.target}
            return Readiness(False, _no_server(inputs), observed)
        target_id = _id(server.id, "a server")
        observed = self._observed(inputs, fip_id, current, target_id, _stamp(fip)) | {"target_locked": bool(server.locked)}
        if current == target_id:
            observed["assigned_to"] = inputs.target
            return Readiness(True, f"hcloud: {inputs.ip} is already assigned to {inputs.target}: nothing to move", observed)
        # Where the IP points now, by name: what an operator reading the readiness wants to know.
        observed["assigned_to"] = None if current is None else client.servers.get_by_id(current).name
        where = "unassigned" if current is None else f"assigned to {observed['assigned_to']} (server {current})"
        if server.locked:
            why = f"server {inputs.target!r} (server {target_id}) is locked: an assign to it gets 423 locked until it is unlocked"
            return Readiness(False, f"hcloud: {why}; {inputs.ip} is {where}", observed)
        running = client.floating_ips.get_actions_list(fip, status=["running"], per_page=1).actions
        if running:
            action = running[0]
            observed["running_action"] = {"id": action.id, "command": action.command}
            why = f"floating IP {inputs.ip} is locked by action {action.id} ({action.command}), still running"
            return Readiness(False, f"hcloud: {why}: an assign now gets 423 locked; it is {where}", observed)
        ready = f"hcloud: {inputs.ip} is {where} and can be assigned to {inputs.target} (server {target_id})"
        return Readiness(True, ready, observed)

    def _assign(self, client: hcloud.Client, inputs: FloatingIp, step: StepContext) -> ApplyResult:
        found = self._locate(client, inputs)
        refuse_newer_stamp(_what(inputs), found.stamp, step)  # again: the listing is read anyway, the check is free
        where = f"{inputs.ip} (floating IP {found.floating_ip_id}) → {inputs.target} (server {found.target_id})"
        outputs = self._outputs(inputs, found.floating_ip_id, found.target_id)
        if found.current_id == found.target_id:
            return ApplyResult(log=(f"{where}: already assigned, no action started",), outputs=outputs)
        # The stamp first, then the assign. Hetzner has neither a request that does both nor a conditional
        # write, so one of the two lands alone if the other fails. Stamped but not assigned: the IP only says
        # that leader N acted (older leaders are refused, as they should be while N exists; N's retry goes on).
        # Assigned but not stamped, the other order's failure: our change would sit under an older stamp or
        # none, and an older leader could overwrite it, which is what the stamp is there to prevent.
        # The labels PUT replaces all labels: the ones just listed are sent back with ours merged in.
        token = str(step.fencing_token)
        labels = dict(found.floating_ip.labels or {})
        if labels.get(FENCING_LABEL) == token:
            stamped = f"already stamped with fencing token {token}"
        else:
            client.floating_ips.update(found.floating_ip, labels={**labels, FENCING_LABEL: token})
            stamped = f"stamped fencing token {token} (label {FENCING_LABEL}, was {labels.get(FENCING_LABEL) or 'none'})"
        began = time.monotonic()
        try:
            action = found.floating_ip.assign(found.target)
        except hcloud.APIException as exc:
            # It landed between our read and the POST (a timed-out earlier attempt, say): success if it is ours.
            if exc.code == "floating_ip_assigned":
                fresh = client.floating_ips.get_by_id(found.floating_ip_id)
                if fresh.server is not None and fresh.server.id == found.target_id:
                    line = f"{where}: {stamped}; already assigned (found so by the API), no action started"
                    return ApplyResult(log=(line,), outputs=outputs)
            raise
        action.wait_until_finished(max_retries=self._poll_max_retries)
        was = "unassigned" if found.current_id is None else f"on server {found.current_id}"
        line = f"{where}: was {was}; {stamped}; action {action.id} succeeded after {time.monotonic() - began:.2f}s"
        return ApplyResult(log=(line,), outputs=outputs)

    # ------------------------------------------------------------------------------------------ plumbing

    async def _run(self, what: str, work: Callable[[hcloud.Client], T]) -> T:
        return await asyncio.to_thread(self._guarded, what, work)

    def _guarded(self, what: str, work: Callable[[hcloud.Client], T]) -> T:
        """Run ``work`` with a client (in the worker thread) and turn whatever it raises into a typed error."""
        self._seen.headers = {}
        token = secret(f"hcloud {what}", "hcloud token", self._config.token)
        try:
            return work(self._client(token))
        except DriverError as exc:
            raise scrubbed(exc, token) from None
        except Exception as exc:
            # `from None`: the SDK's exception may quote the API's answer, which is not ours to vouch for.
            raise scrubbed(self._translate(what, exc), token) from None

    def _translate(self, what: str, exc: Exception) -> DriverError:
        prefix = f"hcloud {what}"
        if isinstance(exc, ActionFailedException):
            error = exc.action.error or {"code": "unknown", "message": "no error given"}
            return Unavailable(
                f"{prefix}: action {exc.action.id} ({exc.action.command}) ended in error: {error['code']}: {error['message']}",
                code=error["code"],
            )
        if isinstance(exc, ActionTimeoutException):
            return Unavailable(
                f"{prefix}: action {exc.action.id} ({exc.action.command}) still running after "
                f"{self._config.action_timeout:g}s; it may still succeed"
            )
        if isinstance(exc, hcloud.APIException):
            cls = _error_class(exc.code)
            correlation = f", correlation id {exc.correlation_id}" if exc.correlation_id else ""
            message = f"{prefix}: {exc.code}: {exc.message}{correlation}"
            if cls is RateLimited:
                hint, after = _rate_hint(getattr(self._seen, "headers", {}))
                return RateLimited(message + hint, code=exc.code, retry_after=after)
            return cls(message, code=exc.code)
        if isinstance(exc, requests.Timeout):
            return Unavailable(f"{prefix}: no answer from {self._config.endpoint} within {self._request_timeout:g}s")
        if isinstance(exc, requests.RequestException):
            return Unavailable(f"{prefix}: cannot reach {self._config.endpoint}: {type(exc).__name__}")
        # Anything else (an answer the SDK could not parse, an SDK change): still a typed, retryable error.
        return DriverError(f"{prefix}: unexpected {type(exc).__name__}: {exc}")

    def _client(self, token: str) -> hcloud.Client:
        with self._lock:
            if self._client_for is None or self._client_for[0] != token:
                self._client_for = (token, self._build_client(token))
            return self._client_for[1]

    def _build_client(self, token: str) -> hcloud.Client:
        client = hcloud.Client(
            token=token,
            api_endpoint=self._config.endpoint,
            application_name="hybridops-daemon",
            poll_interval=self._config.poll_interval,
            poll_max_retries=self._poll_max_retries,
            timeout=(min(5.0, self._request_timeout), self._request_timeout),
        )
        base = client._client  # no public knob for these three in hcloud 2.27: see the module docstring
        base._retry_max_retries = 0
        base._session.hooks["response"].append(self._remember_rate_limit)
        sockets.mount(base._session, self._request_timeout)
        return client

    def _remember_rate_limit(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._seen.headers = {name: response.headers[name] for name in _RATE_HEADERS if name in response.headers}

    @staticmethod
    def _inputs(step: StepContext) -> FloatingIp:
        return inputs_of("hcloud", step.module, step.inputs, FloatingIp)

    @staticmethod
    def _observed(inputs: FloatingIp, fip_id: int, current: int | None, target_id: int, stamp: int | None) -> dict[str, Any]:
        return {
            "ip": inputs.ip,
            "floating_ip_id": fip_id,
            "server_id": current,
            "target": inputs.target,
            "target_server_id": target_id,
            "fencing_token": stamp,
        }

    @staticmethod
    def _outputs(inputs: FloatingIp, fip_id: int, server_id: int) -> dict[str, Any]:
        return {"ip": inputs.ip, "assigned_to": inputs.target, "server_id": server_id, "floating_ip_id": fip_id}
