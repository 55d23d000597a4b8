"""A fake of the Compute Engine v1 REST API: instances get/start/stop, zone operations get/wait, zonal managed
instance groups (get, resize, listManagedInstances) and the zone's region with its quotas.

Spoken to by ``google-cloud-compute`` with ``transport="rest"`` exactly as it talks to Google (paths and verbs
from the SDK's ``instances`` and ``zone_operations`` REST transports), so a driver test exercises the real SDK:
request building, JSON parsing, error mapping. No fake that fits exists, hence this one (see TESTBED.md).

Modelled on the public API reference:
- ``start``/``stop`` answer at once with a zone operation; the operation goes ``PENDING → RUNNING → DONE`` after
  ``pending_for`` and ``running_for`` seconds. Meanwhile the instance shows ``STAGING`` (start) or ``STOPPING``
  (stop); its status really changes when the operation is DONE (to ``RUNNING`` / ``TERMINATED``, or back to
  where it was when the operation failed, which then carries ``error.errors[].code`` and ``httpErrorStatusCode``).
  Progress is computed from the clock whenever anything looks, so there are no background tasks to race with.
- ``operations/{op}/wait`` blocks until the operation is DONE or ``wait_max`` seconds pass (Google: ~2 minutes),
  then returns it as it is, DONE or not.
- Errors have Google's JSON shape ``{"error": {"code", "message", "errors": [{"message", "domain", "reason"}]}}``.
- Operation and instance ``id`` are numeric (uint64, sent as a JSON string like Google does): the SDK's
  protobuf parser rejects anything else.
- Instances carry ``labels`` and a ``labelFingerprint`` (GET shows both); ``setLabels`` replaces the labels only
  when sent the current fingerprint, else 412 ``conditionNotMet`` (the reference: "You must always provide an
  up-to-date fingerprint hash when updating or changing labels, otherwise the request will fail with error 412
  conditionNotMet"), and answers with an operation that is DONE at once.
- ``instances/{resource}/testIamPermissions`` answers which of the asked permissions the caller holds (all of
  ``PERMISSIONS`` but those revoked with ``revoke_permissions``); a revoked one also gets its request a 403.
- Without ``require_auth`` any caller is let in (the SDK sends no Authorization header with anonymous
  credentials). With it, a request needs ``Authorization: Bearer`` with a listed token or a self-signed JWT
  (what the SDK sends for a service account) signed by a registered key; else 401, or 403 for a denied account.

Test knobs (thread-safe, from Python or over HTTP under ``/_fake/``): operation delays, fail the next operation,
answer the next N API requests with 429/503, hang the next API request until its client gives up (counted in
``abandoned``), hold the next one until released (then serve it: a request delayed in the network), call counts
per (method, path template), and tampering with an instance's status or labels behind the SDK's back.
``GcpComputeFake.start()`` serves from a background thread with its own event loop on a free loopback port;
``python -m tests.fakes.gcp_compute --port N`` serves in the foreground.

This module holds the fake's core: its state and lock, operations, request faults, auth and serving. The instances'
knobs and handlers are a part of their own (tests/fakes/gcp_instances.py), as are the managed instance groups and the
region (tests/fakes/gcp_groups.py, which says how groups behave); the paths and records are in gcp_model.py.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiohttp import web
from google.auth import exceptions as auth_exceptions
from google.auth import jwt

from tests.fakes.gcp_groups import GroupsPart
from tests.fakes.gcp_instances import InstancesPart
from tests.fakes.gcp_model import (
    DEFAULT_INSTANCES,
    DEFAULT_PROJECT,
    DEFAULT_ZONE,
    EFFECT,
    GROUP,
    HTTP_MESSAGE,
    INSTANCE,
    LIST_MANAGED,
    OPERATION,
    OPERATION_WAIT,
    READ_ONLY_POSTS,
    REGION,
    RESIZE,
    SET_LABELS,
    START,
    STOP,
    TEST_PERMISSIONS,
    ZONE_PATH,
    Failure,
    Fault,
    Instance,
    Operation,
    google_error,
    now_rfc3339,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GcpComputeFake(InstancesPart, GroupsPart):
    """One project and zone of Compute Engine. All state sits behind one lock: tests poke it from their thread."""

    def __init__(
        self,
        project: str = DEFAULT_PROJECT,
        zone: str = DEFAULT_ZONE,
        instances: Mapping[str, str] = DEFAULT_INSTANCES,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        pending_for: float = 0.2,
        running_for: float = 0.3,
        wait_max: float = 2.0,
        groups: Mapping[str, int] | None = None,
    ) -> None:
        self.project = project
        self.zone = zone
        self.host = host
        self.port = port
        self._seed = dict(instances)
        self._seed_groups = dict(groups or {})  # name → size, RUNNING from the start
        self._lock = threading.Lock()
        self._defaults = (pending_for, running_for, wait_max)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._startup_error: BaseException | None = None
        self.reset()

    # ------------------------------------------------------------------------------------------ state & knobs

    def reset(self) -> None:
        """Back to the seeded instances, default delays, no faults, no operations, zero counts; auth off."""
        with self._lock:
            self._instances = {name: Instance(name, status) for name, status in self._seed.items()}
            self._operations: dict[str, Operation] = {}
            self._calls: dict[tuple[str, str], int] = {}
            self.pending_for, self.running_for, self.wait_max = self._defaults
            self._fail_operation: Failure | None = None
            self._faults: list[Fault] = []  # armed request faults, oldest first
            self.abandoned = 0  # hung requests whose client went away (a client-side timeout at work)
            self._tokens: frozenset[str] | None = None
            self._keys: dict[str, str] = {}
            self._denied: frozenset[str] = frozenset()
            self._revoked: frozenset[str] = frozenset()
            self._reset_groups()
            self.held = 0  # requests held by hold_next_request so far
            self._release = threading.Event()

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address in a URL takes brackets
        return f"http://{host}:{self.port}"

    def set_operation_delays(self, pending: float, running: float) -> None:
        """How long new operations stay PENDING, then RUNNING, before they are DONE."""
        with self._lock:
            self.pending_for, self.running_for = pending, running

    def fail_next_operation(
        self,
        code: str = "ZONE_RESOURCE_POOL_EXHAUSTED",
        message: str = "The zone does not have enough resources.",
        http_status: int = 503,
    ) -> None:
        """The next operation ends DONE with ``error.errors[0].code == code``; the instance stays as it was."""
        with self._lock:
            self._fail_operation = Failure(code, message, http_status)

    def fail_next_requests(self, count: int, status: int = 503, method: str | None = None, template: str | None = None) -> None:
        """Answer the next ``count`` API requests (only those matching ``method``/``template`` when given, e.g.
        ``"POST", START``) with ``status`` in Google's error shape; 429 carries ``Retry-After``."""
        with self._lock:
            self._faults.extend(Fault(status, method and method.upper(), template) for _ in range(count))

    def hang_next_request(self, count: int = 1, method: str | None = None, template: str | None = None) -> None:
        """The next ``count`` (matching) API requests get no answer until their client disconnects or the fake stops."""
        with self._lock:
            self._faults.extend(Fault(None, method and method.upper(), template) for _ in range(count))

    def hold_next_request(self, method: str | None = None, template: str | None = None) -> None:
        """The next (matching) API request is held, unanswered and not yet acted on, until ``release_held()``; then
        it is served as usual, as a request delayed in the network would be (``held`` counts those caught)."""
        with self._lock:
            self._release.clear()
            self._faults.append(Fault(None, method and method.upper(), template, held=True))

    def release_held(self) -> None:
        self._release.set()

    def require_auth(
        self, tokens: Iterable[str] = (), service_accounts: Mapping[str, str] | None = None, denied: Iterable[str] = ()
    ) -> None:
        """From now on, demand a bearer token: one of ``tokens``, or a JWT signed by the PEM public key (or
        certificate) registered for its issuer in ``service_accounts``. Issuers in ``denied`` get 403."""
        with self._lock:
            self._tokens = frozenset(tokens)
            self._keys = dict(service_accounts or {})
            self._denied = frozenset(denied)

    def calls(self, method: str, template: str) -> int:
        """How many requests hit ``method template`` (e.g. ``"POST", START``), faulted ones included."""
        with self._lock:
            return self._calls.get((method.upper(), template), 0)

    def changes(self, kind: str) -> int:
        """How many ``kind`` (start | stop) operations moved their instance: the effects. ``calls`` also counts a
        request refused as not ready, and an operation on an instance already there (both change nothing)."""
        with self._lock:
            self._advance()
            return sum(
                1
                for op in self._operations.values()
                if op.kind == kind and op.failure is None and op.from_status != EFFECT[kind][1]
            )

    def call_counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._calls)

    def mutating_calls(self) -> dict[tuple[str, str], int]:
        """The calls that could change something: every method but GET, less the POSTs that only read."""
        with self._lock:
            return {key: n for key, n in self._calls.items() if key[0] != "GET" and key[1] not in READ_ONLY_POSTS}

    def operations(self, *kinds: str) -> list[dict[str, Any]]:
        """Every operation so far (of ``kinds`` only, e.g. "start", "stop", when given), oldest first, with the statuses
        it went through (``history``)."""
        with self._lock:
            self._advance()
            return [
                self._operation_json(op, self.endpoint) | {"history": list(op.history)}
                for op in self._operations.values()
                if not kinds or op.kind in kinds
            ]

    def instances(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            self._advance()
            return {name: self._instance_json(inst, self.endpoint) for name, inst in self._instances.items()}

    # ------------------------------------------------------------------------------------------ the model

    def _advance(self) -> None:
        """Move operations along the clock; an operation's effect on its instance lands when it is DONE. Lock held."""
        now = time.monotonic()
        for op in self._operations.values():
            if op.status == "DONE":
                continue
            phase = op.phase(now)
            if phase == op.status:
                continue
            if op.status == "PENDING":
                op.history.append("RUNNING")
                op.start_time = now_rfc3339()
            if phase == "DONE":
                op.history.append("DONE")
                op.end_time = now_rfc3339()
                if op.target == "instanceGroupManagers":
                    self._finish_resize(op)
                    continue
                instance = self._instances.get(op.instance)
                if instance is None or op.kind not in EFFECT:
                    continue
                if op.failure is not None:
                    instance.status = op.from_status
                    continue
                instance.status = EFFECT[op.kind][1]
                if op.kind == "start":
                    instance.last_start = op.end_time
                else:
                    instance.last_stop = op.end_time

    def _zone_url(self, origin: str) -> str:
        return origin + ZONE_PATH.format(project=self.project, zone=self.zone)

    def _operation_json(self, op: Operation, origin: str) -> dict[str, Any]:
        zone_url = self._zone_url(origin)
        target = self._instances.get(op.instance) if op.target == "instances" else self._groups.get(op.instance)
        body: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(op.id),
            "name": op.name,
            "zone": zone_url,
            "operationType": op.kind,
            "targetLink": f"{zone_url}/{op.target}/{op.instance}",
            "status": op.status,
            "progress": {"PENDING": 0, "RUNNING": 50, "DONE": 100}[op.status],
            "user": f"fake@{self.project}.iam.gserviceaccount.com",
            "insertTime": op.insert_time,
            "selfLink": f"{zone_url}/operations/{op.name}",
        }
        if target is not None:
            body["targetId"] = str(target.id)
        if op.start_time:
            body["startTime"] = op.start_time
        if op.end_time:
            body["endTime"] = op.end_time
        if op.status == "DONE" and op.failure is not None:
            body["error"] = {"errors": [{"code": op.failure.code, "message": op.failure.message}]}
            body["httpErrorStatusCode"] = op.failure.http_status
            body["httpErrorMessage"] = HTTP_MESSAGE.get(op.failure.http_status, "ERROR").upper()
        return body

    # ------------------------------------------------------------------------------------------ HTTP

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get(INSTANCE, self._get_instance)
        app.router.add_post(START, self._start_or_stop)
        app.router.add_post(STOP, self._start_or_stop)
        app.router.add_post(SET_LABELS, self._set_labels)
        app.router.add_post(TEST_PERMISSIONS, self._test_permissions)
        app.router.add_get(OPERATION, self._get_operation)
        app.router.add_post(OPERATION_WAIT, self._wait_operation)
        app.router.add_get(GROUP, self._get_group)
        app.router.add_post(RESIZE, self._resize_group)
        app.router.add_post(LIST_MANAGED, self._list_managed)
        app.router.add_get(REGION, self._get_region)
        app.router.add_get("/_fake/calls", self._fake_calls)
        app.router.add_get("/_fake/state", self._fake_state)
        app.router.add_post("/_fake/state", self._fake_tamper)
        app.router.add_post("/_fake/faults", self._fake_faults)
        app.router.add_post("/_fake/reset", self._fake_reset)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_fake/"):
            return await handler(request)
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else request.path
        with self._lock:
            key = (request.method, template)
            self._calls[key] = self._calls.get(key, 0) + 1
            fault = next((f for f in self._faults if f.matches(request.method, template)), None)
            if fault is not None:
                self._faults.remove(fault)
        if fault is not None and fault.held:
            with self._lock:
                self.held += 1
            await asyncio.to_thread(self._release.wait, 60.0)  # stop() releases it too
            fault = None  # then served as usual
        if fault is not None:
            if fault.status is None:
                return await self._hang(request)
            response = google_error(fault.status, HTTP_MESSAGE.get(fault.status, "injected fault"))
            if fault.status == 429:
                response.headers["Retry-After"] = "1"
            return response
        denied = self._authorize(request.headers.get("Authorization", ""))
        if denied is not None:
            return denied
        if resource is None:
            return google_error(404, f"The requested URL {request.path} was not found on this server.")
        if request.match_info["project"] != self.project:
            return google_error(404, f"The resource 'projects/{request.match_info['project']}' was not found")
        if request.match_info.get("region", self.region) != self.region:
            where = f"projects/{self.project}/regions/{request.match_info['region']}"
            return google_error(404, f"The resource '{where}' was not found")
        if request.match_info.get("zone", self.zone) != self.zone:
            return google_error(400, f"Invalid value for field 'zone': '{request.match_info['zone']}'. Unknown zone.", "invalid")
        return await handler(request)

    def _authorize(self, header: str) -> web.Response | None:
        with self._lock:
            tokens, keys, denied = self._tokens, dict(self._keys), self._denied
        if tokens is None:
            return None
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return google_error(
                401, "Request is missing required authentication credential. Expected OAuth 2 access token.", "required"
            )
        if credential in tokens:
            return None
        try:
            issuer = str(jwt.decode(credential, verify=False).get("iss", ""))  # type: ignore[no-untyped-call]
            if issuer not in keys:
                raise ValueError("unknown issuer")
            jwt.decode(credential, certs=keys[issuer], verify=True)  # type: ignore[no-untyped-call]
        except (ValueError, auth_exceptions.GoogleAuthError):
            return google_error(401, "Request had invalid authentication credentials.", "authError")
        if issuer in denied:
            return google_error(403, f"Required 'compute.instances.get' permission for 'projects/{self.project}'", "forbidden")
        return None

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        # No handler cancellation in aiohttp by default: watch the connection instead.
        while not self._stopping:
            transport = request.transport
            if transport is None or transport.is_closing():
                with self._lock:
                    self.abandoned += 1
                break
            await asyncio.sleep(0.05)
        return google_error(503, "hung request released", "backendError")

    async def _get_operation(self, request: web.Request) -> web.Response:
        with self._lock:
            self._advance()
            op = self._operations.get(request.match_info["operation"])
            if op is None:
                return self._operation_not_found(request.match_info["operation"])
            return web.json_response(self._operation_json(op, str(request.url.origin())))

    def _operation_not_found(self, name: str) -> web.Response:
        return google_error(404, f"The resource 'projects/{self.project}/zones/{self.zone}/operations/{name}' was not found")

    async def _wait_operation(self, request: web.Request) -> web.Response:
        deadline = time.monotonic() + self.wait_max
        while True:
            with self._lock:
                self._advance()
                op = self._operations.get(request.match_info["operation"])
                if op is None:
                    return self._operation_not_found(request.match_info["operation"])
                if op.status == "DONE" or time.monotonic() >= deadline or self._stopping:
                    return web.json_response(self._operation_json(op, str(request.url.origin())))
            await asyncio.sleep(0.02)

    async def _fake_calls(self, request: web.Request) -> web.Response:
        counts = self.call_counts()
        return web.json_response({"calls": [{"method": m, "path": p, "count": n} for (m, p), n in sorted(counts.items())]})

    async def _fake_state(self, request: web.Request) -> web.Response:
        state = {"project": self.project, "zone": self.zone, "instances": self.instances(), "operations": self.operations()}
        return web.json_response(state | {"groups": self.groups()})

    async def _fake_tamper(self, request: web.Request) -> web.Response:
        """``{"instances": {"NAME": {"status": "RUNNING"} | null}}``: set, create (or, with null, delete) instances;
        ``{"groups": {"NAME": {"size": N} | null}}``: the same for groups (of N running instances)."""
        body = await request.json()
        try:
            for name, spec in dict(body.get("instances", {})).items():
                if spec is None:
                    self.delete_instance(name)
                else:
                    self.set_status(name, str(spec["status"]))
            self._tamper_groups(dict(body.get("groups", {})))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            return google_error(400, f"bad tamper request: {exc}", "invalid")
        return await self._fake_state(request)

    async def _fake_faults(self, request: web.Request) -> web.Response:
        """Keys (all optional): ``operation_delays {pending, running}``, ``fail_next_operation {code, message,
        http_status}``, ``fail_next_requests {count, status, method?, path?}`` (path: a template such as
        ``START``), ``hang_next_request {count, method?, path?}``, ``wait_max``, and the groups' (``_group_faults``)."""
        body = await request.json()
        try:
            if "operation_delays" in body:
                self.set_operation_delays(float(body["operation_delays"]["pending"]), float(body["operation_delays"]["running"]))
            if "fail_next_operation" in body:
                self.fail_next_operation(**dict(body["fail_next_operation"]))
            if "fail_next_requests" in body:
                spec = body["fail_next_requests"]
                self.fail_next_requests(int(spec["count"]), int(spec.get("status", 503)), spec.get("method"), spec.get("path"))
            if "hang_next_request" in body:
                spec = body["hang_next_request"]
                self.hang_next_request(int(spec.get("count", 1)), spec.get("method"), spec.get("path"))
            if "wait_max" in body:
                with self._lock:
                    self.wait_max = float(body["wait_max"])
            self._group_faults(body)
        except (KeyError, ValueError, TypeError) as exc:
            return google_error(400, f"bad fault request: {exc}", "invalid")
        return web.json_response({"ok": True})

    async def _fake_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    # ------------------------------------------------------------------------------------------ serving

    def start(self, timeout: float = 10.0) -> GcpComputeFake:
        """Serve from a background thread (its own event loop); returns once the port is bound."""
        self._stopping = False
        self._started.clear()
        self._thread = threading.Thread(target=self._serve, name="gcp-compute-fake", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"the GCP fake did not bind {self.host}:{self.port} within {timeout}s")
        if self._startup_error is not None:
            raise RuntimeError(f"the GCP fake could not start: {self._startup_error!r}") from self._startup_error
        return self

    def stop(self) -> None:
        self._stopping = True  # releases hung requests and waits
        self._release.set()
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> GcpComputeFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=1.0)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port)
            loop.run_until_complete(site.start())
            self.port = int(runner.addresses[0][1])
        except BaseException as exc:  # reported to start()'s caller
            self._startup_error = exc
            self._started.set()
            loop.run_until_complete(runner.cleanup())
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()


