"""The ``gcp`` driver's ``compute/group-size@v1``: a zonal managed instance group (MIG) runs ``size`` instances.

``inputs.group`` is an instance group manager in ``config.project`` / ``config.zone``; its quota is read in the zone's
region (``europe-west3-a`` → ``europe-west3``). The SDK calls, their deadlines, the zone-operation wait and the
error vocabulary are drivers/gcp.py's (this module uses the driver's own helpers; gcp.py hands it the steps).

- check() / verify(): ``instanceGroupManagers.get`` and ``listManagedInstances``: satisfied when ``targetSize`` is
  ``size`` and the group lists exactly ``size`` instances, each ``RUNNING`` with ``currentAction`` ``NONE`` (an
  instance still being deleted counts against it: scaled in means gone).
- apply(): ``resize?size=N`` unless ``targetSize`` already is ``size`` (a resize that landed before a timeout or a
  restart is not sent again), the zone operation waited out as for start/stop, then the instances polled until
  they run (or go), all within ``operation_timeout`` from the first read.
- preflight(): the group exists, and the region's ``INSTANCES`` quota leaves room for the largest size the step may
  ask for (``max_size``, else ``size``): limit − usage + the instances the group holds now (usage counts them, and a
  resize replaces them) ≥ that size. vCPUs (``CPUS``) are not checked: that needs the template's machine type.

Fencing: none at the target. A MIG carries no labels with a fingerprint (the v1 resource has no ``labels``, and a
resize takes no precondition), so the step is check-then-write: a leader deposed between its read and its resize can
still land one resize, within its request deadline; check() has no stamp to journal.

Bounds: listManagedInstances is read a page at a time (``PAGE_SIZE``), at most ``MAX_PAGES`` pages and
``MAX_INSTANCES`` instances; more is an ``Unavailable`` naming the bound, never an endless read. Errors: those of
drivers/gcp.py; an operation DONE with an error is ``Unavailable`` quoting Google's codes (``details["codes"]``);
instances not there within ``operation_timeout`` is ``Unavailable`` with code ``NOT_SETTLED`` (retryable: the retry
re-checks, finds ``targetSize`` already set and only waits); a missing group is ``NotFound``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.cloud import compute_v1

from hybridops_daemon.chain.templating import UnresolvedReference, render
from hybridops_daemon.drivers.base import (
    ApplyResult,
    CheckResult,
    NoCompensation,
    ProbeResult,
    Readiness,
    StepContext,
    Unavailable,
)
from hybridops_daemon.drivers.gcp import GROUP_MODULE
from hybridops_daemon.drivers.modules import ComputeGroupSize, inputs_of

if TYPE_CHECKING:  # gcp.py imports this module at first use
    from hybridops_daemon.drivers.gcp import GcpDriver

PROBE = "gcp instanceGroupManagers.get + listManagedInstances read-back"
NOT_SETTLED = "group_not_settled"  # Unavailable's code: the instances did not run (or go) within operation_timeout
QUOTA_METRIC = "INSTANCES"
PAGE_SIZE = 500  # listManagedInstances' maxResults (the API's largest page)
MAX_INSTANCES = 2000  # twice the module's largest size: a group listing more is not one this step can reason about
MAX_PAGES = MAX_INSTANCES // PAGE_SIZE + 1


@dataclass(frozen=True, slots=True)
class Seen:
    """One read of the group: its ``targetSize`` and each listed instance's (name, instanceStatus, currentAction)."""

    target_size: int
    instances: tuple[tuple[str, str, str], ...]

    @property
    def running(self) -> int:
        return sum(1 for _name, status, action in self.instances if status == "RUNNING" and action == "NONE")

    def settled(self, size: int) -> bool:
        return self.target_size == size and len(self.instances) == size == self.running

    def observed(self) -> dict[str, Any]:
        states = Counter(f"{status}/{action}" for _name, status, action in self.instances)
        return {"target_size": self.target_size, "instances": len(self.instances), "running": self.running} | {
            "states": dict(sorted(states.items()))
        }

    def describe(self) -> str:
        others = Counter(f"{s}/{a}" for _n, s, a in self.instances if (s, a) != ("RUNNING", "NONE"))
        rest = f" ({', '.join(f'{n} {state}' for state, n in sorted(others.items()))})" if others else ""
        return f"targetSize {self.target_size}, {self.running} of {len(self.instances)} instance(s) RUNNING{rest}"


