"""Scheduled drills and their teardown, end to end with the daemon as a subprocess."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.harness import PRIMARY_DOWN, DaemonProcess, Primary, profile

pytestmark = pytest.mark.e2e


def test_a_drill_torn_down_across_a_restart_records_its_cost(tmp_path: Path, primary: Primary) -> None:
    drill = profile("drill", drill={"allowed": True, "teardown_after": "3s"}, cost={"budget_usd_per_hour": 10.0})
    daemon = DaemonProcess(tmp_path, primary.port, {"prod": profile("prod", rules=[PRIMARY_DOWN]), "drill": drill}, {})
    daemon.start()
    try:
        assert daemon.ctl("drill", "--lane", "drill").returncode == 0
        daemon.wait_status("drill", "ON_STANDBY")
        drill_run = daemon.ctl_json("journal", "list", "--lane", "drill")[0]["run_id"]
        daemon.kill9()
        time.sleep(3.5)  # the deadline passes while no daemon runs
        daemon.start()
        daemon.wait_status("drill", "PRIMARY", timeout=30)
        runs = daemon.ctl_json("journal", "list", "--lane", "drill")
        assert [(r["kind"], r["trigger"], r["status"]) for r in runs] == [
            ("failback", "schedule", "succeeded"),
            ("drill", "operator", "succeeded"),
        ]
        records = daemon.ctl_json("journal", "show", drill_run)
        [cost] = [r["body"] for r in records if r["kind"] == "drill.cost"]
        assert cost["teardown_run"] == runs[0]["run_id"] and cost["hourly_cost_usd"] == 0.5  # the capacity step's price
        assert cost["duration_s"] >= 3.0 and cost["cost_usd"] == round(cost["duration_s"] / 3600 * 0.5, 4)
        world = daemon.world("drill")
        assert world["resources"]["compute/capacity@v1:drill-standby"]["state"] == "stopped"
        assert daemon.world("prod") == {}
    finally:
        daemon.stop()


def test_a_scheduled_drill_runs_with_the_trigger_recorded_as_schedule(tmp_path: Path, primary: Primary) -> None:
    drill = profile("drill", drill={"allowed": True, "teardown_after": "10m", "schedule": "* * * * *"})
    daemon = DaemonProcess(tmp_path, primary.port, {"prod": profile("prod", rules=[PRIMARY_DOWN]), "drill": drill}, {})
    daemon.start()
    try:
        lane = daemon.lane("drill")
        assert lane["next_drill"] is not None  # status says when the next drill is due
        # The cron fires at the next minute boundary: at most a minute away.
        daemon.wait_status("drill", "ON_STANDBY", timeout=75)
        [run] = daemon.ctl_json("journal", "list", "--lane", "drill")
        assert (run["kind"], run["trigger"], run["actor"]) == ("drill", "schedule", "schedule")
        assert daemon.world("prod") == {}
    finally:
        daemon.stop()
