"""The GCP Compute fake's model (tests/fakes/gcp_compute.py): the API's paths, statuses and error shape, and the
instances and operations it keeps."""

from __future__ import annotations

import base64
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

ZONE_PATH = "/compute/v1/projects/{project}/zones/{zone}"
INSTANCE = ZONE_PATH + "/instances/{instance}"
START = INSTANCE + "/start"
STOP = INSTANCE + "/stop"
SET_LABELS = INSTANCE + "/setLabels"
OPERATION = ZONE_PATH + "/operations/{operation}"
OPERATION_WAIT = OPERATION + "/wait"
TEST_PERMISSIONS = ZONE_PATH + "/instances/{resource}/testIamPermissions"
GROUP = ZONE_PATH + "/instanceGroupManagers/{group}"
RESIZE = GROUP + "/resize"
LIST_MANAGED = GROUP + "/listManagedInstances"
REGION = "/compute/v1/projects/{project}/regions/{region}"
# POSTs that change nothing: what mutating_calls() leaves out.
READ_ONLY_POSTS = frozenset({OPERATION_WAIT, TEST_PERMISSIONS, LIST_MANAGED})
# The permissions an instance's testIamPermissions knows of (the caller has them all unless revoked).
PERMISSIONS = frozenset(f"compute.instances.{verb}" for verb in ("get", "start", "stop", "setLabels"))
# The API reference's label rules: keys start with a lowercase letter; keys and values are lowercase letters, digits,
# '_' and '-', up to 63 characters; at most 64 labels.
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")

DEFAULT_PROJECT = "dr-project"
DEFAULT_ZONE = "europe-west3-a"
DEFAULT_INSTANCES: Mapping[str, str] = {"cloud-standby": "TERMINATED", "drill-standby": "TERMINATED"}

# Instance statuses from the API reference. STOPPED is not one GCE reports today, but clients must tolerate it.
TRANSITIONAL = frozenset({"PROVISIONING", "STAGING", "STOPPING", "SUSPENDING", "REPAIRING"})
STATUSES = TRANSITIONAL | {"RUNNING", "TERMINATED", "STOPPED", "SUSPENDED"}
# operationType → (status while the operation runs, status once it is DONE)
EFFECT = {"start": ("STAGING", "RUNNING"), "stop": ("STOPPING", "TERMINATED")}
HTTP_REASON = {
    400: "badRequest",
    401: "required",
    403: "forbidden",
    404: "notFound",
    429: "rateLimitExceeded",
    500: "backendError",
    503: "backendError",
}
HTTP_MESSAGE = {429: "Rate Limit Exceeded", 500: "Internal Error", 503: "The service is currently unavailable."}



def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_id() -> int:
    return secrets.randbits(62) | (1 << 61)  # 19 digits, like Google's


def operation_name() -> str:
    """A new operation's name, in the shape of Google's (``operation-<ms>-<hex>-<hex>``)."""
    return f"operation-{int(time.time() * 1000)}-{secrets.token_hex(7)}-{secrets.token_hex(4)}"


def new_fingerprint() -> str:
    """A new label fingerprint: base64 of 8 bytes, as Google's look; it changes with every label change."""
    return base64.b64encode(secrets.token_bytes(8)).decode()


def google_error(status: int, message: str, reason: str | None = None, domain: str = "global") -> web.Response:
    """An error in the JSON shape Google APIs use (what ``google.api_core.exceptions.from_http_response`` reads)."""
    reason = reason or HTTP_REASON.get(status, "error")
    body = {"error": {"code": status, "message": message, "errors": [{"message": message, "domain": domain, "reason": reason}]}}
    return web.json_response(body, status=status)


@dataclass
class Instance:
    name: str
    status: str
    id: int = field(default_factory=new_id)
    created: str = field(default_factory=now_rfc3339)
    last_start: str | None = None
    last_stop: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    label_fingerprint: str = field(default_factory=new_fingerprint)


@dataclass
class Failure:
    code: str
    message: str
    http_status: int


@dataclass(frozen=True)
class Fault:
    status: int | None  # None: hang (or, with held, hold until released, then serve)
    method: str | None
    template: str | None
    held: bool = False

    def matches(self, method: str, template: str) -> bool:
        return self.method in (None, method) and self.template in (None, template)


@dataclass
class Operation:
    name: str
    kind: str  # operationType: start | stop | setLabels | compute.instanceGroupManagers.resize
    instance: str  # the target's name: an instance, or a group when ``target`` says so
    from_status: str  # the instance's status before: where a failed operation leaves it
    pending_for: float
    running_for: float
    failure: Failure | None
    id: int = field(default_factory=new_id)
    created: float = field(default_factory=time.monotonic)
    insert_time: str = field(default_factory=now_rfc3339)
    start_time: str | None = None
    end_time: str | None = None
    history: list[str] = field(default_factory=lambda: ["PENDING"])  # every status it went through, in order
    target: str = "instances"  # the collection of its target (targetLink): instances | instanceGroupManagers
    size: int | None = None  # a resize's new target size

    def phase(self, now: float) -> str:
        elapsed = now - self.created
        if elapsed < self.pending_for:
            return "PENDING"
        return "RUNNING" if elapsed < self.pending_for + self.running_for else "DONE"

    @property
    def status(self) -> str:
        return self.history[-1]


class FakePart:
    """A part of the fake (its instances, its groups): the state it shares with the fake, declared for the type
    checker. The fake (tests/fakes/gcp_compute.py) owns and sets it all; every part works under its lock."""

    project: str
    zone: str
    pending_for: float
    running_for: float
    _lock: threading.Lock
    _instances: dict[str, Instance]
    _operations: dict[str, Operation]
    _fail_operation: Failure | None

    if TYPE_CHECKING:  # the fake's own methods

        def _advance(self) -> None: ...

        def _zone_url(self, origin: str) -> str: ...

        def _operation_json(self, op: Operation, origin: str) -> dict[str, Any]: ...
