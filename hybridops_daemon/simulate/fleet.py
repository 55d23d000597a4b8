"""The fleet backtest's work: one task per site (a trace), which parses its trace once and replays every variant of the
profile on it, on any ``concurrent.futures.Executor``: local worker processes (``ProcessPoolExecutor``) by default,
or a Dask cluster (``distributed.Client.get_executor()``) when a scheduler address is given. Nothing here knows
which: the choice is the executor handed to :func:`run_fleet`.

A task returns a :class:`SiteResult` of a few hundred bytes per variant (the figures the fleet aggregates, one
latency per fault), never the samples or the decisions: a result crosses a pipe or the network. A site whose trace
is invalid returns its ``file:line`` error instead; the other sites run on.

Dask is imported only by :func:`dask_executor`: the daemon and a local backtest run without it.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import resource
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.simulate.engine import replay
from hybridops_daemon.simulate.report import result
from hybridops_daemon.simulate.trace import TraceError, load_trace

TRACE_SUFFIXES = (".jsonl", ".jsonl.gz", ".csv", ".csv.gz")


class FleetFailed(Exception):
    """The fleet could not run to its end (no cluster, workers lost, stalled): the message says why."""


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """What every task replays: the variants of the profile, and simulate's own options."""

    grid: tuple[tuple[dict[str, str], Profile], ...]
    lane: str | None
    node: str
    peer: str
    tick: float
    grace: float


@dataclass(frozen=True, slots=True)
class SiteVariant:
    """One variant's figures on one site: those of simulate's ``--json`` output that the fleet aggregates."""

    cutovers: int
    failbacks: int
    labelled: bool  # the trace has ground truth: faults, false cutovers and missed faults mean something
    faults: int
    false_cutovers: int
    missed_faults: int
    latencies: tuple[float | None, ...]  # one per fault, None when missed
    standby_s: float
    policy_usd: float
    always_on_usd: float
    saving_ratio: float | None

    @classmethod
    def of(cls, out: dict[str, Any]) -> SiteVariant:
        """From simulate's output object for one replay (``report.result``), so the two cannot differ."""
        labelled = "faults" in out
        cost = out["cost"]
        return cls(
            cutovers=out["cutovers"],
            failbacks=out["failbacks"],
            labelled=labelled,
            faults=len(out["faults"]) if labelled else 0,
            false_cutovers=out["false_cutovers"] if labelled else 0,
            missed_faults=out["missed_faults"] if labelled else 0,
            latencies=tuple(out["detection_latency_s"]) if labelled else (),
            standby_s=out["time_on_standby_s"],
            policy_usd=cost["policy_usd"],
            always_on_usd=cost["always_on_usd"],
            saving_ratio=cost["saving_ratio"],
        )


@dataclass(frozen=True, slots=True)
class SiteResult:
    index: int  # the site's place in the fleet: results are aggregated in this order, whatever order they came in
    trace: str
    error: str | None = None  # `file:line: message` of an invalid trace (or why the task failed)
    samples: int = 0
    duration_s: float = 0.0
    variants: tuple[SiteVariant, ...] = ()
    parse_s: float = 0.0
    busy_s: float = 0.0  # parse and every replay, on the worker
    decide_calls: int = 0
    worker: str = ""  # host:pid of the process that ran it
    peak_rss_kib: int = 0  # that process's peak resident set so far

    @property
    def ok(self) -> bool:
        return self.error is None


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_site(spec: FleetSpec, index: int, trace_path: str) -> SiteResult:
    """The task: parse the site's trace once, replay every variant on it. A module-level function, so that
    it pickles by reference (the workers import this module)."""
    began = time.perf_counter()
    try:
        trace = load_trace(Path(trace_path), trace_path)
    except TraceError as exc:
        return SiteResult(index, trace_path, error=str(exc), worker=_worker())
    parsed = time.perf_counter()
    rows: list[SiteVariant] = []
    calls = 0
    for _, profile in spec.grid:
        lane = spec.lane or profile.name
        replayed = replay(profile, trace, lane=lane, node=spec.node, peer=spec.peer, tick=spec.tick)
        rows.append(SiteVariant.of(result(profile, trace, replayed, tick=spec.tick, grace=spec.grace)))
        calls += replayed.decide_calls
    return SiteResult(
        index,
        trace_path,
        samples=len(trace),
        duration_s=trace.duration,
        variants=tuple(rows),
        parse_s=parsed - began,
        busy_s=time.perf_counter() - began,
        decide_calls=calls,
        worker=_worker(),
        peak_rss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,  # KiB on Linux
    )


