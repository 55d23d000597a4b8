"""Generate the scenario library for ``hyops-daemon simulate`` from a seed.

    python simulations/generate.py --seed 1                 # writes simulations/scenarios/
    python simulations/generate.py --seed 1 --out /tmp/s --only year

Each scenario is a trace (``<name>.jsonl``, or ``.jsonl.gz`` when large) and ``<name>.expect.yaml``: the profile to
replay it with, extra command-line arguments, and the expected outcome, stated from how the trace was built (never
from a run of the simulator). The same seed always writes byte-identical files (gzip without a timestamp).
Every sample line of a scenario carries the ground-truth label ``fault`` except in the year-long one, where only the
outage lines do (the rest count as ``fault: false``; see simulations/README.md).
"""

from __future__ import annotations

import argparse
import gzip
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
Line = str


@dataclass
class Scenario:
    name: str
    profile: str  # file name under simulations/profiles/
    description: str
    lines: Iterator[Line]
    expect: dict[str, Any]
    args: list[str] = field(default_factory=list)
    gzipped: bool = False


def _num(value: float | None) -> str:
    if value is None:
        return "null"
    return str(int(value)) if value == int(value) else f"{value:.1f}"


def sample(t: float, signal: str, value: float | None, *, edge: str | None = None, fault: bool | None = None) -> Line:
    """One compact JSON line, keys in a fixed order (the parser reads any order; this keeps the files diffable)."""
    parts = [f'{{"t":{_num(t)},"signal":"{signal}","value":{_num(value)}']
    if edge is not None:
        parts.append(f',"edge":"{edge}"')
    if fault is not None:
        parts.append(f',"labels":{{"fault":{"true" if fault else "false"}}}')
    parts.append("}\n")
    return "".join(parts)


def command(t: float, name: str, lane: str) -> Line:
    return f'{{"t":{_num(t)},"command":"{name}","lane":"{lane}"}}\n'


def _latency(rng: random.Random, base: float = 40.0) -> float:
    return round(max(5.0, rng.gauss(base, 8.0)), 1)


# --------------------------------------------------------------------------------------------- scenarios
# Times are seconds from the trace start. Probe samples arrive at whole seconds (10 s for the year).


def clean_outage(rng: random.Random) -> Scenario:
    down = range(900, 1500)  # the primary is down for 10 minutes

    def lines() -> Iterator[Line]:
        for t in range(0, 2701):
            fault = t in down
            yield sample(t, "primary_http", 0 if fault else 1, fault=fault)
            yield sample(t, "primary_latency_ms", None if fault else _latency(rng), fault=fault)
            if t == 2100:
                yield command(t, "failback", "prod")
            if t == 2160:  # the failback's database step waits from 2117 (after ipam 2s, dns 10s, floating-ip 5s)
                yield command(t, "approve", "prod")

    # primary_down trips on the 4th failed probe (3 in a row and 3 s since the first): t=903. The cutover chain
    # takes 137 s (on standby at 1040); the operator fails back at 2100 and approves at 2160; the database step
    # (2 min) and capacity (1 min) end the run at 2340. The capacity ran 903..2340.
    return Scenario(
        "clean-outage",
        "prod.yaml",
        "The primary is down 15:00-25:00 (probe fails, no latency). One cutover 3 s after the outage began; the "
        "operator fails back at 35:00 and approves the database step at 36:00.",
        lines(),
        {
            "cutovers": 1,
            "failbacks": 1,
            "decision_kinds": ["cutover", "failback"],
            "detection_latency_s": [3.0],
            "false_cutovers": 0,
            "time_on_standby_s": 1060.0,
            "cost.billed_s": 1437.0,
            "cost.saving_ratio": {"min": 0.46, "max": 0.47},
            "final_status": "PRIMARY",
        },
    )


def flapping_wan(rng: random.Random) -> Scenario:
    def lines() -> Iterator[Line]:
        t = 0
        while t <= 1800:
            if 300 <= t < 1500:
                up, down = rng.randint(2, 9), rng.randint(1, 2)  # the link drops 1-2 probes at a time
            else:
                up, down = 1, 0
            for _ in range(up):
                yield sample(t, "primary_http", 1, fault=False)
                yield sample(t, "primary_latency_ms", _latency(rng), fault=False)
                t += 1
            for _ in range(down):
                yield sample(t, "primary_http", 0, fault=False)
                yield sample(t, "primary_latency_ms", None, fault=False)
                t += 1

    return Scenario(
        "flapping-wan",
        "prod.yaml",
        "The WAN link flaps for 20 minutes: 1-2 failed probes, then 2-9 good ones, over and over. The primary is fine: "
        "primary_down (3 in a row, 3 s) must never trip.",
        lines(),
        {"cutovers": 0, "decision_kinds": [], "false_cutovers": 0, "final_status": "PRIMARY"},
    )


