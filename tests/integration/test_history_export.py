"""``hyops-daemon history`` against a real Prometheus 2.42 that holds three weeks of 10-second history (written with
``promtool tsdb create-blocks-from openmetrics``): the trace holds what the history holds, gaps stay gaps, and
``simulate`` finds the known outages in it. Every expectation comes from how the history was built."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hybridops_daemon.cli.daemon_cli import main
from hybridops_daemon.simulate import history as history_module
from hybridops_daemon.simulate.trace import load_trace
from tests.testbed.history import LOOKBACK_S, OUTAGE_LAG_S, History, history_prometheus, weeks_of_history
from tests.testbed.process import free_port
from tests.testbed.prometheus import Prometheus

HYOPS_DAEMON = Path(sys.executable).parent / "hyops-daemon"

PROFILE = """\
name: prod-history
version: 1
signals:
  primary_up: {max_age: 30s}
  replica_lag_s: {max_age: 30s}
  site_up{site=ams}: {max_age: 30s}
rules:
  - {name: primary_down, signal: primary_up, direction: below, trip: 0.5, for: 30s, consecutive: 3, unknown: hold}
corroboration: {min_rules: 1}
cooldown: 30m
action_limit: {max_actions: 4, window: 24h}
failback: {automatic: true, stable_for: 15m}
cost: {budget_usd_per_hour: 5.00}
chains:
  cutover:
    - {id: capacity, module: compute/capacity@v1, hourly_cost_usd: 0.54, expected_duration: 90s}
  failback:
    - {id: capacity, module: compute/capacity@v1, expected_duration: 1m}
"""

QUERIES = """\
queries:
  - {signal: primary_up, query: primary_up}
  - {signal: replica_lag_s, query: replica_lag_seconds}
  - {signal: site_up, query: site_up, label: site}
