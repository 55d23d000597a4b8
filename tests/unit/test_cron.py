"""Cron expressions read the way cron reads them (not the way APScheduler does), and refused with a clear message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hybridops_daemon.cron import cron_trigger, validate_cron


@pytest.mark.parametrize(
    ("expr", "weekdays"),
    [
        ("0 3 * * 0", {"Sun"}),
        ("0 3 * * 7", {"Sun"}),
        ("0 3 * * 1", {"Mon"}),
        ("0 3 * * 1-5", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("0 3 * * */2", {"Sun", "Tue", "Thu", "Sat"}),
        ("0 3 * * 5-7", {"Fri", "Sat", "Sun"}),
        ("0 3 * * sat,SUN", {"Sat", "Sun"}),
        ("0 3 * * *", {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"}),
    ],
)
def test_day_of_week_is_read_the_way_cron_reads_it(expr: str, weekdays: set[str]) -> None:
    trigger = cron_trigger(expr)
    at, seen = datetime(2026, 3, 2, tzinfo=UTC), set()  # a Monday
    for _ in range(14):
        at = trigger.get_next_fire_time(None, at + timedelta(seconds=1))
        assert (at.hour, at.minute, at.tzinfo) == (3, 0, UTC)
        seen.add(at.strftime("%a"))
    assert seen == weekdays


def test_fire_times_follow_the_expression_in_utc() -> None:
    trigger = cron_trigger("30 4 1 */3 *")
    start = datetime(2026, 2, 15, tzinfo=UTC)
    first = trigger.get_next_fire_time(None, start)
    assert first == datetime(2026, 4, 1, 4, 30, tzinfo=UTC)
    assert trigger.get_next_fire_time(first, first + timedelta(seconds=1)) == datetime(2026, 7, 1, 4, 30, tzinfo=UTC)


@pytest.mark.parametrize("expr", ["0 3 1 * *", "*/15 * * * *", "0 2 * * mon-fri", "0 0 29 2 *", "5 4 * jan,jul *"])
def test_valid_expressions_pass(expr: str) -> None:
    assert validate_cron(expr) is None


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 3 * *", "has 4 fields; it needs 5 (minute hour day-of-month month day-of-week), in UTC"),
        ("0 3 * * * 2026", "has 6 fields"),
        ("61 * * * *", "the last value (61) is higher than the maximum value (59)"),
        ("0 24 * * *", "the last value (24) is higher than the maximum value (23)"),
        ("*/0 * * * *", "Increment must be higher than 0"),
        ("0 3 1 * mon", "restricts both day-of-month and day-of-week"),
        ("0 0 30 2 *", "never fires"),
        ("0 3 * * 5-1", "day of week '5-1': the range runs backwards"),
        ("0 3 * * 8", "day of week '8' is not 0-7 or a day name"),
        ("0 3 * * 3/2", "a step needs a range (1-5/2) or *"),
        ("0 3 * * funday", "day of week 'funday' is not 0-7 or a day name"),
        ("0 3 L * *", 'Unrecognized expression "L" for field "day"'),
    ],
)
def test_invalid_expressions_are_rejected_with_a_clear_message(expr: str, message: str) -> None:
    error = validate_cron(expr)
    assert error is not None and error.startswith(f"cron expression {expr!r}") and message in error
