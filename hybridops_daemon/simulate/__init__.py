"""The simulator: replay a signal trace through the daemon's own ObservationStore and decide(), on simulated time,
and measure what the policy would have done (decisions, detection latency, false cutovers) and cost.

``hyops-daemon simulate`` is the command; these are its parts, for scripts and benchmarks.
"""

from hybridops_daemon.simulate.cost import Cost, always_on_rate, cost_of
from hybridops_daemon.simulate.engine import Replay, SimDecision, SimRun, replay
from hybridops_daemon.simulate.report import Scoring, render, render_table, result, score
from hybridops_daemon.simulate.sweep import Axis, SweepError, parse_axes, parse_axis, variants
from hybridops_daemon.simulate.trace import Trace, TraceCommand, TraceError, load_trace

__all__ = [
    "Axis",
    "Cost",
    "Replay",
    "Scoring",
    "SimDecision",
    "SimRun",
    "SweepError",
    "Trace",
    "TraceCommand",
    "TraceError",
    "always_on_rate",
    "cost_of",
    "load_trace",
    "parse_axes",
    "parse_axis",
    "render",
    "render_table",
    "replay",
    "result",
    "score",
    "variants",
]
