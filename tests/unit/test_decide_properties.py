"""Properties of decide() that must hold for every input, checked with hypothesis."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from hybridops_daemon.policy.types import ChainEvent, Command, DecisionKind, LaneStatus, Observation, Trigger
from hybridops_daemon.signals.sample import Sample
from tests.unit.test_decide import EDGE, PEER, T0, Lane, make_profile

ACTIONS = (DecisionKind.CUTOVER, DecisionKind.FAILBACK, DecisionKind.DRILL)

# A stream: (seconds since the previous sample, value of primary_http).
streams = st.lists(st.tuples(st.floats(0.05, 20.0), st.sampled_from([0.0, 1.0, None])), max_size=120)
events = st.lists(
    st.one_of(
        st.sampled_from(list(Command)),
        st.sampled_from(["chain_ok", "chain_failed"]),
        st.none(),
    ),
    max_size=120,
)


def auto_profile(cooldown: float = 120.0):  # type: ignore[no-untyped-def]
    return make_profile(
        rules=[
            {"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5, "for": "2s", "consecutive": 2}
        ],
        cooldown=f"{cooldown}s",
        failback={"automatic": True, "stable_for": "30s"},
        action_limit={"max_actions": 1000, "window": "1h"},
    )


def run(lane: Lane, stream: list[tuple[float, float | None]], extra: list[object]) -> None:
    t = 0.0
    for i, (dt, value) in enumerate(stream):
        t += dt
        lane.sample(t, value)
        event = extra[i] if i < len(extra) else None
        if isinstance(event, Command):
            lane.command(t, event, intent_id=i)
        elif event in ("chain_ok", "chain_failed") and lane.state.active_run:
            lane.finish(t, ok=event == "chain_ok", detail="injected")


@settings(max_examples=200, deadline=None)
@given(stream=streams, extra=events)
def test_decide_is_deterministic(stream: list[tuple[float, float | None]], extra: list[object]) -> None:
    first, second = Lane(auto_profile()), Lane(auto_profile())
    run(first, stream, extra)
    run(second, stream, extra)
    assert first.decisions == second.decisions
    assert first.state == second.state


@settings(max_examples=200, deadline=None)
@given(
    runs=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=60),
    period=st.floats(0.05, 0.9),
)
def test_a_signal_flapping_faster_than_the_confirmation_window_never_trips(runs: list[tuple[int, int]], period: float) -> None:
    """Breaches shorter than `for` (5 s) alternate with healthy samples: no cutover, ever."""
    profile = make_profile(
        rules=[{"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5, "for": "5s"}],
    )
    lane = Lane(profile)
    t = 0.0
    for bad, good in runs:
        # `bad` failing samples spaced `period` apart span at most 4.5 s < 5 s.
        for value in [0.0] * bad + [1.0] * good:
            lane.sample(t, value)
            t += period
            assert not any(memory.tripped for memory in lane.state.rules.values())
    assert DecisionKind.CUTOVER not in lane.kinds()


@settings(max_examples=200, deadline=None)
@given(stream=streams, extra=events, cooldown=st.floats(10.0, 600.0))
def test_no_two_automatic_actions_inside_the_cooldown(
    stream: list[tuple[float, float | None]], extra: list[object], cooldown: float
) -> None:
    lane = Lane(auto_profile(cooldown))
    run(lane, stream, extra)
    automatic = [d.at for d in lane.decisions if d.kind in ACTIONS and d.trigger is Trigger.AUTOMATIC]
    for earlier, later in itertools.pairwise(automatic):
        assert later - earlier >= cooldown


@settings(max_examples=200, deadline=None)
@given(stream=streams, extra=events)
def test_nothing_acts_while_paused(stream: list[tuple[float, float | None]], extra: list[object]) -> None:
    lane = Lane(auto_profile(cooldown=0.0))
    lane.command(0, Command.PAUSE)
    run(lane, stream, [e for e in extra if e is not Command.RESUME])
    assert lane.state.status is LaneStatus.PAUSED
    assert [d for d in lane.decisions if d.kind in ACTIONS] == []


@settings(max_examples=100, deadline=None)
@given(stream=streams)
def test_both_edges_never_cut_over_on_one_edges_word(stream: list[tuple[float, float | None]]) -> None:
    profile = make_profile(
        rules=[{"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5}],
        corroboration={"both_edges": True},
    )
    lane = Lane(profile)
    t = 0.0
    for dt, value in stream:
        t += dt
        lane.readings[("primary_http", PEER)] = Sample("primary_http", 1.0, T0 + t, "peer", PEER)  # the peer sees it up
        lane.sample(t, value)
    assert DecisionKind.CUTOVER not in lane.kinds()


def test_ignores_chain_end_for_another_run() -> None:
    lane = Lane(make_profile())
    lane.command(0, Command.CUTOVER)
    observation = Observation(readings={}, self_edge=EDGE, event=ChainEvent("prod", "other-run", True, ""))
    d = lane.tick(1, observation.event)
    assert d.reason == "ignored the end of run other-run: not this lane's active run"
    assert lane.state.status is LaneStatus.CUTTING_OVER
