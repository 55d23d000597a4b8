"""TerraformDriver against a real Terraform 1.0.3 (the hashicorp/null provider from a filesystem mirror) and a real
PostgreSQL 15 as the ``pg`` backend: state, locking and drift are Terraform's and PostgreSQL's own. Nothing is mocked.

Each test works in a lane of its own (``hyops_<lane>`` schema), so tests do not share state. The shipped
``null-capacity`` pack runs the module path; a ``slow`` test pack (written here) holds the state lock with a
``local-exec`` sleep and records each time it really ran, for the lock, timeout and kill tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import shutil
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hybridops_daemon.chain.approvals import ApprovalBook
from hybridops_daemon.chain.runner import ChainRunner, RunSpec
from hybridops_daemon.config.loader import check_config, load_profile
from hybridops_daemon.config.profile import Step
from hybridops_daemon.drivers.base import (
    NoCompensation,
    NotFound,
    Preflight,
    Refused,
    StepContext,
    Unavailable,
)
from hybridops_daemon.drivers.declarations.terraform import TerraformBackend, TerraformDriverConfig
from hybridops_daemon.drivers.registry import DRIVER_MODULES
from hybridops_daemon.drivers.terraform import TerraformDriver, pack_version
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.lease.local import LocalLease
from tests.testbed.process import live, live_with_env
from tests.testbed.terraform import PG_PASSWORD, TerraformBin, TfPostgres, terraform_bin, tf_postgres
from tests.testbed.wait import eventually

__all__ = ["terraform_bin", "tf_postgres"]  # the fixtures, imported for this module (tests/conftest.py is not ours)

REPO = Path(__file__).resolve().parents[2]
PACKS = REPO / "packs" / "terraform"
CAPACITY = "compute/capacity@v1"
SLOW = "test/slow@v1"
BROKEN = "test/broken@v1"
NEEDY = "test/needy@v1"
SECRET = 'tf-9c1e5f3a-"never"\\show-me'  # quotes and a backslash: JSON escapes them
PW_ENV = "HYOPS_TEST_TF_PG_PASSWORD"
_lanes = itertools.count(1)

# Holds the state lock for `seconds` while its provisioner runs; appends to `marker` each time it really runs and
# leaves its pid and process group in `marker`.pid.
SLOW_COMMAND = (
    "echo ${var.label} >> ${var.marker}"
    " && echo $$ $(cut -d' ' -f5 /proc/$$/stat) > ${var.marker}.tmp && mv ${var.marker}.tmp ${var.marker}.pid"
    " && exec sleep ${var.seconds}"
)
SLOW_PACK = textwrap.dedent(
    """
    terraform {
      required_providers {
        null = { source = "hashicorp/null", version = "2.1.2" }
      }
      backend "pg" {}
    }
    variable "label" { type = string }
    variable "seconds" { type = number }
    variable "marker" { type = string }
    resource "null_resource" "slow" {
      triggers = { label = var.label }
      provisioner "local-exec" {
        command = "COMMAND"
      }
    }
    output "label" { value = null_resource.slow.triggers.label }
    """
).replace("COMMAND", SLOW_COMMAND)


# --------------------------------------------------------------------------------------------- helpers


def lane() -> str:
    return f"t{os.getpid()}_{next(_lanes)}"


@pytest.fixture(scope="module")
def packs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped pack beside the test packs."""
    root = tmp_path_factory.mktemp("tf-packs")
    shutil.copytree(PACKS / "null-capacity", root / "null-capacity")
    (root / "slow").mkdir()
    (root / "slow" / "main.tf").write_text(SLOW_PACK)
    (root / "broken").mkdir()
    (root / "broken" / "main.tf").write_text('resource "null_resource" "x" {\n  triggers = {\n')  # unterminated
    (root / "needy").mkdir()  # declares a variable no input gives
    (root / "needy" / "main.tf").write_text(
        'terraform {\n  backend "pg" {}\n}\nvariable "name" { type = string }\nvariable "size" { type = number }\n'
    )
    return root


