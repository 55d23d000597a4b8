"""Cron expressions for ``drill.schedule``: parsed into APScheduler triggers and checked for config validation.

Expressions are five-field crontab (minute hour day-of-month month day-of-week) in UTC, read the way cron reads them.
APScheduler 3.x's ``CronTrigger.from_crontab`` does not: it takes day-of-week 0 as Monday (cron: Sunday, as is 7), so
``cron_trigger`` translates that field to day names. Cron runs when *either* a restricted day-of-month or a
restricted day-of-week matches, APScheduler when both do; an expression restricting both is refused rather than
read either way.

Both the config (to refuse a bad expression at check-config) and the scheduler use this module; it imports neither.
"""

from __future__ import annotations

from datetime import UTC, datetime

from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering: 0 (and 7) is Sunday
_FIELDS = "minute hour day-of-month month day-of-week"


def _day(text: str) -> int:
    if text.isdigit() and int(text) <= 7:
        return int(text)
    if text in _DAYS:
        return _DAYS.index(text)
    raise ValueError(f"day of week {text!r} is not 0-7 or a day name (sun, mon, ...)")


def _days_of_week(field: str) -> str:
    """A crontab day-of-week field as the day names APScheduler reads the same way: ``0-2/2`` becomes ``sun,tue``."""
    if field == "*":
        return field
    days: set[int] = set()
    for item in field.lower().split(","):
        span, slash, step_text = item.partition("/")
        if slash and not (step_text.isdigit() and int(step_text) > 0):
            raise ValueError(f"day of week {item!r}: the step must be a positive number")
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            first, last = (_day(end) for end in span.split("-", 1))
        elif slash:
            raise ValueError(f"day of week {item!r}: a step needs a range (1-5/2) or *")
        else:
            first = last = _day(span)
        if first > last:
            raise ValueError(f"day of week {item!r}: the range runs backwards")
        days.update(day % 7 for day in range(first, last + 1, int(step_text or 1)))
    return ",".join(_DAYS[day] for day in sorted(days))


def cron_trigger(expr: str) -> CronTrigger:
    """The UTC trigger for a five-field crontab expression. Raises ValueError with a message for the operator."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {expr!r} has {len(fields)} fields; it needs 5 ({_FIELDS}), in UTC")
    minute, hour, day, month, day_of_week = fields
    if day != "*" and day_of_week != "*":
        raise ValueError(
            f"cron expression {expr!r} restricts both day-of-month and day-of-week, which cron reads as either one"
            " matching; restrict one of them"
        )
    try:
        trigger = CronTrigger(
            minute=minute, hour=hour, day=day, month=month, day_of_week=_days_of_week(day_of_week), timezone=UTC
        )
    except ValueError as exc:
        raise ValueError(f"cron expression {expr!r}: {exc}") from exc
    if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:
        raise ValueError(f"cron expression {expr!r} never fires")
    return trigger


def validate_cron(expr: str) -> str | None:
    """What is wrong with a ``drill.schedule`` expression, or None: for config checking."""
    try:
        cron_trigger(expr)
    except ValueError as exc:
        return str(exc)
    return None
