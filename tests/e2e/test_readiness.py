"""Readiness end to end (issue #13): a real daemon proves its cutover path between incidents, and a planted fault
shows in hyopsctl ready, status, the journal and /metrics within one readiness period; with the profile option, an
outage then gets a refusal naming the step, and a forced cutover still runs, saying it ran against a broken path."""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from hybridops_daemon.drivers.sandbox import SandboxWorld
from tests.e2e.harness import PRIMARY_DOWN, DaemonProcess, Primary, free_port, profile, wait_for

pytestmark = pytest.mark.e2e

FAULT = "replica app-db lags 5 MiB, over max_lag_bytes 1 MiB"


def ready_daemon(tmp_path: Path, primary: Primary, **prod: Any) -> tuple[DaemonProcess, int]:
    daemon = DaemonProcess(tmp_path, primary.port, {"prod": profile("prod", rules=[PRIMARY_DOWN], **prod)}, {})
    port = free_port()
    data = yaml.safe_load(daemon.config.read_text())
    data["lanes"]["prod"]["readiness"] = {"every": "1s", "timeout": "5s"}
    data["metrics"] = {"port": port}
    daemon.config.write_text(yaml.safe_dump(data))
    return daemon, port


def step_ready(port: int, step: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf'^hybridops_step_ready\{{chain="cutover",lane="prod",step="{step}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


def readiness_records(daemon: DaemonProcess) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{daemon.state / 'journal.db'}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT body FROM records WHERE kind = 'readiness' ORDER BY seq").fetchall()
    return [json.loads(row[0]) for row in rows]


def plant(daemon: DaemonProcess) -> None:
    SandboxWorld(daemon.state / "world-prod.json").inject_fault(
        "database/primary@v1", "preflight", fail_times=10_000, message=FAULT
    )


def test_a_planted_fault_shows_everywhere_within_one_period(
    tmp_path: Path, primary: Primary, daemons: list[DaemonProcess]
) -> None:
    daemon, port = ready_daemon(tmp_path, primary)
    daemons.append(daemon)
    daemon.start()
    lane = wait_for("the path to be checked", lambda: (s := daemon.lane("prod"))["readiness"] and s)
    assert lane["readiness"]["summary"] == "path ready" and lane["readiness"]["chain"] == "cutover"
    now = daemon.ctl("ready", "--lane", "prod")
    assert now.returncode == 0, now.stdout + now.stderr
    assert len([line for line in now.stdout.splitlines() if line.startswith("prod ")]) == 10  # 5 steps × 2 chains

    plant(daemon)
    lane = wait_for("the fault in status", lambda: (s := daemon.lane("prod"))["readiness"]["not_ready"] and s, timeout=5)
    assert lane["readiness"]["summary"] == "path broken at database"
    assert lane["readiness"]["not_ready"] == [{"step": "database", "reason": FAULT}]
    shown = daemon.ctl("status").stdout
    assert "path broken at database" in shown and f"prod: cutover step database not ready: {FAULT}" in shown
    now = daemon.ctl("ready", "--lane", "prod")
    assert now.returncode == 1
    [line] = [line for line in now.stdout.splitlines() if re.match(r"prod +cutover +database ", line)]
    assert "not ready" in line and FAULT in line
    assert wait_for("the metric", lambda: step_ready(port, "database") == 0.0, timeout=5)
    assert step_ready(port, "dns") == 1.0
    changes = [r for r in readiness_records(daemon) if r["step"] == "database" and r["chain"] == "cutover"]
    assert [(r["was"], r["state"]) for r in changes] == [(None, "ready"), ("ready", "not ready")]  # on change only
    assert changes[-1]["reason"] == FAULT


def test_a_broken_path_refuses_the_automatic_cutover_and_a_forced_one_says_so(
    tmp_path: Path, primary: Primary, daemons: list[DaemonProcess]
) -> None:
    daemon, _ = ready_daemon(tmp_path, primary, readiness={"refuse_broken_cutover": True})
    daemons.append(daemon)
    daemon.start()
    plant(daemon)
    wait_for("the fault in status", lambda: daemon.lane("prod")["readiness"]["not_ready"], timeout=10)
    primary.stop()
    lane = wait_for(
        "the refusal", lambda: ((s := daemon.lane("prod"))["last_decision"] or {}).get("kind") == "refuse" and s, timeout=15
    )
    assert lane["status"] == "DEGRADED"
    assert f"the cutover path is reported broken at database: {FAULT}" in lane["last_decision"]["reason"]
    assert daemon.world("prod").get("applies", {}) == {}  # nothing half-done

    forced = daemon.ctl("cutover", "--lane", "prod", "--confirm")
    assert forced.returncode == 0, forced.stderr
    assert f"runs against a path reported broken at database: {FAULT}" in forced.stdout
