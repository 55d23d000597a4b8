"""The daemon end to end: real processes, driven only through hyopsctl and the probe target."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.harness import DAEMON, PRIMARY_DOWN, DaemonProcess, Primary, free_port, profile, wait_for

pytestmark = pytest.mark.e2e


def make_daemon(tmp_path: Path, primary: Primary, latency: dict[str, float] | None = None, **prod: object) -> DaemonProcess:
    return DaemonProcess(
        tmp_path,
        primary.port,
        {"prod": profile("prod", rules=[PRIMARY_DOWN], **prod), "drill": profile("drill")},
        latency or {},
    )


def applies(daemon: DaemonProcess, lane: str) -> dict[str, int]:
    return dict(daemon.world(lane).get("applies", {}))


def kinds(daemon: DaemonProcess, run_id: str) -> list[str]:
    return [record["kind"] for record in daemon.ctl_json("journal", "show", run_id)]


def test_primary_outage_cuts_over_once_and_a_drill_never_touches_prod(
    tmp_path: Path, primary: Primary, daemons: list[DaemonProcess]
) -> None:
    daemon = make_daemon(tmp_path, primary)
    daemons.append(daemon)
    daemon.start()
    wait_for("prod to see the primary healthy", lambda: daemon.lane("prod")["status"] == "PRIMARY")

    drill = daemon.ctl("drill", "--lane", "drill")
    assert drill.returncode == 0, drill.stderr
    assert "drill" in drill.stdout
    daemon.wait_status("drill", "ON_STANDBY")
    drill_world = daemon.world("drill")
    assert set(applies(daemon, "drill").values()) == {1} and len(applies(daemon, "drill")) == 5
    assert drill_world["resources"]["network/floating-ip@v1:203.0.113.99"]["target"] == "edge02"
    assert daemon.world("prod") == {}, "a drill on the drill lane touched the prod lane's world"
    assert daemon.lane("prod")["status"] == "PRIMARY"

    primary.stop()
    daemon.wait_status("prod", "ON_STANDBY", timeout=30)
    run_id = daemon.ctl_json("journal", "list", "--lane", "prod")[0]["run_id"]
    time.sleep(1.5)  # more ticks with the primary still down: a confirmed outage is one cutover, not one per tick
    runs = daemon.ctl_json("journal", "list", "--lane", "prod")
    assert [(r["kind"], r["trigger"], r["status"]) for r in runs] == [("cutover", "automatic", "succeeded")]
    prod_applies = applies(daemon, "prod")
    assert len(prod_applies) == 5 and set(prod_applies.values()) == {1}, prod_applies
    events = daemon.world("prod")["events"]
    assert {event["run_id"] for event in events} == {run_id}
    assert all(event["run_id"].startswith("drill-") for event in daemon.world("drill")["events"])

    record_kinds = kinds(daemon, run_id)
    assert record_kinds[0] == "decision" and record_kinds[1] == "run.start" and record_kinds[-1] == "run.end"
    assert record_kinds.count("step.done") == 5 and record_kinds.count("step.verify") == 5

    verify = daemon.ctl("journal", "verify")
    assert verify.returncode == 0 and verify.stdout.startswith("journal OK"), verify.stdout + verify.stderr
    assert daemon.stop() == 0
    offline = daemon.ctl("status")
    assert offline.returncode == 3 and str(daemon.socket) in offline.stderr


@pytest.mark.parametrize("moment", ["during apply", "after apply, before verify"])
def test_kill_9_mid_step_then_restart_completes_without_applying_twice(
    tmp_path: Path, primary: Primary, daemons: list[DaemonProcess], moment: str
) -> None:
    daemon = make_daemon(tmp_path, primary, latency={"prod": 1.5})
    daemons.append(daemon)
    daemon.start()
    if moment == "after apply, before verify":
        # The effect lands, then verify hangs: the crash window where only check() can prevent a second apply.
        from hybridops_daemon.drivers.sandbox import SandboxWorld

        SandboxWorld(daemon.state / "world-prod.json").inject_fault("database/primary@v1", "verify", hang=True)
    done = daemon.ctl("cutover", "--lane", "prod", "--confirm")
    assert done.returncode == 0, done.stderr
    run_id = daemon.lane("prod")["active_run"]
    db_key = "database/primary@v1:prod-db"

    def in_the_window() -> bool:
        records = daemon.ctl_json("journal", "show", run_id)
        intents = [r for r in records if r["kind"] == "step.intent" and r["body"]["step"] == "database"]
        finished = any(r["kind"] == "step.done" and r["body"]["step"] == "database" for r in records)
        landed = applies(daemon, "prod").get(db_key, 0) == 1
        return bool(intents) and not finished and (landed if moment.startswith("after") else not landed)

    wait_for(f"the database step to be {moment}", in_the_window, timeout=30, interval=0.05)
    daemon.kill9()

    daemon.start()
    daemon.wait_status("prod", "ON_STANDBY", timeout=30)
    prod_applies = applies(daemon, "prod")
    assert len(prod_applies) == 5 and set(prod_applies.values()) == {1}, prod_applies

    records = daemon.ctl_json("journal", "show", run_id)
    resumed = [r for r in records if r["kind"] == "run.resumed"]
    assert len(resumed) == 1 and resumed[0]["body"]["from_step"] == "database"
    assert resumed[0]["body"]["completed_steps"] == ["capacity"]
    db_done = [r["body"]["outcome"] for r in records if r["kind"] == "step.done" and r["body"]["step"] == "database"]
    assert db_done == (["applied"] if moment == "during apply" else ["skipped (already satisfied)"])
    assert [r["body"]["ok"] for r in records if r["kind"] == "run.end"] == [True]
    assert daemon.ctl("journal", "verify").returncode == 0
    starts = [r for r in daemon.ctl_json("journal", "show", run_id) if r["kind"] == "run.start"]
    assert len(starts) == 1
    assert _unclean_start_recorded(daemon)


def _unclean_start_recorded(daemon: DaemonProcess) -> bool:
    with sqlite3.connect(f"file:{daemon.state / 'journal.db'}?mode=ro", uri=True) as db:
        bodies = [row[0] for row in db.execute("SELECT body FROM records WHERE kind = 'daemon.start' ORDER BY seq")]
    return len(bodies) == 2 and '"previous_shutdown":"unclean"' in bodies[1]


def test_failback_waits_for_approval_and_records_the_approver(
    tmp_path: Path, primary: Primary, daemons: list[DaemonProcess]
) -> None:
    prod = profile("prod", rules=[PRIMARY_DOWN])
    next(step for step in prod["chains"]["failback"] if step["id"] == "database")["approval"] = True
    daemon = DaemonProcess(tmp_path, primary.port, {"prod": prod, "drill": profile("drill")}, {})
    daemons.append(daemon)
    daemon.start()
    assert daemon.ctl("cutover", "--lane", "prod").returncode == 2  # no --confirm: refused before asking the daemon
    assert daemon.ctl("cutover", "--lane", "prod", "--confirm").returncode == 0
    daemon.wait_status("prod", "ON_STANDBY")
    assert daemon.ctl("failback", "--lane", "prod").returncode == 0
    pending = wait_for("the approval gate", lambda: daemon.ctl_json("status")["pending_approvals"])
    assert [(p["lane"], p["step"]) for p in pending] == [("prod", "database")]
    status_table = daemon.ctl("status").stdout
    assert "database" in status_table
    run_id = pending[0]["run_id"]
    assert daemon.ctl("approve", run_id, "no-such-step").returncode == 1
    approved = daemon.ctl("approve", run_id, "database")
    assert approved.returncode == 0, approved.stderr
    daemon.wait_status("prod", "PRIMARY")
    records = daemon.ctl_json("journal", "show", run_id)
    approvals = [r["body"] for r in records if r["kind"] == "step.approval"]
    assert [a["status"] for a in approvals] == ["waiting", "approved"]
    assert approvals[1]["actor"].startswith("uid=")
    operator = [r["body"] for r in records if r["kind"] == "operator"]
    assert operator and operator[0]["command"] == "approve"


def test_pause_refuses_actions_and_sighup_reloads_only_a_valid_profile(
    tmp_path: Path, primary: Primary, daemons: list[DaemonProcess]
) -> None:
    daemon = make_daemon(tmp_path, primary)
    daemons.append(daemon)
    daemon.start()
    assert daemon.ctl("pause").returncode == 0
    assert {lane["status"] for lane in daemon.ctl_json("status")["lanes"]} == {"PAUSED"}
    refused = daemon.ctl("drill", "--lane", "drill")
    assert refused.returncode == 1 and "paused" in refused.stderr
    primary.stop()
    time.sleep(2.5)  # long enough for the rule (2 failures over 1 s) to have tripped, had pause not held
    assert daemon.lane("prod")["status"] == "PAUSED" and daemon.world("prod") == {}

    bad = profile("prod", rules=[{**PRIMARY_DOWN, "for": "soon"}])
    daemon.write_profile("prod", bad)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for("the refusal in the log", lambda: "profile reload refused" in daemon.logs())
    assert "rules[0].for: must be a duration" in daemon.logs()
    assert daemon.lane("prod")["profile"] == "prod@v1"

    daemon.write_profile("prod", profile("prod", rules=[PRIMARY_DOWN], version=2))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for("the new profile", lambda: daemon.lane("prod")["profile"] == "prod@v2")
    assert daemon.ctl("resume").returncode == 0
    assert daemon.stop() == 0


def test_bad_requests_change_nothing(tmp_path: Path, primary: Primary, daemons: list[DaemonProcess]) -> None:
    daemon = make_daemon(tmp_path, primary)
    daemons.append(daemon)
    daemon.start()
    unknown_lane = daemon.ctl("drill", "--lane", "nope")
    assert unknown_lane.returncode == 1 and "no lane 'nope'" in unknown_lane.stderr
    bad_lane = daemon.ctl("drill", "--lane", "Not A Lane")
    assert bad_lane.returncode == 2
    assert daemon.ctl("failback", "--lane", "prod").returncode == 1  # PRIMARY: nothing to fail back from
    assert daemon.ctl_json("journal", "list") == []


def test_a_planted_secret_reaches_neither_the_journal_nor_the_logs(
    tmp_path: Path, primary: Primary, daemons: list[DaemonProcess]
) -> None:
    secret = "s3cr3t-Planted-Token-9f2c"
    prod = profile("prod", rules=[PRIMARY_DOWN])
    fip = next(step for step in prod["chains"]["cutover"] if step["id"] == "floating-ip")
    fip["secrets"] = {"api_token": {"env": "HYOPS_E2E_TOKEN"}}
    ipam = next(step for step in prod["chains"]["cutover"] if step["id"] == "ipam")
    ipam["inputs"]["description"] = f"pasted by mistake: {secret}"  # in inputs
    daemon = DaemonProcess(tmp_path, primary.port, {"prod": prod, "drill": profile("drill")}, {}, env={"HYOPS_E2E_TOKEN": secret})
    daemons.append(daemon)
    world = daemon.state / "world-prod.json"
    world.parent.mkdir(parents=True, exist_ok=True)
    world.write_text('{"echo_secrets": true}')  # the driver's output echoes the credential
    from hybridops_daemon.drivers.sandbox import SandboxWorld

    # ... and its first failure message carries it too.
    SandboxWorld(world).inject_fault(
        "network/floating-ip@v1", "apply", fail_times=1, message="upstream rejected token {secret:api_token}"
    )
    daemon.start()
    assert daemon.ctl("cutover", "--lane", "prod", "--confirm").returncode == 0
    daemon.wait_status("prod", "ON_STANDBY")
    run_id = daemon.ctl_json("journal", "list")[0]["run_id"]
    records = daemon.ctl_json("journal", "show", run_id)
    applies = [r["body"] for r in records if r["kind"] == "step.apply" and r["body"]["step"] == "floating-ip"]
    assert [a["ok"] for a in applies] == [False, True]
    assert applies[0]["error"] == "upstream rejected token [REDACTED]"
    assert "authenticated with api_token=[REDACTED]" in applies[1]["log"]
    ipam_intent = next(r["body"] for r in records if r["kind"] == "step.intent" and r["body"]["step"] == "ipam")
    assert ipam_intent["inputs"]["description"] == "pasted by mistake: [REDACTED]"
    assert daemon.stop() == 0

    leaked = [path.name for path in [*daemon.state.glob("journal.db*"), daemon.log_path] if secret.encode() in path.read_bytes()]
    assert leaked == [], f"the secret leaked into {leaked}"
    assert b"[REDACTED]" in (daemon.state / "journal.db").read_bytes()


def test_the_metrics_endpoint_reports_what_the_daemon_did(tmp_path: Path, primary: Primary, daemons: list[DaemonProcess]) -> None:
    import urllib.request

    import yaml
    from prometheus_client.parser import text_string_to_metric_families

    daemon = make_daemon(tmp_path, primary)
    port = free_port()
    config = yaml.safe_load(daemon.config.read_text())
    config["metrics"] = {"listen": "127.0.0.1", "port": port}
    daemon.config.write_text(yaml.safe_dump(config))
    daemons.append(daemon)
    daemon.start()
    assert daemon.ctl("drill", "--lane", "drill").returncode == 0
    daemon.wait_status("drill", "ON_STANDBY")

    def sample(name: str, **labels: str) -> float | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return None

    assert sample("hybridops_decisions_total", lane="drill", kind="drill") == 1.0
    assert sample("hybridops_lane_state", lane="drill", state="ON_STANDBY") == 1.0
    assert sample("hybridops_lane_state", lane="drill", state="PRIMARY") == 0.0
    assert sample("hybridops_chain_runs_total", lane="drill", chain="cutover", outcome="succeeded") == 1.0
    assert sample("hybridops_chain_step_duration_seconds_count", lane="drill", step="floating-ip", outcome="applied") == 1.0
    assert sample("hybridops_signal_unknown", signal="primary_http", edge="edge01") == 0.0
    journal_size = sample("hybridops_journal_size_bytes")
    assert journal_size is not None and journal_size > 0


def test_retention_cuts_the_journal_and_verify_still_proves_it(
    tmp_path: Path, primary: Primary, daemons: list[DaemonProcess]
) -> None:
    import yaml

    daemon = make_daemon(tmp_path, primary)
    config = yaml.safe_load(daemon.config.read_text())
    config["retention"] = {"max_mb": 0.05, "check_every": "500ms"}  # ~50 KB: a few drills overflow it
    daemon.config.write_text(yaml.safe_dump(config))
    daemons.append(daemon)
    daemon.start()
    for _ in range(3):
        assert daemon.ctl("drill", "--lane", "drill").returncode == 0
        daemon.wait_status("drill", "ON_STANDBY")
        assert daemon.ctl("failback", "--lane", "drill").returncode == 0
        daemon.wait_status("drill", "PRIMARY")

    def pruned() -> list[str]:
        with sqlite3.connect(f"file:{daemon.state / 'journal.db'}?mode=ro", uri=True) as db:
            return [row[0] for row in db.execute("SELECT body FROM records WHERE kind = 'journal.pruned'")]

    wait_for("a retention cut", pruned, timeout=20)
    verify = daemon.ctl("journal", "verify")
    assert verify.returncode == 0 and verify.stdout.startswith("journal OK"), verify.stdout + verify.stderr
    assert daemon.stop() == 0
    offline = subprocess.run(
        [DAEMON, "journal", "verify", "--db", str(daemon.state / "journal.db")], capture_output=True, text=True
    )
    assert offline.returncode == 0, offline.stdout
