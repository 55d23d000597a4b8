"""The fleet backtest's results per variant: what each variant of the profile would have done across every site.

For each variant, over the sites whose trace was valid, in the fleet's order (the same input gives the same output,
whatever order the workers finished in):

- ``cutovers``, ``failbacks``: summed; ``faults``, ``false_cutovers``, ``missed_faults``: summed over the labelled
  sites (a trace without ground truth has none of them; ``labelled_sites`` says how many had it);
- ``detection_latency_s``: ``p50``, ``p95`` and ``max`` over every detected fault of every site (nearest rank: the
  value at rank ceil(p/100 * n) of the sorted latencies, so each is a latency some fault really had), and
  ``detected``, how many there were; null when none was;
- ``standby_hours``, ``cost.policy_usd``, ``cost.always_on_usd``: summed; ``cost.saving_ratio`` is
  ``1 - policy / always_on`` of the sums (null when always-on costs nothing);
- ``worst_sites``: the sites with the most false cutovers and missed faults together, then the slowest detection,
  then the highest policy cost;
- ``per_site``: each site's own figures, as ``simulate --json`` reports them for that trace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.simulate.fleet import FleetSpec, SiteResult, SiteVariant
from hybridops_daemon.simulate.report import _r, _saving, columns, span, variant_label

WORST = 3


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank: the smallest value with at least ``p`` percent of the values at or below it."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class SiteRow:
    trace: str
    figures: SiteVariant

    @property
    def worst_latency(self) -> float:
        return max((x for x in self.figures.latencies if x is not None), default=0.0)


@dataclass(frozen=True, slots=True)
class VariantSummary:
    variant: dict[str, str]
    sites: list[SiteRow]

    def _sum(self, field: str) -> int:
        return sum(getattr(row.figures, field) for row in self.sites)

    def _fsum(self, field: str) -> float:
        # fsum: correctly rounded, so the total does not depend on the order of the terms
        return math.fsum(getattr(row.figures, field) for row in self.sites)

    @property
    def latencies(self) -> list[float]:
        return [x for row in self.sites for x in row.figures.latencies if x is not None]

    @property
    def false_cutovers(self) -> int:
        return self._sum("false_cutovers")

    def worst(self, count: int = WORST) -> list[SiteRow]:
        ranked = sorted(
            enumerate(self.sites),
            key=lambda item: (
                -(item[1].figures.false_cutovers + item[1].figures.missed_faults),
                -item[1].worst_latency,
                -item[1].figures.policy_usd,
                item[0],
            ),
        )
        return [row for _, row in ranked[:count]]

    def as_json(self) -> dict[str, Any]:
        latencies = self.latencies
        policy, always_on = self._fsum("policy_usd"), self._fsum("always_on_usd")
        return {
            "variant": self.variant,
            "sites": len(self.sites),
            "labelled_sites": sum(1 for row in self.sites if row.figures.labelled),
            "cutovers": self._sum("cutovers"),
            "failbacks": self._sum("failbacks"),
            "faults": self._sum("faults"),
            "false_cutovers": self.false_cutovers,
            "missed_faults": self._sum("missed_faults"),
            "detection_latency_s": {
                "detected": len(latencies),
                "p50": percentile(latencies, 50) if latencies else None,
                "p95": percentile(latencies, 95) if latencies else None,
                "max": max(latencies) if latencies else None,
            },
            "standby_hours": _r(self._fsum("standby_s") / 3600),
            "cost": {
                "policy_usd": _r(policy),
                "always_on_usd": _r(always_on),
                "saving_ratio": _r(1 - policy / always_on) if always_on > 0 else None,
            },
            "worst_sites": [_worst_json(row) for row in self.worst()],
            "per_site": [_site_json(row) for row in self.sites],
        }


def _worst_json(row: SiteRow) -> dict[str, Any]:
    f = row.figures
    latencies = [x for x in f.latencies if x is not None]
    return {
        "trace": row.trace,
        "false_cutovers": f.false_cutovers if f.labelled else None,
        "missed_faults": f.missed_faults if f.labelled else None,
        "max_latency_s": max(latencies) if latencies else None,
        "policy_usd": f.policy_usd,
    }


def _site_json(row: SiteRow) -> dict[str, Any]:
    """Named as in ``simulate --json`` (``cost`` flattened to the two figures summed here)."""
    f = row.figures
    return {
        "trace": row.trace,
        "cutovers": f.cutovers,
        "failbacks": f.failbacks,
        "faults": f.faults if f.labelled else None,
        "false_cutovers": f.false_cutovers if f.labelled else None,
        "missed_faults": f.missed_faults if f.labelled else None,
        "detection_latency_s": list(f.latencies) if f.labelled else None,
        "time_on_standby_s": f.standby_s,
        "policy_usd": f.policy_usd,
        "always_on_usd": f.always_on_usd,
        "saving_ratio": f.saving_ratio,
    }


def aggregate(spec: FleetSpec, results: Sequence[SiteResult]) -> list[VariantSummary]:
    """One summary per variant, over the valid sites in ``results``' order."""
    ok = [site for site in results if site.ok]
    return [
        VariantSummary(label, [SiteRow(site.trace, site.variants[i]) for site in ok]) for i, (label, _) in enumerate(spec.grid)
    ]


