"""No paid capacity left behind (hardening #8), end to end: a real daemon, driven through hyopsctl.

A drill whose chain fails after starting its capacity hands the lane to an explicit state, the teardown is retried on
a schedule with backoff, ``hyopsctl teardown`` runs it at once, and a metric counts the seconds the capacity ran with no
run at work on it. ``hyopsctl run abandon`` ends an orphaned run that held retention.
"""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from hybridops_daemon.drivers.sandbox import SandboxWorld
from tests.e2e.harness import DaemonProcess, Primary, free_port, profile, wait_for

pytestmark = pytest.mark.e2e

CAPACITY = "compute/capacity@v1:drill-standby"


def drill_daemon(tmp_path: Path, primary: Primary, teardown: dict[str, str], **config: Any) -> DaemonProcess:
    daemon = DaemonProcess(tmp_path, primary.port, {"drill": profile("drill", teardown=teardown)}, {})
    data = yaml.safe_load(daemon.config.read_text())
    data.update(config)
    daemon.config.write_text(yaml.safe_dump(data))
    return daemon


def failed_drill(daemon: DaemonProcess) -> str:
    """A drill whose floating-IP step fails for good, after its capacity started."""
    SandboxWorld(daemon.state / "world-drill.json").inject_fault("network/floating-ip@v1", "apply", permanent=True)
    assert daemon.ctl("drill", "--lane", "drill").returncode == 0
    lane = wait_for("the drill to fail", lambda: (s := daemon.lane("drill"))["capacity"] and s)
    assert lane["status"] == "PAUSED" and lane["capacity"]["may_be_running"] == ["capacity (drill-standby)"]
    assert daemon.world("drill")["resources"][CAPACITY]["state"] == "running"
    return str(lane["capacity"]["left_by"])


def outside_seconds(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r'^hybridops_capacity_outside_window_seconds_total\{lane="drill"\} (\S+)$', text, re.M)
    assert found, "the outside-window metric is not exported"
    return float(found.group(1))


def test_a_failed_drill_is_torn_down_on_a_schedule_with_backoff(
    tmp_path: Path, primary: Primary, daemons: list[DaemonProcess]
) -> None:
    port = free_port()
    daemon = drill_daemon(tmp_path, primary, {"retry_after": "3s", "retry_max": "4s"}, metrics={"port": port})
    daemons.append(daemon)
    daemon.start()
    drill_run = failed_drill(daemon)
    # The first teardown fails too (the capacity will not stop), so the second waits the doubled delay (capped at 4s).
    SandboxWorld(daemon.state / "world-drill.json").inject_fault("compute/capacity@v1", "apply", permanent=True)
    shown = daemon.ctl("status")
    assert shown.returncode == 0
    expected = f"drill: FAILED, capacity may be running: capacity (drill-standby) (left by run {drill_run}); teardown in"
    assert expected in shown.stdout

    def runs() -> list[tuple[str, str]]:
        return [(r["kind"], r["status"]) for r in reversed(daemon.ctl_json("journal", "list", "--lane", "drill"))]

    wait_for("the first teardown to fail", lambda: runs()[1:] == [("teardown", "failed")], timeout=15)
    lane = daemon.lane("drill")
    assert lane["capacity"]["failed_teardowns"] == 1 and lane["capacity"]["left_by"] == drill_run
    wait_for("the second teardown to succeed", lambda: runs()[2:] == [("teardown", "succeeded")], timeout=15)
    assert runs() == [("drill", "failed"), ("teardown", "failed"), ("teardown", "succeeded")]
    lane = daemon.wait_status("drill", "PRIMARY")
    assert lane["capacity"] is None and lane["paused_by"] is None
    assert daemon.world("drill")["resources"][CAPACITY]["state"] == "stopped"
    # The capacity waited about 3 s after the drill failed and 4 s after the first teardown failed, no run at work.
    waited = outside_seconds(port)
    assert 6.0 <= waited <= 12.0, waited
    time.sleep(0.5)
    assert outside_seconds(port) == waited  # torn down: the count stops


