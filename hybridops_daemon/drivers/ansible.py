"""The ``ansible`` driver: runs a module's pack (an Ansible playbook per phase) against this node.

``config.packs`` binds a module ref to a pack, a folder ``config.packs_dir/<pack>/`` holding ``check.yml``,
``apply.yml``, ``verify.yml`` and optionally ``compensate.yml``. Each call runs one phase as::

    ansible-playbook -i localhost, -c local -e @<tmp>/vars.yml [--check] <pack>/<phase>.yml

The contract with a pack (packs/README.md says it at length):

* Inputs arrive as extra vars, plus ``hyops_run_id``, ``hyops_step`` and ``hyops_output_file``. They are
  written to a file in a private temporary folder (0700; the file 0600), never put on the command line where
  ``ps`` would show them, and every string is tagged ``!unsafe``: a value such as ``{{ lookup('pipe', ...) }}``
  that reached the inputs from an earlier step's outputs stays text and is never templated (that is why the
  file is YAML: JSON has no way to say it).
* The playbook writes its result as a JSON object to ``hyops_output_file``: check ``{"satisfied": bool,
  "outputs"?: {...}, ...observed}``, verify ``{"ok": bool, "detail"?: str, ...observed}``, apply/compensate
  the outputs to publish.
* ``check`` and ``verify`` run with ``--check`` so that a task that would change something is only simulated;
  the task that writes the result file says ``check_mode: false``. preflight() runs ``apply.yml`` with ``--check``
  (drivers/ansible_preflight.py), so no task of ``apply.yml`` may say ``check_mode: false``.
* Secrets never travel as vars: each of the step's secrets is an environment variable ``HYOPS_SECRET_<NAME>``
  (name upper-cased, other characters than A-Z, 0-9 and _ turned into _), which the pack reads with
  ``lookup('env', ...)`` in tasks marked ``no_log: true``.

The run is hermetic: a minimal environment (no inherited ``ANSIBLE_*``, so neither an operator's shell nor a
stray ansible.cfg, which ``ANSIBLE_CONFIG`` pointed at an empty file overrides, can change how a pack runs), a
UTF-8 C locale (ansible-core requires UTF-8; English messages are what the failure parser reads), ansible's
temporary folders inside the private folder, which is deleted after every run. ansible-playbook is the leader
of a new session; on a timeout or cancellation its process group AND every descendant (ansible-core's workers
setsid() into sessions of their own, with the modules and their children) are SIGKILLed: nothing outlives the
step. A pack must not start long-lived processes of its own (``async`` tasks, ``nohup ... &``): after a normal
exit they would be left running, and on a timeout they would be killed.

Errors, in the shared vocabulary of ``drivers.base``: ``Unavailable`` (retryable) when ansible-playbook exits
non-zero (``code`` its exit status; a failed task is named, with ``details["task"]``, ``details["host"]`` and
``details["detail"]``, ansible's message for it; exit 4 with UNREACHABLE: the host), runs past ``config.timeout``,
or finishes without a usable result file; permanent ``NotFound`` (module not bound, pack or phase playbook missing, no
ansible-playbook), ``Refused`` (ansible refused to parse the playbook or its options; inputs that cannot be
handed to a playbook) and ``NoCompensation``. Every line and message the driver returns has the step's secret
values replaced by ``***``: the journal redacts them too, but the driver does not rely on it.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hybridops_daemon.drivers import ansible_preflight, process
from hybridops_daemon.drivers.base import (
    ApplyResult,
    CheckResult,
    DriverError,
    NoCompensation,
    NotFound,
    ProbeResult,
    Readiness,
    Refused,
    StepContext,
    Unavailable,
)
from hybridops_daemon.drivers.declaration import PACK_NAME, bound_pack, pack_inputs
from hybridops_daemon.drivers.declarations.ansible import AnsibleDriverConfig

Phase = Literal["check", "apply", "verify", "compensate", "preflight"]
_PHASES: tuple[Phase, ...] = ("check", "apply", "verify")  # every pack ships these; compensate.yml is optional
_CHECK_MODE: tuple[Phase, ...] = ("check", "verify", "preflight")  # run with --check

LOG_LINES = 50  # lines of ansible's output returned in ApplyResult.log
_MAX_LINE = 1000  # characters kept per output line
_RESERVED = ("hyops_", "ansible_")  # the driver's own vars, and ansible's connection/behaviour vars
_BANNER = re.compile(r"^(?:PLAY|TASK|RUNNING HANDLER)\b.*\*{3,}$")
_TASK = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(?P<name>.*)\]")
_FATAL = re.compile(r"^fatal: \[(?P<host>[^\]]*)\]: (?P<kind>FAILED|UNREACHABLE)! => (?P<result>.*)$")
_CHANGED = re.compile(r"^changed: \[")
_ERROR = re.compile(r"^(?:\[ERROR\]|ERROR!):? ?(?P<message>.*)$")
_SECRET_ENV_PREFIX = "HYOPS_SECRET_"


# --------------------------------------------------------------------------------------------- transcript


@dataclass(slots=True)
class _Transcript:
    """ansible's merged stdout/stderr, read line by line: the tail for the log, and what failed."""

    secrets: tuple[str, ...]
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    task: str = ""  # the task running (or last started)
    failed_task: str = ""
    failed_host: str = ""
    failure: str = ""
    unreachable: bool = False
    error: str = ""  # the first [ERROR] line: a parse error has no task
    changed: list[str] = field(default_factory=list)  # tasks that changed something (under --check: would have)

    def feed(self, raw: str) -> None:
        line = process.mask(raw.rstrip(), self.secrets)[:_MAX_LINE]
        if not line.strip():
            return
        if _BANNER.match(line):
            line = line.rstrip(" *")  # ansible pads banners with asterisks to 80 columns
        if match := _TASK.match(line):
            self.task = match["name"]
        elif _CHANGED.match(line) and self.task not in self.changed:
            self.changed.append(self.task)
        elif match := _FATAL.match(line):
            self.failed_task, self.failed_host = self.task, match["host"]
            self.failure = _result_message(match["result"], self.secrets)
            self.unreachable = match["kind"] == "UNREACHABLE"
        elif line.strip() == "...ignoring":
            self.failed_task, self.failed_host, self.failure, self.unreachable = "", "", "", False
        elif (match := _ERROR.match(line)) and not self.error:
            self.error = match["message"]
        self.tail.append(line)