def slow_degradation(rng: random.Random) -> Scenario:
    start, end, top = 600, 3000, 2000.0

    def true_latency(t: int) -> float:
        return 40.0 if t < start else 40.0 + (top - 40.0) * min(1.0, (t - start) / (end - start))

    def lines() -> Iterator[Line]:
        for t in range(0, 3601):
            base = true_latency(t)
            fault = base > 800  # ground truth: the primary is too slow to serve once it is past the 800 ms SLO
            yield sample(t, "primary_http", 1, fault=fault)
            yield sample(t, "primary_latency_ms", round(max(5.0, rng.gauss(base, 15.0)), 1), fault=fault)

    # The true latency passes 800 ms at t=1531 and climbs 0.82 ms/s; primary_slow needs 30 s of samples over 800 ms in a
    # row. With noise of 15 ms, a sample can still dip under 800 ms until the true latency is ~2 sigma above it (~37 s
    # later): the cutover comes 30-70 s after the crossing.
    return Scenario(
        "slow-degradation",
        "prod.yaml",
        "The primary's latency creeps from 40 ms (10:00) to 2 s (50:00); it passes the 800 ms SLO at 25:31. One "
        "cutover 30-70 s later (noise keeps resetting the 30 s confirmation near the threshold); failback is manual, so "
        "the trace ends on standby.",
        lines(),
        {
            "cutovers": 1,
            "failbacks": 0,
            "decision_kinds": ["cutover"],
            "detection_latency_s": {"count": 1, "min": 30, "max": 90},
            "false_cutovers": 0,
            "final_status": "ON_STANDBY",
        },
    )


def prometheus_outage(rng: random.Random) -> Scenario:
    def lines() -> Iterator[Line]:
        for t in range(0, 3601, 5):
            if 1200 <= t < 1260:  # Prometheus answers with errors: the source reports no data
                yield sample(t, "primary_up", None, fault=False)
                yield sample(t, "replica_lag_s", None, fault=False)
            elif 1260 <= t < 2100:  # Prometheus is gone: no samples at all
                continue
            else:
                yield sample(t, "primary_up", 1, fault=False)
                yield sample(t, "replica_lag_s", round(abs(rng.gauss(0.5, 0.3)), 1), fault=False)

    return Scenario(
        "prometheus-outage",
        "prod-prom.yaml",
        "Prometheus fails at 20:00 (a minute of null values, then no samples) and returns at 35:00; the primary is "
        "healthy throughout. UNKNOWN is not an outage: no cutover, no decision at all.",
        lines(),
        {"cutovers": 0, "decisions": {"count": 0}, "false_cutovers": 0, "final_status": "PRIMARY"},
    )


def edge_partition(rng: random.Random) -> Scenario:
    partition, outage = range(600, 900), range(1800, 2100)

    def lines() -> Iterator[Line]:
        for t in range(0, 3601):
            fault = t in outage
            yield sample(t, "primary_http", 0 if fault or t in partition else 1, fault=fault)
            yield sample(t, "primary_http", 0 if fault else 1, edge="edge02", fault=fault)

    # The real outage trips on both edges at 1803. The cutover chain ends at 1928; the primary is back at 2100 and
    # the failback starts once both edges have seen it healthy for 5 minutes.
    return Scenario(
        "edge-partition",
        "prod-pair.yaml",
        "10:00-15:00 edge01 loses its path to the primary while edge02 still reaches it: no cutover (both_edges). "
        "30:00-35:00 the primary really fails, seen by both: one cutover, then an automatic failback.",
        lines(),
        {
            "cutovers": 1,
            "failbacks": 1,
            "decision_kinds": ["cutover", "failback"],
            "detection_latency_s": [3.0],
            "false_cutovers": 0,
            "final_status": "PRIMARY",
        },
    )


