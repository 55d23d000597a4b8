"""``hyops-daemon backtest``: the aggregation per variant, the fleet runner on any Executor, and the command (on local
worker processes; tests/integration/test_backtest_dask.py runs it on a Dask cluster)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.cli.daemon_cli import main
from hybridops_daemon.config.loader import load_profile
from hybridops_daemon.drivers.registry import DRIVER_MODULES
from hybridops_daemon.simulate.fleet import FleetFailed, FleetSpec, SiteResult, SiteVariant, expand, run_fleet
from hybridops_daemon.simulate.fleet_report import fleet_json, percentile, render_fleet
from tests.testbed.fleet import PROFILE, assert_fleet_matches, simulate_each, write_sites

SIX_HOURS = 6 * 3600


def figures(**changes: Any) -> SiteVariant:
    base: dict[str, Any] = {
        "cutovers": 1,
        "failbacks": 1,
        "labelled": True,
        "faults": 1,
        "false_cutovers": 0,
        "missed_faults": 0,
        "latencies": (30.0,),
        "standby_s": 1800.0,
        "policy_usd": 0.5,
        "always_on_usd": 10.0,
        "saving_ratio": 0.95,
    }
    return SiteVariant(**{**base, **changes})


@pytest.fixture(scope="module")
def spec() -> FleetSpec:
    profile = load_profile(PROFILE, DRIVER_MODULES)
    return FleetSpec((({"for": "10s"}, profile), ({"for": "30s"}, profile)), None, "edge01", "edge02", 1.0, 60.0)


def test_percentile_is_the_nearest_rank() -> None:
    values = [7.0, 1.0, 3.0, 10.0, 5.0, 2.0, 4.0, 6.0, 9.0, 8.0]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 10), percentile(values, 100)) == (5, 10, 1, 10)
    assert percentile([3.0], 0) == percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.0  # a latency some fault had, never an interpolation
    with pytest.raises(ValueError):
        percentile([], 50)


def test_aggregation_per_variant(spec: FleetSpec) -> None:
    results = [
        SiteResult(0, "a.jsonl", samples=100, variants=(figures(), figures(latencies=(60.0,), policy_usd=0.25))),
        SiteResult(1, "bad.jsonl", error="bad.jsonl:3: t=1 is before t=2 on line 2: t must not decrease"),
        SiteResult(
            2,
            "b.jsonl",
            samples=200,
            variants=(
                figures(cutovers=3, faults=2, false_cutovers=1, missed_faults=1, latencies=(10.0, None), policy_usd=1.5),
                figures(cutovers=0, faults=2, missed_faults=2, latencies=(None, None), policy_usd=0.0, standby_s=0.0),
            ),
        ),
        SiteResult(
            3,
            "unlabelled.jsonl",
            samples=50,
            variants=(
                figures(labelled=False, faults=0, latencies=(), cutovers=0, standby_s=0.0, policy_usd=0.0),
                figures(labelled=False, faults=0, latencies=(), cutovers=2, standby_s=3600.0, policy_usd=2.0),
            ),
        ),
        SiteResult(4, "many.jsonl", samples=10, variants=(figures(), figures(faults=20, latencies=tuple(range(1, 21))))),
    ]
    out = fleet_json(spec.grid[0][1], spec, results)
    assert (out["sites"], out["samples"]) == (5, 360)
    assert out["invalid_sites"] == [{"trace": "bad.jsonl", "error": results[1].error}]
    first, second = out["variants"]
    assert first["variant"] == {"for": "10s"}
    assert (first["sites"], first["labelled_sites"], first["cutovers"], first["faults"]) == (4, 3, 5, 4)
    assert (first["false_cutovers"], first["missed_faults"]) == (1, 1)
    assert first["detection_latency_s"] == {"detected": 3, "p50": 30.0, "p95": 30.0, "max": 30.0}
    assert first["standby_hours"] == 1.5  # 1800 s + 1800 s + 0 + 1800 s
    assert first["cost"] == {"policy_usd": 2.5, "always_on_usd": 40.0, "saving_ratio": round(1 - 2.5 / 40, 6)}
    # Errors first, then the slowest detection, then the cost, then the fleet's order.
    assert [site["trace"] for site in first["worst_sites"]] == ["b.jsonl", "a.jsonl", "many.jsonl"]
    assert first["worst_sites"][0] == {
        "trace": "b.jsonl",
        "false_cutovers": 1,
        "missed_faults": 1,
        "max_latency_s": 10.0,
        "policy_usd": 1.5,
    }
    assert first["per_site"][2]["faults"] is None and first["per_site"][2]["detection_latency_s"] is None
    # 21 latencies, 1..20 and 60: nearest ranks 11 and 20.
    assert second["detection_latency_s"] == {"detected": 21, "p50": 11.0, "p95": 20.0, "max": 60.0}
    assert (second["missed_faults"], second["cutovers"]) == (2, 4)
    assert [site["trace"] for site in second["worst_sites"]] == ["b.jsonl", "a.jsonl", "many.jsonl"]
    table = render_fleet(out)
    assert "b.jsonl (1 false, 1 missed)" in table and "b.jsonl (2 missed)" in table
    assert "30s / 30s / 30s" in table and "11s / 20s / 1m00s" in table
    assert "invalid site: bad.jsonl:3: t=1 is before t=2 on line 2" in table


def test_a_fleet_where_nothing_was_detected_has_no_latency(spec: FleetSpec) -> None:
    results = [SiteResult(0, "a.jsonl", variants=(figures(latencies=(None,), missed_faults=1),) * 2)]
    variant = fleet_json(spec.grid[0][1], spec, results)["variants"][0]
    assert variant["detection_latency_s"] == {"detected": 0, "p50": None, "p95": None, "max": None}
    assert "-" in render_fleet(fleet_json(spec.grid[0][1], spec, results)).splitlines()[2]


def test_run_fleet_on_any_executor_keeps_the_fleet_order_and_reports_an_invalid_site(tmp_path: Path, spec: FleetSpec) -> None:
    paths = write_sites(tmp_path / "sites", 3, SIX_HOURS)
    bad = tmp_path / "sites" / "bad.jsonl"
    bad.write_text('{"t": 0, "signal": "primary_http", "value": 1}\n{"t": 5, "signal": "primary_http", "value": "up"}\n')
    sites = [str(paths[0]), str(bad), str(paths[1]), str(paths[2])]
    seen: list[tuple[int, int]] = []
    with cf.ThreadPoolExecutor(max_workers=2) as executor:  # the runner knows only the Executor interface
        results = run_fleet(executor, spec, sites, stall_timeout=60, on_progress=lambda done, total: seen.append((done, total)))
    assert [r.trace for r in results] == sites and [r.index for r in results] == [0, 1, 2, 3]
    assert results[1].error is not None and results[1].error.startswith(f"{bad}:2: ")
    assert all(r.ok and len(r.variants) == 2 and r.samples > 2000 for r in results if r.trace != str(bad))
    assert seen[-1] == (4, 4)


class _Hanging(cf.Executor):
    """An executor whose tasks never finish: a cluster with no workers left."""

    def __init__(self) -> None:
        self.futures: list[cf.Future[Any]] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        self.futures.append(future)
        return future


def test_a_fleet_where_no_site_finishes_gives_up_after_the_stall_timeout(spec: FleetSpec) -> None:
    executor = _Hanging()
    with pytest.raises(FleetFailed, match=r"no site finished in 0.3 s \(0 of 2 done\)"):
        run_fleet(executor, spec, ["a.jsonl", "b.jsonl"], stall_timeout=0.3, poll=0.05)
    assert all(future.cancelled() for future in executor.futures)


def test_traces_expand_a_folder_a_glob_and_files_once(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.csv.gz", "c.jsonl.gz", "notes.txt", "sub/d.jsonl"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    assert expand([str(tmp_path)]) == [str(tmp_path / n) for n in ("a.csv.gz", "b.jsonl", "c.jsonl.gz")]
    found = expand([f"{tmp_path}/**/*.jsonl", str(tmp_path / "b.jsonl")])
    assert found == [str(tmp_path / "b.jsonl"), str(tmp_path / "sub/d.jsonl")]
    assert expand([str(tmp_path / "missing.jsonl")]) == [str(tmp_path / "missing.jsonl")]  # reported by its site
    with pytest.raises(ValueError, match="no trace file there"):
        expand([f"{tmp_path}/*.yaml"])


def backtest(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["backtest", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_on_local_workers_equals_simulate_site_by_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_sites(tmp_path / "sites", 3, SIX_HOURS)
    sweep = ("--sweep", "rules.primary_down.for=10s,40s", "--sweep", "rules.primary_down.consecutive=2,3")
    code, out, err = backtest(
        capsys, "--profile", str(PROFILE), "--traces", str(tmp_path / "sites"), "--workers", "2", "--json", *sweep
    )
    assert (code, err) == (0, "")
    fleet = json.loads(out)
    assert len(fleet["variants"]) == 4 and fleet["invalid_sites"] == []
    assert fleet["variants"][0]["cutovers"] > 0  # the sites have outages: a fleet of zeros would prove nothing
    assert_fleet_matches(fleet, simulate_each(capsys, paths, *sweep))
    # The same input gives the same output, whatever order the workers finished in.
    glob = f"{tmp_path}/sites/*.jsonl"
    assert backtest(capsys, "--profile", str(PROFILE), "--traces", glob, "--workers", "1", "--json", *sweep)[1] == out


def test_an_invalid_site_is_reported_with_its_line_and_the_others_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = write_sites(tmp_path / "sites", 2, SIX_HOURS)
    (tmp_path / "sites" / "broken.jsonl").write_text('{"t": 0, "signal": "primary_http", "value": 1}\n{"t": 1, "signal": 3}\n')
    code, out, err = backtest(capsys, "--profile", str(PROFILE), "--traces", str(tmp_path / "sites"), "--workers", "2")
    assert (code, err) == (1, "")
    assert f"invalid site: {tmp_path}/sites/broken.jsonl:2: " in out
    assert "3 sites" in out and "sample-decisions in" in out
    code, out, _ = backtest(capsys, "--profile", str(PROFILE), "--traces", str(tmp_path / "sites"), "--workers", "2", "--json")
    fleet = json.loads(out)
    assert [site["trace"] for site in fleet["invalid_sites"]] == [f"{tmp_path}/sites/broken.jsonl"]
    assert_fleet_matches(fleet, simulate_each(capsys, paths))


def test_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_sites(tmp_path / "sites", 2, SIX_HOURS)
    png = tmp_path / "fleet.png"
    code, _, err = backtest(
        capsys, "--profile", str(PROFILE), "--traces", str(tmp_path / "sites"), "--plot", str(png), "--sweep", "cooldown=5m,30m"
    )
    assert (code, err) == (0, "")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--traces", "{dir}/*.yaml"], "--traces {dir}/*.yaml: no trace file there"),
        (["--traces", "{dir}", "--workers", "0"], "--workers must be at least 1"),
        (["--traces", "{dir}", "--tick", "soon"], "--tick and --grace take durations"),
        (["--traces", "{dir}", "--stall-timeout", "never"], "--stall-timeout takes a duration"),
        (["--traces", "{dir}", "--sweep", "rules.nope.for=1s"], "rules has no item named 'nope'"),
    ],
)
def test_invalid_options_exit_2_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    write_sites(tmp_path, 1, SIX_HOURS)
    argv = [arg.replace("{dir}", str(tmp_path)) for arg in argv]
    code, out, err = backtest(capsys, "--profile", str(PROFILE), *argv)
    assert (code, out) == (2, "")
    assert err.startswith("hyops-daemon backtest: ") and message.replace("{dir}", str(tmp_path)) in err


def test_plot_without_matplotlib_exits_2_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_sites(tmp_path, 1, SIX_HOURS)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # find_spec() now reports it absent
    code, out, err = backtest(capsys, "--profile", str(PROFILE), "--traces", str(tmp_path), "--plot", str(tmp_path / "x.png"))
    assert (code, out) == (2, "")
    assert err == "hyops-daemon backtest: --plot needs matplotlib: pip install 'hybridops-daemon[plot]'\n"


def test_a_burst_profile_and_an_invalid_profile_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_sites(tmp_path, 1, SIX_HOURS)
    burst = PROFILE.parent / "burst.yaml"
    code, _, err = backtest(capsys, "--profile", str(burst), "--traces", str(tmp_path))
    assert code == 2 and "replay a burst lane with simulate" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text(PROFILE.read_text().replace("cooldown: 30m", "cooldown: soon"))
    code, _, err = backtest(capsys, "--profile", str(broken), "--traces", str(tmp_path))
    assert code == 2 and err.startswith(f"{broken}:") and "cooldown" in err  # check-config's lines, as they are


def test_the_scheduler_option_without_dask_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_sites(tmp_path, 1, SIX_HOURS)
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    code, out, err = backtest(capsys, "--profile", str(PROFILE), "--traces", str(tmp_path), "--scheduler", "tcp://127.0.0.1:1")
    assert (code, out) == (1, "")
    assert err == "hyops-daemon backtest: --scheduler needs Dask: pip install 'dask[distributed]' (here and on every worker)\n"


def test_a_scheduler_address_without_a_port_fails_at_once_and_the_command_exits(tmp_path: Path) -> None:
    write_sites(tmp_path, 1, SIX_HOURS)
    # A subprocess: a Dask Client that fails on such an address would hang the interpreter's exit.
    argv = ["-m", "hybridops_daemon.cli.daemon_cli", "backtest", "--profile", str(PROFILE), "--traces", str(tmp_path)]
    done = subprocess.run([sys.executable, *argv, "--scheduler", "nonsense"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "hyops-daemon backtest: --scheduler nonsense: missing port number in address 'nonsense' (expected tcp://HOST:PORT)\n"
    )


def test_the_progress_bar_rewrites_one_line_and_erases_itself() -> None:
    import io

    from hybridops_daemon.simulate.command import _ProgressBar

    stream = io.StringIO()
    bar = _ProgressBar(stream)
    bar(0, 4)
    bar(3, 4)
    bar.close()
    shown = stream.getvalue()
    assert shown.startswith("\r[" + "." * 30 + "] 0/4 sites  0 s")
    assert "\r[" + "#" * 22 + "." * 8 + "] 3/4 sites" in shown
    assert shown.endswith("\r\x1b[2K") and "\n" not in shown
