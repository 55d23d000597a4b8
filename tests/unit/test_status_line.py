"""sd_notify's STATUS line: every lane's status and, once its preflights ran, its next chain's readiness."""

from __future__ import annotations

from hybridops_daemon.chain.preflight import NOT_CHECKED, NOT_READY, READY, StepReadiness
from hybridops_daemon.daemon.lane import Lane, lane_document, status_line
from hybridops_daemon.policy.types import LaneState, LaneStatus
from tests.unit.test_decide import make_profile


def lane(name: str, status: LaneStatus = LaneStatus.PRIMARY) -> Lane:
    return Lane(name, make_profile(), LaneState(lane=name, status=status), {})


def result(chain: str, step: str, state: str, reason: str = "") -> StepReadiness:
    return StepReadiness("prod", chain, step, state, reason, 100.0, 0.01)  # type: ignore[arg-type]


def test_the_status_line_names_the_broken_step_of_the_chain_the_lane_would_run_next() -> None:
    prod, drill = lane("prod"), lane("drill", LaneStatus.ON_STANDBY)
    assert status_line({"prod": prod, "drill": drill}) == "prod: PRIMARY, drill: ON_STANDBY"  # nothing checked yet
    prod.readiness = {
        ("cutover", "fip"): result("cutover", "fip", NOT_READY, "locked"),
        ("failback", "fip"): result("failback", "fip", READY),
    }
    drill.readiness = {
        ("cutover", "fip"): result("cutover", "fip", NOT_READY),
        ("failback", "fip"): result("failback", "fip", READY),
    }
    assert status_line({"prod": prod, "drill": drill}) == "prod: PRIMARY, path broken at fip; drill: ON_STANDBY, path ready"
    assert lane_document(prod) == {
        "chain": "cutover",
        "summary": "path broken at fip",
        "checked_at": 100.0,
        "not_ready": [{"step": "fip", "reason": "locked"}],
        "not_checked": [],
    }
    prod.readiness = {("cutover", "fip"): result("cutover", "fip", NOT_CHECKED)}
    assert status_line({"prod": prod}) == "prod: PRIMARY, path not checked"  # never "ready" without a check
