"""``hyops-daemon simulate``: its output (JSON and text), the sweep table, the plot, and exit 2 on invalid input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridops_daemon.cli.daemon_cli import main

PROFILE = """\
name: prod
version: 1
signals:
  primary_http: {max_age: 5s}
rules:
  - {name: primary_down, signal: primary_http, direction: below, trip: 0.5, clear: 0.9, for: 3s, consecutive: 3}
cost: {budget_usd_per_hour: 5, always_on_usd_per_hour: 0.75}
chains:
  cutover:
    - {id: capacity, module: compute/capacity@v1, hourly_cost_usd: 0.75, expected_duration: 15s}
  failback:
    - {id: capacity, module: compute/capacity@v1, expected_duration: 15s}
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    profile = tmp_path / "prod.yaml"
    profile.write_text(PROFILE)
    trace = tmp_path / "trace.jsonl"
    lines = [
        {"t": t, "signal": "primary_http", "value": 0 if 600 <= t < 900 else 1, "labels": {"fault": 600 <= t < 900}}
        for t in range(3601)
    ]
    lines.insert(1201, {"t": 1200, "command": "failback", "lane": "prod"})
    trace.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return profile, trace


def simulate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["simulate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_carries_the_contract_keys_and_is_deterministic(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    profile, trace = files
    code, out, err = simulate(capsys, "--profile", str(profile), "--trace", str(trace), "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert list(data) == [
        "profile",
        "trace",
        "lane",
        "node",
        "samples",
        "duration_s",
        "tick_s",
        "decisions",
        "cutovers",
        "failbacks",
        "drills",
        "time_on_standby_s",
        "cost",
        "faults",
        "detection_latency_s",
        "missed_faults",
        "false_cutovers",
        "grace_s",
        "runs",
        "final_status",
        "notes",
    ]
    assert data["profile"] == {"name": "prod", "version": 1}
    assert (data["trace"], data["samples"], data["duration_s"]) == (str(trace), 3601, 3600.0)
    assert [(d["t"], d["kind"], d["lane"]) for d in data["decisions"] if d["kind"] != "hold"] == [
        (603.0, "cutover", "prod"),
        (1200.0, "failback", "prod"),
    ]
    assert set(data["decisions"][0]) >= {"t", "kind", "lane", "reason"}
    assert (data["cutovers"], data["failbacks"], data["detection_latency_s"], data["false_cutovers"]) == (1, 1, [3.0], 0)
    assert data["cost"]["policy_usd"] == round(0.75 * (1215 - 603) / 3600, 6)
    assert data["cost"]["saving_ratio"] == round(1 - (1215 - 603) / 3600, 6)
    again = simulate(capsys, "--profile", str(profile), "--trace", str(trace), "--json")[1]
    assert again == out


def test_text_summary(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    profile, trace = files
    code, out, _ = simulate(capsys, "--profile", str(profile), "--trace", str(trace))
    assert code == 0
    assert f"profile prod@v1, lane prod on edge01, trace {trace}" in out
    assert "3601 samples over 1h00m (tick 1s)" in out
    assert "00:10:03  cutover  CUTTING_OVER  cutover: 1 of 1 required rules tripped" in out
    assert "00:10:00" not in out  # PRIMARY -> DEGRADED is counted, not listed
    assert "1 hold between PRIMARY and DEGRADED, not listed here (--json lists them)" in out
    assert "cost: policy $0.1275 ($0.75/h for 10m12s), always-on $0.7500 ($0.75/h); saving 83.00%" in out
    assert "faults 1: detection latency 3s; missed 0; false cutovers 0 (grace 1m00s)" in out


def test_sweep_prints_a_table_or_a_json_list(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    profile, trace = files
    argv = ["--profile", str(profile), "--trace", str(trace), "--sweep", "rules.0.for=3s,10m", "--sweep", "cooldown=5m,1h"]
    code, out, _ = simulate(capsys, *argv)
    assert code == 0
    rows = out.splitlines()
    assert rows[0].split() == [
        "variant",
        "trace",
        "cutovers",
        "false",
        "missed",
        "detect",
        "mean/max",
        "policy",
        "$",
        "always-on",
        "$",
        "saving",
    ]
    assert rows[1].split()[:5] == ["rules.0.for=3s", "cooldown=5m", "trace.jsonl", "1", "0"]
    assert rows[3].split()[:6] == [
        "rules.0.for=10m",
        "cooldown=5m",
        "trace.jsonl",
        "0",
        "0",
        "1",
    ]  # 10 min never confirms a 5 min outage
    assert len(rows) == 5
    code, out, _ = simulate(capsys, *argv, "--json")
    listed = json.loads(out)
    assert [item["variant"] for item in listed] == [
        {"rules.0.for": "3s", "cooldown": "5m"},
        {"rules.0.for": "3s", "cooldown": "1h"},
        {"rules.0.for": "10m", "cooldown": "5m"},
        {"rules.0.for": "10m", "cooldown": "1h"},
    ]
    assert [item["missed_faults"] for item in listed] == [0, 0, 1, 1]


def test_plot_writes_a_png(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    profile, trace = files
    png = tmp_path / "out.png"
    code, _, err = simulate(capsys, "--profile", str(profile), "--trace", str(trace), "--plot", str(png))
    assert (code, err) == (0, "")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000  # a drawn figure, not an empty canvas


def test_invalid_trace_exits_2_naming_file_and_line(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    profile, trace = files
    trace.write_text('{"t": 0, "signal": "primary_http", "value": 1}\n{"t": 1, "signal": "primary_http", "valeu": 1}\n')
    code, out, err = simulate(capsys, "--profile", str(profile), "--trace", str(trace), "--json")
    assert (code, out) == (2, "")
    assert err == f'{trace}:2: unknown key "valeu" (a sample line has t, signal, value, edge, labels)\n'


def test_invalid_profile_exits_2_with_check_config_errors(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    profile, trace = files
    profile.write_text(PROFILE.replace("for: 3s", "for: soon"))
    code, out, err = simulate(capsys, "--profile", str(profile), "--trace", str(trace))
    assert (code, out) == (2, "")
    assert err == f'{profile}:6 rules[0].for: must be a duration like "30s"\n'


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tick", "0s"], "hyops-daemon simulate: --tick must be longer than 0s\n"),
        (["--grace", "a while"], 'hyops-daemon simulate: --tick and --grace take durations like "1s" or "2m"\n'),
        (
            ["--sweep", "cooldown"],
            "hyops-daemon simulate: --sweep 'cooldown': expected KEY=VALUE1,VALUE2,... with KEY a dotted path into the profile\n",
        ),
        (
            ["--sweep", "cooldown=5m,1h", "--plot", "x.png"],
            "hyops-daemon simulate: --plot draws one replay: give one --trace and no --sweep\n",
        ),
    ],
)
def test_invalid_options_exit_2(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    profile, trace = files
    code, out, err = simulate(capsys, "--profile", str(profile), "--trace", str(trace), *extra)
    assert (code, out, err) == (2, "", message)


def test_several_traces_give_a_list_in_trace_order(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    profile, trace = files
    quiet = tmp_path / "quiet.csv"
    quiet.write_text("t,signal,value\n0,primary_http,1\n60,primary_http,1\n")
    code, out, _ = simulate(capsys, "--profile", str(profile), "--trace", str(trace), "--trace", str(quiet), "--json")
    assert code == 0
    assert [(item["trace"], item["cutovers"]) for item in json.loads(out)] == [(str(trace), 1), (str(quiet), 0)]


def test_faults_file_gives_ground_truth_as_intervals(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    profile, _ = files
    trace = tmp_path / "unlabelled.csv"
    trace.write_text("t,signal,value\n" + "".join(f"{t},primary_http,{0 if 600 <= t < 900 else 1}\n" for t in range(1200)))
    faults = tmp_path / "faults.txt"
    faults.write_text("# start end description\n\n600 15m the primary's power supply\n1000 1100\n")
    code, out, err = simulate(capsys, "--profile", str(profile), "--trace", str(trace), "--faults", str(faults), "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["faults"] == [{"start": 600.0, "end": 900.0}, {"start": 1000.0, "end": 1100.0}]
    assert (data["detection_latency_s"], data["missed_faults"], data["false_cutovers"]) == ([3.0, None], 1, 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("600\n", "faults.txt:1: expected START END [description]"),
        ("# ok\n900 600\n", "faults.txt:2: START 900 must be before END 600"),
        ("600 soon\n", "faults.txt:1: 'soon' is not seconds from the trace start (900, 15m, 2h)"),
        ("-5 10\n", "faults.txt:1: '-5' is not seconds from the trace start (900, 15m, 2h)"),
        ("nan 10\n", "faults.txt:1: 'nan' is not seconds from the trace start (900, 15m, 2h)"),
        ("1 2\n\xff\n", "faults.txt:2: not UTF-8 text"),
        ("1 2\n" * 100_001, "faults.txt:100001: file: intervals over the limit of 100000"),
        (("1 2 " + "x" * 1000 + "\n") * 1100, "faults.txt: file: size in bytes over the limit of 1048576"),
    ],
)
def test_a_bad_faults_file_exits_2_naming_its_line(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    profile, trace = files
    faults = tmp_path / "faults.txt"
    faults.write_bytes(text.encode("latin-1"))  # \xff: a byte that is not UTF-8
    code, out, err = simulate(capsys, "--profile", str(profile), "--trace", str(trace), "--faults", str(faults))
    assert (code, out) == (2, "")
    assert err == message.replace("faults.txt", str(faults)) + "\n"