def test_teardown_on_demand_and_refused_when_nothing_is_left(
    tmp_path: Path, primary: Primary, daemons: list[DaemonProcess]
) -> None:
    daemon = drill_daemon(tmp_path, primary, {"retry_after": "1h"})
    daemons.append(daemon)
    daemon.start()
    nothing = daemon.ctl("teardown", "--lane", "drill")
    assert nothing.returncode == 1
    assert "teardown refused: no failed run left capacity behind on this lane" in nothing.stderr + nothing.stdout
    failed_drill(daemon)
    assert "teardown attempt 1 in 1h" in daemon.lane("drill")["last_decision"]["reason"]
    done = daemon.ctl("teardown", "--lane", "drill")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("teardown accepted"), done.stdout
    lane = daemon.wait_status("drill", "PRIMARY")
    assert lane["capacity"] is None and daemon.world("drill")["resources"][CAPACITY]["state"] == "stopped"
    [teardown] = [r for r in daemon.ctl_json("journal", "list", "--lane", "drill") if r["kind"] == "teardown"]
    assert teardown["trigger"] == "operator" and teardown["status"] == "succeeded"


def test_an_orphaned_run_holds_retention_until_it_is_abandoned(
    tmp_path: Path, primary: Primary, daemons: list[DaemonProcess]
) -> None:
    retention = {"max_mb": 0.001, "check_every": "200ms"}
    daemon = DaemonProcess(tmp_path, primary.port, {"prod": profile("prod"), "drill": profile("drill")}, {})
    daemons.append(daemon)
    daemon.start()
    SandboxWorld(daemon.state / "world-drill.json").inject_fault("database/primary@v1", "apply", hang=True)
    assert daemon.ctl("drill", "--lane", "drill").returncode == 0
    orphan = wait_for("the drill to run", lambda: daemon.lane("drill")["active_run"])
    daemon.kill9()
    # The drill lane is removed from the configuration: its unfinished run belongs to no lane any more.
    data = yaml.safe_load(daemon.config.read_text())
    del data["lanes"]["drill"]
    data["retention"] = retention
    daemon.config.write_text(yaml.safe_dump(data))
    daemon.start()
    held = wait_for("retention to be held", lambda: daemon.ctl_json("status")["retention"])
    assert held["run_id"] == orphan and held["held"] == f"run {orphan} has not ended"
    assert "journal retention held" in (shown := daemon.ctl("status").stdout) and f"run {orphan} has not ended" in shown

    unknown = daemon.ctl("run", "abandon", "no-such-run", "--reason", "typo")
    assert unknown.returncode == 1 and "no run 'no-such-run' in the journal" in unknown.stderr
    done = daemon.ctl("run", "abandon", orphan, "--reason", "lane drill removed from the config")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"run {orphan} (lane drill) ended as abandoned: record #")
    again = daemon.ctl("run", "abandon", orphan, "--reason", "twice")
    assert again.returncode == 1 and "has already ended" in again.stderr
    records = daemon.ctl_json("journal", "show", orphan)
    assert records[-1]["kind"] == "run.end" and records[-1]["body"]["abandoned"] is True
    assert records[-2]["body"] == {
        "command": "abandon",
        "run_id": orphan,
        "reason": "lane drill removed from the config",
        "actor": records[-2]["body"]["actor"],
    } and records[-2]["body"]["actor"].startswith("uid=")
    # The run's end is the newest record, which retention always keeps (and runs go whole): newer records free it.
    assert daemon.ctl("pause", "--lane", "prod").returncode == 0
    assert daemon.ctl("resume", "--lane", "prod").returncode == 0
    wait_for("retention to cut the abandoned run", lambda: daemon.ctl("journal", "show", orphan).returncode == 1)
    assert (daemon.ctl_json("status")["retention"] or {}).get("run_id") != orphan
    assert daemon.ctl("journal", "verify").returncode == 0
