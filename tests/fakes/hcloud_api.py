"""A fake of the Hetzner Cloud API (floating IPs, their actions, servers), for the ``hcloud`` driver's tests.

Modelled on the public API reference (https://docs.hetzner.cloud): JSON bodies wrapped in a resource root
(``{"floating_ip": {...}}``), lists paginated with ``page``/``per_page`` and ``meta.pagination``, asynchronous
actions that go ``running`` → ``success`` (or ``error``), errors shaped ``{"error": {"code", "message",
"details"}}`` with the reference's status codes (401 ``unauthorized``, 404 ``not_found``, 422 ``invalid_input``,
423 ``locked`` while another action runs on the floating IP or when the target server is ``locked``, 429
``rate_limit_exceeded``), and the ``RateLimit-Limit`` / ``RateLimit-Remaining`` / ``RateLimit-Reset`` headers on
every answer (a token bucket of ``rate_limit`` requests per hour that refills gradually, as the reference describes).

Floating IPs carry ``labels`` (GET shows them); ``PUT /v1/floating_ips/{id}`` updates ``name``, ``description``
and ``labels``, and labels sent REPLACE the whole set, as the reference says ("if you want to add a new label,
you have to provide all existing labels plus the new label"). Labels are validated by the reference's rules
(key: optional DNS-subdomain prefix ≤ 253 chars + ``/`` + a name of 1-63 alphanumerics with ``-_.`` inside;
value: empty or ≤ 63 such characters; the ``hetzner.cloud/`` prefix is reserved): a bad one is 422
``invalid_input`` "invalid input in field 'labels'", the real API's answer, and changes nothing.

Only the official SDK talks to ``/v1``. Tests steer the fake from Python (``HcloudFake`` methods) or over HTTP:
``POST /_fake/faults``, ``GET /_fake/calls``, ``GET|POST /_fake/state`` (no token needed, never counted).

Faults: ``action_delay`` (seconds an action stays ``running``), ``fail_next_action`` (the next action ends in
``error``), ``fail_next`` (the next N matching requests get an error, e.g. 429, 423, 500), ``hang_next`` (the next
N matching requests stall until ``release_hangs()`` or their own limit, then are served normally, so the effect
of a request the client gave up on still lands, as with a real API). Locks: ``lock_server`` sets a server's
``locked`` flag, ``hold_action`` keeps someone else's action running on a floating IP; ``GET
/v1/floating_ips/{id}/actions?status=running`` shows it. ``mutating_calls()`` counts every request but GETs.

Runs in a background thread with its own event loop on a free loopback port (``HcloudFake().start()``), or
standalone: ``python -m tests.fakes.hcloud_api --port 8080 --token T``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API = "/v1"
FAKE = "/_fake"
DEFAULT_TOKEN = "hcloud-fake-token-7c1e0b9d4f"  # a test-only token
SEED_SERVERS = ("edge01", "edge02")
SEED_FLOATING_IP = "203.0.113.10"

# The reference's status code for each error code (https://docs.hetzner.cloud/#errors).
STATUS = {
    "json_error": 400,
    "unauthorized": 401,
    "token_readonly": 401,
    "forbidden": 403,
    "maintenance": 403,
    "resource_limit_exceeded": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "uniqueness_error": 409,
    "conflict": 409,
    "deprecated_api_endpoint": 410,
    "resource_unavailable": 412,
    "invalid_input": 422,
    "service_error": 422,
    "unsupported_error": 422,
    "floating_ip_assigned": 422,
    "locked": 423,
    "protected": 423,
    "rate_limit_exceeded": 429,
    "server_error": 500,
    "bad_gateway": 502,
    "unavailable": 503,
    "timeout": 504,
}
MESSAGES = {
    "unauthorized": "unable to authenticate",
    "not_found": "not found",
    "rate_limit_exceeded": "limit of requests per hour reached",
    "locked": "the resource is locked by another action",
    "conflict": "the resource has changed during the request, please retry",
    "invalid_input": "invalid input",
    "server_error": "internal server error",
    "unavailable": "service temporarily unavailable",
    "action_failed": "action failed",
}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ApiError(Exception):
    """Raised by handlers; rendered as the API's error body."""

    def __init__(self, code: str, message: str | None = None, details: Any = None, status: int | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.message = message or MESSAGES.get(code, code.replace("_", " "))
        self.details = details if details is not None else {}
        self.status = status or STATUS.get(code, 400)


def _error_response(error: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"code": error.code, "message": error.message, "details": error.details}}
    return web.json_response(body, status=error.status, headers=headers)


