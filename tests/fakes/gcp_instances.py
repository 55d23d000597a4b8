"""The GCP Compute fake's instances (tests/fakes/gcp_compute.py): their knobs and their REST handlers (get,
start, stop, setLabels, testIamPermissions), as a part ``GcpComputeFake`` is made of; the lock, the operations and the
serving are the fake's own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.fakes.gcp_model import (
    EFFECT,
    LABEL_KEY,
    LABEL_VALUE,
    PERMISSIONS,
    STATUSES,
    TRANSITIONAL,
    FakePart,
    Instance,
    Operation,
    google_error,
    new_fingerprint,
    operation_name,
)


class InstancesPart(FakePart):
    """Instances of one project and zone; every method takes the fake's lock (documented per method otherwise)."""

    _revoked: frozenset[str]  # the fake's, as the rest of its state (FakePart)

    def set_status(self, instance: str, status: str) -> None:
        """Tamper: set (or create) an instance's status behind the SDK's back."""
        if status not in STATUSES:
            raise ValueError(f"unknown instance status {status!r}; one of {sorted(STATUSES)}")
        with self._lock:
            self._advance()
            if instance in self._instances:
                self._instances[instance].status = status
            else:
                self._instances[instance] = Instance(instance, status)

    def delete_instance(self, instance: str) -> None:
        with self._lock:
            self._instances.pop(instance, None)

    def status(self, instance: str) -> str:
        with self._lock:
            self._advance()
            return self._instances[instance].status

    def labels(self, instance: str) -> dict[str, str]:
        with self._lock:
            return dict(self._instances[instance].labels)

    def set_labels(self, instance: str, labels: Mapping[str, str]) -> None:
        """Tamper: replace an instance's labels behind the SDK's back (its fingerprint changes, as with setLabels)."""
        with self._lock:
            self._instances[instance].labels = dict(labels)
            self._instances[instance].label_fingerprint = new_fingerprint()

    def revoke_permissions(self, *permissions: str) -> None:
        """From now on the caller lacks ``permissions`` (e.g. ``compute.instances.start``): testIamPermissions leaves
        them out and the requests that need them get 403, as Google answers a role without them."""
        with self._lock:
            self._revoked = frozenset(permissions)

    def _instance_json(self, inst: Instance, origin: str) -> dict[str, Any]:
        zone_url = self._zone_url(origin)
        body: dict[str, Any] = {
            "kind": "compute#instance",
            "id": str(inst.id),
            "name": inst.name,
            "zone": zone_url,
            "machineType": f"{zone_url}/machineTypes/e2-small",
            "status": inst.status,
            "creationTimestamp": inst.created,
            "selfLink": f"{zone_url}/instances/{inst.name}",
            "labelFingerprint": inst.label_fingerprint,
        }
        if inst.labels:
            body["labels"] = dict(inst.labels)
        if inst.last_start:
            body["lastStartTimestamp"] = inst.last_start
        if inst.last_stop:
            body["lastStopTimestamp"] = inst.last_stop
        return body

    def _forbidden(self, permission: str, name: str) -> web.Response | None:
        """Google's 403 when ``permission`` is revoked; None when the caller holds it. Lock held."""
        if permission not in self._revoked:
            return None
        where = f"projects/{self.project}/zones/{self.zone}/instances/{name}"
        return google_error(403, f"Required '{permission}' permission for '{where}'", "forbidden")

    async def _test_permissions(self, request: web.Request) -> web.Response:
        name = request.match_info["resource"]
        try:
            asked = (await request.json()).get("permissions", [])
        except ValueError:
            return google_error(400, "Invalid JSON payload received.", "parseError")
        with self._lock:
            if name not in self._instances:
                return self._instance_not_found(name)
            granted = [p for p in asked if p in PERMISSIONS and p not in self._revoked]
        return web.json_response({"permissions": granted} if granted else {})

    async def _get_instance(self, request: web.Request) -> web.Response:
        name = request.match_info["instance"]
        with self._lock:
            if (forbidden := self._forbidden("compute.instances.get", name)) is not None:
                return forbidden
            self._advance()
            inst = self._instances.get(name)
            if inst is None:
                return self._instance_not_found(name)
            return web.json_response(self._instance_json(inst, str(request.url.origin())))

    def _instance_not_found(self, name: str) -> web.Response:
        return google_error(404, f"The resource 'projects/{self.project}/zones/{self.zone}/instances/{name}' was not found")

    async def _start_or_stop(self, request: web.Request) -> web.Response:
        name = request.match_info["instance"]
        kind = request.path.rsplit("/", 1)[1]
        with self._lock:
            if (forbidden := self._forbidden(f"compute.instances.{kind}", name)) is not None:
                return forbidden
            self._advance()
            inst = self._instances.get(name)
            if inst is None:
                return self._instance_not_found(name)
            if inst.status in TRANSITIONAL:
                return google_error(
                    400,
                    f"The resource 'projects/{self.project}/zones/{self.zone}/instances/{name}' is not ready",
                    "resourceNotReady",
                )
            if kind == "start" and inst.status == "SUSPENDED":
                return google_error(400, f"Instance '{name}' is suspended: resume it instead.", "badRequest")
            op = Operation(
                name=operation_name(),
                kind=kind,
                instance=name,
                from_status=inst.status,
                pending_for=self.pending_for,
                running_for=self.running_for,
                failure=self._fail_operation,
            )
            self._fail_operation = None
            # Starting a running instance (or stopping a stopped one) is an operation that changes nothing.
            if inst.status != EFFECT[kind][1]:
                inst.status = EFFECT[kind][0]
            self._operations[op.name] = op
            self._advance()  # zero delays: DONE at once
            return web.json_response(self._operation_json(op, str(request.url.origin())))

    async def _set_labels(self, request: web.Request) -> web.Response:
        """``setLabels``: the labels replace the instance's, only if ``labelFingerprint`` is the current one (else 412
        conditionNotMet, as the API reference says); the operation is DONE at once."""
        name = request.match_info["instance"]
        try:
            body = await request.json()
            labels, fingerprint = dict(body.get("labels") or {}), body.get("labelFingerprint")
        except (ValueError, TypeError, AttributeError):
            return google_error(400, "Invalid JSON payload received.", "parseError")
        bad = [k for k, v in labels.items() if not LABEL_KEY.fullmatch(str(k)) or not LABEL_VALUE.fullmatch(str(v))]
        if bad or len(labels) > 64:
            return google_error(400, f"Invalid value for field 'resource.labels': {bad or len(labels)}", "invalid")
        with self._lock:
            if (forbidden := self._forbidden("compute.instances.setLabels", name)) is not None:
                return forbidden
            inst = self._instances.get(name)
            if inst is None:
                return self._instance_not_found(name)
            if fingerprint != inst.label_fingerprint:
                return google_error(412, "Labels fingerprint either invalid or resource labels have changed", "conditionNotMet")
            inst.labels, inst.label_fingerprint = labels, new_fingerprint()
            op = Operation(operation_name(), "setLabels", name, inst.status, pending_for=0.0, running_for=0.0, failure=None)
            self._operations[op.name] = op
            self._advance()
            return web.json_response(self._operation_json(op, str(request.url.origin())))
