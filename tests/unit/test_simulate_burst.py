"""A burst lane in the simulator (simulate/burst.py) and in the profile: what it replays, what it costs, what it left
uncovered; and the profile shapes a burst lane may and may not take."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from hybridops_daemon.config.loader import check_config
from hybridops_daemon.config.profile import Profile
from hybridops_daemon.drivers.registry import DRIVER_MODULES
from hybridops_daemon.simulate.burst import burst_result, replay_burst
from hybridops_daemon.simulate.trace import load_trace

REPO = Path(__file__).resolve().parents[2]
BURST = yaml.safe_load((REPO / "simulations" / "profiles" / "burst.yaml").read_text())


def trace_of(tmp_path: Path, points: list[tuple[int, float | None]]) -> Any:
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps({"t": t, "signal": "platform_cpu_saturation", "value": v}) + "\n" for t, v in points))
    return load_trace(path)


def test_a_peak_is_covered_after_the_window_and_the_step_and_billed_from_the_decision(tmp_path: Path) -> None:
    profile = Profile.model_validate(BURST)
    # 0.85 from 10 min to 70 min, a sample a minute, 0.30 otherwise, over 2 h.
    points = [(t, 0.85 if 600 <= t < 4200 else 0.30) for t in range(0, 7201, 60)]
    out = burst_result(profile, trace := trace_of(tmp_path, points), replay_burst(profile, trace, lane="burst", node="edge01"))
    assert (out["scale_outs"], out["scale_ins"], out["max_size"]) == (1, 1, 2)
    # Out at 15 min (5 min past 0.80), serving at 16.5 min; in at 90 min (20 min calm from 70 min).
    assert out["uncovered_pressure_min"] == pytest.approx(6.5)
    assert out["no_burst_uncovered_pressure_min"] == pytest.approx(60.0)
    assert out["policy_usd"] == pytest.approx(2 * 0.16 * 75 / 60)
    assert out["peak_provisioned_usd"] == pytest.approx(4 * 0.16 * 2)
    assert out["hours_at_size"] == {"0": 0.75, "2": 1.25}  # in service from 16.5 min until the step in ends at 91.5


def test_a_silent_signal_goes_unknown_after_its_max_age_and_holds(tmp_path: Path) -> None:
    profile = Profile.model_validate(BURST)
    points = [(t, 0.85) for t in range(0, 901, 60)] + [(7200, 0.30)]  # silent from 15 min to 2 h
    replayed = replay_burst(profile, trace_of(tmp_path, points), lane="burst", node="edge01")
    reasons = [d.reason for d in replayed.decisions]
    assert [d.action for d in replayed.decisions] == ["scale_out"], reasons
    assert replayed.state.size == 2  # no data is not calm: the size holds
    assert replayed.uncovered_s == pytest.approx(390.0)  # the window and the step; UNKNOWN needs nothing


def test_a_burst_profile_takes_a_scale_chain_and_neither_rules_nor_cutover() -> None:
    with pytest.raises(ValidationError, match="a burst profile needs a scale chain"):
        Profile.model_validate({**BURST, "chains": {}})
    with pytest.raises(ValidationError, match="no rules and no cutover or failback chain"):
        Profile.model_validate({**BURST, "chains": {**BURST["chains"], "cutover": BURST["chains"]["scale"]}})
    dr = yaml.safe_load((REPO / "policies" / "drill.yaml").read_text())
    with pytest.raises(ValidationError, match="only a burst profile"):
        Profile.model_validate({**dr, "chains": {**dr["chains"], "scale": BURST["chains"]["scale"]}})
    with pytest.raises(ValidationError, match="a DR profile needs failback chain"):
        Profile.model_validate({**dr, "chains": {"cutover": dr["chains"]["cutover"]}})


def test_check_config_takes_a_burst_lane_and_refuses_a_yields_to_that_names_no_dr_lane(tmp_path: Path) -> None:
    dr = yaml.safe_load((REPO / "policies" / "drill.yaml").read_text())
    (tmp_path / "drill.yaml").write_text(yaml.safe_dump(dr))
    config = tmp_path / "daemon.yaml"
    lanes = "lanes:\n  burst: {profile: burst.yaml}\n  drill: {profile: drill.yaml}\n"
    config.write_text(f"node: edge01\nstate_dir: {tmp_path}\n{lanes}")
    for yields_to, problem in (([], None), (["drill"], None), (["prod"], "no lane of this daemon"), (["burst"], "a burst lane")):
        profile = {**BURST, "burst": {**BURST["burst"], "yields_to": yields_to}}
        (tmp_path / "burst.yaml").write_text(yaml.safe_dump(profile))
        _, _, errors = check_config(config, DRIVER_MODULES)
        if problem is None:
            assert errors == []
        else:
            (error,) = errors
            assert "lanes.burst.profile" in str(error)
            assert f"burst.yields_to names {yields_to[0]!r}: {problem}" in str(error)