def maintenance_window(rng: random.Random) -> Scenario:
    down = range(900, 1500)

    def lines() -> Iterator[Line]:
        for t in range(0, 2401):
            fault = t in down
            if t == 600:
                yield command(t, "pause", "prod")
            if t == 1800:
                yield command(t, "resume", "prod")
            yield sample(t, "primary_http", 0 if fault else 1, fault=fault)
            yield sample(t, "primary_latency_ms", None if fault else _latency(rng), fault=fault)

    return Scenario(
        "maintenance-window",
        "prod.yaml",
        "The operator pauses the lane at 10:00 for planned work; the primary is down 15:00-25:00 inside the window; "
        "the lane resumes at 30:00 with the primary healthy again. No cutover: the outage is missed on purpose.",
        lines(),
        {
            "cutovers": 0,
            "decision_kinds": [],
            "detection_latency_s": [None],
            "missed_faults": 1,
            "false_cutovers": 0,
            "final_status": "PRIMARY",
        },
    )


def drill(rng: random.Random) -> Scenario:
    def lines() -> Iterator[Line]:
        for t in range(0, 3601):
            yield sample(t, "primary_http", 1, fault=False)
            if t == 600:
                yield command(t, "drill", "drill")

    # Drill at 600: deadline 600 + 15m = 1500; cutover chain 135 s; teardown (failback chain, 105 s) ends at 1605.
    return Scenario(
        "drill",
        "drill.yaml",
        "An operator drill on the drill lane at 10:00; the lane tears itself down at its 15-minute deadline. The drill "
        "capacity is paid from 10:00 until the teardown completes at 26:45.",
        lines(),
        {
            "drills": 1,
            "cutovers": 0,
            "failbacks": 1,
            "decision_kinds": ["drill", "failback"],
            "cost.billed_s": 1005.0,
            "final_status": "PRIMARY",
        },
    )


YEAR = 365 * 86400
STEP = 10


def probes(rng: random.Random, duration: int, outages: list[tuple[int, int]]) -> Iterator[Line]:
    """A 10-second HTTP probe of the primary over [0, duration): failed and labelled ``fault`` inside each outage
    [begin, end); elsewhere healthy but for rare lone or paired failed probes (a 3-probe/30 s rule must ride them
    out), null answers and lost samples."""
    healthy = ',"signal":"primary_http","value":1}\n'
    blip = 0
    for t in range(0, duration, STEP):
        if any(begin <= t < end for begin, end in outages):
            yield f'{{"t":{t},"signal":"primary_http","value":0,"labels":{{"fault":true}}}}\n'
            continue
        if blip:  # a short blip: at most 2 failed probes in a row
            blip -= 1
            yield f'{{"t":{t},"signal":"primary_http","value":0}}\n'
            continue
        draw = rng.random()
        if draw < 4e-5:
            blip = rng.randint(1, 2) - 1
            yield f'{{"t":{t},"signal":"primary_http","value":0}}\n'
        elif draw < 1.4e-4:  # the probe itself hiccups: no data
            yield f'{{"t":{t},"signal":"primary_http","value":null}}\n'
        elif draw < 1.6e-4:  # a lost sample; the reading stays fresh for 30 s
            continue
        else:
            yield f'{{"t":{t}' + healthy


def site(rng: random.Random, duration: int) -> Iterator[Line]:
    """One site of a fleet backtest (benchmarks/backtest.py, the backtest tests; not a scenario): ``probes`` over
    ``duration`` (6 hours at least) with one to three outages of 2 to 60 minutes at random times, apart from each other."""
    if duration < 6 * 3600:
        raise ValueError("a site's trace spans 6 hours at least (room for three outages and their failbacks)")
    count = rng.randint(1, 3)
    slot = duration // count
    outages = []
    for i in range(count):
        length = rng.randrange(2 * 60, 60 * 60, STEP)
        begin = (i * slot + rng.randrange(0, slot - length - 30 * 60)) // STEP * STEP
        outages.append((begin, begin + length))
    return probes(rng, duration, outages)


