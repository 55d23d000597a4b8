"""The ``gcp`` driver: ``compute/capacity@v1`` as Compute Engine instances, through ``google-cloud-compute`` (REST);
and ``compute/group-size@v1`` as a zonal managed instance group, in drivers/gcp_group.py (every method hands a step of
that module there; it uses this module's clients, calls, operation wait and errors).

``inputs.name`` is an instance in ``config.project`` / ``config.zone``; ``state: running`` means status
``RUNNING``, ``state: stopped`` means ``TERMINATED`` (or ``STOPPED``). ``start`` / ``stop`` return a zone
operation (``PENDING → RUNNING → DONE``), which the driver waits out with ``zoneOperations.wait``.

Every SDK call runs in a worker thread with ``timeout=request_timeout`` and ``retry=None``: the SDK's default
retry would re-send ``instances.get`` on 503 for up to 600 s, out of sight of the step's timeout and of the
runner's own retries. The long-running ``start``/``stop`` are called as ``*_unary`` (the plain ``Operation``)
rather than as ``ExtendedOperation``: its ``result()`` polls with ``operations.get`` calls whose per-request
timeout cannot be set, so a thread could outlive the step by minutes. Cancelling a coroutine here (the runner's
timeout) abandons the await; the thread's request then ends within ``request_timeout``, and the operation it
started carries on at Google, which is what ``check()`` on resume is for. Each client's connections carry
TCP_USER_TIMEOUT = ``request_timeout`` (drivers/sockets.py, mounted on the REST transport's own session, which
the SDK offers no way to pass in): a request the kernel could not deliver dies instead of landing after a heal.

Fencing: apply() labels the instance ``hyops-fencing-token`` = the run's fencing token (other labels kept) before it
starts or stops it, with ``instances.setLabels`` carrying the ``labelFingerprint`` of its read: Google's optimistic
concurrency, so the stamp is a conditional write (a newer writer's stamp in between: 412 conditionNotMet, reported
as Fenced). check() and apply() refuse (Fenced) an instance stamped with a newer token than the run's. The start or
stop that follows the stamp is not conditional: it is checked, not guarded, by the stamp. A managed instance group
takes no stamp at all (no labels with a fingerprint): its resize is check-then-write (drivers/gcp_group.py).

Credentials: ``config.credentials`` (a SecretRef) holds a service-account key, either the JSON itself (a file
reference, or an env var holding the JSON) or, for an env var, the path of the JSON file. It is resolved at
first use, kept inside the SDK's credentials object, and re-resolved after a 401 (a rotated key is picked up).
Without it: anonymous credentials when ``config.endpoint`` is set (a local fake), Application Default
Credentials otherwise. Error messages name the reference, never the key.

Errors, in the shared vocabulary of ``drivers.base``: retryable ``RateLimited`` (429) and ``Unavailable`` (5xx;
connection refused; no answer within ``request_timeout``, code ``request_timeout``; instance or API not ready:
400 ``resourceNotReady``, 409; an operation DONE with ``error``, ``details["codes"]`` holding Google's codes and
``details["http_status"]``; not done within ``operation_timeout``); permanent ``NotFound`` (404), ``Refused``
(403, other 4xx, or a suspended instance asked to run), ``CredentialsUnavailable`` (the secret reference or the key
is unusable, or the API refuses the credentials: 401).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import requests  # the SDK's REST transport lets its exceptions through unwrapped
from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import compute_v1
from google.oauth2 import service_account
from google.protobuf import json_format  # type: ignore[import-untyped]

from hybridops_daemon.drivers import sockets
from hybridops_daemon.drivers.base import (
    ApplyResult,
    CheckResult,
    CredentialsUnavailable,
    DriverError,
    Fenced,
    NotFound,
    ProbeResult,
    RateLimited,
    Readiness,
    Refused,
    StepContext,
    Unavailable,
    parse_stamp,
    refuse_newer_stamp,
    secret,
)
from hybridops_daemon.drivers.declarations.gcp import GcpDriverConfig
from hybridops_daemon.drivers.modules import ComputeCapacity, inputs_of

if TYPE_CHECKING:
    from hybridops_daemon.drivers.gcp_group import GroupSize

MODULE = "compute/capacity@v1"
GROUP_MODULE = "compute/group-size@v1"  # a managed instance group's size: drivers/gcp_group.py
FENCING_LABEL = "hyops-fencing-token"  # a valid GCE label key; the value is the decimal fencing token
SCOPES = ("https://www.googleapis.com/auth/compute",)
PROBE = "gcp instances.get read-back"

# The API reference's instance statuses. STOPPED is not reported by GCE today; accepted as "stopped" all the same.
TARGET_STATUSES: Mapping[str, frozenset[str]] = {
    "running": frozenset({"RUNNING"}),
    "stopped": frozenset({"TERMINATED", "STOPPED"}),
}
TRANSITIONAL = frozenset({"PROVISIONING", "STAGING", "STOPPING", "SUSPENDING", "REPAIRING"})
# The statuses each verb acts on (a SUSPENDED instance can be stopped, not started: it must be resumed).
ACTIONABLE: Mapping[str, frozenset[str]] = {
    "start": frozenset({"TERMINATED", "STOPPED"}),
    "stop": frozenset({"RUNNING", "SUSPENDED"}),
}

T = TypeVar("T")
R = TypeVar("R")


# Unavailable's code for a request that got no answer within ``request_timeout`` (_wait asks such a wait again).
REQUEST_TIMEOUT = "request_timeout"


@dataclass(frozen=True, slots=True)
class _Clients:
    instances: compute_v1.InstancesClient
    operations: compute_v1.ZoneOperationsClient
    groups: compute_v1.InstanceGroupManagersClient
    regions: compute_v1.RegionsClient


def _first_reason(exc: google_exceptions.GoogleAPICallError) -> str:
    for error in exc.errors or ():
        if isinstance(error, Mapping) and error.get("reason"):
            return str(error["reason"])
    return ""


def _translate(exc: Exception, what: str) -> DriverError:
    """One SDK or transport failure as a typed driver error. Messages carry Google's text, never credentials."""
    if isinstance(exc, requests.exceptions.Timeout):
        return Unavailable(f"{what}: no answer within the client-side request timeout", code=REQUEST_TIMEOUT)
    if isinstance(exc, requests.exceptions.RequestException):
        return Unavailable(f"{what}: cannot reach the Compute API ({type(exc).__name__})")
    if isinstance(exc, auth_exceptions.GoogleAuthError):
        # Raised when a 401 makes the session refresh credentials that cannot be (anonymous) or are refused.
        # Only the type: a token endpoint's answer is no place to quote from.
        if exc.retryable:
            return Unavailable(f"{what}: refreshing the credentials failed for now ({type(exc).__name__})")
        refused = f"{what}: the API refused the credentials and they cannot be refreshed ({type(exc).__name__})"
        return CredentialsUnavailable(refused)
    if isinstance(exc, json_format.ParseError):
        return Unavailable(f"{what}: the API answered with something that is not a valid response ({type(exc).__name__})")
    if not isinstance(exc, google_exceptions.GoogleAPICallError):
        return DriverError(f"{what}: {type(exc).__name__}")
    code = exc.code if isinstance(exc.code, int) else None
    reason = _first_reason(exc)
    detail = f"{what}: HTTP {code}{f' {reason}' if reason else ''}: {exc.message}"[:500]
    if isinstance(exc, google_exceptions.NotFound):
        return NotFound(detail, code=code)
    if isinstance(exc, google_exceptions.Unauthorized):
        return CredentialsUnavailable(detail, code=code)
    if isinstance(exc, google_exceptions.TooManyRequests):
        return RateLimited(detail, code=code)
    if isinstance(exc, google_exceptions.Conflict) or reason == "resourceNotReady":
        return Unavailable(detail, code=reason or code)  # the instance or the API is between states
    if code is not None and 400 <= code < 500:
        return Refused(detail, code=code)
    return Unavailable(detail, code=code)