def _result_message(text: str, secrets: tuple[str, ...]) -> str:
    """The useful part of a failed task's result (JSON after ``=>``): msg, plus stderr when msg is generic. Masked
    before it is cut (JSON unescaping may reveal a secret, and a cut one would no longer match its mask)."""
    try:
        result = json.loads(text)
    except json.JSONDecodeError:
        result = None
    message = ""
    if isinstance(result, dict):
        message = str(result.get("msg") or result.get("censored") or "").strip()
        stderr = str(result.get("stderr") or "").strip()
        if stderr and stderr not in message:
            message = f"{message}: {stderr.splitlines()[-1]}" if message else stderr.splitlines()[-1]
    return process.mask(message or text, secrets)[:500]


# --------------------------------------------------------------------------------------------- vars file


class _Unsafe(str):
    """A string ansible must never template: dumped with the ``!unsafe`` tag."""

    __slots__ = ()


class _VarsDumper(yaml.SafeDumper):
    pass


def _represent_unsafe(dumper: yaml.SafeDumper, value: _Unsafe) -> yaml.Node:
    return dumper.represent_scalar("!unsafe", str(value), style='"')


_VarsDumper.add_representer(_Unsafe, _represent_unsafe)


def _untemplatable(value: Any) -> Any:
    """Tag every string (nested dict keys too) as ``!unsafe``; numbers, booleans and null pass as they are."""
    if isinstance(value, str):
        return _Unsafe(value)
    if isinstance(value, Mapping):
        return {_Unsafe(str(key)): _untemplatable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_untemplatable(item) for item in value]
    return value


