"""``simulate --plot OUT.png``: each signal the profile reads over time (one line per edge) with its rules' trip and clear
levels, the decisions, the standby periods and the ground-truth faults; below, the lane's status.

matplotlib (Agg, no display) is imported here only, so the simulator runs without it unless a plot is asked for.
Long traces are drawn as a per-bucket min/max envelope, so a single failed sample in a year still shows.

``backtest --plot OUT.png`` (:func:`plot_fleet`): each variant's policy cost against its detection latency over the
fleet, the variants with false cutovers marked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.policy.types import LaneStatus
from hybridops_daemon.simulate.engine import Replay
from hybridops_daemon.simulate.report import variant_label
from hybridops_daemon.simulate.trace import Trace

_BUCKETS = 3000  # about one per horizontal pixel at the figure's size
_MARKERS = {"cutover": "tab:red", "failback": "tab:green", "drill": "tab:purple", "refuse": "tab:gray"}
_STATUSES = [status.value for status in LaneStatus]


def _unit(duration: float) -> tuple[float, str]:
    if duration <= 2 * 3600:
        return 60.0, "minutes"
    if duration <= 3 * 86400:
        return 3600.0, "hours"
    return 86400.0, "days"


def _series(trace: Trace, signal: int, edge: int) -> tuple[Any, Any]:
    import numpy as np

    signals = np.frombuffer(trace.signals, dtype=np.uint32)
    edges = np.frombuffer(trace.edges, dtype=np.uint32)
    mask = (signals == signal) & (edges == edge)
    times = np.frombuffer(trace.times, dtype=np.float64)[mask]
    values = np.frombuffer(trace.values, dtype=np.float64)[mask]
    if len(times) <= 2 * _BUCKETS:
        return times, values
    bounds = np.linspace(0, len(times), _BUCKETS + 1).astype(np.int64)[:-1]
    with np.errstate(invalid="ignore"):  # an all-null bucket stays NaN: a gap in the line
        low = np.fmin.reduceat(values, bounds)
        high = np.fmax.reduceat(values, bounds)
    return np.repeat(times[bounds], 2), np.column_stack((low, high)).ravel()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(path: Path, profile: Profile, trace: Trace, replay: Replay, out: dict[str, Any]) -> None:
    plt = _pyplot()
    scale, unit = _unit(max(trace.duration, 1.0))
    shown = [name for name in profile.signals if name in trace.signal_names]
    ratios = [3] * len(shown) + [1]
    figure, axes = plt.subplots(len(ratios), 1, sharex=True, figsize=(13, 2.4 * len(shown) + 1.6), height_ratios=ratios)
    axes = list(axes) if len(ratios) > 1 else [axes]
    edges = {i: replay.node if name is None else name for i, name in enumerate(trace.edge_names)}
    for ax, name in zip(axes, shown, strict=False):
        signal = trace.signal_names.index(name)
        for edge, label in edges.items():
            times, values = _series(trace, signal, edge)
            if len(times):
                ax.plot(times / scale, values, linewidth=0.8, label=f"{name}@{label}")
        for rule in profile.rules:
            if rule.signal == name:
                ax.axhline(rule.trip, color="tab:red", linestyle="--", linewidth=0.8, label=f"{rule.name} trip {rule.trip:g}")
                if rule.clear is not None and rule.clear != rule.trip:
                    ax.axhline(rule.clear, color="tab:orange", linestyle=":", linewidth=0.8, label=f"clear {rule.clear:g}")
        ax.set_ylabel(name)
    status_ax = axes[-1]
    steps = [(0.0, LaneStatus.PRIMARY.value)] + [(d.t, d.status) for d in replay.decisions]
    status_ax.step(
        [t / scale for t, _ in steps] + [trace.duration / scale],
        [_STATUSES.index(s) for _, s in steps] + [_STATUSES.index(steps[-1][1])],
        where="post",
        color="black",
        linewidth=0.9,
    )
    status_ax.set_yticks(range(len(_STATUSES)), _STATUSES, fontsize=7)
    status_ax.set_ylabel("lane")
    status_ax.set_xlabel(f"trace time ({unit})")
    for ax in axes:
        for start, end in replay.standby:
            ax.axvspan(start / scale, end / scale, color="tab:blue", alpha=0.12, label="on standby")
        for fault in out.get("faults", []):
            ax.axvspan(
                fault["start"] / scale,
                fault["end"] / scale,
                facecolor="none",
                edgecolor="tab:red",
                alpha=0.5,
                hatch="///",
                linewidth=0,
                label="fault (ground truth)",
            )
        for decision in replay.decisions:
            color = _MARKERS.get(decision.kind)
            if color is not None:
                ax.axvline(decision.t / scale, color=color, linewidth=1.2, label=decision.kind)
    for ax in axes[:-1] or axes:
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    saving = out["cost"]["saving_ratio"]
    figure.suptitle(
        f"{profile.ref} on {Path(trace.path).name}: {out['cutovers']} cutover(s), {out['failbacks']} failback(s), "
        # "\\$": a bare pair of dollar signs would be typeset as mathematics
        f"cost \\${out['cost']['policy_usd']:.2f} vs \\${out['cost']['always_on_usd']:.2f} always-on"
        + ("" if saving is None else f" (saving {saving * 100:.2f}%)"),
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_fleet(path: Path, out: dict[str, Any]) -> None:
    """One point per variant at (detection latency p50, policy cost), a bar from p50 to p95 and a tick at the max; a
    variant with false cutovers is drawn as a red cross with their count. A variant that detected no fault has no
    latency: it is named under the plot instead."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(11, 6.5))
    undetected: list[str] = []
    for number, variant in enumerate(out["variants"], start=1):
        latency, cost = variant["detection_latency_s"], variant["cost"]["policy_usd"]
        label = f"{number}: {variant_label(variant['variant'])}"
        if latency["p50"] is None:
            undetected.append(label)
            continue
        false = variant["false_cutovers"]
        color = "tab:red" if false else "tab:blue"
        ax.plot([latency["p50"], latency["p95"]], [cost, cost], color=color, linewidth=2, alpha=0.5)
        ax.plot([latency["max"]], [cost], marker="|", color=color, markersize=10)
        ax.plot([latency["p50"]], [cost], marker="x" if false else "o", color=color, markersize=8)
        mark = f"{number}" + (f" ({false} false)" if false else "")
        ax.annotate(mark, (latency["p50"], cost), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.plot([], [], linestyle="none", label=label)  # the legend names each number
    ax.plot([], [], marker="o", color="tab:blue", linestyle="none", label="p50 (no false cutover); bar to p95, | max")
    ax.plot([], [], marker="x", color="tab:red", linestyle="none", label="p50 of a variant with false cutovers")
    ax.set_xlabel("detection latency over the fleet (s)")
    ax.set_ylabel("policy cost over the fleet (USD)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, handlelength=1)
    profile = out["profile"]
    figure.suptitle(
        f"{profile['name']}@v{profile['version']}: {out['sites']} sites, {len(out['variants'])} variants"
        + (f"; no fault detected by {', '.join(undetected)}" if undetected else ""),
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