def _member(item: compute_v1.ManagedInstance) -> tuple[str, str, str]:
    """(name, instanceStatus, currentAction); a field the answer left out reads UNKNOWN, never as running."""
    name = item.name or item.instance.rsplit("/", 1)[-1]
    return name, item.instance_status or "UNKNOWN", item.current_action or "UNKNOWN"


def _region(zone: str) -> str:
    """A zone's region: GCE names every zone ``<region>-<letter>``."""
    return zone.rsplit("-", 1)[0]


class GroupSize:
    """``compute/group-size@v1`` steps for a ``GcpDriver``, through its clients, deadlines and errors."""

    def __init__(self, driver: GcpDriver) -> None:
        self._driver = driver

    async def check(self, step: StepContext) -> CheckResult:
        """Is the group already at ``size``, every instance running? Read-only and idempotent.

        Budget: a get and one listManagedInstances page per 500 instances (each ≤ request_timeout). Raises NotFound
        (no such group), Refused, CredentialsUnavailable (permanent); RateLimited, Unavailable (retryable).
        """
        inputs = inputs_of("gcp", step.module, step.inputs, ComputeGroupSize)
        seen = await self._read(inputs.group)
        satisfied = seen.settled(inputs.size)
        return CheckResult(satisfied, seen.observed(), self._outputs(inputs, seen) if satisfied else {})

    async def apply(self, step: StepContext) -> ApplyResult:
        """Resize the group to ``size`` and wait until exactly that many instances run.

        Idempotent: no resize when ``targetSize`` already is ``size`` (then it only waits for the instances). Budget:
        ``operation_timeout`` from the first read, for the resize's zone operation and the instances together. Raises
        Unavailable (the operation failed, naming Google's error codes; or code ``NOT_SETTLED``: the instances did not
        run or go in time) and the errors of check().
        """
        inputs = inputs_of("gcp", step.module, step.inputs, ComputeGroupSize)
        driver, group, size = self._driver, inputs.group, inputs.size
        deadline = asyncio.get_running_loop().time() + driver._config.operation_timeout
        started = time.monotonic()
        seen = await self._read(group)
        if seen.settled(size):
            already = f"group {group} already runs {size} instance(s): nothing to do"
            return ApplyResult(log=(already,), outputs=self._outputs(inputs, seen))
        if seen.target_size == size:
            resized = f"targetSize already {size}: no resize sent"
        else:
            clients = await driver._client()
            op = await driver._call(
                f"instanceGroupManagers.resize {group}", clients.groups.resize_unary, instance_group_manager=group, size=size
            )
            op = await driver._wait(op, deadline)
            driver._raise_failed(op, f"gcp resize of group {group} to {size}")
            resized = f"resized {seen.target_size} → {size} (operation {op.name} DONE)"

        def late(now: Seen) -> Unavailable:
            timeout = driver._config.operation_timeout
            return Unavailable(
                f"gcp: group {group} not at {size} running instance(s) after {timeout:g}s (operation_timeout): {now.describe()}",
                code=NOT_SETTLED,
                details=now.observed(),
            )

        seen = await driver._poll(lambda: self._read(group), lambda now: now.settled(size), deadline, late)
        took = time.monotonic() - started
        return ApplyResult(
            log=(f"group {group}: {resized}; {seen.running} instance(s) RUNNING after {took:.1f}s",),
            outputs=self._outputs(inputs, seen),  # the same shape as check()'s
        )

    async def verify(self, step: StepContext) -> ProbeResult:
        """A fresh get and listManagedInstances (never apply()'s answer): ``targetSize`` and running instances both
        ``size``. Read-only and idempotent; budget and errors as check()."""
        inputs = inputs_of("gcp", step.module, step.inputs, ComputeGroupSize)
        seen = await self._read(inputs.group)
        ok = seen.settled(inputs.size)
        where = f"projects/{self._driver._config.project}/zones/{self._driver._config.zone}/instanceGroupManagers/{inputs.group}"
        detail = f"{where}: {seen.describe()}" + ("" if ok else f", expected {inputs.size} RUNNING")
        return ProbeResult(ok=ok, probe=PROBE, observed=seen.observed(), detail=detail)

    async def compensate(self, step: StepContext) -> ApplyResult:
        """Never: the driver does not know the size before the step, and the lane's next scale decision sets it."""
        raise NoCompensation(f"gcp: no compensation for {GROUP_MODULE}: the burst lane's next scale step sets the size")

    async def preflight(self, step: StepContext) -> Readiness:
        """Could a resize to the largest size the step may ask for succeed now? Read-only: get, listManagedInstances
        and ``regions.get`` (no resize).

        A size given by the run (``${run.size}``, unknown to a preflight) stands for ``max_size``; without
        ``max_size`` the group is checked and the quota is not (the reason says so). Not ready: the quota leaves no
        room for that size (the reason gives limit, usage and the group's instances). Budget: 3+ requests, each ≤
        request_timeout. Raises NotFound for a missing group (reported as not ready) and the errors of check().
        """
        inputs, unknown = self._preflight_inputs(step)
        seen = await self._read(inputs.group)
        where = f"gcp: group {inputs.group} ({seen.describe()})"
        if unknown:
            reason = f"{where} exists; quota not checked: the size comes from the run ({unknown}) and no max_size is set"
            return Readiness(True, reason, seen.observed())
        driver, region, wanted = self._driver, _region(self._driver._config.zone), inputs.ceiling
        clients = await driver._client()
        answer = await driver._call(
            f"regions.get {region}", clients.regions.get, zonal=False, project=driver._config.project, region=region
        )
        quota = next((q for q in answer.quotas if q.metric == QUOTA_METRIC), None)
        if quota is None:
            return Readiness(False, f"{where}: region {region} lists no {QUOTA_METRIC} quota to check size {wanted} against")
        held = len(seen.instances)
        room = quota.limit - quota.usage + held
        observed = seen.observed() | {"quota": {"metric": QUOTA_METRIC, "limit": quota.limit, "usage": quota.usage}}
        sums = f"limit {quota.limit:g} − usage {quota.usage:g} + the group's own {held} = {room:g}"
        metrics = {"quota_instances_room": room, "group_target_size": float(seen.target_size)}
        if room < wanted:
            reason = f"{where}: size {wanted} does not fit region {region}'s {QUOTA_METRIC} quota: {sums} < {wanted}"
            return Readiness(False, reason, observed, metrics)
        return Readiness(True, f"{where}: size {wanted} fits region {region}'s {QUOTA_METRIC} quota ({sums})", observed, metrics)

    # ------------------------------------------------------------------------------------------ internals

    @staticmethod
    def _preflight_inputs(step: StepContext) -> tuple[ComputeGroupSize, str]:
        """The inputs as a preflight can know them, and the reference the quota check waits for ("" when none). A
        size the run gives is unknown here: ``max_size`` stands for it, or, without one, 0 (the group is read, no more)."""
        fields, unchecked = dict(step.inputs), ""
        try:
            render(fields.get("size"), {}, {"id": step.run_id, "lane": step.lane})
        except UnresolvedReference:
            if fields.get("max_size") is None:
                unchecked = str(fields["size"])
            fields["size"] = fields.get("max_size") or 0
        return inputs_of("gcp", step.module, fields, ComputeGroupSize), unchecked

    async def _read(self, group: str) -> Seen:
        driver = self._driver
        clients = await driver._client()
        manager = await driver._call(f"instanceGroupManagers.get {group}", clients.groups.get, instance_group_manager=group)
        return Seen(int(manager.target_size), await self._instances(group))

    async def _instances(self, group: str) -> tuple[tuple[str, str, str], ...]:
        """Every instance listManagedInstances shows, a page per request, within MAX_PAGES and MAX_INSTANCES."""
        driver = self._driver
        clients = await driver._client()
        found: list[tuple[str, str, str]] = []
        token = ""
        for _page in range(MAX_PAGES):
            request = compute_v1.ListManagedInstancesInstanceGroupManagersRequest(
                project=driver._config.project,
                zone=driver._config.zone,
                instance_group_manager=group,
                max_results=PAGE_SIZE,
                page_token=token,
            )
            what = f"instanceGroupManagers.listManagedInstances {group}"
            # The pager fetched one page; reading its fields (not iterating it) sends no further request.
            page = await driver._call(what, clients.groups.list_managed_instances, zonal=False, request=request)
            found.extend(_member(item) for item in page.managed_instances)
            if len(found) > MAX_INSTANCES:
                raise Unavailable(f"gcp: group {group} lists more than {MAX_INSTANCES} instances: not read further")
            token = page.next_page_token
            if not token:
                return tuple(found)
        raise Unavailable(f"gcp: group {group}: listManagedInstances still had more pages after {MAX_PAGES}: not read further")

    @staticmethod
    def _outputs(inputs: ComputeGroupSize, seen: Seen) -> Mapping[str, Any]:
        return {"group": inputs.group, "size": inputs.size, **seen.observed()}