def secret_env_name(name: str) -> str:
    """The environment variable a pack reads the step's secret ``name`` from: ``api-token`` → ``HYOPS_SECRET_API_TOKEN``."""
    return _SECRET_ENV_PREFIX + re.sub(r"[^A-Z0-9_]", "_", name.upper())


# --------------------------------------------------------------------------------------------- the driver


@dataclass(frozen=True, slots=True)
class _Run:
    result: dict[str, Any]
    log: tuple[str, ...]
    changed: tuple[str, ...] = ()  # the tasks that changed something (under --check: would have)


class AnsibleDriver:
    """Runs the pack bound to a step's module; see the module docstring for the contract with packs.

    ``temp_root`` is where the per-run private folders go (default: the system's temporary folder).
    Time budget of every method: ansible's start-up (1-3 s) plus the playbook, bounded by ``config.timeout``
    and by the caller's cancellation (the runner's step timeout); either kills every process of the run.
    """

    name = "ansible"

    def __init__(self, config: AnsibleDriverConfig, *, temp_root: Path | None = None) -> None:
        if not (config.timeout > 0 and math.isfinite(config.timeout)):
            raise ValueError("ansible timeout must be a positive number of seconds")
        self._config = config
        self._temp_root = temp_root
        self.modules: frozenset[str] = frozenset(config.packs)

    async def check(self, step: StepContext) -> CheckResult:
        """Run ``check.yml`` under --check: is the outside world already as desired?

        Read-only and idempotent (as far as the pack keeps its promise; --check simulates anything it would
        change). Raises Unavailable (a task failed, a host unreachable, another non-zero exit, the timeout, or
        ``satisfied`` missing or not a boolean), retryable; NotFound (pack, playbook or ansible-playbook
        missing) and Refused (ansible refused the pack; unusable inputs), permanent.
        """
        run = await self._run(step, "check")
        data = dict(run.result)
        satisfied = data.pop("satisfied", None)
        outputs = data.pop("outputs", {})
        if not isinstance(satisfied, bool):
            raise Unavailable(f"{self._where(step, 'check')}: the result needs a boolean 'satisfied'")
        if not isinstance(outputs, dict):
            raise Unavailable(f"{self._where(step, 'check')}: 'outputs' must be a JSON object")
        return CheckResult(satisfied=satisfied, observed=data, outputs=outputs if satisfied else {})

    async def apply(self, step: StepContext) -> ApplyResult:
        """Run ``apply.yml``; its result file is the step's outputs, the tail of its output the log.

        Idempotent when the pack is (the shipped packs are: a second run changes nothing). Raises as check();
        a failed run may have changed part of the world, which is what the runner's re-check is for.
        """
        run = await self._run(step, "apply")
        return ApplyResult(log=run.log, outputs=run.result)

    async def verify(self, step: StepContext) -> ProbeResult:
        """Run ``verify.yml`` under --check: the pack's independent read of the world, never apply's answer.

        Read-only and idempotent. Raises as check(); Unavailable when ``ok`` is missing or not a boolean.
        """
        run = await self._run(step, "verify")
        data = dict(run.result)
        ok = data.pop("ok", None)
        detail = data.pop("detail", "")
        if not isinstance(ok, bool):
            raise Unavailable(f"{self._where(step, 'verify')}: the result needs a boolean 'ok'")
        return ProbeResult(ok=ok, probe=f"ansible pack {self._pack(step)} verify.yml", observed=data, detail=str(detail))

    async def compensate(self, step: StepContext) -> ApplyResult:
        """Run the pack's ``compensate.yml`` if it ships one; NoCompensation (permanent) otherwise.

        Idempotent when the pack is. Raises as apply().
        """
        if not (self._pack_dir(step) / "compensate.yml").is_file():
            raise NoCompensation(f"ansible: no compensation for {step.module}: pack {self._pack(step)} has no compensate.yml")
        run = await self._run(step, "compensate")
        return ApplyResult(log=run.log, outputs=run.result)

    async def preflight(self, step: StepContext) -> Readiness:
        """Run the pack's ``apply.yml`` under --check (drivers/ansible_preflight.py): writes nothing as long as the
        pack keeps its contract. Not ready, naming the task and the host, when a task fails there; raises as
        apply() otherwise. Budget: as apply(), ansible's start-up plus the playbook, within ``config.timeout``."""
        return await ansible_preflight.readiness(self, step)

    def pack_problems(self) -> list[str]:
        """What is wrong with the bound packs (missing pack folder or phase playbook), for start-up validation."""
        problems: list[str] = []
        for module, pack in sorted(self._config.packs.items()):
            if not PACK_NAME.fullmatch(pack):
                problems.append(f"{module}: pack name {pack!r} is not a plain folder name")
                continue
            folder = self._config.packs_dir / pack
            if not folder.is_dir():
                problems.append(f"{module}: pack folder {folder} does not exist")
                continue
            problems.extend(
                f"{module}: pack {pack} has no {phase}.yml" for phase in _PHASES if not (folder / f"{phase}.yml").is_file()
            )
        return problems

    # ------------------------------------------------------------------------------------------ internals

    def _pack(self, step: StepContext) -> str:
        try:
            return bound_pack("ansible", self._config.packs, step.module)
        except ValueError as exc:
            raise NotFound(str(exc)) from None

    def _pack_dir(self, step: StepContext) -> Path:
        return self._config.packs_dir / self._pack(step)

    def _where(self, step: StepContext, phase: Phase) -> str:
        if phase == "preflight":
            return f"ansible pack {self._pack(step)} apply.yml in check mode"
        return f"ansible pack {self._pack(step)} {phase}.yml"

    def _binary(self) -> str:
        wanted = self._config.playbook
        found = process.find_program(wanted)
        if found is None:
            raise NotFound(f"ansible: {wanted} is not installed or not executable on this node")
        return found

    @staticmethod
    def _inputs(step: StepContext) -> dict[str, Any]:
        """The inputs as extra vars (``pack_inputs``); none may take a name the driver passes itself."""

        def not_reserved(name: str) -> None:
            if name.startswith(_RESERVED):
                raise Refused(f"ansible: input {name!r} of {step.module} uses a reserved prefix ({', '.join(_RESERVED)})")

        return pack_inputs("ansible", step, not_reserved)

    @staticmethod
    def _secret_env(step: StepContext) -> dict[str, str]:
        env: dict[str, str] = {}
        for name, value in step.secrets.items():
            var = secret_env_name(name)
            if var in env:
                raise Refused(f"ansible: secrets of step {step.step_id} collide on {var}")
            env[var] = value
        return env

    def _env(self, tmp: Path, secrets: dict[str, str]) -> dict[str, str]:
        env = process.base_env()  # no ANSIBLE_* nor other lanes' secrets from the daemon's environment
        env.update(
            LANG="C.UTF-8",
            LC_ALL="C.UTF-8",
            PYTHONUNBUFFERED="1",  # lines arrive as they happen, so a killed run still says where it was
            ANSIBLE_CONFIG=str(tmp / "ansible.cfg"),  # empty: no ansible.cfg from cwd, ~ or /etc applies
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_HOST_KEY_CHECKING="False",
            ANSIBLE_RETRY_FILES_ENABLED="False",
            ANSIBLE_LOCALHOST_WARNING="False",
            ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
            ANSIBLE_PIPELINING="True",  # one process per task instead of copy + run: ~0.1 s less per task
            ANSIBLE_LOCAL_TEMP=str(tmp / "local"),
            ANSIBLE_REMOTE_TEMP=str(tmp / "remote"),
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(tmp / "cp"),  # nothing of a run outlives it in ~/.ansible
            ANSIBLE_PERSISTENT_CONTROL_PATH_DIR=str(tmp / "pc"),
        )
        env.update(secrets)
        return env

    async def _run(self, step: StepContext, phase: Phase) -> _Run:
        where = self._where(step, phase)
        playbook = self._pack_dir(step) / f"{'apply' if phase == 'preflight' else phase}.yml"
        if not playbook.is_file():
            raise NotFound(f"{where}: {playbook} does not exist")
        binary = self._binary()
        inputs = self._inputs(step)
        secrets = self._secret_env(step)
        masked = process.secret_spellings(secrets.values())

        with process.private_dir("hyops-ansible-", self._temp_root) as tmp:
            output_file = tmp / "result.json"
            vars_file = tmp / "vars.yml"
            extra = {
                **{name: _untemplatable(value) for name, value in inputs.items()},
                "hyops_run_id": _Unsafe(step.run_id),
                "hyops_step": _Unsafe(step.step_id),
                "hyops_output_file": _Unsafe(str(output_file)),
                # modules run under the Python that runs ansible-playbook: no interpreter discovery, no warning
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            }
            process.write_private(vars_file, yaml.dump(extra, Dumper=_VarsDumper, sort_keys=True, allow_unicode=True))
            process.write_private(tmp / "ansible.cfg", "")
            argv = [binary, "-i", "localhost,", "-c", "local", "-e", f"@{vars_file}"]
            if phase in _CHECK_MODE:
                argv.append("--check")
            argv.append(str(playbook.resolve()))

            transcript = _Transcript(masked)
            returncode = await self._execute(argv, tmp, self._env(tmp, secrets), transcript, where)
            if returncode != 0:
                raise self._failure(where, returncode, transcript)
            # apply.yml's result is simulated under --check, like its other writes: a preflight has none to read
            result = {} if phase == "preflight" else self._read_result(output_file, where)
        encoded = json.dumps(result)
        if any(secret in encoded for secret in masked):
            raise Unavailable(f"{where}: the result holds a secret value; refusing to publish it")
        return _Run(result=result, log=tuple(transcript.tail), changed=tuple(transcript.changed))

    async def _execute(self, argv: list[str], tmp: Path, env: dict[str, str], transcript: _Transcript, where: str) -> int:
        try:
            return await process.run_streaming(argv, cwd=tmp, env=env, feed=transcript.feed, time_limit=self._config.timeout)
        except process.CannotStart as exc:
            raise NotFound(f"ansible: {exc}") from None
        except TimeoutError:
            doing = f" (running task {transcript.task!r})" if transcript.task else ""
            raise Unavailable(
                f"{where} did not finish within {self._config.timeout:g}s{doing}: it was killed with every process it started"
            ) from None

    @staticmethod
    def _failure(where: str, returncode: int, transcript: _Transcript) -> DriverError:
        if transcript.failure:
            task, detail = transcript.failed_task or "(unnamed)", transcript.failure
            how = ": host unreachable" if transcript.unreachable else " failed"
            details = {"task": task, "host": transcript.failed_host, "detail": detail}
            return Unavailable(f"{where}: task {task!r}{how}: {detail}", code=returncode, details=details)
        error = transcript.error or (transcript.tail[-1] if transcript.tail else "no output")
        # Exit 4 without an unreachable host, or 5: ansible refused the playbook or the options (a pack bug).
        if returncode in (4, 5):
            return Refused(f"{where}: ansible-playbook refused the pack (exit {returncode}): {error}")
        return Unavailable(f"{where}: ansible-playbook exited {returncode}: {error}", code=returncode)

    @staticmethod
    def _read_result(path: Path, where: str) -> dict[str, Any]:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise Unavailable(f"{where} finished without writing its result to hyops_output_file") from None
        except OSError as exc:
            raise Unavailable(f"{where}: cannot read its result: {exc.strerror}") from None
        try:
            result = json.loads(text)
        except json.JSONDecodeError as exc:
            raise Unavailable(f"{where}: its result is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(result, dict):
            raise Unavailable(f"{where}: its result must be a JSON object, not {type(result).__name__}")
        return result
