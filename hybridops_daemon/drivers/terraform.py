"""The ``terraform`` driver: runs a module's pack, a Terraform root module, against the lane's state.

``config.packs`` binds a module ref to a pack, a folder ``config.packs_dir/<pack>/`` (``*.tf``; packs/README.md has
the contract: one variable per module input, the step's outputs from the root module's outputs). Every call works in a
private copy of the pack (drivers/terraform_run.py) initialised against the lane's ``pg`` backend: schema
``backend.schema_name`` (default ``hyops_<lane>``), workspace = the pack's name, so locking is PostgreSQL's.

* check() = ``terraform plan -detailed-exitcode`` with the step's inputs as variables: exit 0, already satisfied; exit
  2, not, and the saved plan is kept for this step's attempt, keyed by (run, step, attempt).
* apply() = ``terraform apply`` of that saved plan, never of an unreviewed one: when check() kept none for the same
  key, inputs and pack (another process, a plan older than ``plan_max_age``) apply plans afresh and applies what it
  saved. Terraform itself refuses a plan the state moved away from since (``Saved plan is stale``: retryable; the
  runner re-checks, which plans again).
* verify() = a second plan that must show no changes, plus ``terraform output -json``: the outputs it publishes.
* preflight() = the same plan, read-only (``-lock=false``; no schema or workspace created): changes at rest are drift,
  reported as not ready, naming the resources that would change.

What a step's records carry: check's ``observed`` (pack, pack_version: a hash of its files, terraform_version, the
plan summary add/change/destroy and what would change), apply's log (the plan summary line, then Terraform's output,
masked) and outputs. Secrets: each step secret reaches Terraform only as ``TF_VAR_<name>`` of the child; the saved plan
(which holds variable values) exists only in the private folder, removed when apply() is done with it, when a newer
check() replaces it, or when it expires. Errors: Refused (the pack's configuration, a missing or undeclared variable:
Terraform's message, permanent), NotFound (no pack, no binary), Unavailable (a held state lock naming its ID, a stale
plan, the backend unreachable, a command past ``config.timeout``: its process tree killed), NoCompensation.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hybridops_daemon.chain.templating import UnresolvedReference, render
from hybridops_daemon.drivers import process
from hybridops_daemon.drivers.base import (
    ApplyResult,
    CheckResult,
    NoCompensation,
    NotFound,
    ProbeResult,
    Readiness,
    Refused,
    StepContext,
    secret,
)
from hybridops_daemon.drivers.declaration import VAR_NAME, bound_pack, pack_inputs
from hybridops_daemon.drivers.declarations.terraform import TerraformDriverConfig
from hybridops_daemon.drivers.terraform_run import Plan, Workspace, sweep_leftovers

_MAX_KEPT = 32  # plans kept between check() and apply(); the oldest goes first
Key = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class _Kept:
    workspace: Workspace
    plan: Plan
    digest: str


class TerraformDriver:
    """Runs the pack bound to a step's module; see the module docstring. ``temp_root``: where the private working
    copies go (default: the system's temporary folder). Time budget of every method: a few Terraform commands
    (init, workspace, plan, apply or output; under a second each for a small pack), each bounded by ``config.timeout``
    and by the caller's cancellation; either kills the command's whole process tree."""

    name = "terraform"

    def __init__(self, config: TerraformDriverConfig, *, lane: str, temp_root: Path | None = None) -> None:
        self._config = config
        self._schema = config.backend.schema_name or "hyops_" + lane.replace("-", "_")
        self._temp_root = temp_root
        self._kept: dict[Key, _Kept] = {}
        self.modules: frozenset[str] = frozenset(config.packs)
        sweep_leftovers(temp_root)

    async def check(self, step: StepContext) -> CheckResult:
        """Plan with the step's inputs; satisfied when Terraform would change nothing (then the outputs are read too).
        Takes the state lock for the plan's refresh (waiting up to ``lock_timeout``). Raises as the module says."""
        self._expire()
        workspace, digest = await self._open(step)
        kept = False
        try:
            plan = await workspace.plan(save=True)
            observed = self._observed(step, plan)
            if not plan.empty:  # the plan apply() will apply, unless a newer check() of this attempt replaces it
                self._keep(_key(step), _Kept(workspace, plan, digest))
                kept = True
                return CheckResult(False, observed)
            outputs, withheld = await workspace.outputs()
        finally:
            if not kept:
                workspace.close()
        return CheckResult(True, {**observed, "outputs_withheld": withheld}, outputs)

    async def apply(self, step: StepContext) -> ApplyResult:
        """Apply the plan check() saved for this attempt, or (none fit) plan afresh and apply exactly that saved plan.
        Not idempotent by itself: Terraform's stale-plan refusal and the runner's re-check make a retry safe."""
        self._expire()
        kept = self._kept.pop(_key(step), None)
        digest = self._digest(step)
        if kept is not None and kept.digest != digest:
            kept.workspace.close()
            kept = None
        workspace, plan = (kept.workspace, kept.plan) if kept else (None, None)
        try:
            if workspace is None:
                workspace, _ = await self._open(step)
                plan = await workspace.plan(save=True)
            assert plan is not None
            if plan.empty:  # the world already is as wanted: nothing to apply
                applied_lines: tuple[str, ...] = ("terraform plan shows no changes: nothing applied",)
            else:
                applied_lines = tuple((await workspace.apply()).tail)
            outputs, _ = await workspace.outputs()
        finally:
            if workspace is not None:
                workspace.close()
        head = f"{self._where(step)} on Terraform {plan.version}: {'reviewed' if kept else 'fresh'} plan {_summary(plan)}"
        return ApplyResult(log=(head, *applied_lines), outputs=outputs)

    async def verify(self, step: StepContext) -> ProbeResult:
        """A second plan, which must show no changes, and the outputs read back. Read-only but for the state lock its
        refresh takes. Raises as check()."""
        workspace, _ = await self._open(step)
        try:
            plan = await workspace.plan(save=False)
            outputs, withheld = await workspace.outputs()
        finally:
            workspace.close()
        observed = {**self._observed(step, plan), "outputs": outputs, "outputs_withheld": withheld}
        detail = "no changes" if plan.empty else f"the plan still has changes: {', '.join(plan.changes)}"
        return ProbeResult(plan.empty, f"terraform plan -detailed-exitcode of pack {self._pack(step)}", observed, detail)

    async def compensate(self, step: StepContext) -> ApplyResult:
        """None: the failback chain's own step (the same pack with the resting inputs) puts things back."""
        raise NoCompensation(f"terraform: no compensation for {step.module}: the failback chain's step puts it back")

    async def preflight(self, step: StepContext) -> Readiness:
        """The check's plan, read-only: ``-lock=false``, no schema or workspace created, nothing saved. No changes:
        ready. Changes in a step of the chain the lane rests in (``step.at_rest``): drift, not ready, naming what
        would change. Changes in a step of the other chain are what that chain is for: ready, and the reason says
        what it would change. Raises as check() otherwise."""
        try:
            inputs = render(step.inputs, {}, {"id": step.run_id, "lane": step.lane})
        except UnresolvedReference as exc:
            return Readiness(False, f"{self._where(step)} not planned: {exc}, known only to the run", {"unrendered": str(exc)})
        workspace, _ = await self._open(replace(step, inputs=inputs), create=False)
        try:
            plan = await workspace.plan(save=False, lock=False)
        finally:
            workspace.close()
        observed = self._observed(step, plan)
        if plan.empty:
            return Readiness(True, f"{self._where(step)}: terraform plan shows no changes", observed)
        if not step.at_rest:
            would = f"{self._where(step)}: the plan would change {', '.join(plan.changes)} ({_summary(plan)})"
            return Readiness(True, would, observed, {"resources_would_change": float(len(plan.changes))})
        return Readiness(False, f"{self._where(step)}: drift: the plan would change {', '.join(plan.changes)} "
                         f"({_summary(plan)})", observed, {"resources_would_change": float(len(plan.changes))})  # fmt: skip

    # ------------------------------------------------------------------------------------------ internals

    async def _open(self, step: StepContext, *, create: bool = True) -> tuple[Workspace, str]:
        """A private working copy of the step's pack, initialised and on the pack's workspace; and its digest."""
        pack, folder = self._pack(step), self._pack_dir(step)
        binary = process.find_program(self._config.binary)
        if binary is None:
            raise NotFound(f"terraform: {self._config.binary} is not installed or not executable on this node")
        inputs = self._inputs(step)
        env = {**process.base_env(), **self._secret_env(step)}  # no TF_* of the daemon's own environment
        if self._config.backend.password is not None:
            env["PGPASSWORD"] = secret("terraform", "backend.password", self._config.backend.password)
        config = self._config.model_copy(update={"binary": binary})
        workspace = Workspace(config, pack, self._where(step), env, self._temp_root)
        try:
            workspace.prepare(folder, inputs, self._schema)
            await workspace.init(self._schema, create=create)
        except BaseException:
            workspace.close()
            raise
        return workspace, self._digest(step)

    def _keep(self, key: Key, kept: _Kept) -> None:
        if (old := self._kept.pop(key, None)) is not None:
            old.workspace.close()
        self._kept[key] = kept
        while len(self._kept) > _MAX_KEPT:
            self._kept.pop(next(iter(self._kept))).workspace.close()

    def _expire(self) -> None:
        """Drop plans older than ``plan_max_age`` (an approval that never came, a run that ended elsewhere)."""
        sweep_leftovers(self._temp_root)  # and the working copies of a daemon killed before it could remove them
        now = time.monotonic()
        for key in [key for key, kept in self._kept.items() if now - kept.workspace.created > self._config.plan_max_age]:
            self._kept.pop(key).workspace.close()

    def _observed(self, step: StepContext, plan: Plan) -> dict[str, Any]:
        return {
            "pack": self._pack(step),
            "pack_version": pack_version(self._pack_dir(step)),
            "terraform_version": plan.version,
            "state": {"schema": self._schema, "workspace": self._pack(step)},
            "plan": dict(plan.summary),
            "would_change": list(plan.changes),
        }

    def _digest(self, step: StepContext) -> str:
        """What a kept plan was made from: a plan for other inputs, secrets or pack files is not this step's plan."""
        made_of = json.dumps([dict(step.inputs), sorted(step.secrets.items()), pack_version(self._pack_dir(step))], default=str)
        return hashlib.sha256(made_of.encode()).hexdigest()

    def _pack(self, step: StepContext) -> str:
        try:
            return bound_pack("terraform", self._config.packs, step.module)
        except ValueError as exc:
            raise NotFound(str(exc)) from None

    def _pack_dir(self, step: StepContext) -> Path:
        folder = self._config.packs_dir / self._pack(step)
        if not folder.is_dir():
            raise NotFound(f"terraform: pack folder {folder} does not exist")
        return folder

    def _where(self, step: StepContext) -> str:
        return f"terraform pack {self._pack(step)}"

    @staticmethod
    def _inputs(step: StepContext) -> dict[str, Any]:
        """The inputs as variables (``pack_inputs``); none may also be a secret (both would set one variable)."""

        def not_a_secret(name: str) -> None:
            if name in step.secrets:
                raise Refused(f"terraform: {name!r} of {step.module} is both an input and a secret")

        return pack_inputs("terraform", step, not_a_secret)

    @staticmethod
    def _secret_env(step: StepContext) -> dict[str, str]:
        """Each step secret as ``TF_VAR_<name>``: the pack declares ``variable "<name>" { sensitive = true }``."""
        for name in step.secrets:
            if not VAR_NAME.fullmatch(name):
                raise Refused(f"terraform: secret {name!r} of step {step.step_id} is not a valid variable name")
        return {f"TF_VAR_{name}": value for name, value in step.secrets.items()}


def _key(step: StepContext) -> Key:
    return (step.run_id, step.step_id, step.attempt)


def _summary(plan: Plan) -> str:
    return f"+{plan.summary.get('add', 0)} ~{plan.summary.get('change', 0)} -{plan.summary.get('destroy', 0)}"


def pack_version(folder: Path) -> str:
    """The pack's version: the first 12 hex digits of a SHA-256 over its files' relative paths and contents."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".terraform" not in p.relative_to(folder).parts):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]
