"""The scenario library: every scenario, replayed by the installed ``hyops-daemon simulate``, meets the expectation its
``.expect.yaml`` states; and the committed files are exactly what the seeded generator writes."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "simulations" / "scenarios"
HYOPS_DAEMON = Path(sys.executable).parent / "hyops-daemon"
EXPECTED = sorted(SCENARIOS.glob("*.expect.yaml"))
LIBRARY = {
    "clean-outage",
    "flapping-wan",
    "slow-degradation",
    "prometheus-outage",
    "edge-partition",
    "maintenance-window",
    "drill",
    "year",
    "burst-diurnal",
    "burst-flash-crowd",
    "burst-slow-ramp",
    "burst-noisy",
}


def simulate(*argv: str | Path) -> Any:
    done = subprocess.run(
        [str(HYOPS_DAEMON), "simulate", *map(str, argv), "--json"], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return json.loads(done.stdout)


def lookup(out: dict[str, Any], key: str) -> Any:
    """A dotted key of the JSON output; ``decision_kinds`` is the sequence of decisions other than holds."""
    if key == "decision_kinds":
        return [d["kind"] for d in out["decisions"] if d["kind"] != "hold"]
    value: Any = out
    for part in key.split("."):
        value = value[part]
    return value


def mismatches(out: dict[str, Any], expect: dict[str, Any]) -> list[str]:
    """An expected value is either the value itself or bounds: ``{count, min, max}`` (on each item of a list)."""
    found = []
    for key, wanted in expect.items():
        actual = lookup(out, key)
        if not isinstance(wanted, dict):
            if actual != wanted:
                found.append(f"{key}: {actual!r}, expected {wanted!r}")
            continue
        items = actual if isinstance(actual, list) else [actual]
        if "count" in wanted and len(items) != wanted["count"]:
            found.append(f"{key}: {len(items)} items, expected {wanted['count']}")
        for item in items if {"min", "max"} & wanted.keys() else []:
            if item is None or not wanted.get("min", item) <= item <= wanted.get("max", item):
                found.append(f"{key}: {item!r} outside [{wanted.get('min')}, {wanted.get('max')}]")
    return found


def test_the_library_has_every_scenario() -> None:
    assert {path.name.removesuffix(".expect.yaml") for path in EXPECTED} == LIBRARY


@pytest.mark.parametrize("expect_file", EXPECTED, ids=lambda path: path.name.removesuffix(".expect.yaml"))
def test_scenario_meets_its_expectation(expect_file: Path) -> None:
    spec = yaml.safe_load(expect_file.read_text())
    out = simulate("--profile", SCENARIOS / spec["profile"], "--trace", SCENARIOS / spec["trace"], *spec["args"])
    assert mismatches(out, spec["expect"]) == []
    if "year" in expect_file.name:
        print(f"\nyear: detection latency {out['detection_latency_s']} s, saving ratio {out['cost']['saving_ratio']}")


def test_the_matcher_fails_what_it_should() -> None:
    out = {"cutovers": 1, "detection_latency_s": [3.0, None], "decisions": [{"kind": "hold"}, {"kind": "cutover"}]}
    assert mismatches(out, {"cutovers": 1, "decision_kinds": ["cutover"], "detection_latency_s": {"count": 2}}) == []
    assert mismatches(out, {"cutovers": 2, "detection_latency_s": {"max": 5}}) == [
        "cutovers: 1, expected 2",
        "detection_latency_s: None outside [None, 5]",
    ]


def test_a_sweep_over_a_scenario_shows_what_unknown_breach_would_have_done() -> None:
    profile, trace = SCENARIOS / "../profiles/prod-prom.yaml", SCENARIOS / "prometheus-outage.jsonl"
    hold, breach = simulate("--profile", profile, "--trace", trace, "--sweep", "rules.primary_down.unknown=hold,breach")
    assert (hold["variant"], hold["cutovers"], hold["false_cutovers"]) == ({"rules.primary_down.unknown": "hold"}, 0, 0)
    # Prometheus answers null from 1200 (UNKNOWN at once): after 30 s of UNKNOWN counted as a breach, a false cutover.
    assert (breach["cutovers"], breach["false_cutovers"]) == (1, 1)
    assert [d["t"] for d in breach["decisions"] if d["kind"] == "cutover"] == [1230.0]


def _content(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha256(gzip.decompress(data) if path.name.endswith(".gz") else data).hexdigest()


def test_the_committed_scenarios_are_what_the_seeded_generator_writes(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "simulations" / "generate.py"), "--seed", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == sorted(path.name for path in SCENARIOS.iterdir())
    for name in written:
        assert _content(tmp_path / name) == _content(SCENARIOS / name), name
    assert (SCENARIOS / "year.jsonl.gz").stat().st_size < 15_000_000
