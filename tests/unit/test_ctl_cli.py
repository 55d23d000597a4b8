"""``hyopsctl`` end to end against a real control server in the test's loop; ``main()`` runs in a worker thread."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from hybridops_daemon.cli.ctl import format_table, main, render_records, render_status
from hybridops_daemon.control.protocol import CommandRefused, NotFound
from tests.unit.test_control import RECORDS, RUNS, STATUS, RecordingBackend


@pytest.fixture(autouse=True)
def quiet_server() -> Iterator[None]:
    """The server's log lines would land on the same captured stdout as hyopsctl's output."""
    with structlog.testing.capture_logs():
        yield


async def ctl(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def test_status_prints_a_lane_table_and_pending_approvals(served: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await ctl("--socket", str(served), "status") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "node edge01 (lease: etcd)"
    assert re.match(r"LANE +STATUS +LEADERSHIP +SINCE +PROFILE +RUN +READINESS +LAST DECISION$", lines[1])
    assert re.match(r"prod +PRIMARY +leading \(token 7\) +\S+ ago +prod@v3 +- +- +hold \S+ ago: all signals healthy$", lines[2])
    assert re.match(r"drill +PAUSED \(by uid=0\(root\) pid=4242\) +no quorum +", lines[3])
    # Why a lane is not acted on here is spelled out, not left to a column.
    assert lines[4] == "drill: no quorum, not acting here: cannot campaign: no answer from etcd within 1s (no quorum?)"
    assert "pending approvals:" in lines
    assert re.match(r"cutover-1 +promote-db +prod +\S+ ago +expired$", lines[-1])


@pytest.mark.parametrize("argv", [["--json", "status"], ["status", "--json"]])
async def test_json_prints_the_raw_result(served: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert await ctl("--socket", str(served), *argv) == 0
    assert json.loads(capsys.readouterr().out) == STATUS


async def test_the_socket_defaults_to_hyops_socket(
    served: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYOPS_SOCKET", str(served))
    assert await ctl("status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["node"] == "edge01"


async def test_cutover_without_confirm_exits_2_before_contacting_the_daemon(
    served: Path, backend: RecordingBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await ctl("--socket", str(served), "cutover", "--lane", "prod") == 2
    assert "--confirm" in capsys.readouterr().err
    assert backend.calls == []


async def test_cutover_with_confirm_is_submitted(
    served: Path, backend: RecordingBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await ctl("--socket", str(served), "cutover", "--lane", "prod", "--confirm") == 0
    assert backend.calls == [("submit", "cutover", "prod")]
    assert capsys.readouterr().out.startswith("cutover accepted (intent #42): operator drill on lane drill")


async def test_drill_reports_the_decision_and_run(served: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await ctl("--socket", str(served), "drill", "--lane", "drill") == 0
    assert capsys.readouterr().out == ("drill accepted (intent #42): operator drill on lane drill\n")


async def test_an_intent_not_yet_decided_says_so(
    served: Path, backend: RecordingBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    backend.decision = None
    assert await ctl("--socket", str(served), "pause") == 0
    assert backend.calls == [("submit", "pause", None)]
    assert capsys.readouterr().out == "pause recorded as intent #42; the daemon loop will act on it\n"


async def test_a_policy_refusal_exits_1(served: Path, backend: RecordingBackend, capsys: pytest.CaptureFixture[str]) -> None:
    backend.decision = {"kind": "refuse", "reason": "cooldown until 12:05", "status_after": "PRIMARY", "run_id": None}
    assert await ctl("--socket", str(served), "failback", "--lane", "prod") == 1
    assert capsys.readouterr().out == "failback refused (intent #42): cooldown until 12:05\n"


@pytest.mark.parametrize(("error", "code"), [(CommandRefused("already decided"), 1), (NotFound("no such step"), 1)])
async def test_a_daemon_refusal_exits_1_with_its_message(
    served: Path, backend: RecordingBackend, capsys: pytest.CaptureFixture[str], error: Exception, code: int
) -> None:
    backend.error = error
    assert await ctl("--socket", str(served), "approve", "cutover-1", "promote-db") == code
    assert str(error) in capsys.readouterr().err


async def test_approve_and_reject(served: Path, backend: RecordingBackend, capsys: pytest.CaptureFixture[str]) -> None:
    assert await ctl("--socket", str(served), "approve", "cutover-1", "promote-db") == 0
    assert await ctl("--socket", str(served), "reject", "cutover-1", "promote-db") == 0
    assert backend.calls == [("approval", "cutover-1", "promote-db", True), ("approval", "cutover-1", "promote-db", False)]
    assert capsys.readouterr().out.splitlines() == [
        "approved step promote-db of run cutover-1 (lane prod)",
        "rejected step promote-db of run cutover-1 (lane prod)",
    ]


async def test_a_bad_request_exits_2(served: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await ctl("--socket", str(served), "drill", "--lane", "Prod") == 2
    assert "lane: must be a lane name" in capsys.readouterr().err


async def test_a_missing_daemon_exits_3_naming_the_socket(sock_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await ctl("--socket", str(sock_path), "status") == 3
    err = capsys.readouterr().err
    assert str(sock_path) in err
    assert "does not appear to be running" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["drill"]) == 2  # --lane is required
    assert main(["--timeout", "0", "status"]) == 2
    assert "usage: hyopsctl" in capsys.readouterr().err


async def test_journal_list(served: Path, backend: RecordingBackend, capsys: pytest.CaptureFixture[str]) -> None:
    assert await ctl("--socket", str(served), "journal", "list", "--lane", "drill", "--limit", "5") == 0
    assert backend.calls == [("journal_list", "drill", 5)]
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["RUN", "LANE", "KIND", "TRIGGER", "ACTOR", "STARTED", "TOOK", "STATUS", "REASON"]
    assert re.match(
        r"drill-20261127T120000-1 +drill +drill/cutover +operator +uid=0\(root\) pid=4242 +2026-11-27T12:00:00Z"
        r" +42\.5s +succeeded +operator drill on lane drill$",
        row,
    )


async def test_journal_show(served: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await ctl("--socket", str(served), "journal", "show", "drill-20261127T120000-1") == 0
    assert capsys.readouterr().out.splitlines() == [
        "     7  2026-11-27T12:00:00Z  run.start         operator drill",
        "     8  2026-11-27T12:00:01Z  step.done         step=fip outcome=applied",
    ]


async def test_journal_verify(served: Path, backend: RecordingBackend, capsys: pytest.CaptureFixture[str]) -> None:
    assert await ctl("--socket", str(served), "journal", "verify") == 0
    assert capsys.readouterr().out == f"journal OK: 8 records, head #8 hash {'b' * 64}\n"
    backend.verify = {"ok": False, "count": 8, "head_seq": 8, "head_hash": "b" * 64, "problems": ["seq 3: bad hash"]}
    assert await ctl("--socket", str(served), "journal", "verify") == 1
    assert capsys.readouterr().out.splitlines() == ["journal BROKEN: 1 problem(s) in 8 records", "seq 3: bad hash"]


async def test_journal_export_writes_the_run_folder(
    served: Path, backend: RecordingBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "audit"
    assert await ctl("--socket", str(served), "journal", "export", "drill-20261127T120000-1", "--dir", str(target)) == 0
    assert backend.calls == [("journal_show", "drill-20261127T120000-1")]
    assert json.loads((target / "records.json").read_text()) == RECORDS
    assert json.loads((target / "meta.json").read_text())["run_id"] == "drill-20261127T120000-1"
    assert capsys.readouterr().out.startswith(f"exported run drill-20261127T120000-1 (2 records) to {target}:")
    # a second export into the same, now non-empty folder is refused rather than mixed
    assert await ctl("--socket", str(served), "journal", "export", "drill-20261127T120000-1", "--dir", str(target)) == 1
    assert "not empty" in capsys.readouterr().err


async def test_an_answer_of_another_shape_points_at_json(
    served: Path, backend: RecordingBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    backend.verify = {"unexpected": True}
    assert await ctl("--socket", str(served), "journal", "verify") == 1
    assert "try --json" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- rendering


def test_format_table_aligns_columns() -> None:
    assert format_table(["A", "LONG"], [["xyz", None], ["", 7]]).splitlines() == ["A    LONG", "xyz  -", "-    7"]


def test_render_status_without_lanes() -> None:
    assert render_status({"node": "edge02", "lanes": [], "pending_approvals": []}, 0.0) == ("node edge02\nno lanes configured")


def test_render_status_names_peer_drops_by_reason_and_a_link_that_trusts_the_broker() -> None:
    zero = dict.fromkeys(("malformed", "unsigned", "forged", "stale", "replayed", "reordered"), 0)
    sources = [
        {"source": "probe", "upstream": "ok", "malformed": 0},
        {"source": "peer", "upstream": "ok", "malformed": 0, "dropped": zero, "authenticated": True},
    ]
    status = {"node": "edge01", "lanes": [], "pending_approvals": [], "sources": sources}
    assert render_status(status, 0.0) == "node edge01\nno lanes configured"  # nothing dropped: nothing to say

    sources[1]["dropped"] = {**zero, "forged": 3, "replayed": 2}
    assert render_status(status, 0.0).splitlines()[2:] == ["peer: peer messages dropped: forged 3, replayed 2"]

    sources[1].update(dropped=zero, authenticated=False)
    assert render_status(status, 0.0).splitlines()[2:] == [
        "peer: peer messages not authenticated (no auth key): the broker alone vouches for them"
    ]


def test_render_records_clips_long_summaries() -> None:
    record = {**RECORDS[0], "body": {"reason": "x" * 500}}
    (line,) = render_records([record], 100).splitlines()
    assert len(line) == 100
    assert line.endswith("…")


def test_runs_fixture_matches_the_journal_list_contract() -> None:
    from hybridops_daemon.journal.store import RunSummary

    assert set(RUNS[0]) == set(RunSummary.__dataclass_fields__)


def test_render_status_says_whether_alertmanager_takes_the_alerts_and_what_was_lost() -> None:
    def line(notify: dict[str, object]) -> str:
        return render_status({"node": "edge01", "lanes": [], "pending_approvals": [], "notify": notify}, 0.0).splitlines()[1]

    assert line({"reachable": None, "active": 0, "queued": 0, "dropped": 0, "rejected": 0}) == (
        "alertmanager: not contacted yet, 0 alert(s) active, 0 queued"
    )
    assert line({"reachable": False, "active": 2, "queued": 7, "dropped": 3, "rejected": 0}) == (
        "alertmanager: NOT reachable, 2 alert(s) active, 7 queued (3 dropped)"
    )


def test_render_status_gives_the_journals_last_verification() -> None:
    def line(check: dict[str, object]) -> str:
        status = {"node": "edge01", "lanes": [], "pending_approvals": [], "journal_check": check}
        return render_status(status, 1000.0).splitlines()[1]

    assert line({"ok": True, "problem": None, "at": 940.0, "every": 3600.0}) == "journal: verified (1m ago, every 1h)"
    assert line({"ok": False, "problem": "record 3: hash mismatch", "at": 990.0, "every": 3600.0}) == (
        "journal: verification FAILING: record 3: hash mismatch (10.0s ago, every 1h)"
    )