def _invalid_field(name: str, message: str) -> ApiError:
    return ApiError(
        "invalid_input",
        f"invalid input in field '{name}'",
        {"fields": [{"name": name, "messages": [message]}]},
    )


# The reference's label rules (https://docs.hetzner.cloud/#labels), as hcloud-go's ValidateResourceLabels spells them.
_LABEL_NAME = r"[a-zA-Z0-9](?:[-_.a-zA-Z0-9]{0,61}[a-zA-Z0-9])?"
_LABEL_PREFIX = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)*"
_LABEL_KEY = re.compile(rf"(?:(?P<prefix>{_LABEL_PREFIX})/)?{_LABEL_NAME}")
_LABEL_VALUE = re.compile(rf"(?:{_LABEL_NAME})?")
RESERVED_LABEL_PREFIX = "hetzner.cloud"


def validate_labels(labels: Any) -> dict[str, str]:
    """``labels`` as a dict of str to str, or the API's 422 for the first rule it breaks."""
    if not isinstance(labels, dict):
        raise _invalid_field("labels", "Not a valid mapping type.")
    for key, value in labels.items():
        if not isinstance(value, str):
            raise _invalid_field("labels", f"invalid label value for key '{key}': not a string")
        match = _LABEL_KEY.fullmatch(key)
        if match is None or len(match["prefix"] or "") > 253:
            raise _invalid_field("labels", f"invalid label key '{key}'")
        if match["prefix"] == RESERVED_LABEL_PREFIX or (match["prefix"] or "").endswith("." + RESERVED_LABEL_PREFIX):
            raise _invalid_field("labels", f"label key '{key}': the {RESERVED_LABEL_PREFIX}/ prefix is reserved")
        if _LABEL_VALUE.fullmatch(value) is None:
            raise _invalid_field("labels", f"invalid label value '{value}' (key: {key})")
    return dict(labels)


# --------------------------------------------------------------------------------------------- state


@dataclass
class Server:
    id: int
    name: str
    status: str = "running"
    created: str = field(default_factory=_now_iso)
    labels: dict[str, str] = field(default_factory=dict)
    locked: bool = False  # the API's flag: "True if Server has been locked and is not available to user"


@dataclass
class FloatingIp:
    id: int
    ip: str
    name: str
    server: int | None = None
    description: str | None = None
    created: str = field(default_factory=_now_iso)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return "ipv6" if ":" in self.ip else "ipv4"


@dataclass
class Action:
    id: int
    command: str
    floating_ip: int
    server: int | None
    status: str = "running"
    progress: int = 0
    started: str = field(default_factory=_now_iso)
    finished: str | None = None
    error: dict[str, str] | None = None
    fail_with: dict[str, str] | None = None  # armed at creation: the action ends in this error


@dataclass
class RequestFault:
    """The next ``count`` requests matching ``method``/``path`` (a route template like
    ``/v1/floating_ips/{id}/actions/assign``; None matches any) fail with ``code``, or hang (``hang_seconds``)."""

    count: int
    code: str = ""
    status: int | None = None
    message: str | None = None
    method: str | None = None
    path: str | None = None
    hang_seconds: float | None = None

    def matches(self, method: str, template: str) -> bool:
        return (self.method is None or self.method.upper() == method) and (self.path is None or self.path == template)


LOCATION = {
    "id": 1,
    "name": "fsn1",
    "description": "Falkenstein DC Park 1",
    "country": "DE",
    "city": "Falkenstein",
    "latitude": 50.47612,
    "longitude": 12.370071,
    "network_zone": "eu-central",
}
SERVER_TYPE = {
    "id": 1,
    "name": "cx22",
    "description": "CX22",
    "cores": 2,
    "memory": 4.0,
    "disk": 40,
    "storage_type": "local",
    "cpu_type": "shared",
    "architecture": "x86",
    "prices": [],
    "deprecation": None,
}


