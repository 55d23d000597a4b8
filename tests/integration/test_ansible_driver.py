"""AnsibleDriver against real ``ansible-playbook`` runs on localhost: the shipped ``active-site`` pack with a fake
service (a Python process that records every SIGHUP and what service.conf said when it got it), and a small
``probe`` test pack (written here) for secrets, sleeping, unreachable hosts and broken packs. Nothing is mocked.

Every ansible run costs 1-3 s, so the active-site state is built once per module (check → apply → verify) and the
tests that follow read it; the tampering test restores what it changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.drivers.ansible import AnsibleDriver, secret_env_name
from hybridops_daemon.drivers.base import (
    ApplyResult,
    CheckResult,
    DriverError,
    NoCompensation,
    NotFound,
    PermanentDriverError,
    Preflight,
    ProbeResult,
    Refused,
    StepContext,
    Unavailable,
)
from hybridops_daemon.drivers.declarations.ansible import AnsibleDriverConfig
from tests.testbed.process import Process, live, live_with_env, require, wait_until

REPO = Path(__file__).resolve().parents[2]
PACKS = REPO / "packs" / "ansible"
PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
SITE_MODULE = "service/active-site@v1"
PROBE_MODULE = "test/probe@v1"
BROKEN_MODULE = "test/broken@v1"
RUN_ID = "run-20260509-ams"
SECRET = 'tok-9c1e5f3a-"never"\\show-me'  # quotes and a backslash: JSON escapes them in ansible's output

# A stand-in for a real service: writes its pid where the pack looks for it, and on SIGHUP records the upstream
# service.conf names at that moment (what a real reload would pick up). SIGUSR1 is the tests' barrier: signals
# pending together are handled lowest number first, so once "usr1" is logged every earlier SIGHUP is logged too.
FAKE_SERVICE = textwrap.dedent(
    """
    import os, re, signal, sys
    from pathlib import Path
    config, events = Path(sys.argv[1]), Path(sys.argv[2])
    def record(line):
        with events.open("a") as out:
            out.write(line + "\\n")
    def on_hup(*_):
        conf = (config / "service.conf").read_text() if (config / "service.conf").exists() else ""
        found = re.search(r"^upstream\\s*=\\s*(\\S+)", conf, re.M)
        record("hup " + (found.group(1) if found else "-"))
    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGUSR1, lambda *_: record("usr1"))
    (config / ".service.pid.tmp").write_text(str(os.getpid()))
    os.replace(config / ".service.pid.tmp", config / "service.pid")
    while True:
        signal.pause()
    """
)

# The test pack. `mode` picks what apply does: echo (hash the secret, echo a note), leak (fail with the secret in
# the message: the driver must mask it), sleep (record pid and process group, then sleep), unreachable.
PROBE_APPLY = textwrap.dedent(
    """
    - name: probe apply
      hosts: localhost
      gather_facts: false
      tasks:
        - name: Hash the secret
          ansible.builtin.set_fact:
            secret_sha256: "{{ lookup('ansible.builtin.env', 'HYOPS_SECRET_API_TOKEN') | hash('sha256') }}"
          no_log: true
          when: mode == 'echo'
        - name: Fail with the secret in the message
          ansible.builtin.fail:
            msg: "refused token {{ lookup('ansible.builtin.env', 'HYOPS_SECRET_API_TOKEN') }}"
          when: mode == 'leak'
        - name: Sleep
          ansible.builtin.command:
            argv: [sh, -c, 'echo "$$ $(cut -d" " -f5 /proc/$$/stat)" > "$1.tmp" && mv "$1.tmp" "$1" && exec sleep "$2"',
                   sh, "{{ pid_file }}", "{{ seconds }}"]
          when: mode == 'sleep'
        - name: Reach a host that is not there
          ansible.builtin.ping:
          vars:
            ansible_connection: ssh
            ansible_host: 127.0.0.1
            ansible_port: 9
          when: mode == 'unreachable'
        - name: Write outputs
          ansible.builtin.copy:
            dest: "{{ hyops_output_file }}"
            content: "{{ {'note': note | default(None), 'secret_sha256': secret_sha256 | default(None)} | to_json }}"
    """
)
PROBE_VERIFY = "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - ansible.builtin.debug: {msg: no result}\n"


# --------------------------------------------------------------------------------------------- helpers


def driver(packs_dir: Path, packs: dict[str, str], temp_root: Path, timeout: float = 120.0) -> AnsibleDriver:
    config = AnsibleDriverConfig(packs_dir=packs_dir, packs=packs, playbook=PLAYBOOK, timeout=timeout)
    return AnsibleDriver(config, temp_root=temp_root)


def ctx(module: str, inputs: dict[str, Any], secrets: dict[str, str] | None = None, run_id: str = RUN_ID) -> StepContext:
    return StepContext(run_id, "drill", "site", module, inputs, secrets or {}, fencing_token=7)



def live_in_group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found



def proc_file(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


async def poll(what: str, ready: Any, within: float = 60.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if result := ready():
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


# --------------------------------------------------------------------------------------------- fixtures


@dataclass
class Site:
    """The active-site world after one check → apply → verify, built once for the module."""

    driver: AnsibleDriver
    config_dir: Path
    events: Path
    service: Process
    temp_root: Path
    step: StepContext
    before: CheckResult
    applied: ApplyResult
    verified: ProbeResult

    def hups(self) -> list[str]:
        """Every SIGHUP the service received so far, after a SIGUSR1 barrier (see FAKE_SERVICE)."""
        barriers = self.lines().count("usr1")
        os.kill(self.service.pid, signal.SIGUSR1)
        wait_until("the fake service's SIGUSR1 barrier", lambda: self.lines().count("usr1") > barriers, proc=self.service)
        return [line for line in self.lines() if line.startswith("hup")]

    def lines(self) -> list[str]:
        return self.events.read_text().splitlines() if self.events.exists() else []


@pytest.fixture(scope="module")
def playbook() -> str:
    return require(PLAYBOOK)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, playbook: str) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("active-site")
    config_dir, temp_root = base / "etc-web", base / "runs"
    config_dir.mkdir()
    temp_root.mkdir()
    events = base / "service-events.log"
    service = Process("fake-service", [sys.executable, "-c", FAKE_SERVICE, str(config_dir), str(events)], base / "service.log")
    try:
        wait_until("the fake service's pid file", (config_dir / "service.pid").exists, proc=service)
        the_driver = driver(PACKS, {SITE_MODULE: "active-site"}, temp_root)
        step = ctx(SITE_MODULE, {"service": "web", "site": "ams", "config_dir": str(config_dir)})

        async def build() -> tuple[CheckResult, ApplyResult, ProbeResult]:
            return await the_driver.check(step), await the_driver.apply(step), await the_driver.verify(step)

        before, applied, verified = asyncio.run(build())
        yield Site(the_driver, config_dir, events, service, temp_root, step, before, applied, verified)
    finally:
        service.stop()


@pytest.fixture(scope="module")
def probe_packs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    packs = tmp_path_factory.mktemp("packs")
    (packs / "probe").mkdir()
    (packs / "probe" / "apply.yml").write_text(PROBE_APPLY)
    (packs / "probe" / "verify.yml").write_text(PROBE_VERIFY)  # writes no result: Unavailable
    (packs / "broken").mkdir()
    (packs / "broken" / "apply.yml").write_text("- hosts: localhost\n  tasks: [\n")  # not YAML
    return packs


@pytest.fixture
def probe(probe_packs: Path, tmp_path: Path, playbook: str) -> AnsibleDriver:
    (tmp_path / "runs").mkdir()
    return driver(probe_packs, {PROBE_MODULE: "probe", BROKEN_MODULE: "broken"}, tmp_path / "runs")


# --------------------------------------------------------------------------------------------- active-site


def test_apply_writes_marker_and_config_and_reloads_once(site: Site) -> None:
    assert site.before.satisfied is False
    assert site.before.observed["marker_site"] is None and site.before.outputs == {}
    marker, conf = site.config_dir / "active-site", site.config_dir / "service.conf"
    assert site.applied.outputs == {
        "site": "ams",
        "service": "web",
        "marker": str(marker),
        "config": str(conf),
        "reloaded": True,
    }
    assert "site=ams\n" in marker.read_text() and f"run_id={RUN_ID}\n" in marker.read_text()
    assert "upstream = ams\n" in conf.read_text()
    assert site.hups() == ["hup ams"]  # exactly one reload, after the new config was in place
    assert site.verified.ok is True, site.verified.detail
    assert site.verified.probe == "ansible pack active-site verify.yml"
    assert site.verified.observed["marker_run_id"] == RUN_ID
    assert 0 < len(site.applied.log) <= 50
    assert "TASK [Reload the service (SIGHUP)]" in site.applied.log and site.applied.log[-1].startswith("localhost")
    assert list(site.temp_root.iterdir()) == []  # every run's private folder is gone


async def test_reapply_is_a_noop(site: Site) -> None:
    marker, conf = site.config_dir / "active-site", site.config_dir / "service.conf"
    before = [(path.stat().st_ino, path.stat().st_mtime_ns) for path in (marker, conf)]
    check = await site.driver.check(site.step)
    assert check.satisfied is True
    assert check.outputs == {**site.applied.outputs, "reloaded": False}  # what a skipped step publishes
    again = await site.driver.apply(site.step)  # what a resumed run might do: must change nothing
    assert again.outputs["reloaded"] is False
    assert [(path.stat().st_ino, path.stat().st_mtime_ns) for path in (marker, conf)] == before
    assert site.hups() == ["hup ams"]  # still only the first apply's SIGHUP


async def test_verify_catches_tampering(site: Site) -> None:
    marker = site.config_dir / "active-site"
    original = marker.read_text()
    marker.write_text("site=fra\nservice=web\nrun_id=someone-else\n")  # behind the driver's back
    try:
        probe = await site.driver.verify(site.step)
        assert probe.ok is False
        assert probe.observed["marker_site"] == "fra" and probe.observed["conf_upstream"] == "ams"
        assert "fra" in probe.detail and "ams" in probe.detail
        assert (await site.driver.check(site.step)).satisfied is False  # so the runner would apply again
    finally:
        marker.write_text(original)


async def test_failing_task_raises_driver_error_naming_the_task(site: Site, tmp_path: Path) -> None:
    step = ctx(SITE_MODULE, {"service": "web", "site": "ams", "config_dir": str(tmp_path / "missing")})
    with pytest.raises(Unavailable, match="failed: ") as failed:
        await site.driver.apply(step)
    assert failed.value.retryable and isinstance(failed.value, DriverError)
    assert failed.value.details["task"] == "Require the service's config directory"
    assert failed.value.code == 2
    assert "Require the service's config directory" in str(failed.value) and "does not exist" in str(failed.value)
    assert not (tmp_path / "missing").exists()


# --------------------------------------------------------------------------------------------- secrets


async def test_secret_reaches_the_playbook_only_as_an_env_var(probe: AnsibleDriver, tmp_path: Path) -> None:
    assert secret_env_name("api-token") == "HYOPS_SECRET_API_TOKEN"
    step = ctx(PROBE_MODULE, {"mode": "echo", "note": "{{ 6 * 7 }}"}, {"api-token": SECRET})
    result = await probe.apply(step)
    assert result.outputs["secret_sha256"] == hashlib.sha256(SECRET.encode()).hexdigest()
    assert result.outputs["note"] == "{{ 6 * 7 }}"  # inputs are !unsafe: never templated
    assert "TASK [Hash the secret]" in result.log and SECRET not in "\n".join(result.log)
    assert list((tmp_path / "runs").iterdir()) == []  # the vars file went with its folder

    with pytest.raises(Unavailable, match="failed: ") as failed:  # a careless task echoing the secret: the driver masks it
        await probe.apply(ctx(PROBE_MODULE, {"mode": "leak"}, {"api-token": SECRET}))
    assert failed.value.details["task"] == "Fail with the secret in the message"
    escaped = json.dumps(SECRET)[1:-1]  # as it stands in the failed task's JSON result
    assert all(form not in str(failed.value) + failed.value.details["detail"] for form in (SECRET, escaped))
    assert "refused token ***" in str(failed.value)


# --------------------------------------------------------------------------------------------- time limits


async def test_timeout_kills_the_whole_process_tree(probe_packs: Path, tmp_path: Path, playbook: str) -> None:
    (tmp_path / "runs").mkdir()
    hasty = driver(probe_packs, {PROBE_MODULE: "probe"}, tmp_path / "runs", timeout=4.0)
    pid_file = tmp_path / "sleep.pid"
    step = ctx(PROBE_MODULE, {"mode": "sleep", "pid_file": str(pid_file), "seconds": 300})
    began = time.monotonic()
    with pytest.raises(Unavailable, match="did not finish within") as timed_out:
        await hasty.apply(step)
    assert time.monotonic() - began < 4 + 10
    assert timed_out.value.retryable and "within 4s" in str(timed_out.value)
    assert live_with_env(str(tmp_path / "runs")) == []
    if pid_file.exists():  # the sleep started before the timeout (usual, but not certain on a loaded machine)
        pid, pgid = map(int, pid_file.read_text().split())
        assert not live(pid) and live_in_group(pgid) == []
    assert list((tmp_path / "runs").iterdir()) == []


async def test_cancellation_kills_the_whole_process_tree(probe_packs: Path, tmp_path: Path, playbook: str) -> None:
    """What the runner's step timeout does (asyncio.timeout cancels the call) while a module's child is running.
    Meanwhile: the vars file is private and holds no secret, the command lines hold no secret, the env does."""
    runs = tmp_path / "runs"
    runs.mkdir()
    slow = driver(probe_packs, {PROBE_MODULE: "probe"}, runs, timeout=120.0)
    pid_file = tmp_path / "sleep.pid"
    step = ctx(PROBE_MODULE, {"mode": "sleep", "pid_file": str(pid_file), "seconds": 300}, {"api-token": SECRET})
    task = asyncio.create_task(slow.apply(step))
    try:
        await poll("the playbook's sleep to start", pid_file.exists)
        pid, pgid = map(int, pid_file.read_text().split())
        [run_dir] = runs.iterdir()
        assert run_dir.stat().st_mode & 0o777 == 0o700
        assert (run_dir / "vars.yml").stat().st_mode & 0o777 == 0o600
        assert SECRET not in (run_dir / "vars.yml").read_text()
        group = live_in_group(pgid)
        assert pid in group and len(group) >= 2  # the worker (its own session: ansible-core setsid()s), the module, the sleep
        assert all(SECRET.encode() not in proc_file(p, "cmdline") for p in group)
        assert f"HYOPS_SECRET_API_TOKEN={SECRET}".encode() in proc_file(pid, "environ")
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert live_in_group(pgid) == [] and not live(pid)
    assert live_with_env(str(runs)) == []
    assert list(runs.iterdir()) == []


# --------------------------------------------------------------------------------------------- typed errors


async def test_unreachable_host_is_retryable(probe: AnsibleDriver) -> None:
    require("ssh")
    with pytest.raises(Unavailable, match="host unreachable") as unreachable:
        await probe.apply(ctx(PROBE_MODULE, {"mode": "unreachable"}))
    assert unreachable.value.retryable and unreachable.value.code == 4
    assert "Reach a host that is not there" in str(unreachable.value)


async def test_pack_problems_are_typed(probe: AnsibleDriver, site: Site, tmp_path: Path) -> None:
    with pytest.raises(Unavailable) as no_result:  # the playbook ran fine but wrote no result
        await probe.verify(ctx(PROBE_MODULE, {"mode": "echo"}))
    assert no_result.value.retryable and "without writing its result" in str(no_result.value)
    with pytest.raises(Refused) as broken:  # ansible refuses to parse it (exit 4, but nothing unreachable)
        await probe.apply(ctx(BROKEN_MODULE, {}))
    assert not broken.value.retryable and "YAML" in str(broken.value)

    # Refused before ansible-playbook starts:
    missing = AnsibleDriver(
        AnsibleDriverConfig(packs_dir=PACKS, packs={SITE_MODULE: "active-site"}, playbook=str(tmp_path / "nope"))
    )
    refusals: list[tuple[Callable[[], Awaitable[object]], type[PermanentDriverError], str]] = [
        (lambda: probe.check(ctx("test/unbound@v1", {})), NotFound, "not bound to an ansible pack"),
        (lambda: probe.check(ctx(PROBE_MODULE, {})), NotFound, r"check\.yml does not exist"),  # the pack has none
        (lambda: site.driver.compensate(site.step), NoCompensation, "no compensate.yml"),  # active-site ships none
        (lambda: probe.apply(ctx(PROBE_MODULE, {"hyops_run_id": "forged"})), Refused, "reserved prefix"),
        (lambda: probe.apply(ctx(PROBE_MODULE, {"not a name": 1})), Refused, "not a valid variable name"),
        (lambda: missing.check(site.step), NotFound, "not installed or not executable"),  # no ansible-playbook
    ]
    for call, error, fragment in refusals:
        with pytest.raises(error, match=fragment) as refused:
            await call()
        assert not refused.value.retryable
    assert probe.modules == frozenset({PROBE_MODULE, BROKEN_MODULE}) and probe.name == "ansible"
    assert site.driver.pack_problems() == []
    assert probe.pack_problems() == [
        f"{BROKEN_MODULE}: pack broken has no check.yml",
        f"{BROKEN_MODULE}: pack broken has no verify.yml",
        f"{PROBE_MODULE}: pack probe has no check.yml",
    ]


# --------------------------------------------------------------------------------------------- preflight (issue #13)


def preflight_ctx(module: str, inputs: dict[str, Any]) -> StepContext:
    """As the daemon hands it: run id "preflight", fencing token 0, the inputs as profiled."""
    return StepContext("preflight", "drill", "site", module, inputs, {}, fencing_token=0)


def files(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under ``folder``: content, inode and mtime (a rewrite with the same bytes still shows)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


async def test_preflight_runs_apply_in_check_mode_and_changes_nothing(site: Site) -> None:
    assert isinstance(site.driver, Preflight)
    before, hups = files(site.config_dir), site.hups()
    assert {"active-site", "service.conf", "service.pid"} <= set(before)
    step = preflight_ctx(SITE_MODULE, {"service": "web", "site": "fra", "config_dir": str(site.config_dir)})  # a move
    began = time.monotonic()
    readiness = await site.driver.preflight(step)
    print(f"ansible preflight (active-site apply.yml --check): {time.monotonic() - began:.2f} s")
    assert readiness.ready, readiness.reason
    # The templates would rewrite both files, and the result its private file; the SIGHUP (a command: skipped
    # under --check) is not among them.
    changes = ["Render the service config", "Write the cutover marker", "Write the apply outputs for the driver"]
    assert readiness.observed["would_change"] == changes
    assert readiness.reason == f"ansible pack active-site apply.yml in check mode passed; it would change: {', '.join(changes)}"
    assert readiness.metrics == {"tasks_would_change": 3.0}
    assert files(site.config_dir) == before and site.hups() == hups  # nothing written, no reload
    assert list(site.temp_root.iterdir()) == []


async def test_preflight_names_the_task_and_host_failing_in_check_mode(site: Site, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    readiness = await site.driver.preflight(
        preflight_ctx(SITE_MODULE, {"service": "web", "site": "fra", "config_dir": str(missing)})
    )
    assert not readiness.ready
    assert readiness.reason == (
        """ansible pack active-site apply.yml in check mode: task "Require the service's config directory" failed: """
        f"config_dir {missing} does not exist or is not a directory (host localhost)"
    )
    assert readiness.observed["task"] == "Require the service's config directory"
    assert readiness.observed["host"] == "localhost" and readiness.observed["exit_status"] == 2
    assert not missing.exists()


async def test_preflight_missing_playbook_and_other_faults_raise(site: Site, probe: AnsibleDriver, tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    (packs / "checks-only").mkdir(parents=True)
    (packs / "checks-only" / "check.yml").write_text(PROBE_VERIFY)
    no_apply = driver(packs, {SITE_MODULE: "checks-only"}, tmp_path)
    inputs = {"service": "web", "site": "fra", "config_dir": str(site.config_dir)}
    with pytest.raises(NotFound) as missing:  # the caller's reason is the error's text
        await no_apply.preflight(preflight_ctx(SITE_MODULE, inputs))
    assert str(missing.value) == (
        f"ansible pack checks-only apply.yml in check mode: {packs / 'checks-only' / 'apply.yml'} does not exist"
    )
    with pytest.raises(NotFound, match="not bound to an ansible pack"):
        await probe.preflight(preflight_ctx("test/unbound@v1", {}))
    with pytest.raises(Refused, match="refused the pack"):
        await probe.preflight(preflight_ctx(BROKEN_MODULE, {}))
    # An earlier step's output is known only to the run: the playbook is not run with the reference's text.
    later = await site.driver.preflight(preflight_ctx(SITE_MODULE, {**inputs, "site": "${steps.capacity.site}"}))
    assert not later.ready and later.reason == (
        "ansible pack active-site apply.yml in check mode not run: "
        "${steps.capacity.site}: step 'capacity' has published no output 'site', known only to the run"
    )
