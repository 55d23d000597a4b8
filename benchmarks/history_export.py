"""Export rate of ``hyops-daemon history``: samples/s from a real Prometheus 2.42 into a gzipped simulator trace, beside
the floor measured in the same run against the same Prometheus:

- "fetch + decode (floor)": the same range queries, each answer read (bounded) and decoded from JSON, nothing more;
- "export": the whole path: the queries (each sent while the one before is turned into lines), series split by
  label, NaN dropped, lines merged in time order and gzipped to a file.

The history is tests/testbed/history.py's (three signals every 10 s, two of them from one labelled query that also
returns a series the profile does not read), written with ``promtool tsdb create-blocks-from openmetrics``.

    python -m benchmarks.history_export [--days 21] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hybridops_daemon.config.sources import PrometheusQuery
from hybridops_daemon.simulate.history import Plan, Prometheus, export, signal_queries, trace_writer
from tests.testbed.history import history_prometheus, weeks_of_history

SIGNALS = ("primary_up", "replica_lag_s", "site_up{site=ams}")
QUERIES = [
    PrometheusQuery(signal="primary_up", query="primary_up"),
    PrometheusQuery(signal="replica_lag_s", query="replica_lag_seconds"),
    PrometheusQuery(signal="site_up", query="site_up", label="site"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 days, once: a check that it runs, not a figure")
    args = parser.parse_args()
    days, repeat = (2, 1) if args.quick else (args.days, args.repeat)
    with tempfile.TemporaryDirectory(prefix="history-bench-") as tmp:
        workdir = Path(tmp)
        history = weeks_of_history(int(time.time()) - 7200, days=days)
        began = time.perf_counter()
        server = history_prometheus(workdir, history)
        built = time.perf_counter() - began
        try:
            plan = Plan(history.start * 1000, history.end * 1000, history.step * 1000, signal_queries(SIGNALS, QUERIES), None)
            floor, whole, samples = [], [], 0
            for _ in range(repeat):  # interleaved, so both see the same machine conditions
                client = Prometheus(server.url, timeout=60.0, retries=0)
                began = time.perf_counter()
                for first, last in plan.chunks():
                    for item in plan.wanted:
                        client.range(item.query.query, item.query.signal, first, last, plan.step_ms)
                floor.append(time.perf_counter() - began)
                client.close()
                client = Prometheus(server.url, timeout=60.0, retries=0)
                with trace_writer(workdir / "trace.jsonl.gz") as out:
                    stats = export(plan, client, out)
                whole.append(stats.seconds)
                samples = stats.samples
                client.close()
        finally:
            server.stop()
    print(
        f"history export: {days} days of 10 s history, {len(SIGNALS)} signals ({samples:,} samples, "
        f"{len(list(plan.chunks())) * len(plan.wanted)} requests), Prometheus 2.42 built in {built:.1f}s; best of {repeat}"
    )
    for name, times in (("fetch + decode (floor)", floor), ("export", whole)):
        best = min(times)
        print(f"  {name:24} {samples / best:>10,.0f} samples/s   in {best:6.2f} s (median {statistics.median(times):.2f} s)")


if __name__ == "__main__":
    main()