class FakeState:
    """The fake project: servers, floating IPs, actions, faults, counters. Every method is thread-safe
    (one lock; never held across an ``await``), so tests may call them from their own thread."""

    def __init__(self, token: str = DEFAULT_TOKEN, action_delay: float = 0.2, rate_limit: int = 3600) -> None:
        self.token = token
        self._lock = threading.RLock()
        self._ids = {"server": 1000, "floating_ip": 4710, "action": 9000}
        self.servers: dict[int, Server] = {}
        self.floating_ips: dict[int, FloatingIp] = {}
        self.actions: dict[int, Action] = {}
        self.action_delay = action_delay
        self._fail_actions: list[dict[str, str]] = []
        self._faults: list[RequestFault] = []
        self._calls: Counter[str] = Counter()
        self.request_log: list[dict[str, Any]] = []
        self.rate_limit = rate_limit
        self._bucket = float(rate_limit)
        self._bucket_at = time.monotonic()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None  # created on the loop; set by release_hangs()

    def _next_id(self, kind: str) -> int:
        self._ids[kind] += 1
        return self._ids[kind]

    # ---------------------------------------------------------------------------------------- seeding / tampering

    def seed(self) -> None:
        """Two servers edge01/edge02 and the floating IP 203.0.113.10 assigned to edge01."""
        for name in SEED_SERVERS:
            self.add_server(name)
        self.add_floating_ip(SEED_FLOATING_IP, server="edge01", name="edge-vip")

    def add_server(self, name: str) -> int:
        with self._lock:
            if any(s.name == name for s in self.servers.values()):
                raise ValueError(f"server {name!r} exists")
            server = Server(self._next_id("server"), name)
            self.servers[server.id] = server
            return server.id

    def add_floating_ip(self, ip: str, server: str | int | None = None, name: str | None = None) -> int:
        with self._lock:
            fip = FloatingIp(self._next_id("floating_ip"), ip, name or f"fip-{ip}", self._server_id(server))
            self.floating_ips[fip.id] = fip
            return fip.id

    def remove_floating_ip(self, ip: str) -> None:
        with self._lock:
            del self.floating_ips[self._fip_by_ip(ip).id]

    def remove_server(self, name: str) -> None:
        with self._lock:
            server_id = self._server_id(name)
            assert server_id is not None
            del self.servers[server_id]
            for fip in self.floating_ips.values():
                if fip.server == server_id:
                    fip.server = None

    def lock_server(self, name: str, locked: bool = True) -> None:
        """Set the server's ``locked`` flag (as Hetzner does while it works on a server): GET shows it, and an assign
        to it is refused with 423 ``locked``. Behind the API's back, not counted."""
        with self._lock:
            server_id = self._server_id(name)
            assert server_id is not None
            self.servers[server_id].locked = locked

    def hold_action(self, ip: str, command: str = "change_protection") -> int:
        """Start an action on the floating IP that keeps ``running`` until ``finish_action(id)``: someone else's work,
        which locks the IP (an assign meanwhile gets 423 ``locked``). It changes no assignment. Not counted."""
        with self._lock:
            fip = self._fip_by_ip(ip)
            return self.start_action(command, fip, fip.server).id

    def assign(self, ip: str, server: str | int | None) -> None:
        """Move (or unassign) a floating IP at once, behind the API's back: no action, no lock, not counted."""
        with self._lock:
            self._fip_by_ip(ip).server = self._server_id(server)

    def assigned_to(self, ip: str) -> str | None:
        """The name of the server the floating IP is assigned to, or None."""
        with self._lock:
            server_id = self._fip_by_ip(ip).server
            return None if server_id is None else self.servers[server_id].name

    def server_id(self, name: str) -> int:
        with self._lock:
            found = self._server_id(name)
            assert found is not None
            return found

    def floating_ip_id(self, ip: str) -> int:
        with self._lock:
            return self._fip_by_ip(ip).id

    def labels(self, ip: str) -> dict[str, str]:
        """The floating IP's labels, a copy."""
        with self._lock:
            return dict(self._fip_by_ip(ip).labels)

    def set_labels(self, ip: str, labels: dict[str, str]) -> None:
        """Replace the floating IP's labels behind the API's back: validated as the API would, not counted."""
        with self._lock:
            self._fip_by_ip(ip).labels = validate_labels(labels)

    def _server_id(self, server: str | int | None) -> int | None:
        if server is None:
            return None
        for candidate in self.servers.values():
            if candidate.id == server or candidate.name == server:
                return candidate.id
        raise KeyError(f"no server {server!r}")

    def _fip_by_ip(self, ip: str) -> FloatingIp:
        for fip in self.floating_ips.values():
            if fip.ip == ip:
                return fip
        raise KeyError(f"no floating IP {ip}")

    # ---------------------------------------------------------------------------------------- faults

    def set_action_delay(self, seconds: float) -> None:
        with self._lock:
            self.action_delay = seconds

    def fail_next_action(self, code: str = "action_failed", message: str | None = None) -> None:
        with self._lock:
            self._fail_actions.append({"code": code, "message": message or MESSAGES.get(code, code)})

    def fail_next(
        self,
        count: int,
        code: str,
        *,
        status: int | None = None,
        message: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """The next ``count`` requests (matching method/path template, if given) get error ``code``."""
        with self._lock:
            self._faults.append(RequestFault(count, code, status, message, method, path))

    def hang_next(self, count: int = 1, *, seconds: float = 30.0, method: str | None = None, path: str | None = None) -> None:
        """The next ``count`` matching requests stall until release_hangs() or ``seconds``, then are served."""
        with self._lock:
            self._faults.append(RequestFault(count, method=method, path=path, hang_seconds=seconds))

    def release_hangs(self) -> None:
        loop, event = self.loop, self._release
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._fail_actions.clear()
        self.release_hangs()

    def _take_fault(self, method: str, template: str) -> RequestFault | None:
        with self._lock:
            for fault in self._faults:
                if fault.count > 0 and fault.matches(method, template):
                    fault.count -= 1
                    return fault
            self._faults = [f for f in self._faults if f.count > 0]
            return None

    # ---------------------------------------------------------------------------------------- calls

    def record(self, method: str, template: str) -> None:
        with self._lock:
            self._calls[f"{method} {template}"] += 1

    def calls(self, method: str | None = None, path: str | None = None) -> int:
        """How many requests matched ``method`` and route template ``path`` (None: any)."""
        with self._lock:
            return sum(
                n
                for key, n in self._calls.items()
                if (method is None or key.split(" ", 1)[0] == method.upper()) and (path is None or key.split(" ", 1)[1] == path)
            )

    def actions_started(self, command: str) -> int:
        """How many actions of ``command`` (e.g. ``assign_floating_ip``) the API started: the effects, whereas
        ``calls`` also counts a request whose client died before its body arrived (it started nothing)."""
        with self._lock:
            return sum(1 for action in self.actions.values() if action.command == command)

    def all_calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def mutating_calls(self) -> dict[str, int]:
        """The calls that could change something: every method but GET (the API's reads are all GETs)."""
        with self._lock:
            return {key: n for key, n in self._calls.items() if not key.startswith("GET ")}

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()
            self.request_log.clear()

    # ---------------------------------------------------------------------------------------- rate limit

    def _rate_headers(self, injected: bool = False) -> tuple[dict[str, str], bool]:
        """Take one request from the bucket (refilling at rate_limit per hour); the API's headers, and whether
        the request is over the limit. RateLimit-Reset is when the bucket will be full again (a UNIX timestamp).
        An ``injected`` 429 reports an empty bucket without draining it, so only the armed requests fail."""
        with self._lock:
            now = time.monotonic()
            per_second = self.rate_limit / 3600.0
            self._bucket = min(float(self.rate_limit), self._bucket + (now - self._bucket_at) * per_second)
            self._bucket_at = now
            limited = self._bucket < 1.0
            if not limited and not injected:
                self._bucket -= 1.0
            level = 0.0 if injected else self._bucket
            reset = int(time.time() + math.ceil((self.rate_limit - level) / per_second))
            headers = {
                "RateLimit-Limit": str(self.rate_limit),
                "RateLimit-Remaining": str(int(level)),
                "RateLimit-Reset": str(reset),
            }
            return headers, limited

    # ---------------------------------------------------------------------------------------- actions

    def start_action(self, command: str, fip: FloatingIp, server: int | None) -> Action:
        with self._lock:
            action = Action(self._next_id("action"), command, fip.id, server)
            if self._fail_actions:
                action.fail_with = self._fail_actions.pop(0)
            self.actions[action.id] = action
            return action

    def finish_action(self, action_id: int) -> None:
        with self._lock:
            action = self.actions[action_id]
            if action.status != "running":
                return
            action.finished = _now_iso()
            action.progress = 100
            if action.fail_with is not None:
                action.status = "error"
                action.error = dict(action.fail_with)
                return
            action.status = "success"
            fip = self.floating_ips.get(action.floating_ip)
            if fip is not None:  # the effect lands only now, when the action succeeds
                fip.server = action.server

    def running_action(self, fip_id: int) -> Action | None:
        with self._lock:
            return next((a for a in self.actions.values() if a.floating_ip == fip_id and a.status == "running"), None)

    # ---------------------------------------------------------------------------------------- JSON shapes

    def server_json(self, server: Server) -> dict[str, Any]:
        with self._lock:
            floating = [f.id for f in self.floating_ips.values() if f.server == server.id]
        n = server.id % 250
        return {
            "id": server.id,
            "name": server.name,
            "status": server.status,
            "created": server.created,
            "public_net": {
                "ipv4": {"id": server.id + 50000, "ip": f"198.51.100.{n}", "blocked": False, "dns_ptr": "static.example"},
                "ipv6": {"id": server.id + 60000, "ip": f"2001:db8:{n:x}::/64", "blocked": False, "dns_ptr": []},
                "floating_ips": floating,
                "firewalls": [],
            },
            "private_net": [],
            "server_type": SERVER_TYPE,
            "location": LOCATION,
            "image": None,
            "iso": None,
            "rescue_enabled": False,
            "locked": server.locked,
            "backup_window": None,
            "outgoing_traffic": 0,
            "ingoing_traffic": 0,
            "included_traffic": 21990232555520,
            "protection": {"delete": False, "rebuild": False},
            "labels": dict(server.labels),
            "volumes": [],
            "load_balancers": [],
            "primary_disk_size": 40,
            "placement_group": None,
        }

    @staticmethod
    def floating_ip_json(fip: FloatingIp) -> dict[str, Any]:
        address = fip.ip.split("/", 1)[0]
        return {
            "id": fip.id,
            "name": fip.name,
            "description": fip.description,
            "ip": fip.ip,
            "type": fip.type,
            "server": fip.server,
            "dns_ptr": [{"ip": address, "dns_ptr": f"fip-{fip.id}.example"}],
            "home_location": LOCATION,
            "blocked": False,
            "protection": {"delete": False},
            "labels": dict(fip.labels),
            "created": fip.created,
        }

    @staticmethod
    def action_json(action: Action) -> dict[str, Any]:
        resources = [{"id": action.floating_ip, "type": "floating_ip"}]
        if action.server is not None:
            resources.append({"id": action.server, "type": "server"})
        return {
            "id": action.id,
            "command": action.command,
            "status": action.status,
            "progress": action.progress,
            "started": action.started,
            "finished": action.finished,
            "resources": resources,
            "error": action.error,
        }

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "servers": [self.server_json(s) for s in self.servers.values()],
                "floating_ips": [self.floating_ip_json(f) for f in self.floating_ips.values()],
                "actions": [self.action_json(a) for a in self.actions.values()],
                "action_delay": self.action_delay,
                "faults": [vars(f) for f in self._faults if f.count > 0],
            }