def run_fleet(
    executor: cf.Executor,
    spec: FleetSpec,
    sites: Sequence[str],
    *,
    stall_timeout: float,
    on_progress: Callable[[int, int], None] | None = None,
    poll: float = 0.5,
) -> list[SiteResult]:
    """Every site on ``executor``; the results in the order of ``sites``. ``on_progress(done, total)`` is called
    after each site and every ``poll`` seconds. Raises FleetFailed when the executor breaks or no site finishes for
    ``stall_timeout`` seconds (a cluster whose workers are gone waits for them forever)."""
    futures = {executor.submit(run_site, spec, index, path): index for index, path in enumerate(sites)}
    results: dict[int, SiteResult] = {}
    pending = set(futures)
    last_done = time.monotonic()
    try:
        while pending:
            done, pending = cf.wait(pending, timeout=poll, return_when=cf.FIRST_COMPLETED)
            for future in done:
                index = futures[future]
                results[index] = _collected(future, index, sites[index])
            now = time.monotonic()
            if done:
                last_done = now
            elif now - last_done > stall_timeout:
                raise FleetFailed(
                    f"no site finished in {stall_timeout:g} s ({len(results)} of {len(sites)} done): are the workers up?"
                )
            if on_progress is not None:
                on_progress(len(results), len(sites))
    finally:
        for future in pending:
            future.cancel()
    return [results[index] for index in range(len(sites))]


def _collected(future: cf.Future[SiteResult], index: int, path: str) -> SiteResult:
    try:
        return future.result(timeout=0)
    except BrokenProcessPool as exc:
        raise FleetFailed(f"a local worker process died ({exc}); the fleet stopped") from None
    except Exception as exc:  # one site's failure (a task that raised, Dask's KilledWorker) is that site's alone
        return SiteResult(index, path, error=f"{path}: replay failed: {type(exc).__name__}: {exc}")


def _quiet_on_interrupt() -> None:
    """A worker's SIGINT handler: Ctrl-C reaches the whole process group, and the command reports it once; a worker
    holds nothing worth saving, so it ends without a traceback of its own."""
    signal.signal(signal.SIGINT, lambda _signum, _frame: os._exit(130))


@contextmanager
def local_executor(workers: int) -> Iterator[cf.Executor]:
    pool = cf.ProcessPoolExecutor(max_workers=workers, initializer=_quiet_on_interrupt)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def dask_executor(address: str, timeout: float) -> Iterator[cf.Executor]:
    """An executor on the Dask cluster whose scheduler is at ``address``. Every worker must import this package (the
    same version: tasks are pickled by reference). Raises FleetFailed without Dask or without a scheduler."""
    try:
        from distributed import Client
        from distributed.comm.addressing import get_address_host_port
    except ImportError:
        raise FleetFailed("--scheduler needs Dask: pip install 'dask[distributed]' (here and on every worker)") from None
    try:
        # Checked before Client(): a Client that fails on a bad address hangs the interpreter's exit (its __del__ waits
        # for a loop that is gone; distributed 2026.8).
        get_address_host_port(address)
    except ValueError as exc:
        raise FleetFailed(f"--scheduler {address}: {exc} (expected tcp://HOST:PORT)") from None
    try:
        client = Client(address, timeout=timeout, set_as_default=False)  # type: ignore[no-untyped-call]  # distributed is untyped
    except (OSError, TimeoutError) as exc:
        raise FleetFailed(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    try:
        # pure=False: a task's key is not a hash of its arguments (every site's is unique anyway; hashing 20 profiles
        # per submit would only cost time).
        yield client.get_executor(pure=False)  # type: ignore[no-untyped-call]
    finally:
        client.close(timeout=timeout)  # type: ignore[no-untyped-call]


def expand(patterns: Sequence[str]) -> list[str]:
    """The traces ``--traces`` names: a directory's trace files (``*.jsonl``, ``*.csv``, either ``.gz``; not
    recursive), or a glob expanded here (``**`` recurses), or a file; sorted, each once. Raises ValueError when a
    pattern names nothing."""
    import glob

    found: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matched = sorted(str(p) for p in path.iterdir() if p.is_file() and p.name.endswith(TRACE_SUFFIXES))
        elif any(char in pattern for char in "*?["):
            matched = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        else:
            matched = [pattern]  # a file: if it is missing, its site says so (file not found), as an invalid trace
        if not matched:
            raise ValueError(f"--traces {pattern}: no trace file there")
        found.extend(matched)
    return list(dict.fromkeys(found))
