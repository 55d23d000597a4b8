"""A burst lane end to end: a real daemon whose prometheus source queries a real Prometheus, which scrapes an exporter
the test drives. Pressure up → scale out (two levels) → pressure down → scale in, one level at a time, to zero; each
step a scale run through the sandbox driver, journaled with its decision and a ``burst.scale`` record; status and
``/metrics`` show the size, the month's spend and the budget left."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hybridops_daemon.drivers.modules import resource_key, validate_inputs
from tests.e2e.harness import DaemonProcess, free_port, wait_for
from tests.testbed.prometheus import Exporter, Prometheus

pytestmark = pytest.mark.e2e

LANE = "burst"
GROUP = {"group": "burst-pool", "size": 0}
PROFILE: dict[str, Any] = {
    "name": LANE,
    "version": 1,
    "signals": {"platform_latency": {"max_age": "5s"}},
    "burst": {
        "signal": "platform_latency",
        "levels": [{"size": 2, "trip": 0.5, "clear": 0.3}, {"size": 4, "trip": 1.0, "clear": 0.8}],
        "unit_price_usd_hour": 36.0,  # a cent a second per unit: the spend moves within the test
        "scale_out_after": "2s",
        "scale_in_after": "3s",
        "step_cooldown": "1s",
        "budget": {"hourly_usd": 1000, "monthly_usd": 1000},
    },
    "chains": {
        "scale": [
            {
                "id": "capacity",
                "module": "compute/group-size@v1",
                "inputs": {"group": "burst-pool", "size": "${run.size}"},
                "timeout": "10s",
                "backoff": "100ms",
            }
        ]
    },
}


def burst_daemon(tmp_path: Path, prometheus: Prometheus, metrics_port: int) -> DaemonProcess:
    daemon = DaemonProcess(tmp_path, free_port(), {LANE: PROFILE}, {})
    config = yaml.safe_load(daemon.config.read_text())
    config["sources"] = [
        {
            "type": "prometheus",
            "url": prometheus.url,
            "interval": "500ms",
            "timeout": "1s",
            "queries": [{"signal": "platform_latency", "query": 'app_latency_seconds{job="dr"}'}],
        }
    ]
    config["metrics"] = {"listen": "127.0.0.1", "port": metrics_port}
    daemon.config.write_text(yaml.safe_dump(config))
    return daemon


def scrape(port: int) -> dict[str, float]:
    """The burst lane's series on ``/metrics``, by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        sample.name: float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("hybridops_burst_") and sample.labels.get("lane") == LANE
    }


def settled_at(daemon: DaemonProcess, size: int, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until the lane is at ``size`` with no scale run in flight; its status' burst part."""

    def at_size() -> dict[str, Any] | None:
        lane = daemon.lane(LANE)
        burst: dict[str, Any] = lane["burst"]
        return burst if burst["size"] == size and lane["active_run"] is None else None

    found: dict[str, Any] = wait_for(f"lane {LANE} settled at size {size}", at_size, timeout=timeout)
    return found


def test_pressure_scales_the_lane_out_by_levels_and_back_in_to_zero(
    tmp_path: Path, exporter: Exporter, prometheus: Prometheus, daemons: list[DaemonProcess]
) -> None:
    exporter.start()
    prometheus.start()
    exporter.clear()
    exporter.set("app_latency_seconds", 0.1)
    prometheus.wait_for('app_latency_seconds{job="dr"}')
    port = free_port()
    daemon = burst_daemon(tmp_path, prometheus, port)
    daemons.append(daemon)
    daemon.start()
    assert settled_at(daemon, 0)["spent_usd"] == 0.0

    ready = daemon.ctl_json("ready", "--lane", LANE)  # the scale chain's preflights, the run's size unknown to them
    assert [(step["chain"], step["step"], step["state"]) for step in ready[0]["steps"]] == [("scale", "capacity", "ready")]

    refused = daemon.ctl("drill", "--lane", LANE)
    assert refused.returncode == 1 and "is a burst lane" in refused.stderr, refused

    exporter.set("app_latency_seconds", 0.7)
    settled_at(daemon, 2)
    exporter.set("app_latency_seconds", 1.5)
    at_peak = settled_at(daemon, 4)
    assert at_peak["max_size"] == 4 and at_peak["hourly_usd"] == 144.0
    peak = scrape(port)
    assert peak["hybridops_burst_size"] == 4.0 and peak["hybridops_burst_spend_usd"] > 0
    assert peak["hybridops_burst_budget_left_usd"] == pytest.approx(1000 - peak["hybridops_burst_spend_usd"], abs=1e-3)
    text = daemon.ctl("status").stdout
    assert f"{LANE}: burst size 4 of 4, $144.00/h; spent $" in text and "of $1000.00 left" in text

    exporter.set("app_latency_seconds", 0.1)
    settled_at(daemon, 2)
    done = settled_at(daemon, 0)
    after = scrape(port)
    assert after["hybridops_burst_size"] == 0.0
    assert after["hybridops_burst_spend_usd"] >= peak["hybridops_burst_spend_usd"]
    assert done["spent_usd"] == pytest.approx(after["hybridops_burst_spend_usd"], abs=0.05)  # nothing runs: it stays

    runs = list(reversed(daemon.ctl_json("journal", "list", "--lane", LANE)))
    assert [run["status"] for run in runs] == ["succeeded"] * 4
    reasons, scales = [], []
    for run in runs:
        records = daemon.ctl_json("journal", "show", run["run_id"])
        decision = next(r["body"] for r in records if r["kind"] == "decision")
        reasons.append(decision["reason"])
        scale = next(r["body"] for r in records if r["kind"] == "burst.scale")
        scales.append((scale["size_before"], scale["size_after"]))
        assert scale["reason"].startswith(f"scale run {run['run_id']} succeeded")
        assert scale["budget_left_usd"] == pytest.approx(1000 - scale["spent_usd"])
        intent = next(r["body"] for r in records if r["kind"] == "step.intent")
        assert intent["inputs"]["size"] == decision["burst"]["size_after"]  # ${run.size}
    assert scales == [(0, 2), (2, 4), (4, 2), (2, 0)]
    assert reasons[0].startswith("scale out 0 → 2: pressure past 0.5 for 2.0s")
    assert reasons[1].startswith("scale out 2 → 4: pressure past 1 for 2.0s")
    assert reasons[2].startswith("scale in 4 → 2: pressure calm past 0.8 for 3.0s")
    assert reasons[3].startswith("scale in 2 → 0: pressure calm past 0.3 for 3.0s")
    world = daemon.world(LANE)
    key = resource_key("compute/group-size@v1", validate_inputs("compute/group-size@v1", GROUP))
    assert world["resources"][key]["size"] == 0
    assert daemon.stop() == 0