def _status(instance: compute_v1.Instance) -> str:
    return str(instance.status or "UNKNOWN")


def _stamp(instance: compute_v1.Instance) -> int | None:
    return parse_stamp(dict(instance.labels).get(FENCING_LABEL))


def _observed(instance: compute_v1.Instance) -> dict[str, Any]:
    seen = {"status": _status(instance), "id": str(instance.id), "self_link": instance.self_link}
    return seen | {"fencing_token": _stamp(instance)}


def _outputs(inputs: ComputeCapacity, instance: compute_v1.Instance) -> dict[str, Any]:
    return {"name": inputs.name, "state": inputs.state, **_observed(instance)}


def _verb(state: str) -> str:
    return "start" if state == "running" else "stop"


def _suspended(name: str) -> str:
    return f"gcp: instance {name} is SUSPENDED: resume it (not part of {MODULE}) before it can run"


def _operation_errors(op: compute_v1.Operation) -> tuple[tuple[str, ...], str]:
    """(codes, one-line description) of a DONE operation's error; empty codes when it succeeded."""
    errors = list(op.error.errors) if op.error else []
    if errors:
        codes = tuple(str(error.code) or "UNKNOWN" for error in errors)
        return codes, "; ".join(f"{error.code}: {error.message}" for error in errors)
    if op.http_error_status_code and op.http_error_status_code >= 400:
        return (str(op.http_error_status_code),), op.http_error_message or "operation failed"
    return (), ""


