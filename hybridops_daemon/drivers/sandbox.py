"""The ``sandbox`` driver: all five catalogue modules against a local JSON "world" file.

It stands in for the outside world in demos and tests, so that effects can be watched and counted:
``resources`` holds each resource as last applied, ``applies`` counts apply() calls per resource,
``events`` is the history (with each apply's ``previous`` value, which compensate() restores), and
``faults`` lets a test make an operation fail, fail permanently, or hang (``preflight`` too: how a test plants a
step that is not ready). A missing file is an empty world.

Every change happens under an exclusive ``flock`` on ``<world>.lock`` (read, modify, write) and is written
atomically (temp file, fsync, rename, fsync of the folder), so concurrent drivers and processes never lose
an update and a crash never leaves half a file. The blocking I/O runs in a worker thread. Cancelling a call
(the runner's timeout) abandons the await but not a write already under way in the thread: as with a real
API, the effect may land after the caller gave up, which is exactly what check() on resume is for.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from hybridops_daemon.chain.templating import UnresolvedReference, render
from hybridops_daemon.drivers.base import (
    ApplyResult,
    CheckResult,
    DriverError,
    NoCompensation,
    PermanentDriverError,
    ProbeResult,
    Readiness,
    Refused,
    StepContext,
)
from hybridops_daemon.drivers.modules import (
    MODULES,
    ActiveSite,
    ComputeCapacity,
    ComputeGroupSize,
    DatabasePrimary,
    DnsRecord,
    FloatingIp,
    IpamAddress,
    ModuleInputs,
    resource_key,
    validate_inputs,
)

Op = Literal["check", "apply", "verify", "compensate", "preflight"]
World = dict[str, Any]

_SECRET_REF = re.compile(r"\{secret:([^{}]+)\}")
_PROBE = "sandbox world read-back"


# --------------------------------------------------------------------------------------------- world file I/O
# Blocking helpers: call them from a worker thread (asyncio.to_thread) in async code.


@contextmanager
def _locked(world: Path) -> Iterator[None]:
    """Hold the world's exclusive lock. A sibling file, because the world itself is replaced on every write."""
    world.parent.mkdir(parents=True, exist_ok=True)
    with open(world.with_name(world.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _read(world: Path) -> World:
    try:
        text = world.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = "{}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PermanentDriverError(f"sandbox world {world} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PermanentDriverError(f"sandbox world {world} is not a JSON object")
    for section, empty in (("resources", {}), ("applies", {}), ("events", []), ("faults", {})):
        data.setdefault(section, empty)
    data.setdefault("echo_secrets", False)
    return data


def _write(world: Path, data: World) -> None:
    fd, tmp = tempfile.mkstemp(dir=world.parent, prefix=f".{world.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, world)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename is durable only once the folder entry is on disk.
    folder = os.open(world.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _active_fault(data: World, module: str, op: Op) -> dict[str, Any] | None:
    fault = data["faults"].get(module, {}).get(op)
    if isinstance(fault, dict) and int(fault.get("fail_times", 0)) > 0:
        return fault
    return None


def _take_fault(world: Path, module: str, op: Op) -> dict[str, Any] | None:
    """Consume one failure of an injected fault, if one is armed; return it."""
    # Unlocked peek first: nearly every call meets no fault, and writes are atomic renames, so it is consistent.
    if _active_fault(_read(world), module, op) is None:
        return None
    with _locked(world):
        data = _read(world)
        fault = _active_fault(data, module, op)
        if fault is None:
            return None
        fault["fail_times"] = int(fault["fail_times"]) - 1
        _write(world, data)
        return dict(fault)


# --------------------------------------------------------------------------------------------- per-module wording


def _outputs(inputs: ModuleInputs) -> dict[str, Any]:
    """What a step publishes for later steps once its resource is in place."""
    match inputs:
        case FloatingIp():
            return {"ip": inputs.ip, "assigned_to": inputs.target}
        case DnsRecord():
            return {"fqdn": inputs.fqdn, "type": inputs.type, "content": inputs.content, "ttl": inputs.ttl}
        case ComputeCapacity():
            return {"name": inputs.name, "state": inputs.state}
        case ComputeGroupSize():
            return {"group": inputs.group, "size": inputs.size}
        case DatabasePrimary():
            return {"cluster": inputs.cluster, "primary": inputs.primary}
        case IpamAddress():
            return {"address": inputs.address, "status": inputs.status}
        case ActiveSite():
            return {"service": inputs.service, "site": inputs.site}
    raise TypeError(f"no outputs defined for {type(inputs).__name__}")


def _describe(inputs: ModuleInputs) -> str:
    match inputs:
        case FloatingIp():
            return f"floating IP {inputs.ip} → {inputs.target}"
        case DnsRecord():
            return f"DNS {inputs.fqdn} {inputs.type} → {inputs.content} (ttl {inputs.ttl})"
        case ComputeCapacity():
            return f"compute {inputs.name} → {inputs.state}"
        case ComputeGroupSize():
            return f"group {inputs.group} → {inputs.size} instance(s)"
        case DatabasePrimary():
            return f"database {inputs.cluster}: primary → {inputs.primary}"
        case IpamAddress():
            return f"IPAM {inputs.address} → {inputs.status}"
        case ActiveSite():
            return f"service {inputs.service} → site {inputs.site}"
    raise TypeError(f"no description defined for {type(inputs).__name__}")


def _difference(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> str:
    if current is None:
        return "absent"
    changed = [f"{key}={current.get(key)!r}" for key in desired if current.get(key) != desired[key]]
    return "was " + ", ".join(changed) if changed else "unchanged"


# --------------------------------------------------------------------------------------------- the driver


class SandboxDriver:
    """Runs every catalogue module against the JSON world file ``world``.

    ``latency`` is slept inside apply() before the effect is written: the window in which a crash test
    kills the daemon between "decided to act" and "the effect exists".
    """

    name = "sandbox"
    modules = frozenset(MODULES)

    def __init__(self, world: Path, latency: float = 0.0) -> None:
        if latency < 0:
            raise ValueError("latency must be >= 0")
        self._world = world
        self._latency = latency

    async def check(self, step: StepContext) -> CheckResult:
        """Is the world's resource exactly the desired inputs? Read-only and idempotent.

        Budget: one file read (no latency). Raises PermanentDriverError on bad inputs or an unreadable
        world; DriverError / PermanentDriverError (or hangs) when a ``check`` fault is armed.
        """
        inputs, desired, key = self._intent(step)
        await self._honour_fault(step, "check")
        current = (await asyncio.to_thread(_read, self._world))["resources"].get(key)
        satisfied = current == desired
        return CheckResult(satisfied=satisfied, observed=current or {}, outputs=_outputs(inputs) if satisfied else {})

    async def apply(self, step: StepContext) -> ApplyResult:
        """Set the resource to the desired inputs. Idempotent in effect, but every call is counted.

        ``applies[key]`` grows on every successful call, even one that found the value already in place,
        so that a test can prove the runner never applied twice. Budget: ``latency`` + waiting for the lock
        + one read and one fsynced write. Raises PermanentDriverError on bad inputs or an unreadable world;
        DriverError / PermanentDriverError (or hangs) when an ``apply`` fault is armed.
        """
        inputs, desired, key = self._intent(step)
        await self._honour_fault(step, "apply")
        await asyncio.sleep(self._latency)
        previous, echo_secrets = await asyncio.to_thread(self._record_apply, step, key, desired)
        log: list[str] = []
        if echo_secrets:  # a deliberately careless upstream, so the journal's redaction has something to catch
            log.extend(f"authenticated with {name}={value}" for name, value in step.secrets.items())
        log.append(f"{_describe(inputs)} ({_difference(previous, desired)})")
        return ApplyResult(log=tuple(log), outputs=_outputs(inputs))

    async def verify(self, step: StepContext) -> ProbeResult:
        """Re-read the world file afresh (never apply()'s answer) and compare it to the desired inputs.

        Read-only and idempotent. Budget: one file read. Raises PermanentDriverError on bad inputs or an
        unreadable world; DriverError / PermanentDriverError (or hangs) when a ``verify`` fault is armed.
        """
        _inputs, desired, key = self._intent(step)
        await self._honour_fault(step, "verify")
        current = (await asyncio.to_thread(_read, self._world))["resources"].get(key)
        ok = current == desired
        detail = f"{key} holds the desired value" if ok else f"{key} is not as desired ({_difference(current, desired)})"
        return ProbeResult(ok=ok, probe=_PROBE, observed=current or {}, detail=detail)

    async def compensate(self, step: StepContext) -> ApplyResult:
        """Put the resource back as it was before this run's step first applied it (absent → removed).

        Idempotent: a second call restores the same value. Budget: waiting for the lock + one read and one
        fsynced write. Raises NoCompensation when this run+step never applied the resource (nothing to
        restore), PermanentDriverError on bad inputs or an unreadable world; faults as for the other operations.
        """
        _inputs, _desired, key = self._intent(step)
        await self._honour_fault(step, "compensate")
        original = await asyncio.to_thread(self._restore, step, key)
        if original is None:
            return ApplyResult(log=(f"removed {key}: it did not exist before run {step.run_id}",))
        restored = MODULES[step.module].model_validate(original)
        return ApplyResult(log=(f"restored {_describe(restored)}",), outputs=_outputs(restored))

    async def preflight(self, step: StepContext) -> Readiness:
        """Could the step run now? Validates the inputs and reads the world file; never writes the world's
        resources, applies or events.

        Inputs that reference an earlier step's outputs (``${steps.<id>.<key>}``) are known only to the run: then
        only the module is checked, and the reason says so. A ``preflight`` fault armed with
        ``SandboxWorld.inject_fault(module, "preflight", ...)`` raises its message (DriverError, PermanentDriverError)
        or hangs, as the other operations' faults do: the caller reports it as not ready. Consuming one failure of
        an armed fault rewrites its counter, as for every operation. Budget: one file read (no latency), two and
        a write when a fault is armed. Raises PermanentDriverError (Refused) on bad inputs or an unreadable world.
        """
        key: str | None = None
        what, unchecked = step.module, ""
        try:
            rendered = render(step.inputs, {}, {"id": step.run_id, "lane": step.lane})
        except UnresolvedReference as exc:  # only the run knows it: the inputs are checked then
            unchecked = f"; inputs not checked: {exc}"
            if step.module not in MODULES:
                raise Refused(f"sandbox: unknown module {step.module!r}") from None
        else:
            inputs, _desired, key = self._intent(replace(step, inputs=rendered))
            what = _describe(inputs)
        await self._honour_fault(step, "preflight")
        current = (await asyncio.to_thread(_read, self._world))["resources"].get(key) if key else None
        observed = {"world": str(self._world), "resource": key, "current": current}
        return Readiness(True, f"sandbox: {what} can be applied to world {self._world.name}{unchecked}", observed)

    # ------------------------------------------------------------------------------------------ internals

    @staticmethod
    def _intent(step: StepContext) -> tuple[ModuleInputs, dict[str, Any], str]:
        inputs = validate_inputs(step.module, step.inputs)
        return inputs, inputs.model_dump(mode="json"), resource_key(step.module, inputs)

    async def _honour_fault(self, step: StepContext, op: Op) -> None:
        fault = await asyncio.to_thread(_take_fault, self._world, step.module, op)
        if fault is None:
            return
        if fault.get("hang"):
            await asyncio.Event().wait()  # never set: only the caller's timeout or cancellation ends this
        message = _SECRET_REF.sub(
            lambda ref: step.secrets.get(ref.group(1), ref.group(0)), str(fault.get("message", "injected fault"))
        )
        raise (PermanentDriverError if fault.get("permanent") else DriverError)(message)

    @staticmethod
    def _event(op: Op, step: StepContext, key: str, previous: Any) -> dict[str, Any]:
        return {
            "at": time.time(),
            "op": op,
            "resource": key,
            "run_id": step.run_id,
            "step": step.step_id,
            "attempt": step.attempt,
            "fencing_token": step.fencing_token,
            "previous": previous,
        }

    def _record_apply(self, step: StepContext, key: str, desired: dict[str, Any]) -> tuple[Any, bool]:
        with _locked(self._world):
            data = _read(self._world)
            previous = data["resources"].get(key)
            data["resources"][key] = desired
            data["applies"][key] = int(data["applies"].get(key, 0)) + 1
            data["events"].append(self._event("apply", step, key, previous))
            _write(self._world, data)
        return previous, bool(data["echo_secrets"])

    def _restore(self, step: StepContext, key: str) -> Any:
        with _locked(self._world):
            data = _read(self._world)
            applied = [
                event
                for event in data["events"]
                if event.get("op") == "apply"
                and event.get("resource") == key
                and event.get("run_id") == step.run_id
                and event.get("step") == step.step_id
            ]
            if not applied:
                raise NoCompensation(f"nothing to compensate: run {step.run_id} step {step.step_id} never applied {key}")
            # The first apply saw the world before this run touched it; a retry's apply only saw the run's own value.
            original = applied[0]["previous"]
            current = data["resources"].get(key)
            if original is None:
                data["resources"].pop(key, None)
            else:
                data["resources"][key] = original
            data["events"].append(self._event("compensate", step, key, current))
            _write(self._world, data)
        return original


class SandboxWorld:
    """Direct access to a world file for tests and the demo: read it, count applies, arm faults."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> World:
        return _read(self.path)

    def applies(self, key: str) -> int:
        return int(self.read()["applies"].get(key, 0))

    def resource(self, key: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.read()["resources"].get(key)
        return found

    def inject_fault(
        self,
        module: str,
        op: Op,
        fail_times: int = 1,
        message: str = "boom",
        permanent: bool = False,
        hang: bool = False,
    ) -> None:
        """Make the next ``fail_times`` calls of ``op`` on ``module`` fail (or hang). ``{secret:NAME}`` in
        ``message`` is replaced by the step's secret NAME, as a careless upstream echoing credentials would."""
        if module not in MODULES:
            raise ValueError(f"unknown module {module!r}")
        with _locked(self.path):
            data = _read(self.path)
            data["faults"].setdefault(module, {})[op] = {
                "fail_times": fail_times,
                "message": message,
                "permanent": permanent,
                "hang": hang,
            }
            _write(self.path, data)
