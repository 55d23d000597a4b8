"""Readiness in the pure core (issue #13): a cutover path known broken refuses an automatic cutover when the profile
says so, naming the step and its reason; a forced cutover runs and says it ran against a broken path; UNKNOWN (no or
stale readiness) never blocks."""

from __future__ import annotations

from hybridops_daemon.policy.readiness import signal_name
from hybridops_daemon.policy.types import Command, DecisionKind, LaneStatus
from hybridops_daemon.signals.sample import Sample
from tests.unit.test_decide import EDGE, T0, Lane, make_profile


def lane(refuse: bool = True) -> Lane:
    return Lane(make_profile(readiness={"refuse_broken_cutover": refuse, "max_age": "10m"}))


def plant(on: Lane, t: float, ready: bool, reason: str = "floating IP 203.0.113.10 is locked") -> None:
    name = signal_name("cutover", "fip")
    on.readings[(name, EDGE)] = Sample(name, 1.0 if ready else 0.0, T0 + t, "readiness", EDGE, None if ready else reason)


def outage(on: Lane, start: float) -> list[DecisionKind]:
    return [on.sample(start + i, 0.0).kind for i in range(5)]


def test_a_broken_path_refuses_the_automatic_cutover_naming_the_step_and_why() -> None:
    on = lane()
    plant(on, 0, ready=False)
    kinds = outage(on, 1)
    assert DecisionKind.CUTOVER not in kinds and kinds.count(DecisionKind.REFUSE) == 1  # said once, then held
    refusal = next(d for d in on.decisions if d.kind is DecisionKind.REFUSE)
    assert "cutover refused: the cutover path is reported broken at fip: floating IP 203.0.113.10 is locked" in refusal.reason
    assert on.state.status is LaneStatus.DEGRADED
    plant(on, 10, ready=True)  # fixed: the next tick cuts over
    assert on.sample(11, 0.0).kind is DecisionKind.CUTOVER


def test_without_the_option_a_broken_path_does_not_block() -> None:
    on = lane(refuse=False)
    plant(on, 0, ready=False)
    assert DecisionKind.CUTOVER in outage(on, 1)


def test_unknown_readiness_never_blocks() -> None:
    on = lane()
    plant(on, 0, ready=False)
    assert DecisionKind.CUTOVER in outage(on, 601)  # the readiness is 10 minutes old: UNKNOWN
    fresh = lane()  # and a lane whose path was never checked
    assert DecisionKind.CUTOVER in outage(fresh, 1)


def test_a_forced_cutover_runs_against_a_broken_path_and_says_so() -> None:
    on = lane()
    plant(on, 0, ready=False)
    d = on.command(1, Command.CUTOVER)
    assert d.kind is DecisionKind.CUTOVER
    assert d.reason.endswith("; runs against a path reported broken at fip: floating IP 203.0.113.10 is locked")