@pytest.fixture(autouse=True)
def _pg_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PW_ENV, PG_PASSWORD)


def config(tf: TerraformBin, pg: TfPostgres, packs: Path, **changes: Any) -> TerraformDriverConfig:
    values: dict[str, Any] = {
        "binary": str(tf.binary),
        "plugin_mirror": tf.plugin_mirror,
        "packs_dir": packs,
        "packs": {CAPACITY: "null-capacity", SLOW: "slow", BROKEN: "broken", NEEDY: "needy"},
        "backend": TerraformBackend(conn_str=pg.conn_str, password={"env": PW_ENV}),  # type: ignore[arg-type]
        "timeout": 120.0,
        "lock_timeout": 30.0,
        **changes,
    }
    return TerraformDriverConfig(**values)


def driver(cfg: TerraformDriverConfig, lane_name: str, temp_root: Path) -> TerraformDriver:
    temp_root.mkdir(exist_ok=True)
    return TerraformDriver(cfg, lane=lane_name, temp_root=temp_root)


def ctx(lane_name: str, module: str = CAPACITY, inputs: dict[str, Any] | None = None, *, secrets: dict[str, str] | None = None,
        run_id: str = "run-1", attempt: int = 1, at_rest: bool = False) -> StepContext:  # fmt: skip
    given = inputs if inputs is not None else {"name": "drill-standby", "state": "running"}
    return StepContext(run_id, lane_name, "capacity", module, given, secrets or {}, 3, attempt, at_rest)


def by_hand(tf: TerraformBin, pg: TfPostgres, lane_name: str, pack: Path, workdir: Path) -> dict[str, str]:
    """A working copy an operator would use outside the daemon: same backend, schema and workspace."""
    shutil.copytree(pack, workdir)
    (workdir / "cli.tfrc").write_text(
        f'provider_installation {{\n filesystem_mirror {{\n path = "{tf.plugin_mirror}"\n include = ["*/*/*"]\n }}\n'
        ' direct { exclude = ["*/*/*"] }\n}\n'
    )
    env = {"TF_CLI_CONFIG_FILE": str(workdir / "cli.tfrc"), "PGPASSWORD": PG_PASSWORD, "TF_WORKSPACE": pack.name}
    backend = [f"-backend-config=conn_str={pg.conn_str}", f"-backend-config=schema_name=hyops_{lane_name}"]
    done = tf.run(["init", "-input=false", "-no-color", *backend], workdir, {**env, "TF_WORKSPACE": "default"})
    assert done.returncode == 0, done.stdout + done.stderr
    return env


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*")]



