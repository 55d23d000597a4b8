"""``hyops-daemon history``'s pure parts: how a span is cut into requests, which query gives which signal, and how
times are read. The export itself runs against a real Prometheus in tests/integration/test_history_export.py."""

from __future__ import annotations

import io

import pytest

from hybridops_daemon.config.sources import PrometheusQuery
from hybridops_daemon.simulate.history import (
    MAX_POINTS_PER_REQUEST,
    HistoryError,
    Plan,
    _Progress,
    shown_url,
    signal_queries,
)
from hybridops_daemon.simulate.truth import wall_clock


@pytest.mark.parametrize(("span_ms", "step_ms"), [(0, 10_000), (109_990_000, 10_000), (110_000_000, 10_000), (86_400_000, 1500)])
def test_requests_cover_the_grid_exactly_with_at_most_11000_points_each(span_ms: int, step_ms: int) -> None:
    plan = Plan(1_000_000, 1_000_000 + span_ms, step_ms, [], None)
    chunks = list(plan.chunks())
    grid = [t for first, last in chunks for t in range(first, last + 1, step_ms)]
    assert grid == list(range(plan.start_ms, plan.end_ms + 1, step_ms))  # every step once, in order
    assert len(grid) == plan.points
    assert all((last - first) // step_ms + 1 <= MAX_POINTS_PER_REQUEST for first, last in chunks)
    assert len(chunks) == -(-plan.points // MAX_POINTS_PER_REQUEST)  # no more requests than needed


def test_each_signal_gets_its_query_labelled_ones_split_later_ones_override() -> None:
    queries = [
        PrometheusQuery(signal="primary_up", query="up_old"),
        PrometheusQuery(signal="site_up", query="site_up", label="site"),
        PrometheusQuery(signal="primary_up", query="up_new"),  # from --queries, after the config's
        PrometheusQuery(signal="unused", query="x"),
    ]
    wanted = signal_queries(["primary_up", "site_up{site=ams}", "site_up{site=fra}"], queries)
    assert [(w.query.query, w.names) for w in wanted] == [
        ("up_new", {None: "primary_up"}),
        ("site_up", {"ams": "site_up{site=ams}", "fra": "site_up{site=fra}"}),
    ]
    with pytest.raises(HistoryError, match=r"^no query for signal\(s\) primary_http, site_up\{zone=a\} that the profile"):
        signal_queries(["primary_http", "primary_up", "site_up{zone=a}"], queries)


def test_urls_lose_their_credentials_and_times_need_a_zone() -> None:
    assert shown_url("https://u:p@prom.example:9090/prefix?x=1") == "https://prom.example:9090/prefix"
    assert wall_clock("2026-11-03T14:05:00Z") == wall_clock("2026-11-03T15:05:00+01:00") == 1793714700.0
    assert wall_clock("1793714700.5") == 1793714700.5
    for text, message in [("2026-11-03T14:05:00", "has no zone"), ("soon", "is not a time"), ("inf", "is not a time")]:
        with pytest.raises(ValueError, match=message):
            wall_clock(text)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_is_drawn_on_a_terminal_only() -> None:
    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        bar = _Progress(stream, total=2)
        bar.advance(1000)
        bar.advance(2000)  # the last one is always drawn, however soon after the one before
        bar.done()
    assert terminal.getvalue().startswith("\rhistory [###############               ]  50% 1,000 samples")
    assert terminal.getvalue().endswith("\rhistory [##############################] 100% 2,000 samples\n")
    assert pipe.getvalue() == ""