# --------------------------------------------------------------------------------------------- the web app


def _template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _invalid_field(name, "Not a valid integer.") from None
    if not low <= value <= high:
        raise _invalid_field(name, f"Must be between {low} and {high}.")
    return value


def _paginate(request: web.Request, items: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    page = _int_param(request, "page", 1, 1, 1_000_000)
    per_page = _int_param(request, "per_page", 25, 1, 50)
    total = len(items)
    last = max(1, math.ceil(total / per_page))
    chunk = items[(page - 1) * per_page : page * per_page]
    pagination = {
        "page": page,
        "per_page": per_page,
        "previous_page": page - 1 if page > 1 else None,
        "next_page": page + 1 if page < last else None,
        "last_page": last,
        "total_entries": total,
    }
    return chunk, {"pagination": pagination}


def _path_id(request: web.Request, key: str = "id") -> int:
    try:
        return int(request.match_info[key])
    except ValueError:
        raise _invalid_field(key, "Not a valid integer.") from None


def make_app(state: FakeState) -> web.Application:
    @web.middleware
    async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(FAKE):
            return await handler(request)
        method, template = request.method, _template(request)
        state.record(method, template)
        fault = state._take_fault(method, template)
        if fault is not None and fault.hang_seconds is not None:
            assert state._release is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state._release.wait(), fault.hang_seconds)
            fault = None  # after the stall, the request is served as usual
        headers, limited = state._rate_headers(injected=fault is not None and fault.code == "rate_limit_exceeded")
        status = 0
        try:
            if request.headers.get("Authorization") != f"Bearer {state.token}":
                raise ApiError("unauthorized")
            if fault is not None:
                raise ApiError(fault.code, fault.message, status=fault.status)
            if limited:
                raise ApiError("rate_limit_exceeded")
            response = await handler(request)
            response.headers.update(headers)
            status = response.status
            return response
        except ApiError as exc:
            status = exc.status
            return _error_response(exc, headers)
        except web.HTTPNotFound:
            status = 404
            return _error_response(ApiError("not_found", f"no route {method} {request.path}"), headers)
        except web.HTTPMethodNotAllowed:
            status = 405
            return _error_response(ApiError("method_not_allowed", "method not allowed"), headers)
        finally:
            state.request_log.append({"method": method, "path": template, "status": status, "at": time.time()})

    async def on_startup(app: web.Application) -> None:
        state.loop = asyncio.get_running_loop()
        state._release = asyncio.Event()

    def fip_or_404(fip_id: int) -> FloatingIp:
        fip = state.floating_ips.get(fip_id)
        if fip is None:
            raise ApiError("not_found", f"floating_ip with ID {fip_id} not found")
        return fip

    # ---- /v1/floating_ips

    async def list_floating_ips(request: web.Request) -> web.Response:
        name = request.query.get("name")
        with state._lock:
            items = [f for f in sorted(state.floating_ips.values(), key=lambda f: f.id) if name is None or f.name == name]
            chunk, meta = _paginate(request, items)
            return web.json_response({"floating_ips": [state.floating_ip_json(f) for f in chunk], "meta": meta})

    async def get_floating_ip(request: web.Request) -> web.Response:
        with state._lock:
            return web.json_response({"floating_ip": state.floating_ip_json(fip_or_404(_path_id(request)))})

    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError("json_error", "invalid JSON in request body") from None
        if not isinstance(body, dict):
            raise ApiError("json_error", "request body must be a JSON object")
        return body

    def _start(command: str, fip: FloatingIp, server: int | None) -> web.Response:
        running = state.running_action(fip.id)
        if running is not None:
            raise ApiError("locked", f"floating_ip {fip.id} is locked by action {running.id} ({running.command})")
        action = state.start_action(command, fip, server)
        # Even with no delay the POST answers `running`: completion always comes later, as with the real API.
        asyncio.get_running_loop().call_later(max(0.0, state.action_delay), state.finish_action, action.id)
        return web.json_response({"action": state.action_json(action)}, status=201)

    async def assign(request: web.Request) -> web.Response:
        fip_id = _path_id(request)
        body = await _body(request)
        with state._lock:
            fip = fip_or_404(fip_id)
            server = body.get("server")
            if "server" not in body:
                raise _invalid_field("server", "Missing data for required field.")
            if not isinstance(server, int) or isinstance(server, bool):
                raise _invalid_field("server", "Not a valid integer.")
            if server not in state.servers:
                raise ApiError("not_found", f"server with ID {server} not found")
            if state.servers[server].locked:
                raise ApiError("locked", f"server {server} is locked")
            if fip.server == server and state.running_action(fip.id) is None:
                raise ApiError("floating_ip_assigned", f"floating_ip {fip.id} is already assigned to server {server}")
            return _start("assign_floating_ip", fip, server)

    async def update_floating_ip(request: web.Request) -> web.Response:
        """PUT: ``name``, ``description``, ``labels`` (replacing the set); all validated before anything changes."""
        fip_id = _path_id(request)
        body = await _body(request)
        with state._lock:
            fip = fip_or_404(fip_id)
            labels = validate_labels(body["labels"]) if "labels" in body else None
            name = body.get("name")
            if "name" in body:
                if not isinstance(name, str) or not name:
                    raise _invalid_field("name", "Not a valid string.")
                if any(other.name == name and other.id != fip.id for other in state.floating_ips.values()):
                    raise ApiError("uniqueness_error", f"floating_ip name '{name}' is already in use")
            description = body.get("description")
            if description is not None and not isinstance(description, str):
                raise _invalid_field("description", "Not a valid string.")
            if labels is not None:
                fip.labels = labels
            if isinstance(name, str):
                fip.name = name
            if "description" in body:
                fip.description = description
            return web.json_response({"floating_ip": state.floating_ip_json(fip)})

    async def unassign(request: web.Request) -> web.Response:
        with state._lock:
            return _start("unassign_floating_ip", fip_or_404(_path_id(request)), None)

    # ---- actions

    async def list_fip_actions(request: web.Request) -> web.Response:
        """The floating IP's actions, newest first, filtered by ``status`` (repeatable), paginated."""
        wanted = request.query.getall("status", [])
        with state._lock:
            fip = fip_or_404(_path_id(request))
            actions = [a for a in state.actions.values() if a.floating_ip == fip.id and (not wanted or a.status in wanted)]
            chunk, meta = _paginate(request, sorted(actions, key=lambda a: -a.id))
            return web.json_response({"actions": [state.action_json(a) for a in chunk], "meta": meta})

    def action_or_404(action_id: int, fip_id: int | None = None) -> Action:
        action = state.actions.get(action_id)
        if action is None or (fip_id is not None and action.floating_ip != fip_id):
            raise ApiError("not_found", f"action with ID {action_id} not found")
        return action

    async def get_action(request: web.Request) -> web.Response:
        with state._lock:
            return web.json_response({"action": state.action_json(action_or_404(_path_id(request)))})

    async def get_fip_action(request: web.Request) -> web.Response:
        with state._lock:
            action = action_or_404(_path_id(request, "action_id"), fip_or_404(_path_id(request)).id)
            return web.json_response({"action": state.action_json(action)})

    # ---- /v1/servers

    async def list_servers(request: web.Request) -> web.Response:
        name = request.query.get("name")
        status = request.query.getall("status", [])
        with state._lock:
            items = [
                s
                for s in sorted(state.servers.values(), key=lambda s: s.id)
                if (name is None or s.name == name) and (not status or s.status in status)
            ]
            chunk, meta = _paginate(request, items)
            return web.json_response({"servers": [state.server_json(s) for s in chunk], "meta": meta})

    async def get_server(request: web.Request) -> web.Response:
        server_id = _path_id(request)
        with state._lock:
            server = state.servers.get(server_id)
            if server is None:
                raise ApiError("not_found", f"server with ID {server_id} not found")
            return web.json_response({"server": state.server_json(server)})

    # ---- /_fake control plane

    async def post_faults(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            state.clear_faults()
        if "action_delay" in body:
            state.set_action_delay(float(body["action_delay"]))
        if "fail_next_action" in body:
            spec = body["fail_next_action"] or {}
            state.fail_next_action(spec.get("code", "action_failed"), spec.get("message"))
        if "fail_next" in body:
            spec = body["fail_next"]
            state.fail_next(
                int(spec.get("count", 1)),
                spec["code"],
                status=spec.get("status"),
                message=spec.get("message"),
                method=spec.get("method"),
                path=spec.get("path"),
            )
        if "hang_next" in body:
            spec = body["hang_next"]
            state.hang_next(
                int(spec.get("count", 1)),
                seconds=float(spec.get("seconds", 30.0)),
                method=spec.get("method"),
                path=spec.get("path"),
            )
        if body.get("release_hangs"):
            state.release_hangs()
        return web.json_response(state.snapshot())

    async def get_calls(request: web.Request) -> web.Response:
        return web.json_response({"calls": state.all_calls(), "requests": list(state.request_log)})

    async def delete_calls(request: web.Request) -> web.Response:
        state.reset_calls()
        return web.json_response({"calls": {}})

    async def get_state(request: web.Request) -> web.Response:
        return web.json_response(state.snapshot())

    async def post_state(request: web.Request) -> web.Response:
        """``{"servers": [name...], "floating_ips": [{"ip", "server"?, "name"?}], "assign": {"ip", "server": name|id|null},
        "labels": {"ip", "labels": {...}}, "locked": {"server": name, "locked": bool}}`` (behind the API's back)"""
        body = await request.json()
        try:
            for name in body.get("servers", []):
                state.add_server(name)
            for spec in body.get("floating_ips", []):
                state.add_floating_ip(spec["ip"], spec.get("server"), spec.get("name"))
            if "assign" in body:
                state.assign(body["assign"]["ip"], body["assign"].get("server"))
            if "labels" in body:
                state.set_labels(body["labels"]["ip"], body["labels"]["labels"])
            if "locked" in body:
                state.lock_server(body["locked"]["server"], bool(body["locked"].get("locked", True)))
        except (KeyError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except ApiError as exc:
            return web.json_response({"error": exc.details}, status=400)
        return web.json_response(state.snapshot())

    app = web.Application(middlewares=[api_middleware])
    app.on_startup.append(on_startup)
    app.router.add_get(f"{API}/floating_ips", list_floating_ips)
    app.router.add_get(f"{API}/floating_ips/actions/{{id}}", get_action)
    app.router.add_get(f"{API}/floating_ips/{{id}}", get_floating_ip)
    app.router.add_put(f"{API}/floating_ips/{{id}}", update_floating_ip)
    app.router.add_post(f"{API}/floating_ips/{{id}}/actions/assign", assign)
    app.router.add_post(f"{API}/floating_ips/{{id}}/actions/unassign", unassign)
    app.router.add_get(f"{API}/floating_ips/{{id}}/actions", list_fip_actions)
    app.router.add_get(f"{API}/floating_ips/{{id}}/actions/{{action_id}}", get_fip_action)
    app.router.add_get(f"{API}/actions/{{id}}", get_action)
    app.router.add_get(f"{API}/servers", list_servers)
    app.router.add_get(f"{API}/servers/{{id}}", get_server)
    app.router.add_post(f"{FAKE}/faults", post_faults)
    app.router.add_get(f"{FAKE}/calls", get_calls)
    app.router.add_delete(f"{FAKE}/calls", delete_calls)
    app.router.add_get(f"{FAKE}/state", get_state)
    app.router.add_post(f"{FAKE}/state", post_state)
    return app


# --------------------------------------------------------------------------------------------- running it


class HcloudFake(FakeState):
    """The fake served from a background thread on a free port of ``host`` (loopback unless told otherwise, e.g. an
    address a network namespace can reach). ``endpoint`` is what ``hcloud.Client(api_endpoint=...)`` takes; the
    state/fault/call methods are FakeState's."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        action_delay: float = 0.2,
        rate_limit: int = 3600,
        seed: bool = True,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(token, action_delay, rate_limit)
        if seed:
            self.seed()
        self.host = str(ipaddress.ip_address(host))  # an address: a name would bind one of its addresses, unsaid
        self.port = 0
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"{self.url}{API}"

    def start(self, timeout: float = 10.0) -> HcloudFake:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))  # the port is ours from here on: no race with another free_port() user
        self.port = int(sock.getsockname()[1])
        self._thread = threading.Thread(target=self._run, args=(sock,), name=f"hcloud-fake:{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._failure is not None:
            raise RuntimeError(f"hcloud fake did not start: {self._failure!r}")
        return self

    def _run(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._serve(sock))
        except BaseException as exc:  # surfaced by start()
            self._failure = exc
            self._ready.set()

    async def _serve(self, sock: socket.socket) -> None:
        runner = web.AppRunner(make_app(self), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._stopped = asyncio.Event()
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        self.release_hangs()
        loop, stopped = self.loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> HcloudFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_fake(**kwargs: Any) -> Iterator[HcloudFake]:
    fake = HcloudFake(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.hcloud_api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--action-delay", type=float, default=0.2)
    parser.add_argument("--rate-limit", type=int, default=3600)
    parser.add_argument("--no-seed", action="store_true", help="start with no servers and no floating IPs")
    args = parser.parse_args(argv)
    try:
        ipaddress.ip_address(args.host)
    except ValueError:
        parser.error("--host must be an IP address")
    state = FakeState(args.token, args.action_delay, args.rate_limit)
    if not args.no_seed:
        state.seed()
    print(f"hcloud fake: api_endpoint=http://{args.host}:{args.port}{API}", flush=True)
    web.run_app(make_app(state), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