def _rest_session(transport: object) -> requests.Session:
    """The REST transport's own session: the SDK takes none of ours, so its socket options are set on this one. An SDK
    that moves it fails every call loudly rather than running unbounded."""
    session = getattr(transport, "_session", None)
    if not isinstance(session, requests.Session):
        raise DriverError(f"gcp: {type(transport).__name__} has no requests session to bound (a google-cloud-compute change?)")
    return session


class GcpDriver:
    """``compute/capacity@v1`` on Compute Engine (and ``compute/group-size@v1``: drivers/gcp_group.py).

    ``request_timeout``: the client-side limit of each API request (so a worker thread ends within it after
    its caller gave up). ``poll_interval``: how often apply() re-reads an instance that is settling, or a group
    whose instances are coming up or going.
    """

    name = "gcp"
    modules = frozenset({MODULE, GROUP_MODULE})

    def __init__(self, config: GcpDriverConfig, *, request_timeout: float = 30.0, poll_interval: float = 1.0) -> None:
        if request_timeout <= 0 or poll_interval <= 0:
            raise ValueError("request_timeout and poll_interval must be > 0")
        self._config = config
        self._request_timeout = request_timeout
        self._poll_interval = poll_interval
        self._lock = threading.Lock()
        self._clients: _Clients | None = None

    # ------------------------------------------------------------------------------------------ the contract

    async def check(self, step: StepContext) -> CheckResult:
        """Is the instance already in the desired state? Read-only and idempotent.

        Budget: one ``instances.get`` (≤ request_timeout). A transitional status (STAGING, STOPPING, ...) is not
        satisfied. Raises Fenced (stamped with a newer token, satisfied or not), NotFound, Refused,
        CredentialsUnavailable (permanent); RateLimited, Unavailable (retryable).
        """
        if step.module == GROUP_MODULE:
            return await self._group().check(step)
        inputs = self._inputs(step)
        instance = await self._get(inputs.name)
        refuse_newer_stamp(f"gcp instance {inputs.name}", _stamp(instance), step)
        satisfied = _status(instance) in TARGET_STATUSES[inputs.state]
        return CheckResult(
            satisfied=satisfied, observed=_observed(instance), outputs=_outputs(inputs, instance) if satisfied else {}
        )

    async def apply(self, step: StepContext) -> ApplyResult:
        """Bring the instance to ``state``: ``start`` or ``stop``, then wait for the zone operation and the status.

        Idempotent: it reads first and issues no call when the instance is already there (not even the stamp); it
        waits out a transitional status before acting (issuing start/stop then would get 400 resourceNotReady). Then
        the fencing label by setLabels with the read's fingerprint (skipped when it already holds the token), then at
        most one start/stop. Budget: ``operation_timeout`` from the first read (each request ≤ request_timeout).
        Raises Fenced (a newer stamp read, or setLabels refused by 412 because one came since), Unavailable (the
        operation failed or outlasted ``operation_timeout``; labels changed by someone else since the read) and the
        errors of check(); Refused for a SUSPENDED instance asked to run (resuming is not part of this module).
        """
        if step.module == GROUP_MODULE:
            return await self._group().apply(step)
        inputs = self._inputs(step)
        return await self._converge(inputs, inputs.state, step)

    async def verify(self, step: StepContext) -> ProbeResult:
        """A fresh ``instances.get`` (never apply()'s answer): RUNNING for running, TERMINATED/STOPPED for stopped.

        Read-only and idempotent. Budget: one request (≤ request_timeout). Raises the errors of check(), but never Fenced.
        """
        if step.module == GROUP_MODULE:
            return await self._group().verify(step)
        inputs = self._inputs(step)
        instance = await self._get(inputs.name)
        status = _status(instance)
        ok = status in TARGET_STATUSES[inputs.state]
        where = f"projects/{self._config.project}/zones/{self._config.zone}/instances/{inputs.name}"
        wanted = " or ".join(sorted(TARGET_STATUSES[inputs.state]))
        detail = f"{where} is {status}" if ok else f"{where} is {status}, expected {wanted}"
        return ProbeResult(ok=ok, probe=PROBE, observed=_observed(instance), detail=detail)

    async def compensate(self, step: StepContext) -> ApplyResult:
        """Undo the step: drive the instance to the opposite state (stop what the step started, and vice versa).

        Stateless, so the chain runner must compensate only steps this run applied (a step skipped because the
        capacity was already running must not stop it). Idempotent; budget and errors as apply().
        """
        if step.module == GROUP_MODULE:
            return await self._group().compensate(step)
        inputs = self._inputs(step)
        opposite = "stopped" if inputs.state == "running" else "running"
        result = await self._converge(inputs, opposite, step)
        return ApplyResult(log=tuple(f"compensation: {line}" for line in result.log), outputs=result.outputs)

    async def preflight(self, step: StepContext) -> Readiness:
        """Could apply() bring the instance to ``state`` now? Read-only: ``instances.get`` and, when there is
        something to do, ``instances.testIamPermissions`` (a POST that changes nothing); no start, no stop.

        Ready when the credentials are accepted, the instance exists and is already in the state, or is in a
        status the verb acts on (TERMINATED to start; RUNNING or SUSPENDED to stop) and the credentials hold
        its permission (``compute.instances.start``/``stop``). Not ready: a transitional status (apply() would
        first wait it out), SUSPENDED for a start, a missing permission. ``observed``: the instance's status,
        id, self link. Budget: 2 requests, each ≤ request_timeout. Raises as check() (a deleted instance:
        NotFound; denied credentials: Refused, 403; refused ones: CredentialsUnavailable).
        """
        if step.module == GROUP_MODULE:
            return await self._group().preflight(step)
        inputs = self._inputs(step)
        instance = await self._get(inputs.name)
        status, verb = _status(instance), _verb(inputs.state)
        where = f"gcp: instance {inputs.name}"
        observed = _observed(instance)
        if status in TARGET_STATUSES[inputs.state]:
            return Readiness(True, f"{where} is already {status}: nothing to {verb}", observed)
        if status in TRANSITIONAL:
            return Readiness(False, f"{where} is {status}, between states: not ready to {verb} until it settles", observed)
        if verb == "start" and status == "SUSPENDED":
            return Readiness(False, _suspended(inputs.name), observed)
        if status not in ACTIONABLE[verb]:
            return Readiness(False, f"{where} is {status}, a status {verb} cannot act on", observed)
        permission = f"compute.instances.{verb}"
        clients = await self._client()
        held = await self._call(
            f"instances.testIamPermissions {inputs.name}",
            clients.instances.test_iam_permissions,
            resource=inputs.name,
            test_permissions_request_resource=compute_v1.TestPermissionsRequest(permissions=[permission]),
        )
        if permission not in held.permissions:
            return Readiness(False, f"{where}: the credentials lack {permission}: a {verb} would be refused (403)", observed)
        return Readiness(True, f"{where} is {status}: ready to {verb}", observed)

    # ------------------------------------------------------------------------------------------ internals

    def _group(self) -> GroupSize:
        from hybridops_daemon.drivers.gcp_group import GroupSize  # it builds on this module's helpers: imported at first use

        return GroupSize(self)

    @staticmethod
    def _inputs(step: StepContext) -> ComputeCapacity:
        return inputs_of("gcp", step.module, step.inputs, ComputeCapacity)

    async def _converge(self, inputs: ComputeCapacity, state: str, step: StepContext) -> ApplyResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.operation_timeout
        targets = TARGET_STATUSES[state]
        verb = _verb(state)
        instance = await self._settled(inputs.name, deadline, f"before {verb}")
        refuse_newer_stamp(f"gcp instance {inputs.name}", _stamp(instance), step)
        before = _status(instance)
        if before in targets:
            return ApplyResult(
                log=(f"instance {inputs.name} already {before}: nothing to do",), outputs=_outputs(inputs, instance)
            )
        if verb == "start" and before == "SUSPENDED":
            raise Refused(_suspended(inputs.name))

        stamped = await self._stamp(instance, step, deadline)
        clients = await self._client()
        call = clients.instances.start_unary if verb == "start" else clients.instances.stop_unary
        started = time.monotonic()
        op = await self._call(f"instances.{verb} {inputs.name}", call, instance=inputs.name)
        op = await self._wait(op, deadline)
        self._raise_failed(op, f"gcp {verb} {inputs.name}")
        # DONE normally means the status is there already; a read-back that still shows it settling gets the rest of the budget.
        instance = await self._settled(inputs.name, deadline, f"after {verb}")
        after = _status(instance)
        if after not in targets:  # changed by someone else meanwhile: retrying (after a re-check) can still converge
            raise DriverError(f"gcp: instance {inputs.name} is {after} although operation {op.name} ({verb}) is DONE")
        took = time.monotonic() - started
        return ApplyResult(
            log=(f"instance {inputs.name}: {stamped}; {before} → {after} (operation {op.name} {verb} DONE in {took:.1f}s)",),
            outputs=_outputs(inputs, instance),  # the same shape as check()'s, so later steps need not care which ran
        )

    async def _stamp(self, instance: compute_v1.Instance, step: StepContext, deadline: float) -> str:
        """Label ``instance`` with the step's fencing token, before acting on it (as hcloud does: stamped but not acted
        on is harmless, acted on but unstamped is not). Conditional: setLabels carries the label fingerprint of the
        read, so a newer writer's stamp in between makes Google refuse it (412 conditionNotMet). Returns the log line."""
        labels, token = dict(instance.labels), str(step.fencing_token)
        if labels.get(FENCING_LABEL) == token:
            return f"already stamped with fencing token {token}"
        name, clients = instance.name, await self._client()
        request = compute_v1.InstancesSetLabelsRequest(
            labels={**labels, FENCING_LABEL: token}, label_fingerprint=instance.label_fingerprint
        )
        try:
            op = await self._call(
                f"instances.setLabels {name}", clients.instances.set_labels_unary, instance=name,
                instances_set_labels_request_resource=request,
            )  # fmt: skip
        except Refused as exc:
            if exc.code != 412:
                raise
            # Changed since our read: fenced when the change is a newer stamp; otherwise (someone else's label) retry.
            stamp = _stamp(await self._get(name))
            if stamp is not None and stamp > step.fencing_token:
                raise Fenced(
                    f"fenced: gcp setLabels on instance {name} refused (412 conditionNotMet): it was stamped with fencing "
                    f"token {stamp} since this attempt read it, newer than this run's {step.fencing_token}; not retried",
                    code=412,
                ) from None
            raise Unavailable(f"gcp instance {name}: its labels changed since this attempt read them (412); read again") from None
        self._raise_failed(await self._wait(op, deadline), f"gcp setLabels {name}")
        return f"stamped fencing token {token} (label {FENCING_LABEL}, was {labels.get(FENCING_LABEL) or 'none'})"

    @staticmethod
    def _raise_failed(op: compute_v1.Operation, what: str) -> None:
        codes, description = _operation_errors(op)
        if codes:
            status = op.http_error_status_code or None
            details = {"codes": codes, "http_status": status}
            raise Unavailable(f"{what}: operation {op.name} failed: {description}"[:500], details=details)

    async def _settled(self, name: str, deadline: float, when: str) -> compute_v1.Instance:
        """The instance once its status is not transitional; Unavailable past ``deadline``."""
        return await self._poll(
            lambda: self._get(name),
            lambda instance: _status(instance) not in TRANSITIONAL,
            deadline,
            lambda instance: Unavailable(
                f"gcp: instance {name} still {_status(instance)} {when} after {self._config.operation_timeout:g}s "
                "(operation_timeout)"
            ),
        )

    async def _poll(
        self, read: Callable[[], Awaitable[R]], done: Callable[[R], bool], deadline: float, late: Callable[[R], DriverError]
    ) -> R:
        """``read()`` every ``poll_interval`` until ``done`` holds for its answer; ``late(answer)`` is raised rather than
        sleeping past ``deadline`` (a loop time)."""
        loop = asyncio.get_running_loop()
        while True:
            answer = await read()
            if done(answer):
                return answer
            if loop.time() + self._poll_interval > deadline:
                raise late(answer)
            await asyncio.sleep(self._poll_interval)

    async def _wait(self, op: compute_v1.Operation, deadline: float) -> compute_v1.Operation:
        """Wait for the zone operation to be DONE, with ``zoneOperations.wait`` calls bounded by the deadline."""
        loop = asyncio.get_running_loop()
        clients = await self._client()
        while op.status != compute_v1.Operation.Status.DONE:
            remaining = deadline - loop.time()
            if remaining <= 0:
                state = compute_v1.Operation.Status(op.status).name
                raise Unavailable(
                    f"gcp: operation {op.name} still {state} after {self._config.operation_timeout:g}s (operation_timeout)"
                )
            try:
                # The server answers when DONE or after its own limit (~2 min at Google), whichever comes first.
                op = await self._call(
                    f"zoneOperations.wait {op.name}",
                    clients.operations.wait,
                    operation=op.name,
                    limit=min(remaining, self._request_timeout),
                )
            except Unavailable as exc:
                if exc.code != REQUEST_TIMEOUT:
                    raise
                # The server may hold a wait longer than request_timeout (Google: ~2 min): ask again, up to the deadline.
                continue
        return op

    async def _get(self, name: str) -> compute_v1.Instance:
        clients = await self._client()
        return await self._call(f"instances.get {name}", clients.instances.get, instance=name)

    async def _call(
        self, what: str, method: Callable[..., T], *, limit: float | None = None, zonal: bool = True, **request: Any
    ) -> T:
        """``method(project, zone, **request)`` in a worker thread, bounded by ``limit`` (default: request_timeout).
        ``zonal=False``: ``method(**request)``, for a call on a region, or one given a whole request object."""
        bound = limit if limit is not None else self._request_timeout
        scope = {"project": self._config.project, "zone": self._config.zone} if zonal else {}
        try:
            return await asyncio.to_thread(method, **scope, timeout=bound, retry=None, **request)
        except (
            google_exceptions.GoogleAPICallError,
            requests.exceptions.RequestException,
            auth_exceptions.GoogleAuthError,
            json_format.ParseError,
        ) as exc:
            error = _translate(exc, f"gcp {what}")
            if isinstance(exc, google_exceptions.Unauthorized | auth_exceptions.GoogleAuthError):
                with self._lock:
                    self._clients = None  # re-resolve the key next time: it may have been rotated
            raise error from None

    async def _client(self) -> _Clients:
        if self._clients is not None:
            return self._clients
        return await asyncio.to_thread(self._build_clients)

    def _build_clients(self) -> _Clients:
        with self._lock:  # one set of clients even when two first calls race
            if self._clients is None:
                credentials = self._credentials()
                options = {"api_endpoint": self._config.endpoint} if self._config.endpoint else None
                try:
                    rest: dict[str, Any] = {"transport": "rest", "client_options": options, "credentials": credentials}
                    clients = _Clients(
                        compute_v1.InstancesClient(**rest),
                        compute_v1.ZoneOperationsClient(**rest),
                        compute_v1.InstanceGroupManagersClient(**rest),
                        compute_v1.RegionsClient(**rest),
                    )
                    for client in (clients.instances, clients.operations, clients.groups, clients.regions):
                        sockets.mount(_rest_session(client.transport), self._request_timeout)
                    self._clients = clients
                except auth_exceptions.DefaultCredentialsError:
                    raise CredentialsUnavailable(
                        "gcp: no credentials configured and no Application Default Credentials found"
                    ) from None
            return self._clients

    def _credentials(self) -> Credentials | None:
        ref = self._config.credentials
        if ref is None:
            # A local endpoint (a fake) takes no credentials; Google itself gets ADC (the SDK's default).
            return AnonymousCredentials() if self._config.endpoint else None  # type: ignore[no-untyped-call]
        value = secret("gcp", "gcp.credentials", ref)
        where = f"env {ref.env}" if ref.env else f"file {ref.file}"
        try:
            if not value.lstrip().startswith("{"):
                if ref.file is not None:
                    raise ValueError("not JSON")
                value = Path(value).read_text(encoding="utf-8")  # the env var holds the key file's path
            info = json.loads(value)
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
            credentials: Credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=SCOPES
            )
            return credentials
        except (OSError, ValueError, auth_exceptions.GoogleAuthError) as exc:
            # Only the exception's type: its text could quote the key.
            raise CredentialsUnavailable(
                f"gcp.credentials ({where}) is not a usable service-account key ({type(exc).__name__})"
            ) from None