def fleet_json(profile: Profile, spec: FleetSpec, results: Sequence[SiteResult]) -> dict[str, Any]:
    """The ``--json`` object: deterministic (no timings), so two runs of one fleet compare byte for byte."""
    ok = [site for site in results if site.ok]
    return {
        "profile": {"name": profile.name, "version": profile.version},
        "lane": spec.lane or profile.name,
        "node": spec.node,
        "tick_s": spec.tick,
        "grace_s": spec.grace,
        "sites": len(results),
        "samples": sum(site.samples for site in ok),
        "invalid_sites": [{"trace": site.trace, "error": site.error} for site in results if not site.ok],
        "variants": [summary.as_json() for summary in aggregate(spec, results)],
    }


def _latency_cell(latency: dict[str, Any]) -> str:
    if not latency["detected"]:
        return "-"
    return " / ".join(span(latency[key]) for key in ("p50", "p95", "max"))


def _worst_cell(worst: list[dict[str, Any]]) -> str:
    if not worst:
        return "-"
    site = worst[0]
    name = site["trace"].rsplit("/", 1)[-1]
    wrong = [f"{site[key]} {word}" for key, word in (("false_cutovers", "false"), ("missed_faults", "missed")) if site[key]]
    if not wrong and site["max_latency_s"] is not None:
        wrong = [f"detect {span(site['max_latency_s'])}"]
    return f"{name} ({', '.join(wrong)})" if wrong else name


def render_fleet(out: dict[str, Any]) -> str:
    """The terminal table: one row per variant, then the invalid sites."""
    header = (
        "variant",
        "worst site",
        "sites",
        "cutovers",
        "false",
        "missed",
        "detect p50/p95/max",
        "standby h",
        "policy $",
        "always-on $",
        "saving",
    )
    rows: list[tuple[str, ...]] = [header]
    for v in out["variants"]:
        labelled = v["labelled_sites"] > 0
        rows.append(
            (
                variant_label(v["variant"]),
                _worst_cell(v["worst_sites"]),
                str(v["sites"]),
                str(v["cutovers"]),
                str(v["false_cutovers"]) if labelled else "-",
                str(v["missed_faults"]) if labelled else "-",
                _latency_cell(v["detection_latency_s"]),
                f"{v['standby_hours']:.2f}",
                f"{v['cost']['policy_usd']:.2f}",
                f"{v['cost']['always_on_usd']:.2f}",
                _saving(v["cost"]["saving_ratio"]),
            )
        )
    profile = out["profile"]
    lines = [
        f"profile {profile['name']}@v{profile['version']}, lane {out['lane']} on {out['node']}: "
        f"{out['sites']} sites, {out['samples']:,} samples, {len(out['variants'])} variants",
        columns(rows, left=2),
    ]
    lines.extend(f"invalid site: {site['error']}" for site in out["invalid_sites"])
    return "\n".join(lines)