def _group_spec(text: str) -> tuple[str, int]:
    name, _, size = text.partition("=")
    if not name or not size.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=SIZE")
    return name, int(size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.gcp_compute", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--project", default=DEFAULT_PROJECT)
    parser.add_argument("--zone", default=DEFAULT_ZONE)
    parser.add_argument(
        "--instance",
        action="append",
        metavar="NAME[=STATUS]",
        help="seed an instance (repeatable; default: cloud-standby and drill-standby, TERMINATED)",
    )
    parser.add_argument(
        "--group", action="append", type=_group_spec, metavar="NAME=SIZE", help="seed a managed instance group (repeatable)"
    )
    parser.add_argument("--pending", type=float, default=0.2, help="seconds an operation stays PENDING")
    parser.add_argument("--running", type=float, default=0.3, help="seconds an operation stays RUNNING")
    args = parser.parse_args(argv)
    instances = dict(DEFAULT_INSTANCES)
    if args.instance:
        instances = {}
        for spec in args.instance:
            name, _, status = spec.partition("=")
            instances[name] = status or "TERMINATED"
    fake = GcpComputeFake(
        args.project, args.zone, instances, host=args.host, port=args.port, pending_for=args.pending, running_for=args.running,
        groups=dict(args.group or ()),
    ).start()  # fmt: skip
    print(f"GCP Compute fake for projects/{args.project}/zones/{args.zone} on {fake.endpoint}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
