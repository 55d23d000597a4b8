"""What the pages show, built from the documents the control socket answers with (``control/backend.py``) and from
journal records as ``Record.to_dict()`` shapes them: pure functions, no I/O, so that the pages and ``hyopsctl`` can
never tell two stories about one run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hybridops_daemon.journal.export import steps_of_run

# The chart's drawing area in SVG user units.
CHART_W, CHART_H, CHART_PAD = 600.0, 160.0, 24.0


@dataclass(slots=True)
class StepView:
    step: str
    status: str = "not reached"
    started_at: float | None = None
    ended_at: float | None = None
    attempts: int = 0
    fencing_token: Any = None
    module: str | None = None
    checks: list[Mapping[str, Any]] = field(default_factory=list)
    applies: list[Mapping[str, Any]] = field(default_factory=list)
    verifies: list[Mapping[str, Any]] = field(default_factory=list)
    approvals: list[Mapping[str, Any]] = field(default_factory=list)
    outputs: Any = None
    error: str | None = None

    @property
    def duration(self) -> float | None:
        return None if self.started_at is None or self.ended_at is None else self.ended_at - self.started_at

    @property
    def logs(self) -> list[str]:
        """Every apply attempt's log lines, as journaled (redacted before they were written)."""
        return [str(line) for body in self.applies for line in body.get("log") or []]


@dataclass(slots=True)
class RunView:
    run_id: str
    start: Mapping[str, Any]
    started_at: float
    ended_at: float | None
    status: str
    end_reason: str | None
    steps: list[StepView]
    decision: Mapping[str, Any] | None  # the decision record that started the run (its body), if on record
    decision_ts: float | None


def build_step(step: str, entries: Sequence[Mapping[str, Any]], run_ended: bool) -> StepView:
    view = StepView(step)
    for entry in entries:
        kind, body, ts = entry["kind"], entry["body"], entry["ts"]
        if view.started_at is None:
            view.started_at = ts
        if kind == "step.intent":
            view.attempts += 1
            view.fencing_token, view.module, view.status = body.get("fencing_token"), body.get("module"), "running"
        elif kind == "step.check":
            view.checks.append(body)
        elif kind == "step.apply":
            view.applies.append(body)
        elif kind == "step.verify":
            view.verifies.append(body)
        elif kind == "step.approval":
            view.approvals.append(body)
            view.status = "waiting for approval" if body.get("status") == "waiting" else "running"
        elif kind == "step.done":
            view.status, view.ended_at, view.outputs = str(body.get("outcome", "done")), ts, body.get("outputs")
        elif kind in ("step.failed", "step.refused"):
            view.status, view.ended_at = kind.removeprefix("step."), ts
            view.error = str(body.get("error") or body.get("reason") or "")
    if run_ended and view.status in ("running", "waiting for approval"):
        view.status = "interrupted"
    return view


def build_run(records: Sequence[Mapping[str, Any]]) -> RunView | None:
    """The run page from every record of one run (``journal show``), or None if no ``run.start`` is among them."""
    ordered = sorted(records, key=lambda r: int(r["seq"]))
    starts = [r for r in ordered if r["kind"] == "run.start"]
    if not starts:
        return None
    start = starts[-1]  # a run taken over again starts again: the newest start is the one that counts
    ends = [r for r in ordered if r["kind"] in ("run.end", "run.released")]
    end = ends[-1] if ends and ends[-1]["seq"] > start["seq"] else None
    if end is None:
        status = "running"
    elif end["kind"] == "run.released":
        status = "released"
    else:
        status = "succeeded" if end["body"].get("ok") else "failed"
    declared = [str(s) for s in start["body"].get("steps", [])]
    steps = [build_step(group["step"], group["records"], end is not None) for group in steps_of_run(ordered, declared)]
    decision = next((r for r in ordered if r["kind"] == "decision"), None)
    return RunView(
        run_id=str(start["body"].get("run_id", start.get("run_id"))),
        start=start["body"],
        started_at=start["ts"],
        ended_at=end["ts"] if end else None,
        status=status,
        end_reason=end["body"].get("reason") if end else None,
        steps=steps,
        decision=decision["body"] if decision else None,
        decision_ts=decision["ts"] if decision else None,
    )


def current_step(records: Sequence[Mapping[str, Any]]) -> str | None:
    """The step a running run is at: the step of its newest ``step.*`` record."""
    for record in sorted(records, key=lambda r: -int(r["seq"])):
        if str(record["kind"]).startswith("step."):
            return str(record["body"].get("step"))
    return None


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    points: str  # SVG polyline points
    dots: list[tuple[float, float, str]]  # x, y, the value as text (a tooltip)


@dataclass(frozen=True, slots=True)
class Chart:
    series: list[Series]
    marker_x: float  # where the run's decision sits
    low: float
    high: float
    start: float
    end: float


def build_chart(decisions: Sequence[Mapping[str, Any]], at: float, start: float, end: float) -> Chart | None:
    """The signal values decisions recorded as evidence between ``start`` and ``end``, one line per signal@edge.

    The journal keeps notable decisions only, so these are the readings at the moments the lane's state moved, not
    every sample: enough to see what led up to the decision and what followed it.
    """
    readings: dict[str, list[tuple[float, float]]] = {}
    for record in decisions:
        for item in record["body"].get("evidence") or []:
            if isinstance(item.get("value"), int | float):
                readings.setdefault(f"{item.get('signal')}@{item.get('edge')}", []).append((record["ts"], float(item["value"])))
    if not readings or end <= start:
        return None
    values = [v for points in readings.values() for _, v in points]
    low, high = min(values), max(values)
    span = (high - low) or 1.0

    def x(ts: float) -> float:
        return round(CHART_PAD + (ts - start) / (end - start) * (CHART_W - 2 * CHART_PAD), 1)

    def y(value: float) -> float:
        return round(CHART_H - CHART_PAD - (value - low) / span * (CHART_H - 2 * CHART_PAD), 1)

    series = [
        Series(label, " ".join(f"{x(t)},{y(v)}" for t, v in points), [(x(t), y(v), f"{v:g}") for t, v in points])
        for label, points in sorted(readings.items())
    ]
    return Chart(series, x(at), low, high, start, end)