"""


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[History, Prometheus]]:
    # Ends two hours back: all of it lies in the blocks promtool wrote, none in the head of the running Prometheus.
    history = weeks_of_history(int(time.time()) - 7200)
    server = history_prometheus(tmp_path_factory.mktemp("history"), history)
    yield history, server
    server.stop()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"profile": tmp_path / "profile.yaml", "queries": tmp_path / "queries.yaml"}
    paths["profile"].write_text(PROFILE)
    paths["queries"].write_text(QUERIES)
    return paths


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def test_the_exported_trace_holds_the_history_and_simulate_finds_its_outages(
    bed: tuple[History, Prometheus], files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history, prometheus = bed
    incidents = tmp_path / "incidents.txt"
    incidents.write_text("# the outages, as the on-call wrote them down\n" + "".join(
        f"{rfc3339(a)} {rfc3339(b)} outage {i}\n" for i, (a, b) in enumerate(history.outages, 1)
    ))
    trace_path = tmp_path / "trace.jsonl.gz"
    argv = [str(HYOPS_DAEMON), "history", "--prometheus", prometheus.url, "--profile", str(files["profile"])]
    argv += ["--queries", str(files["queries"]), "--start", rfc3339(history.start), "--end", str(history.end)]
    argv += ["--step", "10s", "-o", str(trace_path), "--incidents", str(incidents)]
    began = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and "\r" not in done.stderr  # no progress bar when stderr is not a terminal

    trace = load_trace(trace_path)
    by_signal: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t, signal, value in zip(trace.times, trace.signals, trace.values, strict=True):
        by_signal[trace.signal_names[signal]].append((history.start + t, value))
    assert sorted(by_signal) == ["primary_up", "replica_lag_s", "site_up{site=ams}"]  # not site_up{site=fra}

    # primary_up: every step that has a sample within the lookback before it, with that sample's value (Prometheus 2.x:
    # one exactly 5 minutes old still counts; 3.0 leaves it out); the rest of the 3-hour gap is absent, not filled in.
    gap_start, gap_end = history.gap
    last_before_gap = gap_start - history.step
    expected_up = [
        (float(t), history.primary_up(t if not gap_start <= t < gap_end else last_before_gap))
        for t in history.times
        if not last_before_gap + LOOKBACK_S < t < gap_end
    ]
    assert by_signal["primary_up"] == expected_up
    looked_back = [t for t, _ in by_signal["primary_up"] if gap_start <= t < gap_end]
    assert max(looked_back) == last_before_gap + LOOKBACK_S
    # replica_lag_s: every step but the NaN minute (the daemon drops NaN; so does the trace)
    expected_lag = [(float(t), history.replica_lag(t)) for t in history.times if not math.isnan(history.replica_lag(t))]
    assert by_signal["replica_lag_s"] == expected_lag
    assert len(expected_lag) == len(history.times) - 6
    assert by_signal["site_up{site=ams}"] == [(float(t), 1.0) for t in history.times]
    assert trace.fault_windows() == [(a - history.start, b - history.start) for a, b in history.outages]

    replayed = subprocess.run(
        [str(HYOPS_DAEMON), "simulate", "--profile", str(files["profile"]), "--trace", str(trace_path), "--json"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert replayed.returncode == 0, replayed.stderr
    out = json.loads(replayed.stdout)
    assert out["faults"] == [{"start": a - history.start, "end": b - history.start} for a, b in history.outages]
    assert out["detection_latency_s"] == [30.0, 30.0]  # 3 failed 10-second samples over 30 s
    assert (out["cutovers"], out["failbacks"], out["missed_faults"], out["false_cutovers"]) == (2, 2, 0, 0)

    samples = len(trace)
    with capsys.disabled():
        print(f"\nhistory export: {samples:,} samples in {elapsed:.2f}s through the CLI = {samples / elapsed:,.0f} samples/s; "
              f"the command's own figure: {done.stderr.strip().splitlines()[0]}")
    assert OUTAGE_LAG_S in {value for _t, value in by_signal["replica_lag_s"]}


def test_the_daemon_config_s_prometheus_source_maps_the_signals_as_a_queries_file_does(
    bed: tuple[History, Prometheus], files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history, prometheus = bed
    config = tmp_path / "daemon.yaml"
    sources = json.dumps([{"type": "prometheus", "url": "http://127.0.0.1:9", "queries": [
        {"signal": "primary_up", "query": "primary_up"},
        {"signal": "replica_lag_s", "query": "replica_lag_seconds"},
        {"signal": "site_up", "query": "site_up", "label": "site"},
    ]}])
    config.write_text(f"node: edge01\nstate_dir: state\nsources: {sources}\nlanes: {{prod: {{profile: {files['profile']}}}}}\n")
    day = [*map(str, (history.outages[0][0] - 43200, history.outages[0][0] + 43200))]
    common = ["history", "--prometheus", prometheus.url, "--profile", str(files["profile"]), "--start", day[0], "--end", day[1]]
    assert main([*common, "--config", str(config), "-o", str(tmp_path / "a.jsonl")]) == 0
    assert main([*common, "--queries", str(files["queries"]), "-o", str(tmp_path / "b.jsonl")]) == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert len(load_trace(tmp_path / "a.jsonl")) == 3 * (86400 // history.step + 1)
    assert not list(tmp_path.glob("*.part"))
    capsys.readouterr()
    incidents = tmp_path / "incidents.txt"  # clipped to the span; one wholly outside it is left out
    begin, outage = int(day[0]), history.outages[0]
    incidents.write_text(f"{begin - 3600} {begin + 600}\n{outage[0]} {outage[1]}\n{begin + 90000} {begin + 90060}\n")
    labelled = tmp_path / "c.jsonl"
    assert main([*common, "--queries", str(files["queries"]), "--incidents", str(incidents), "-o", str(labelled)]) == 0
    assert load_trace(labelled).fault_windows() == [(0, 600), (outage[0] - begin, outage[1] - begin)]
    capsys.readouterr()
    assert main([*common, "--queries", str(files["queries"])]) == 0  # no -o: the trace on stdout, the summary on stderr
    out, err = capsys.readouterr()
    assert out.encode() == (tmp_path / "b.jsonl").read_bytes()
    assert err.startswith("history: 25,923 samples of 3 signal(s) over 1d 0h every 10s, no ground truth; 3 request(s)")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["history", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_clear_errors_without_tracebacks(
    bed: tuple[History, Prometheus], files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history, prometheus = bed
    span = ["--start", str(history.start), "--end", str(history.start + 3600)]
    base = ["--prometheus", prometheus.url, "--profile", str(files["profile"]), "--queries", str(files["queries"])]
    output = tmp_path / "out.jsonl"

    bad = tmp_path / "bad.yaml"
    bad.write_text(QUERIES.replace("query: primary_up}", "query: 'primary_up{'}"))
    code, out, err = run(capsys, *base[:4], "--queries", str(bad), *span, "-o", str(output))
    assert (code, out) == (2, "")
    assert err.startswith("hyops-daemon history: Prometheus rejected the query for primary_up (HTTP 400: ")
    assert "parse error" in err and not output.exists() and not list(tmp_path.glob("*.part"))

    dead = f"http://user:secret@127.0.0.1:{free_port()}"
    began = time.monotonic()
    code, out, err = run(capsys, "--prometheus", dead, *base[2:], *span, "--retries", "1")
    assert time.monotonic() - began >= history_module.FIRST_BACKOFF_S  # it waited before the retry
    assert (code, out) == (1, "")
    shown = dead.replace("user:secret@", "")  # credentials never reach a message
    assert err == f"hyops-daemon history: Prometheus at {shown}: unreachable (connection failed) (2 attempts)\n"

    code, out, err = run(capsys, "--prometheus", "ftp://user:pw@host/", *base[2:], *span)
    assert (code, out, err) == (2, "", "hyops-daemon history: --prometheus ftp://host/: expected an http:// or https:// URL\n")

    for times, message in [
        (["--start", "yesterday", "--end", "1"], "--start/--end: 'yesterday' is not a time"),
        (["--start", "2026-11-03T00:00:00", "--end", "1"], "has no zone: end it with Z or an offset"),
        (["--start", "200", "--end", "100"], "--start 200 must be before --end 100"),
        (["--start", "0", "--end", "100", "--step", "0s"], "--step must be at least 1ms"),
        (["--start", "0", "--end", "1e9", "--step", "1s"], "over the simulator's 20,000,000 samples"),
    ]:
        code, out, err = run(capsys, *base, *times)
        assert (code, out) == (2, ""), err
        assert err.startswith("hyops-daemon history: ") and message in err and "Traceback" not in err

    incidents = tmp_path / "incidents.txt"
    incidents.write_text("2026-11-03T00:00:00Z 2026-11-03T01:00:00Z\n2026-11-03T02:00:00Z\n")
    code, out, err = run(capsys, *base, *span, "--incidents", str(incidents))
    assert (code, out, err) == (2, "", f"hyops-daemon history: {incidents}:2: expected START END [description]\n")

    unmapped = tmp_path / "unmapped.yaml"
    unmapped.write_text(PROFILE.replace("site_up{site=ams}: {max_age: 30s}", "primary_http: {max_age: 30s}"))
    code, out, err = run(capsys, *base[:2], "--profile", str(unmapped), *base[4:], *span)
    assert code == 2 and err.startswith("hyops-daemon history: no query for signal(s) primary_http that the profile reads")

    garbled = tmp_path / "garbled.yaml"
    garbled.write_text("queries:\n  - {signal: primary_up, querry: up}\n")
    code, out, err = run(capsys, *base[:4], "--queries", str(garbled), *span)
    assert (code, out) == (2, "") and err.startswith(f"{garbled}:2 queries[0]")


def test_an_answer_over_the_size_bound_is_refused(
    bed: tuple[History, Prometheus], files: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    history, prometheus = bed
    monkeypatch.setattr(history_module, "MAX_REPLY_BYTES", 10_000)  # a day of one series is ~200 KB
    code, out, err = run(
        capsys, "--prometheus", prometheus.url, "--profile", str(files["profile"]), "--queries", str(files["queries"]),
        "--start", str(history.start), "--end", str(history.start + 86400),
    )
    assert (code, out) == (1, "")
    assert err == "hyops-daemon history: the answer to the query for primary_up is over 10,000 bytes: does it return " \
        "many series? aggregate them in PromQL\n"


def test_a_prometheus_that_comes_back_within_the_retries_is_waited_for(
    bed: tuple[History, Prometheus], files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history, prometheus = bed
    prometheus.stop()  # last in this module: the others read from it undisturbed
    restart = threading.Timer(0.5, prometheus.start)
    restart.start()
    try:
        output = tmp_path / "out.jsonl"
        code, out, err = run(
            capsys, "--prometheus", prometheus.url, "--profile", str(files["profile"]), "--queries", str(files["queries"]),
            "--start", str(history.start), "--end", str(history.start + 3600), "--retries", "4", "-o", str(output),
        )
    finally:
        restart.join()
    assert (code, out) == (0, ""), err
    requests = int(err.split(" request(s)")[0].rsplit("; ", 1)[1])
    assert requests > 3  # one per signal, and at least one retried
    assert len(load_trace(output)) == 3 * 361
