"""Detection latency and false cutovers against the trace's ground truth, and which keys the JSON carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hybridops_daemon.simulate.engine import replay
from hybridops_daemon.simulate.report import result, score
from tests.unit.test_simulate_engine import make_profile, probe, trace_of


def test_detection_latency_is_the_first_cutover_inside_the_window_or_its_grace() -> None:
    windows = [(100.0, 200.0), (1000.0, 1100.0), (5000.0, 5010.0)]
    scoring = score(windows, [103.0, 150.0, 1160.0, 3000.0], grace=60.0)
    # fault 1: 103 (150 is later); fault 2: 1160 is exactly end + grace; fault 3: missed
    assert scoring.latencies == [3.0, 160.0, None]
    assert scoring.false_cutovers == 1  # 3000 is inside no window


def test_a_cutover_before_a_fault_or_past_its_grace_is_false() -> None:
    windows = [(100.0, 200.0)]
    assert score(windows, [99.0], grace=60.0).false_cutovers == 1
    assert score(windows, [260.5], grace=60.0).false_cutovers == 1
    assert score(windows, [260.5], grace=60.0).latencies == [None]
    assert score(windows, [100.0], grace=0.0).latencies == [0.0]


def test_a_labelled_trace_reports_faults_latency_and_false_cutovers(tmp_path: Path) -> None:
    lines = probe(0, 100, labels={"fault": False})
    lines += probe(100, 130, 0, labels={"fault": False})  # a flap the labels say is no outage: the cutover is false
    lines += probe(130, 2000, labels={"fault": False}) + probe(2000, 2300, 0, labels={"fault": True}) + probe(2300, 2400)
    lines.append({"t": 1000, "command": "failback"})
    trace = trace_of(tmp_path, sorted(lines, key=lambda line: line["t"]))
    profile = make_profile(cooldown="1s")
    out = result(profile, trace, replay(profile, trace, lane="prod"), tick=1.0, grace=60.0)
    assert out["faults"] == [{"start": 2000.0, "end": 2300.0}]  # until the first sample not labelled a fault
    assert out["detection_latency_s"] == [3.0]
    assert out["missed_faults"] == 0
    assert out["false_cutovers"] == 1
    assert out["cutovers"] == 2


def test_an_unlabelled_trace_claims_no_ground_truth(tmp_path: Path) -> None:
    trace = trace_of(tmp_path, probe(0, 100, 0))
    out = result(make_profile(), trace, replay(make_profile(), trace, lane="prod"), tick=1.0, grace=60.0)
    assert out["cutovers"] == 1
    assert not {"faults", "detection_latency_s", "missed_faults", "false_cutovers"} & out.keys()


def test_an_operator_cutover_is_not_scored_as_the_policy_s(tmp_path: Path) -> None:
    lines = [*probe(0, 100, labels={"fault": False}), {"t": 50, "command": "cutover"}]
    trace = trace_of(tmp_path, sorted(lines, key=lambda line: line["t"]))
    out = result(make_profile(), trace, replay(make_profile(), trace, lane="prod"), tick=1.0, grace=60.0)
    assert (out["cutovers"], out["false_cutovers"]) == (1, 0)


def test_one_outage_on_three_of_four_signals_of_two_edges_is_one_fault_detected_once(tmp_path: Path) -> None:
    # Regression (issue 18): the samples of the signal the outage did not touch are interleaved with those it did.
    # Scored as runs of consecutive labelled lines, this one outage was 900 faults, 899 of them missed.
    down = range(1200, 2100)  # 15 minutes
    lines: list[dict[str, Any]] = []
    for t in range(3600):
        fault = t in down
        for edge in ("edge01", "edge02"):
            touched = {"primary_http": 0 if fault else 1, "latency_ms": None if fault else 40, "replica_lag_s": 900 * fault}
            for signal, value in touched.items():
                lines.append({"t": t, "signal": signal, "value": value, "edge": edge, "labels": {"fault": fault}})
            lines.append({"t": t, "signal": "wan_loss", "value": 0.01, "edge": edge})  # untouched by the outage
    trace = trace_of(tmp_path, lines)
    signals = {name: {"max_age": "5s"} for name in ("primary_http", "latency_ms", "replica_lag_s", "wan_loss")}
    profile = make_profile(signals=signals)
    out = result(profile, trace, replay(profile, trace, lane="prod", node="edge01", peer="edge02"), tick=1.0, grace=60.0)
    assert out["faults"] == [{"start": 1200.0, "end": 2100.0}]
    assert out["detection_latency_s"] == [3.0]
    assert (out["missed_faults"], out["false_cutovers"], out["cutovers"]) == (0, 0, 1)
