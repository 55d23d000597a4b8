"""One Terraform working copy of a pack, and the commands the ``terraform`` driver runs in it.

A ``Workspace`` is a private folder (0700; removed by ``close()``) holding a copy of the pack (Terraform writes
``.terraform.lock.hcl`` beside the configuration, and the pack folder stays untouched), Terraform's data dir
(``TF_DATA_DIR``: the backend settings and provider links), the CLI config naming the provider mirror, the backend
config (``conn_str``, ``schema_name``), the inputs as a ``-var-file`` (0600; never on a command line) and, between
check() and apply(), the saved plan (which holds every variable's value: it lives and dies with the folder).

Secrets reach Terraform only in the child's environment: each step secret as ``TF_VAR_<name>``, the backend's
password as ``PGPASSWORD``. Terraform's output is read line by line (``-json`` for plan and apply: typed messages,
diagnostics with the file and line they point at), masked for every secret spelling before anything keeps it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridops_daemon.drivers import process
from hybridops_daemon.drivers.base import DriverError, NotFound, Refused, Unavailable
from hybridops_daemon.drivers.declarations.terraform import TerraformDriverConfig

LOG_LINES = 50  # lines of Terraform's output returned in ApplyResult.log
_MAX_LINE = 1000
_TEXT_ERROR = re.compile(r"^(?:│ )?Error: (?P<summary>.+)$")
_TEXT_AT = re.compile(r"^(?:│ )?\s*on (?P<file>\S+) line (?P<line>\d+)")
_UNDECLARED = "Value for undeclared variable"
_PREFIX = "hyops-terraform-"
_OWNER = "owner.pid"
_CLI_CONFIG = """provider_installation {{
  filesystem_mirror {{
    path    = {path}
    include = ["*/*/*"]
  }}
  direct {{
    exclude = ["*/*/*"]
  }}
}}
"""


@dataclass(slots=True)
class Transcript:
    """What one Terraform command said: the masked tail for the log, and what it planned, applied or refused."""

    spellings: tuple[str, ...]
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    version: str = ""
    changes: list[str] = field(default_factory=list)  # "null_resource.capacity (replace)"
    summary: dict[str, int] = field(default_factory=dict)  # {"add", "change", "destroy"}
    errors: list[str] = field(default_factory=list)
    in_pack: bool = False  # an error points at a file and line of the pack: its configuration is wrong
    undeclared: list[str] = field(default_factory=list)

    def feed(self, raw: str) -> None:
        line = process.mask(raw.rstrip(), self.spellings)
        if not line.strip():
            return
        try:
            message = json.loads(line) if line.startswith("{") else None
        except json.JSONDecodeError:
            message = None
        if isinstance(message, dict):
            self._message(message)
            line = str(message.get("@message", line))
        else:
            self._text(line)
        self.tail.append(line[:_MAX_LINE])

    def _message(self, message: Mapping[str, Any]) -> None:
        kind = message.get("type")
        if kind == "version":
            self.version = str(message.get("terraform", ""))
        elif kind in ("planned_change", "resource_drift"):
            change = message.get("change") or {}
            what = f"{change.get('resource', {}).get('addr', '?')} ({change.get('action', '?')})"
            self.changes.append(what if kind == "planned_change" else f"{what}, drifted")
        elif kind == "change_summary":
            changes = message.get("changes") or {}
            self.summary = {"add": changes.get("add", 0), "change": changes.get("change", 0), "destroy": changes.get("remove", 0)}
        elif kind == "diagnostic":
            self._diagnostic(message.get("diagnostic") or {})

    def _diagnostic(self, diagnostic: Mapping[str, Any]) -> None:
        summary, detail = str(diagnostic.get("summary", "")), str(diagnostic.get("detail", ""))
        if diagnostic.get("severity") != "error":
            if summary == _UNDECLARED:
                self.undeclared.append(detail)
            return
        where = diagnostic.get("range") or {}
        if where.get("filename"):
            self.in_pack = True
            summary = f"{summary} (on {where['filename']} line {where.get('start', {}).get('line', '?')})"
        # A lock error's "Lock Info" describes the request that failed, not the holder (pg backend): not worth keeping.
        detail = " ".join(detail.split("Lock Info:")[0].split())
        self.errors.append(f"{summary}: {detail}" if detail else summary)

    def _text(self, line: str) -> None:
        """init and workspace have no -json in Terraform 1.0: read their human diagnostics."""
        if found := _TEXT_ERROR.match(line):
            self.errors.append(found["summary"])
        elif (found := _TEXT_AT.match(line)) and self.errors:
            self.in_pack = True
            self.errors[-1] += f" (on {found['file']} line {found['line']})"


@dataclass(frozen=True, slots=True)
class Plan:
    """``empty`` is Terraform's own word, its -detailed-exitcode (0: no changes); ``changes`` name what would change
    (and what drifted outside Terraform, which alone does not make a plan non-empty)."""

    empty: bool
    changes: tuple[str, ...]
    summary: Mapping[str, int]
    version: str


class Workspace:
    """A private working copy of one pack for one step call (or a check() and the apply() of its plan)."""

    def __init__(self, config: TerraformDriverConfig, pack: str, where: str, env: dict[str, str], root: Path | None) -> None:
        self._config = config
        self.pack = pack
        self.where = where
        self.dir = process.make_private_dir(_PREFIX, root)
        process.write_private(self.dir / _OWNER, str(os.getpid()))  # see sweep_leftovers
        self.work = self.dir / "pack"
        self.plan_file = self.dir / "step.tfplan"
        self.created = time.monotonic()
        self._env = env
        self.spellings = process.secret_spellings(v for k, v in env.items() if k.startswith("TF_VAR_") or k == "PGPASSWORD")
        self.version = ""
        self._runs = 0

    def close(self) -> None:
        """Remove the folder, the saved plan with it. Synchronous: it runs to the end while the step is cancelled."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def prepare(self, pack_dir: Path, inputs: Mapping[str, Any], schema: str) -> None:
        shutil.copytree(pack_dir, self.work, ignore=shutil.ignore_patterns(".terraform", "*.tfstate", "*.tfstate.*", "*.tfplan"))
        backend = f"conn_str = {json.dumps(self._config.backend.conn_str)}\nschema_name = {json.dumps(schema)}\n"
        process.write_private(self.dir / "backend.hcl", backend)
        process.write_private(self.dir / "inputs.tfvars.json", json.dumps(dict(inputs), sort_keys=True))
        mirror = self._config.plugin_mirror
        process.write_private(self.dir / "cli.tfrc", _CLI_CONFIG.format(path=json.dumps(str(mirror))) if mirror else "")
        self._env.update(
            TF_CLI_CONFIG_FILE=str(self.dir / "cli.tfrc"),  # empty without a mirror: no ~/.terraformrc applies either
            TF_DATA_DIR=str(self.dir / "data"),
            TF_IN_AUTOMATION="1",
            TF_INPUT="0",
            CHECKPOINT_DISABLE="1",  # no call home to HashiCorp's version check
            LANG="C.UTF-8",
            LC_ALL="C.UTF-8",
        )

    async def init(self, schema: str, *, create: bool) -> None:
        """``terraform init`` against the lane's backend, then select the pack's workspace; with ``create`` false (a
        preflight) neither the schema nor the workspace is created: NotFound when they do not exist yet."""
        argv = ["init", "-input=false", "-no-color", f"-backend-config={self.dir / 'backend.hcl'}"]
        if not create:
            argv.append("-backend-config=skip_schema_creation=true")
        nothing_yet = f"{self.where}: no state yet in the lane's backend ({{}}): nothing applied so far"
        code, transcript = await self.run(argv, "init", check=False)
        if code != 0 and not create and any("schema" in e and "does not exist" in e for e in transcript.errors):
            raise NotFound(nothing_yet.format("no schema " + schema))
        if code != 0:
            raise failure(f"{self.where} init", code, transcript)
        selected = await self.run(["workspace", "select", "-no-color", self.pack], "workspace select", check=False)
        if selected[0] == 0:
            return
        if not create:
            raise NotFound(nothing_yet.format(f"no workspace {self.pack} in schema {schema}"))
        await self.run(
            ["workspace", "new", "-no-color", f"-lock-timeout={self._config.lock_timeout:g}s", self.pack], "workspace new"
        )

    async def plan(self, *, save: bool, lock: bool = True) -> Plan:
        argv = ["plan", "-json", "-input=false", "-detailed-exitcode", f"-var-file={self.dir / 'inputs.tfvars.json'}"]
        argv += [f"-lock-timeout={self._config.lock_timeout:g}s"] if lock else ["-lock=false"]
        if save:
            argv.append(f"-out={self.plan_file}")
        code, transcript = await self.run(argv, "plan", check=False)
        if code not in (0, 2):
            raise failure(f"{self.where} plan", code, transcript)
        if transcript.undeclared:
            raise Refused(
                f"{self.where}: the inputs hold what the pack declares no variable for: {'; '.join(transcript.undeclared)}"
            )
        self.version = transcript.version or self.version
        summary = transcript.summary or {"add": 0, "change": 0, "destroy": 0}
        return Plan(code == 0, tuple(transcript.changes), summary, self.version)

    async def apply(self) -> Transcript:
        """Apply the saved plan, and nothing else: Terraform refuses it when the state moved since (stale plan)."""
        argv = ["apply", "-json", "-input=false", f"-lock-timeout={self._config.lock_timeout:g}s", str(self.plan_file)]
        return (await self.run(argv, "apply"))[1]

    async def outputs(self) -> tuple[dict[str, Any], list[str]]:
        """The root module's outputs (``terraform output -json``): the values of those not marked sensitive, and the
        names of those withheld because they are."""
        answer = self.dir / "outputs.json"
        answer.unlink(missing_ok=True)
        await self.run(["output", "-json", "-no-color"], "output", stdout_to=answer)
        try:
            found = json.loads(answer.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise Unavailable(f"{self.where}: terraform output -json gave no JSON object: {exc}") from None
        finally:
            answer.unlink(missing_ok=True)
        if not isinstance(found, dict):
            raise Unavailable(f"{self.where}: terraform output -json gave no JSON object")
        withheld = sorted(name for name, out in found.items() if not isinstance(out, dict) or out.get("sensitive"))
        values = {name: out.get("value") for name, out in found.items() if name not in withheld}
        if any(secret in json.dumps(values) for secret in self.spellings):
            raise Unavailable(f"{self.where}: an output holds a secret value; refusing to publish it")
        return values, withheld

    async def run(
        self, args: list[str], what: str, *, check: bool = True, stdout_to: Path | None = None
    ) -> tuple[int, Transcript]:
        """Run ``terraform ARGS`` in the working copy; (exit status, transcript). With ``check``, a non-zero exit raises
        (see ``failure``). Past ``config.timeout`` the process tree is killed and Unavailable says how the lock was left."""
        transcript = Transcript(self.spellings)
        argv = [self._config.binary, *args]
        try:
            self._runs += 1
            log_file = self.dir / f"terraform-{self._runs}.log"  # not a pipe: Terraform outlives a daemon killed mid-apply
            try:
                code = await process.run_streaming(
                    argv, cwd=self.work, env=self._env, feed=transcript.feed, time_limit=self._config.timeout,
                    stdout_to=stdout_to, log_file=log_file,
                )  # fmt: skip
            finally:
                log_file.unlink(missing_ok=True)
        except process.CannotStart as exc:
            raise NotFound(f"terraform: {exc}") from None
        except TimeoutError:
            raise Unavailable(
                f"{self.where}: terraform {what} did not finish within {self._config.timeout:g}s: it was killed with every "
                f"process it started. {LOCK_AFTER_KILL}",
                code="timeout",
            ) from None
        self.version = transcript.version or self.version
        if check and code != 0:
            raise failure(f"{self.where} {what}", code, transcript)
        return code, transcript


def sweep_leftovers(root: Path | None) -> list[Path]:
    """Remove the working copies a daemon killed with SIGKILL left behind (a saved plan holds variable values): those
    under ``root`` (default: the system's temp) whose owner process, named in them, is gone. Returns what it removed.
    A folder some process still works in loses its saved plan and inputs file now and the rest at a later sweep.
    A Terraform command such a daemon had started runs on to its end (its own session), saving the state it applied;
    the resumed run's check() waits for its lock and plans from what it left."""
    removed: list[Path] = []
    orphaned = []
    for folder in Path(root or tempfile.gettempdir()).glob(_PREFIX + "*"):
        try:
            owner = int((folder / _OWNER).read_text(encoding="ascii"))
        except (OSError, ValueError):
            continue  # not one of ours, or not readable to us
        if owner != os.getpid() and not process.alive(owner):
            orphaned.append(folder)
    if not orphaned:
        return removed
    busy = process.working_dirs()  # a Terraform the dead daemon started may still be applying in there
    for folder in orphaned:
        if not any(cwd == folder or folder in cwd.parents for cwd in busy):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        else:  # it read them when it started: only what holds values goes now, the rest at a later sweep
            for holding_values in (folder / "step.tfplan", folder / "inputs.tfvars.json"):
                holding_values.unlink(missing_ok=True)
    return removed


LOCK_AFTER_KILL = (
    "The pg backend's state lock is an advisory lock of the killed command's PostgreSQL session, which ends with it; "
    "should a later plan still report the state locked, end that session (SELECT pg_terminate_backend(pid) FROM "
    "pg_locks WHERE locktype = 'advisory'), as `terraform force-unlock ID` cannot release another session's lock"
)


def failure(where: str, code: int, transcript: Transcript) -> DriverError:
    """A failed command as the shared error kinds: the pack's own configuration (an error at a file and line of it, a
    missing variable) is Refused, permanent; a held state lock, a stale plan, the backend or a provider failing are
    Unavailable, retryable (the runner re-checks, which plans afresh)."""
    errors = "; ".join(transcript.errors) or (transcript.tail[-1] if transcript.tail else "no output")
    if "Error acquiring the state lock" in errors:
        return Unavailable(f"{where}: the state is locked by another run: {errors}", code="locked")
    if transcript.in_pack:
        return Refused(f"{where}: Terraform refused the pack's configuration (exit {code}): {errors}", code=code)
    return Unavailable(f"{where}: terraform exited {code}: {errors}", code=code)