def year(rng: random.Random) -> Scenario:
    # Two real outages at random times inside fixed months, on the 10 s grid: about 47 min and 2 h 13 min.
    outages = []
    for month, length in ((2, 47 * 60), (8, 133 * 60)):
        begin = rng.randrange(month * 30 * 86400, (month + 1) * 30 * 86400) // STEP * STEP
        outages.append((begin, begin + length))

    return Scenario(
        "year",
        "prod-10s.yaml",
        "A year of 10-second probes: healthy but for about 130 lone or paired failed probes, some null and lost "
        f"samples, and two real outages (day {outages[0][0] // 86400}, 47 min; day {outages[1][0] // 86400}, "
        "2 h 13 min). Two cutovers, each about 30 s after the outage began, two automatic failbacks, no false "
        "cutover, and a bill far under an always-on standby.",
        probes(rng, YEAR, outages),
        {
            "cutovers": 2,
            "failbacks": 2,
            "decision_kinds": ["cutover", "failback", "cutover", "failback"],
            "detection_latency_s": {"count": 2, "min": 30, "max": 40},
            "false_cutovers": 0,
            "missed_faults": 0,
            "cost.saving_ratio": {"min": 0.6},
            "final_status": "PRIMARY",
        },
        gzipped=True,
    )


# --------------------------------------------------------------------------------------------- burst lanes
# CPU saturation of the on-prem platform (0..1), one sample a minute unless said. The levels (profiles/burst.yaml):
# size 2 past 0.80 (clear 0.65), size 4 past 0.90 (clear 0.78); out after 5 min, in after 20 min, 5 min between steps,
# a 90 s scale step; $0.16 per unit-hour. "Uncovered" is time the pressure needed more than the size in service.
MINUTE, DAY = 60, 86400
PRESSURE = "platform_cpu_saturation"


def _noisy(rng: random.Random, value: float, sigma: float = 0.01) -> float:
    return round(min(1.0, max(0.0, rng.gauss(value, sigma))), 3)


def _pressure(t: float, value: float) -> Line:
    return f'{{"t":{_num(t)},"signal":"{PRESSURE}","value":{value}}}\n'


def burst_diurnal(rng: random.Random) -> Scenario:
    base = 0.45

    def evening(t: int) -> float:
        day, clock = divmod(t, DAY)
        peak = 0.93 if day % 7 == 4 else 0.86  # one evening a week runs hotter
        ramp_up, top_until, ramp_down = 17.5 * 3600, 21.5 * 3600, 22.5 * 3600
        if clock < ramp_up or clock >= ramp_down:
            return base
        if clock < ramp_up + 3600:
            return base + (peak - base) * (clock - ramp_up) / 3600
        if clock < top_until:
            return peak
        return peak - (peak - base) * (clock - top_until) / 3600

    def lines() -> Iterator[Line]:
        for t in range(0, 30 * DAY + 1, MINUTE):
            yield _pressure(t, _noisy(rng, evening(t)))

    # An ordinary evening crosses 0.80 at 18:21: size 2 at 18:26; back under 0.65 at 22:01: size 0 at 22:21 (3.9 h at
    # size 2, $1.25). A hot one crosses 0.80 at 18:14 and 0.90 at 18:26: size 2 at 18:19, size 4 at 18:31; under 0.78
    # at 21:49 (size 2 at 22:09) and under 0.65 at 22:05 (size 0 at 22:29): $2.50. 26 × $1.25 + 4 × $2.50 = $42.6.
    # Uncovered: about 6.5 min (the 5 min window and the 90 s step) per level reached, 34 × 6.5 = 221 min; with no
    # burst, pressure past 0.80 from 18:21 to 21:39 (18:14 to 21:46 when hot): 26 × 198 + 4 × 212 = 5,996 min.
    return Scenario(
        "burst-diurnal",
        "burst.yaml",
        "30 days of evening peaks: CPU saturation 0.45 by day, 0.86 from 18:30 to 21:30 (0.93 one evening a week), "
        "with an hour's ramp each side. Size 2 every evening, size 4 on the 4 hot ones, back to 0 each night, for a "
        "tenth of what capacity provisioned for the peak all month costs.",
        lines(),
        {
            "scale_outs": 34,
            "scale_ins": 34,
            "refusals": 0,
            "max_size": 4,
            "policy_usd": {"min": 40, "max": 46},
            "peak_provisioned_usd": 460.8,
            "uncovered_pressure_min": {"min": 150, "max": 300},
            "no_burst_uncovered_pressure_min": {"min": 5800, "max": 6200},
        },
        gzipped=True,
    )


