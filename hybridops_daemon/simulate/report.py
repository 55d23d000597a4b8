"""What a replay means: detection latency and false cutovers against the trace's ground truth, the cost, and the
``--json`` object, the text summary and the sweep table built from them.

Ground truth: a trace is *labelled* when any sample carries the label ``fault`` (true or false; unlabelled samples
of a labelled trace count as false), when it has ``fault`` start/end lines, or when ``--faults`` gives intervals. A
fault is an interval of time (``Trace.fault_windows``; truth.py says how samples become intervals). Only automatic
cutovers are scored (an operator's forced cutover is not the policy's doing):

- a fault is *detected* by the first automatic cutover in ``[start, end + grace]``; its detection latency is that
  cutover's time minus ``start``; a fault with no such cutover is *missed* (latency null);
- a *false cutover* is an automatic cutover inside no fault's ``[start, end + grace]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.simulate.cost import cost_of
from hybridops_daemon.simulate.engine import Replay
from hybridops_daemon.simulate.trace import Trace


@dataclass(frozen=True, slots=True)
class Scoring:
    windows: list[tuple[float, float]]
    latencies: list[float | None]
    false_cutovers: int


def score(windows: list[tuple[float, float]], cutover_times: list[float], grace: float) -> Scoring:
    latencies: list[float | None] = []
    for start, end in windows:
        hit = next((t for t in cutover_times if start <= t <= end + grace), None)
        latencies.append(None if hit is None else hit - start)
    false = sum(1 for t in cutover_times if not any(start <= t <= end + grace for start, end in windows))
    return Scoring(windows, latencies, false)


def _r(value: float) -> float:
    """Stable, readable figures: micro-units are below anything the model can claim."""
    return round(value, 6)


def result(profile: Profile, trace: Trace, replay: Replay, *, tick: float, grace: float) -> dict[str, Any]:
    """The ``--json`` object for one replay."""
    decisions = replay.decisions
    cost = cost_of(profile, replay.billed, trace.duration)
    out: dict[str, Any] = {
        "profile": {"name": profile.name, "version": profile.version},
        "trace": trace.path,
        "lane": replay.lane,
        "node": replay.node,
        "samples": len(trace),
        "duration_s": trace.duration,
        "tick_s": tick,
        "decisions": [
            {"t": d.t, "kind": d.kind, "lane": d.lane, "reason": d.reason, "status": d.status, "trigger": d.trigger}
            for d in decisions
        ],
        "cutovers": sum(1 for d in decisions if d.kind == "cutover"),
        "failbacks": sum(1 for d in decisions if d.kind == "failback"),
        "drills": sum(1 for d in decisions if d.kind == "drill"),
        "time_on_standby_s": _r(sum((end - start for start, end in replay.standby), 0.0)),
        "cost": {
            "policy_usd": _r(cost.policy_usd),
            "always_on_usd": _r(cost.always_on_usd),
            "saving_ratio": None if cost.saving_ratio is None else _r(cost.saving_ratio),
            "hourly_usd": _r(cost.hourly_usd),
            "always_on_hourly_usd": _r(cost.always_on_hourly_usd),
            "billed_s": _r(cost.billed_s),
        },
    }
    if trace.labelled:
        automatic = [d.t for d in decisions if d.kind == "cutover" and d.trigger == "automatic"]
        scoring = score(trace.fault_windows(), automatic, grace)
        out["faults"] = [{"start": start, "end": end} for start, end in scoring.windows]
        out["detection_latency_s"] = [None if x is None else _r(x) for x in scoring.latencies]
        out["missed_faults"] = sum(1 for x in scoring.latencies if x is None)
        out["false_cutovers"] = scoring.false_cutovers
        out["grace_s"] = grace
    out["runs"] = [
        {
            "run_id": run.run_id,
            "chain": run.chain,
            "kind": run.kind,
            "started": run.started,
            "ended": run.ended,
            "ok": run.ok,
            "detail": run.detail,
            "approvals": [{"step": step, "t": t} for step, t in run.approvals],
            "waiting_for_approval": None if run.waiting_step is None else {"step": run.waiting_step, "since": run.waiting_since},
        }
        for run in replay.runs
    ]
    out["final_status"] = replay.final_status
    out["notes"] = list(replay.notes)
    return out


# --------------------------------------------------------------------------------------------- text


def clock(t: float) -> str:
    """A trace offset as ``HH:MM:SS`` (``12d 04:00:10`` past a day; tenths when not whole)."""
    days, rest = divmod(t, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    shown = f"{int(hours):02d}:{int(minutes):02d}:" + (f"{int(seconds):02d}" if seconds == int(seconds) else f"{seconds:04.1f}")
    return f"{int(days)}d {shown}" if days else shown


def span(seconds: float) -> str:
    """A duration, largest units first: ``45s``, ``16m07s``, ``3h05m``, ``365d 0h``."""
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds != int(seconds) else f"{int(seconds)}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def _saving(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio * 100:.2f}%"


def _latencies(values: list[float | None]) -> str:
    found = [x for x in values if x is not None]
    if not found:
        return "-"
    mean = sum(found) / len(found)
    return f"{span(mean)} / {span(max(found))}"


def render(out: dict[str, Any], replay: Replay) -> str:
    """The human summary of one replay."""
    profile = out["profile"]
    lines = [
        f"profile {profile['name']}@v{profile['version']}, lane {out['lane']} on {out['node']}, trace {out['trace']}",
        f"{out['samples']} samples over {span(out['duration_s'])} (tick {span(out['tick_s'])})",
    ]
    # Holds that only move between PRIMARY and DEGRADED (breaches not yet confirmed) are counted, not listed.
    shown = [d for d in replay.decisions if d.kind != "hold" or {d.status_before, d.status} - {"PRIMARY", "DEGRADED"}]
    if shown:
        lines.append("decisions:")
        lines.extend(f"  {clock(d.t):>14}  {d.kind:<8} {d.status:<13} {d.reason}" for d in shown)
    flaps = len(replay.decisions) - len(shown)
    if flaps:
        lines.append(f"{flaps} hold{'s' * (flaps != 1)} between PRIMARY and DEGRADED, not listed here (--json lists them)")
    if not replay.decisions:
        lines.append("decisions: none but plain holds")
    lines.append(
        f"cutovers {out['cutovers']}, failbacks {out['failbacks']}, drills {out['drills']}; "
        f"on standby {span(out['time_on_standby_s'])}; final status {out['final_status']}"
    )
    cost = out["cost"]
    lines.append(
        f"cost: policy ${cost['policy_usd']:.4f} (${cost['hourly_usd']:.2f}/h for {span(cost['billed_s'])}), "
        f"always-on ${cost['always_on_usd']:.4f} (${cost['always_on_hourly_usd']:.2f}/h); saving {_saving(cost['saving_ratio'])}"
    )
    if "faults" in out:
        latencies = ", ".join("missed" if x is None else span(x) for x in out["detection_latency_s"]) or "-"
        lines.append(
            f"faults {len(out['faults'])}: detection latency {latencies}; missed {out['missed_faults']}; "
            f"false cutovers {out['false_cutovers']} (grace {span(out['grace_s'])})"
        )
    for run in out["runs"]:
        waiting = run["waiting_for_approval"]
        if waiting is not None:
            lines.append(
                f"run {run['run_id']} still waits for approval of step {waiting['step']} since {clock(waiting['since'])}"
            )
    lines.extend(f"note: {note}" for note in out["notes"])
    return "\n".join(lines)


def variant_label(variant: dict[str, str]) -> str:
    return " ".join(f"{key}={value}" for key, value in variant.items()) or "(profile as is)"


def render_table(outs: list[dict[str, Any]]) -> str:
    """One row per (variant, trace): what a team compares to choose its thresholds."""
    header = ("variant", "trace", "cutovers", "false", "missed", "detect mean/max", "policy $", "always-on $", "saving")
    rows: list[tuple[str, ...]] = [header]
    for out in outs:
        variant = variant_label(out.get("variant", {}))
        labelled = "faults" in out
        rows.append(
            (
                variant,
                out["trace"].rsplit("/", 1)[-1],
                str(out["cutovers"]),
                str(out["false_cutovers"]) if labelled else "-",
                str(out["missed_faults"]) if labelled else "-",
                _latencies(out["detection_latency_s"]) if labelled else "-",
                f"{out['cost']['policy_usd']:.4f}",
                f"{out['cost']['always_on_usd']:.4f}",
                _saving(out["cost"]["saving_ratio"]),
            )
        )
    return columns(rows, left=2)


def columns(rows: list[tuple[str, ...]], *, left: int) -> str:
    """Rows as aligned columns: the first ``left`` ones flush left (names), the others flush right (figures)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i < left else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )
