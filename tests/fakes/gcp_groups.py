"""The GCP Compute fake's zonal managed instance groups and its region (tests/fakes/gcp_compute.py): a part
``GcpComputeFake`` is made of, with the knobs and REST handlers of ``instanceGroupManagers.get``, ``.resize``,
``.listManagedInstances`` and ``regions.get`` (paths and verbs from the SDK's REST transports; shapes from the
public v1 reference).

Modelled on the reference:
- ``resize?size=N`` answers at once with a zone operation (``operationType`` ``compute.instanceGroupManagers.resize``,
  ``targetLink`` the group) that goes ``PENDING → RUNNING → DONE`` like every other. The group's ``targetSize``
  changes when it is DONE (not at all when the operation fails: ``fail_next_operation``).
- Then the group creates instances (``currentAction`` ``CREATING``, ``instanceStatus`` ``PROVISIONING`` for
  ``provisioning_for`` seconds, ``STAGING`` for ``staging_for``, then ``RUNNING`` with ``currentAction`` ``NONE``) or
  deletes the newest ones (``DELETING`` / ``STOPPING`` for ``deleting_for`` seconds, then gone). ``provisioning_for``
  may be ``math.inf``: instances that never come up.
- ``listManagedInstances`` lists them (``maxResults`` / ``pageToken`` pages, with ``nextPageToken`` while more
  remain); ``endless_pages()`` makes every answer carry a ``nextPageToken`` (a paging loop that never ends) and
  ``garble_next_list()`` answers the next one with a body the SDK cannot parse.
- ``regions/{region}`` answers the region of the fake's zone with ``quotas`` ``INSTANCES`` and ``CPUS``; usage is
  what the fake holds (every instance and group member; 2 vCPUs each, as an e2-small has) unless ``set_quota`` says.
Progress is computed from the clock whenever anything looks, as for operations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.gcp_model import FakePart, Operation, google_error, new_id, now_rfc3339, operation_name

RESIZE_KIND = "compute.instanceGroupManagers.resize"
CPUS_PER_INSTANCE = 2  # the groups' template is an e2-small
DEFAULT_QUOTAS: Mapping[str, float] = {"INSTANCES": 24.0, "CPUS": 48.0}
DEFAULT_MEMBER_DELAYS = (0.2, 0.2, 0.2)  # provisioning_for, staging_for, deleting_for


@dataclass
class Member:
    """One managed instance, its progress read off the clock."""

    name: str
    created: float  # monotonic
    id: int = field(default_factory=new_id)
    deleting_since: float | None = None

    def state(self, now: float, delays: tuple[float, float, float]) -> tuple[str, str] | None:
        """(instanceStatus, currentAction) at ``now``; None once deleted."""
        provisioning, staging, deleting = delays
        if self.deleting_since is not None:
            return None if now - self.deleting_since >= deleting else ("STOPPING", "DELETING")
        elapsed = now - self.created
        if elapsed < provisioning:
            return "PROVISIONING", "CREATING"
        return ("STAGING", "CREATING") if elapsed < provisioning + staging else ("RUNNING", "NONE")


@dataclass
class Group:
    name: str
    target_size: int
    members: list[Member] = field(default_factory=list)  # oldest first: a scale-in deletes from the end
    id: int = field(default_factory=new_id)
    created: str = field(default_factory=now_rfc3339)
    serial: int = 0  # names members <group>-<serial>, never reused

    def resize(self, size: int, now: float) -> None:
        self.target_size = size
        alive = [m for m in self.members if m.deleting_since is None]
        for _ in range(size - len(alive)):
            self.serial += 1
            self.members.append(Member(f"{self.name}-{self.serial:04d}", now))
        for member in alive[size:]:
            member.deleting_since = now


class GroupsPart(FakePart):
    """Managed instance groups in the fake's zone, and its region's quotas."""

    @property
    def region(self) -> str:
        return self.zone.rsplit("-", 1)[0]  # europe-west3-a is in europe-west3

    _seed_groups: dict[str, int]  # the fake's: the groups it starts with (name → size)

    def _reset_groups(self) -> None:
        """The seeded groups (their instances running), default delays and quotas, no list faults. Lock held."""
        self._groups: dict[str, Group] = {}
        for name, size in self._seed_groups.items():
            self._groups[name] = Group(name, 0)
            self._groups[name].resize(size, -math.inf)  # created long ago: running now
        self.member_delays = DEFAULT_MEMBER_DELAYS
        self._quotas: dict[str, tuple[float, float | None]] = {m: (limit, None) for m, limit in DEFAULT_QUOTAS.items()}
        self._endless_pages = False
        self._garble_lists = 0

    # ------------------------------------------------------------------------------------------ knobs

    def add_group(self, name: str, size: int = 0) -> None:
        """A group with ``size`` instances, RUNNING already (replacing one of that name)."""
        with self._lock:
            self._groups[name] = Group(name, 0)
            self._groups[name].resize(size, -math.inf)  # created long ago: running now

    def delete_group(self, name: str) -> None:
        with self._lock:
            self._groups.pop(name, None)

    def set_member_delays(self, provisioning: float, staging: float, deleting: float) -> None:
        """How long a new instance stays PROVISIONING, then STAGING (``math.inf``: forever), and a deleted one STOPPING."""
        with self._lock:
            self.member_delays = (provisioning, staging, deleting)

    def set_quota(self, metric: str, limit: float, usage: float | None = None) -> None:
        """The region's quota ``metric`` (INSTANCES, CPUS): its limit, and its usage (None: what the fake holds)."""
        with self._lock:
            self._quotas[metric] = (limit, usage)

    def endless_pages(self, on: bool = True) -> None:
        """Every listManagedInstances answer carries a nextPageToken: a client that follows them never stops."""
        with self._lock:
            self._endless_pages = on

    def garble_next_list(self, count: int = 1) -> None:
        """The next ``count`` listManagedInstances answers are 200 with a body that is no valid response."""
        with self._lock:
            self._garble_lists += count

    def group(self, name: str) -> dict[str, Any]:
        """The group as ``instanceGroupManagers.get`` shows it, with its members as listManagedInstances does."""
        return self.groups()[name]

    def groups(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            self._advance()
            origin = f"http://{self.project}.invalid"  # links are not what a test reads here
            return {
                name: self._group_json(group, origin) | {"members": self._members_json(group, origin)}
                for name, group in self._groups.items()
            }

    def resizes(self) -> list[dict[str, Any]]:
        """Every resize operation so far, oldest first, with its size and the statuses it went through."""
        with self._lock:
            self._advance()
            origin = f"http://{self.project}.invalid"  # links are not what a test reads here
            ops = [op for op in self._operations.values() if op.kind == RESIZE_KIND]
            return [self._operation_json(op, origin) | {"size": op.size, "history": list(op.history)} for op in ops]

    def _tamper_groups(self, groups: Mapping[str, Any]) -> None:
        """``/_fake/state``'s ``groups``: ``{"NAME": {"size": N} | null}`` adds (replaces) or, with null, deletes."""
        for name, spec in groups.items():
            if spec is None:
                self.delete_group(name)
            else:
                self.add_group(name, int(spec["size"]))

    def _group_faults(self, body: Mapping[str, Any]) -> None:
        """``/_fake/faults``' group keys (all optional): ``member_delays {provisioning, staging, deleting}`` (null:
        forever), ``quota {metric, limit, usage?}``, ``endless_pages`` (bool), ``garble_next_list`` (a count)."""
        if "member_delays" in body:
            spec = body["member_delays"]
            delays = [math.inf if spec[k] is None else float(spec[k]) for k in ("provisioning", "staging", "deleting")]
            self.set_member_delays(*delays)
        if "quota" in body:
            spec = body["quota"]
            usage = spec.get("usage")
            self.set_quota(str(spec["metric"]), float(spec["limit"]), None if usage is None else float(usage))
        if "endless_pages" in body:
            self.endless_pages(bool(body["endless_pages"]))
        if "garble_next_list" in body:
            self.garble_next_list(int(body["garble_next_list"]))

    # ------------------------------------------------------------------------------------------ the model

    def _finish_resize(self, op: Operation) -> None:
        """A resize operation just went DONE: its group takes the new size (unless it failed), as of the moment the
        operation was done, however much later someone looked. Lock held."""
        group = self._groups.get(op.instance)
        if group is not None and op.failure is None and op.size is not None:
            group.resize(op.size, op.created + op.pending_for + op.running_for)

    def _states(self, group: Group) -> list[tuple[Member, str, str]]:
        """Each member with its (instanceStatus, currentAction) now; deleted ones are dropped. Lock held."""
        now, states = time.monotonic(), []
        for member in list(group.members):
            state = member.state(now, self.member_delays)
            if state is None:
                group.members.remove(member)
            else:
                states.append((member, *state))
        return states

    def _group_json(self, group: Group, origin: str) -> dict[str, Any]:
        zone_url = self._zone_url(origin)
        actions = {"none": 0, "creating": 0, "deleting": 0}
        for _member, _status, action in self._states(group):
            actions[action.lower()] += 1
        return {
            "kind": "compute#instanceGroupManager",
            "id": str(group.id),
            "name": group.name,
            "zone": zone_url,
            "creationTimestamp": group.created,
            "baseInstanceName": group.name,
            "instanceTemplate": f"{origin}/compute/v1/projects/{self.project}/global/instanceTemplates/{group.name}-tpl",
            "instanceGroup": f"{zone_url}/instanceGroups/{group.name}",
            "targetSize": group.target_size,
            "currentActions": actions,
            "status": {"isStable": actions["none"] == len(group.members) == group.target_size},
            "listManagedInstancesResults": "PAGELESS",
            "selfLink": f"{zone_url}/instanceGroupManagers/{group.name}",
        }

    def _members_json(self, group: Group, origin: str) -> list[dict[str, Any]]:
        zone_url = self._zone_url(origin)
        return [
            {
                "instance": f"{zone_url}/instances/{member.name}",
                "id": str(member.id),
                "name": member.name,
                "instanceStatus": status,
                "currentAction": action,
            }
            for member, status, action in self._states(group)
        ]

    def _region_json(self, origin: str) -> dict[str, Any]:
        base = f"{origin}/compute/v1/projects/{self.project}"
        count = len(self._instances) + sum(len(self._states(g)) for g in self._groups.values())
        held = {"INSTANCES": float(count), "CPUS": float(count * CPUS_PER_INSTANCE)}
        quotas = [
            {"metric": metric, "limit": limit, "usage": held.get(metric, 0.0) if usage is None else usage}
            for metric, (limit, usage) in sorted(self._quotas.items())
        ]
        return {
            "kind": "compute#region",
            "id": str(abs(hash(self.region)) % 10**15 + 10**15),
            "name": self.region,
            "status": "UP",
            "zones": [f"{base}/zones/{self.zone}"],
            "quotas": quotas,
            "selfLink": f"{base}/regions/{self.region}",
        }

    # ------------------------------------------------------------------------------------------ HTTP

    def _group_not_found(self, name: str) -> web.Response:
        where = f"projects/{self.project}/zones/{self.zone}/instanceGroupManagers/{name}"
        return google_error(404, f"The resource '{where}' was not found")

    async def _get_group(self, request: web.Request) -> web.Response:
        name = request.match_info["group"]
        with self._lock:
            self._advance()
            group = self._groups.get(name)
            if group is None:
                return self._group_not_found(name)
            return web.json_response(self._group_json(group, str(request.url.origin())))

    async def _resize_group(self, request: web.Request) -> web.Response:
        name = request.match_info["group"]
        text = request.query.get("size", "")
        if not text.isdigit() or int(text) > 2000:  # the reference: required, 0 or more; a zonal group holds up to 2000
            return google_error(400, f"Invalid value for field 'size': '{text}'. Must be between 0 and 2000.", "invalid")
        with self._lock:
            self._advance()
            group = self._groups.get(name)
            if group is None:
                return self._group_not_found(name)
            op = Operation(
                operation_name(),
                RESIZE_KIND,
                name,
                str(group.target_size),
                pending_for=self.pending_for,
                running_for=self.running_for,
                failure=self._fail_operation,
                target="instanceGroupManagers",
                size=int(text),
            )
            self._fail_operation = None
            self._operations[op.name] = op
            self._advance()  # zero delays: DONE at once
            return web.json_response(self._operation_json(op, str(request.url.origin())))

    async def _list_managed(self, request: web.Request) -> web.Response:
        name = request.match_info["group"]
        try:
            size = int(request.query.get("maxResults", "500"))
            offset = int(request.query.get("pageToken") or 0)
        except ValueError:
            return google_error(400, "Invalid value for maxResults or pageToken", "invalid")
        with self._lock:
            self._advance()
            group = self._groups.get(name)
            if group is None:
                return self._group_not_found(name)
            if self._garble_lists > 0:
                self._garble_lists -= 1
                return web.json_response({"managedInstances": "not a list"})
            members = self._members_json(group, str(request.url.origin()))
            body: dict[str, Any] = {"managedInstances": members[offset : offset + size]} if members[offset:] else {}
            if self._endless_pages or offset + size < len(members):
                body["nextPageToken"] = str(offset + size)
            return web.json_response(body)

    async def _get_region(self, request: web.Request) -> web.Response:
        with self._lock:
            self._advance()
            return web.json_response(self._region_json(str(request.url.origin())))