def burst_flash_crowd(rng: random.Random) -> Scenario:
    def lines() -> Iterator[Line]:
        for t in range(0, DAY + 1, 30):
            crowd = 10 * 3600 <= t < 10 * 3600 + 45 * MINUTE
            yield _pressure(t, _noisy(rng, 0.97 if crowd else 0.40))

    # Both levels confirmed 5 min in: straight to size 4 (10:05), 90 s to serve. Calm under 0.78 and under 0.65 from
    # 10:45: size 2 at 11:05, size 0 at 11:25. Uncovered 6.5 min of 45.
    return Scenario(
        "burst-flash-crowd",
        "burst.yaml",
        "A flash crowd: saturation jumps from 0.40 to 0.97 at 10:00 for 45 minutes. One scale-out straight to size 4, "
        "then one level in at a time after 20 calm minutes each.",
        lines(),
        {
            "scale_outs": 1,
            "scale_ins": 2,
            "max_size": 4,
            "uncovered_pressure_min": {"min": 6.0, "max": 7.5},
            "no_burst_uncovered_pressure_min": 45.0,
        },
    )


def burst_slow_ramp(rng: random.Random) -> Scenario:
    def lines() -> Iterator[Line]:
        for t in range(0, 7 * DAY + 1, MINUTE):
            yield _pressure(t, _noisy(rng, 0.50 + 0.45 * t / (7 * DAY)))

    # Saturation grows 0.50 → 0.95 over the week: 0.80 on day 4.7 (size 2), and 12 h later max_duration ends the burst
    # (size 0). It never calms below 0.65 again, so no burst starts after it: a shortage no burst should hide.
    return Scenario(
        "burst-slow-ramp",
        "burst.yaml",
        "Saturation ramps from 0.50 to 0.95 over a week: a capacity shortage, not a peak. The burst starts on day 4.7 "
        "and max_duration (12 h) ends it; no new burst starts while the pressure never calms.",
        lines(),
        {"scale_outs": 1, "scale_ins": 1, "max_size": 2, "refusals": 0},
    )


def burst_noisy(rng: random.Random) -> Scenario:
    def level(t: int) -> float:
        if t < DAY:
            return 0.76  # just under the 0.80 trip, σ 0.03: past it a quarter of the time, never for 5 min straight
        return 0.86 if t < DAY + 6 * 3600 else 0.55  # then 6 h past it, then calm

    def lines() -> Iterator[Line]:
        for t in range(0, 2 * DAY + 1, 30):
            yield _pressure(t, _noisy(rng, level(t), 0.03))

    return Scenario(
        "burst-noisy",
        "burst.yaml",
        "A noisy signal (σ 0.03): a day just under the trip, 6 hours just over it, then calm. One scale-out and one "
        "scale-in, no flapping in between.",
        lines(),
        {"scale_outs": 1, "scale_ins": 1, "max_size": 2},
    )


SCENARIOS: dict[str, Callable[[random.Random], Scenario]] = {
    "clean-outage": clean_outage,
    "flapping-wan": flapping_wan,
    "slow-degradation": slow_degradation,
    "prometheus-outage": prometheus_outage,
    "edge-partition": edge_partition,
    "maintenance-window": maintenance_window,
    "drill": drill,
    "year": year,
    "burst-diurnal": burst_diurnal,
    "burst-flash-crowd": burst_flash_crowd,
    "burst-slow-ramp": burst_slow_ramp,
    "burst-noisy": burst_noisy,
}


def write(scenario: Scenario, out: Path, seed: int) -> Path:
    trace = out / f"{scenario.name}.jsonl{'.gz' if scenario.gzipped else ''}"
    if scenario.gzipped:
        # No file name and mtime 0 in the gzip header: the same seed gives the same bytes.
        with trace.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as packed:
            batch: list[str] = []
            for line in scenario.lines:
                batch.append(line)
                if len(batch) >= 65536:
                    packed.write("".join(batch).encode())
                    batch.clear()
            packed.write("".join(batch).encode())
    else:
        with trace.open("w", encoding="utf-8", newline="\n") as text:
            text.writelines(scenario.lines)
    expect = {
        "description": scenario.description,
        "profile": f"../profiles/{scenario.profile}",
        "trace": trace.name,
        "args": scenario.args,
        "expect": scenario.expect,
    }
    header = f"# {scenario.name}: written by simulations/generate.py --seed {seed}; regenerate rather than edit.\n"
    (out / f"{scenario.name}.expect.yaml").write_text(header + yaml.safe_dump(expect, sort_keys=False, width=110))
    return trace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "scenarios")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="just these scenarios (repeatable)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or SCENARIOS:
        # One generator per scenario, seeded by (seed, name): adding a scenario never changes the others.
        trace = write(SCENARIOS[name](random.Random(f"{args.seed}:{name}")), args.out, args.seed)
        print(f"{trace}  {trace.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