def advisory_locks(pg: TfPostgres) -> int:
    return int(pg.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")[0][0])  # type: ignore[call-overload]


# --------------------------------------------------------------------------------------------- the module path


async def test_check_apply_verify_then_check_is_satisfied(
    terraform_bin: TerraformBin, tf_postgres: TfPostgres, packs: Path, tmp_path: Path
) -> None:
    name = lane()
    runs = tmp_path / "runs"
    tf = driver(config(terraform_bin, tf_postgres, packs), name, runs)
    step = ctx(name)
    began = time.monotonic()

    before = await tf.check(step)
    assert not before.satisfied and before.outputs == {}
    assert before.observed["plan"] == {"add": 1, "change": 0, "destroy": 0}
    assert before.observed["would_change"] == ["null_resource.capacity (create)"]
    assert before.observed["pack"] == "null-capacity" and before.observed["terraform_version"] == "1.0.3"
    assert before.observed["pack_version"] == pack_version(PACKS / "null-capacity")
    assert before.observed["state"] == {"schema": f"hyops_{name}", "workspace": "null-capacity"}
    [kept] = runs.iterdir()  # check's saved plan waits for apply in a private folder
    assert kept.stat().st_mode & 0o777 == 0o700 and (kept / "step.tfplan").is_file()

    applied = await tf.apply(step)
    assert applied.log[0].startswith("terraform pack null-capacity on Terraform 1.0.3: reviewed plan +1 ~0 -0")
    assert any("Apply complete! Resources: 1 added" in line for line in applied.log)
    assert applied.outputs["state"] == "running" and applied.outputs["capacity_id"].isdigit()
    assert applied.outputs["auth_sha256"] == hashlib.sha256(b"").hexdigest()
    assert list(runs.iterdir()) == []  # the plan went with its folder

    verified = await tf.verify(step)
    assert verified.ok, verified.detail
    assert verified.observed["outputs"] == applied.outputs and verified.observed["plan"]["add"] == 0

    after = await tf.check(ctx(name, run_id="run-2"))
    assert after.satisfied and after.outputs == applied.outputs
    assert list(runs.iterdir()) == []
    rows = tf_postgres.sql(f"SELECT name FROM hyops_{name}.states")
    assert rows == [("null-capacity",)]  # the lane's schema, the pack's workspace
    print(f"check+apply+verify+check: {time.monotonic() - began:.2f}s")
    assert isinstance(tf, Preflight)
    with pytest.raises(NoCompensation):
        await tf.compensate(step)


async def test_apply_without_a_matching_plan_plans_afresh_and_applies_that(
    terraform_bin: TerraformBin, tf_postgres: TfPostgres, packs: Path, tmp_path: Path
) -> None:
    name = lane()
    tf = driver(config(terraform_bin, tf_postgres, packs), name, tmp_path / "runs")
    await tf.check(ctx(name))  # kept for attempt 1 with state "running"
    other = ctx(name, CAPACITY, {"name": "drill-standby", "state": "stopped"}, attempt=1)  # same key, other inputs
    applied = await tf.apply(other)
    assert "fresh plan +1 ~0 -0" in applied.log[0] and applied.outputs["state"] == "stopped"
    assert list((tmp_path / "runs").iterdir()) == []  # the unmatched plan was dropped, not applied
    again = await tf.apply(ctx(name, CAPACITY, {"name": "drill-standby", "state": "stopped"}, attempt=2))
    assert "fresh plan +0 ~0 -0" in again.log[0] and again.log[1] == "terraform plan shows no changes: nothing applied"


# --------------------------------------------------------------------------------------------- drift and readiness


async def test_drift_planted_outside_the_daemon_shows_in_check_and_preflight(
    terraform_bin: TerraformBin, tf_postgres: TfPostgres, packs: Path, tmp_path: Path
) -> None:
    name = lane()
    tf = driver(config(terraform_bin, tf_postgres, packs), name, tmp_path / "runs")
    fresh = lane()  # a lane never applied: preflight says so and creates nothing
    with pytest.raises(NotFound, match="no state yet"):
        await driver(config(terraform_bin, tf_postgres, packs), fresh, tmp_path / "runs").preflight(ctx(fresh))
    assert tf_postgres.sql(f"SELECT count(*) FROM pg_namespace WHERE nspname = 'hyops_{fresh}'") == [(0,)]

    await tf.check(ctx(name))
    await tf.apply(ctx(name))
    ready = await tf.preflight(ctx(name, run_id="preflight"))
    assert ready.ready and "no changes" in ready.reason

    env = by_hand(terraform_bin, tf_postgres, name, packs / "null-capacity", tmp_path / "operator")
    done = terraform_bin.run(
        ["apply", "-auto-approve", "-input=false", "-no-color", "-var", "name=drill-standby", "-var", "state=stopped"],
        tmp_path / "operator", env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    locks = advisory_locks(tf_postgres)
    # The other chain's step (it would stop the capacity, by design) is ready, and says what it would change.
    other = await tf.preflight(ctx(name, run_id="preflight"))
    assert other.ready and "the plan would change null_resource.capacity (replace)" in other.reason, other.reason
    drift = await tf.preflight(ctx(name, run_id="preflight", at_rest=True))  # the chain the lane rests in: drift
    assert not drift.ready
    assert "drift" in drift.reason and "null_resource.capacity (replace)" in drift.reason, drift.reason
    assert drift.observed["plan"] == {"add": 1, "change": 0, "destroy": 1}
    assert advisory_locks(tf_postgres) == locks  # -lock=false: a preflight takes no lock a chain could meet
    check = await tf.check(ctx(name, run_id="run-2"))
    assert not check.satisfied and check.observed["would_change"] == ["null_resource.capacity (replace)"]


async def test_preflight_with_an_unrendered_reference_is_not_ready(
    terraform_bin: TerraformBin, tf_postgres: TfPostgres, packs: Path, tmp_path: Path
) -> None:
    name = lane()
    tf = driver(config(terraform_bin, tf_postgres, packs), name, tmp_path / "runs")
    answer = await tf.preflight(ctx(name, CAPACITY, {"name": "${steps.db.outputs.name}", "state": "running"}))
    assert not answer.ready and "known only to the run" in answer.reason


# --------------------------------------------------------------------------------------------- bad packs


async def test_bad_packs_fail_permanently_with_terraforms_message(
    terraform_bin: TerraformBin, tf_postgres: TfPostgres, packs: Path, tmp_path: Path
) -> None:
    name = lane()
    tf = driver(config(terraform_bin, tf_postgres, packs), name, tmp_path / "runs")
    with pytest.raises(Refused, match="refused the pack's configuration") as broken:
        await tf.check(ctx(name, BROKEN, {}))
    assert not broken.value.retryable and "main.tf line" in str(broken.value)
    with pytest.raises(Refused, match="No value for required variable") as needy:
        await tf.check(ctx(name, NEEDY, {"name": "x"}))
    assert "size" in str(needy.value) and not needy.value.retryable
    with pytest.raises(Refused, match="declares no variable") as undeclared:
        await tf.check(ctx(name, NEEDY, {"name": "x", "size": 1, "colour": "red"}))
    assert "colour" in str(undeclared.value)
    with pytest.raises(Refused, match="state"):  # the module's own contract, before Terraform runs
        await tf.check(ctx(name, CAPACITY, {"name": "x", "state": "paused"}))
    assert list((tmp_path / "runs").iterdir()) == []

    # Through the runner: one check, not retried; the run fails with Terraform's message.
    redactor = Redactor()
    journal = Journal.open(tmp_path / "journal.db", redactor)
    lease = LocalLease(tmp_path / "lease.lock").acquire()
    try:
        runner = ChainRunner(journal, {name: {"terraform": tf}}, lease, ApprovalBook(), redactor)
        ended = await runner.start(spec("r-broken", name, step_of(BROKEN, {}, retries=3)))
        assert not ended.ok and "refused the pack's configuration" in ended.detail
        checks = [r.body for r in journal.run_records("r-broken") if r.kind == "step.check"]
        assert len(checks) == 1 and checks[0]["retryable"] is False
    finally:
        lease.release()
        journal.close()


def step_of(module: str, inputs: dict[str, Any], *, retries: int = 2, timeout: str = "120s", **extra: Any) -> Step:
    return Step.model_validate(
        {"id": "capacity", "module": module, "driver": "terraform", "inputs": inputs, "timeout": timeout,
         "retries": retries, "backoff": "10ms", **extra}
    )  # fmt: skip


def spec(run_id: str, lane_name: str, *steps: Step) -> RunSpec:
    return RunSpec(
        run_id=run_id, lane=lane_name, chain="cutover", kind="drill", trigger="test", actor="pytest",
        reason="integration test", profile={"name": lane_name, "version": 1}, steps=steps, approval_timeout=5.0,
        hourly_cost_usd=0.0,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- secrets, through the runner


async def test_a_secret_reaches_terraform_only_as_tf_var_and_is_found_nowhere_after_the_run(
    terraform_bin: TerraformBin, tf_postgres: TfPostgres, packs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The shipped profile's cutover step, run by the chain runner: the journal gets pack, version, Terraform version,
    plan summary, apply log and outputs, and the secret is in none of the journal, the logs, the temp folders or the
    state."""
    name = lane()
    monkeypatch.setenv("HYOPS_DRILL_CAPACITY_TOKEN", SECRET)
    profile = load_profile(REPO / "policies" / "terraform" / "drill.yaml", DRIVER_MODULES)
    [step] = profile.chain("cutover")
    runs = tmp_path / "runs"
    tf = driver(config(terraform_bin, tf_postgres, packs), name, runs)
    redactor = Redactor()
    journal = Journal.open(tmp_path / "journal.db", redactor)
    lease = LocalLease(tmp_path / "lease.lock").acquire()
    try:
        runner = ChainRunner(journal, {name: {"terraform": tf}}, lease, ApprovalBook(), redactor)
        ended = await runner.start(spec("r-secret", name, step))
        assert ended.ok, ended.detail
        again = await runner.start(spec("r-again", name, step))
        assert again.ok
        records = {kind: [r.body for r in journal.run_records("r-secret") if r.kind == kind] for kind in
                   ("step.check", "step.apply", "step.verify", "step.done")}  # fmt: skip
        assert journal.verify().ok
    finally:
        lease.release()
        journal.close()
    checked = records["step.check"][0]["observed"]
    assert checked["pack"] == "null-capacity" and checked["pack_version"] == pack_version(PACKS / "null-capacity")
    assert checked["terraform_version"] == "1.0.3" and checked["plan"] == {"add": 1, "change": 0, "destroy": 0}
    [applied] = records["step.apply"]
    assert applied["ok"] and "reviewed plan +1 ~0 -0" in applied["log"][0]
    assert any("Apply complete!" in line for line in applied["log"])
    outputs = records["step.done"][0]["outputs"]
    assert outputs["auth_sha256"] == hashlib.sha256(SECRET.encode()).hexdigest() and outputs["state"] == "running"
    assert records["step.verify"][0]["ok"] is True and records["step.verify"][0]["observed"]["outputs"] == outputs

    escaped = SECRET.replace("\\", "\\\\").replace('"', '\\"')
    journal_bytes = b"".join(read_bytes(p) for p in files_under(tmp_path) if p.name.startswith("journal.db"))
    logged = capsys.readouterr()
    state = "".join(str(row[0]) for row in tf_postgres.sql(f"SELECT data FROM hyops_{name}.states"))
    for form in (SECRET, escaped):
        assert form.encode() not in journal_bytes
        assert form not in logged.out + logged.err
        assert form not in state
    assert files_under(runs) == []  # every private folder, and the plan in it, is gone


# --------------------------------------------------------------------------------------------- locking


async def test_concurrent_applies_wait_for_the_lock_and_apply_once(
    terraform_bin: TerraformBin, tf_postgres: TfPostgres, packs: Path, tmp_path: Path
) -> None:
    name = lane()
    marker = tmp_path / "ran"
    inputs = {"label": "b", "seconds": 3, "marker": str(marker)}
    patient = driver(config(terraform_bin, tf_postgres, packs), name, tmp_path / "runs")
    hasty = driver(config(terraform_bin, tf_postgres, packs, lock_timeout=0.0), name, tmp_path / "runs")

    await patient.check(ctx(name, SLOW, inputs))
    applying = asyncio.create_task(patient.apply(ctx(name, SLOW, inputs)))
    await eventually("the provisioner to start (the lock is held)", (tmp_path / "ran.pid").exists, within=60)
    with pytest.raises(Unavailable, match="the state is locked by another run") as locked:
        await hasty.check(ctx(name, SLOW, inputs, run_id="run-2"))
    assert locked.value.retryable and locked.value.code == "locked"
    await applying

    # Two whole runs at once, as two chains of one lane would: one applies, the other waits for the lock, finds its
    # plan stale (retryable), re-checks and is satisfied. The provisioner ran once more in all, not twice.
    redactor = Redactor()
    journal = Journal.open(tmp_path / "journal.db", redactor)
    lease = LocalLease(tmp_path / "lease.lock").acquire()
    try:
        runner = ChainRunner(journal, {name: {"terraform": patient}}, lease, ApprovalBook(), redactor)
        step = step_of(SLOW, {**inputs, "label": "c"})
        first, second = await asyncio.gather(runner.start(spec("r-a", name, step)), runner.start(spec("r-b", name, step)))
        assert first.ok and second.ok, (first.detail, second.detail)
        outcomes = sorted(r.body["outcome"] for run in ("r-a", "r-b") for r in journal.run_records(run) if r.kind == "step.done")
    finally:
        lease.release()
        journal.close()
    assert marker.read_text().split() == ["b", "c"]
    assert outcomes in (["applied", "applied"], ["applied", "skipped (already satisfied)"])  # a stale plan re-checked
    verified = await patient.verify(ctx(name, SLOW, {**inputs, "label": "c"}))
    assert verified.ok and verified.observed["outputs"] == {"label": "c"}
    assert tf_postgres.sql(f"SELECT name FROM hyops_{name}.states") == [("slow",)]
    assert advisory_locks(tf_postgres) == 0


# --------------------------------------------------------------------------------------------- time limits


async def test_timeout_kills_terraforms_process_tree_and_the_lock_is_released(
    terraform_bin: TerraformBin, tf_postgres: TfPostgres, packs: Path, tmp_path: Path
) -> None:
    name = lane()
    runs = tmp_path / "runs"
    inputs = {"label": "t", "seconds": 300, "marker": str(tmp_path / "ran")}
    hasty = driver(config(terraform_bin, tf_postgres, packs, timeout=4.0), name, runs)
    began = time.monotonic()
    with pytest.raises(Unavailable, match="did not finish within 4s") as timed_out:
        await hasty.apply(ctx(name, SLOW, inputs))
    assert time.monotonic() - began < 4 * 3 + 10  # init, plan, apply: each within 4 s
    assert timed_out.value.retryable and "advisory lock" in str(timed_out.value)
    pid, pgid = map(int, (tmp_path / "ran.pid").read_text().split())
    assert not live(pid) and not live(pgid) and live_with_env(str(runs)) == []
    assert files_under(runs) == []
    await eventually("PostgreSQL to end the killed session's advisory lock", lambda: advisory_locks(tf_postgres) == 0, within=10)
    unlocked = driver(config(terraform_bin, tf_postgres, packs, lock_timeout=0.0), name, runs)
    assert not (await unlocked.check(ctx(name, SLOW, inputs, run_id="run-2"))).satisfied  # no lock in the way


async def test_cancellation_kills_the_tree_secret_only_in_the_environment(
    terraform_bin: TerraformBin, tf_postgres: TfPostgres, packs: Path, tmp_path: Path
) -> None:
    """What the runner's step timeout does (asyncio.timeout cancels the call) while Terraform's provisioner runs."""
    name = lane()
    runs = tmp_path / "runs"
    tf = driver(config(terraform_bin, tf_postgres, packs), name, runs)
    inputs = {"label": "k", "seconds": 300, "marker": str(tmp_path / "ran")}
    task = asyncio.create_task(tf.apply(ctx(name, SLOW, inputs, secrets={"token": SECRET})))
    try:
        await eventually("the provisioner's sleep", (tmp_path / "ran.pid").exists, within=60)
        pid, _ = map(int, (tmp_path / "ran.pid").read_text().split())
        tree = live_with_env(str(runs))
        assert pid in tree and len(tree) >= 2  # terraform, its shell and the sleep
        assert all(SECRET.encode() not in read_bytes(Path(f"/proc/{p}/cmdline")) for p in tree)
        assert any(f"TF_VAR_token={SECRET}".encode() in read_bytes(Path(f"/proc/{p}/environ")) for p in tree)
        [workdir] = runs.iterdir()
        assert workdir.stat().st_mode & 0o777 == 0o700
        assert SECRET not in (workdir / "inputs.tfvars.json").read_text()
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not live(pid) and live_with_env(str(runs)) == [] and files_under(runs) == []
    await eventually("PostgreSQL to end the killed session's advisory lock", lambda: advisory_locks(tf_postgres) == 0, within=10)



# --------------------------------------------------------------------------------------------- configuration


def test_check_config_accepts_the_profile_and_names_a_missing_binary_or_mirror(
    terraform_bin: TerraformBin, tmp_path: Path
) -> None:
    def errors(**drivers: str) -> list[tuple[str, str]]:
        settings = {"binary": str(terraform_bin.binary), "plugin_mirror": str(terraform_bin.plugin_mirror), **drivers}
        body = ", ".join(f"{key}: {value!r}" for key, value in settings.items())
        (tmp_path / "node.yaml").write_text(
            f"node: edge01\nstate_dir: var\nlanes:\n  drill:\n    profile: {REPO / 'policies' / 'terraform' / 'drill.yaml'}\n"
            f"    drivers:\n      terraform: {{{body}, packs_dir: {PACKS}, packs: {{compute/capacity@v1: null-capacity}},"
            " backend: {conn_str: 'postgres://terraform@127.0.0.1/tfstate', password: {env: TF_PG}}}\n"
        )
        _, _, found = check_config(tmp_path / "node.yaml", DRIVER_MODULES)
        return [(error.path, error.message) for error in found]

    assert errors() == []
    missing = errors(binary=str(tmp_path / "no-terraform"))
    assert {path for path, _ in missing} == {"lanes.drill.drivers.terraform.binary"}
    assert all("is not an executable file" in message and "tofu" in message for _, message in missing)
    no_mirror = errors(plugin_mirror=str(tmp_path / "no-mirror"))
    assert {path for path, _ in no_mirror} == {"lanes.drill.drivers.terraform.plugin_mirror"}
    assert all(f"provider mirror {tmp_path / 'no-mirror'} is not a folder" in message for _, message in no_mirror)


# --------------------------------------------------------------------------------------------- the daemon killed mid-apply

SLOW_CAPACITY = textwrap.dedent(
    """
    terraform {
      required_providers {
        null = { source = "hashicorp/null", version = "2.1.2" }
      }
      backend "pg" {}
    }
    variable "name" { type = string }
    variable "state" { type = string }
    variable "api_token" {
      type      = string
      sensitive = true
    }
    resource "null_resource" "capacity" {
      triggers = { name = var.name, state = var.state }
      provisioner "local-exec" {
        command = "echo ${var.state} >> MARKER && sleep 4"
      }
    }
    output "state" { value = null_resource.capacity.triggers.state }
    """
)


def test_kill_9_of_the_daemon_mid_apply_then_restart_applies_once(
    terraform_bin: TerraformBin, tf_postgres: TfPostgres, tmp_path: Path
) -> None:
    """The daemon dies (SIGKILL) while Terraform applies. Terraform, in a session of its own, finishes and saves the
    state; the restarted daemon removes the dead daemon's working copy (its saved plan), resumes the run at check(),
    which waits for the lock and finds the capacity there: skipped, applied once."""
    from tests.e2e.harness import DaemonProcess, free_port, wait_for

    marker, runs, packs_dir = tmp_path / "applied", tmp_path / "runs", tmp_path / "packs"
    runs.mkdir()
    (packs_dir / "slow-capacity").mkdir(parents=True)
    (packs_dir / "slow-capacity" / "main.tf").write_text(SLOW_CAPACITY.replace("MARKER", str(marker)))

    def step(state: str) -> dict[str, Any]:
        return {"id": "capacity", "module": CAPACITY, "driver": "terraform", "inputs": {"name": "drill-standby", "state": state},
                "secrets": {"api_token": {"env": "HYOPS_TEST_TF_TOKEN"}}, "timeout": "90s", "backoff": "200ms"}  # fmt: skip

    drill = {"name": "drill", "version": 1, "signals": {"primary_http": {"max_age": "3s"}}, "rules": [],
             "drill": {"allowed": True, "teardown_after": "10m"},
             "chains": {"cutover": [step("running")], "failback": [step("stopped")]}}  # fmt: skip
    env = {"TMPDIR": str(runs), PW_ENV: PG_PASSWORD, "HYOPS_TEST_TF_TOKEN": SECRET, "PYTHONPATH": str(REPO)}
    daemon = DaemonProcess(tmp_path / "node", free_port(), {"drill": drill}, {}, env=env)
    settings = yaml.safe_load(daemon.config.read_text())
    settings["lanes"]["drill"]["drivers"] = {"terraform": {
        "binary": str(terraform_bin.binary), "plugin_mirror": str(terraform_bin.plugin_mirror), "packs_dir": str(packs_dir),
        "packs": {CAPACITY: "slow-capacity"}, "backend": {"conn_str": tf_postgres.conn_str, "password": {"env": PW_ENV}},
        "timeout": "60s", "lock_timeout": "60s"}}  # fmt: skip
    daemon.config.write_text(yaml.safe_dump(settings))
    try:
        daemon.start()
        started = daemon.ctl("drill", "--lane", "drill")
        assert started.returncode == 0, started.stderr
        run_id = daemon.lane("drill")["active_run"]
        wait_for("Terraform's apply to run its provisioner", marker.exists, timeout=60, interval=0.05)
        daemon.kill9()
        orphans = live_with_env(str(runs))
        assert orphans  # Terraform outlives the daemon: its apply goes on, under the state lock
        [left] = [p for p in runs.iterdir() if p.name.startswith("hyops-terraform-")]
        assert (left / "step.tfplan").exists()  # the dead daemon's saved plan, until the restart sweeps it

        daemon.start()

        def ended() -> list[dict[str, Any]]:
            records: list[dict[str, Any]] = daemon.ctl_json("journal", "show", run_id)
            return records if any(r["kind"] == "run.end" for r in records) else []

        records = wait_for("the resumed run to end", ended, timeout=90, interval=0.2)
        # Nothing of the first daemon's Terraform outlives the run: not it, not a provider plugin it started later.
        assert daemon.proc is not None

        def terraform_left() -> list[int]:  # the restarted daemon's environment names the folder too
            return [pid for pid in live_with_env(str(runs)) if pid != daemon.proc.pid]  # type: ignore[union-attr]

        wait_for("no Terraform process left", lambda: not terraform_left(), timeout=15, interval=0.1)
    finally:
        daemon.stop()
        for pid in live_with_env(str(runs)):  # what a failure left (the daemon is stopped): never into the next test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert marker.read_text().split() == ["running"]  # applied once
    assert [r["body"]["ok"] for r in records if r["kind"] == "run.end"] == [True]
    assert [r["body"]["from_step"] for r in records if r["kind"] == "run.resumed"] == ["capacity"]
    done = [r["body"]["outcome"] for r in records if r["kind"] == "step.done"]
    assert done == ["skipped (already satisfied)"], records
    assert not (left / "step.tfplan").exists()  # swept at the restart (the rest of it once Terraform had left it)
    assert [p for p in runs.iterdir() if p.name.startswith("hyops-terraform-") and p != left] == []
    assert all(not live(pid) for pid in orphans)
    assert SECRET not in daemon.logs()
    assert all(SECRET.encode() not in read_bytes(p) for p in files_under(runs) if p.is_file())
