"""``hyops-daemon history``: a profile's signals, read back from Prometheus over a span of time, as a simulator trace.

Each signal the profile reads is one PromQL range query (from the daemon config's ``prometheus`` sources, or a
``--queries`` file of the same shape), evaluated every ``--step``: at each step Prometheus answers what the daemon's
instant query would have read at that moment, its lookback included (a series' last value answers for up to 5
minutes after its last sample, unless it was marked stale). A step with no answer is no line in the trace: absent
data stays absent (UNKNOWN in the replay once older than the signal's ``max_age``), never interpolated. ``empty:
down`` is not reproduced: in history an empty answer cannot tell a dead target from a span Prometheus holds nothing
for, and reading the latter as "down" would invent outages.

Requests are cut so that none asks for more than 11,000 points per series (Prometheus' own limit), each has a
timeout, and a failure that may pass (no connection, a timeout, HTTP 429 or 5xx) is retried a bounded number of
times with doubling waits. Answers are read up to a size bound. Incident windows (``--incidents``, a file of
intervals: simulate/truth.py) become the trace's fault start/end lines.
"""

from __future__ import annotations

import gzip
import json
import math
import sys
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import requests
from pydantic import Field

from hybridops_daemon import limits
from hybridops_daemon.config.base import Strict
from hybridops_daemon.config.loader import ConfigInvalid, load_daemon_config, load_model, load_profile
from hybridops_daemon.config.sources import PrometheusQuery, PrometheusSource
from hybridops_daemon.drivers.registry import DRIVER_MODULES
from hybridops_daemon.durations import parse_duration
from hybridops_daemon.retry import Backoff
from hybridops_daemon.simulate.report import span
from hybridops_daemon.simulate.trace import JSON_NUMBER
from hybridops_daemon.simulate.truth import Interval, IntervalError, load_intervals, merge, wall_clock

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by SIGINT

MAX_POINTS_PER_REQUEST: Final = 11_000  # per series; Prometheus refuses a range query of more
MAX_REPLY_BYTES: Final = 64 * 1024 * limits.KIB  # ~25 bytes a point: 11,000 points of over 200 series
REPLY: Final = limits.JsonLimits(max_bytes=MAX_REPLY_BYTES, max_depth=8, max_items=MAX_POINTS_PER_REQUEST + 1)
CONNECT_TIMEOUT_S: Final = 5.0
FIRST_BACKOFF_S: Final = 1.0  # doubled after each failed attempt
_PROGRESS_EVERY_S: Final = 0.2
_VALUE_CACHE: Final = 65_536  # distinct value texts remembered; a series of ever-new values simply misses


class HistoryError(Exception):
    """What the operator reads on stderr (one line, no traceback), and the exit status."""

    def __init__(self, message: str, code: int = EXIT_INVALID) -> None:
        super().__init__(message)
        self.code = code


class _Transient(Exception):
    """A failure a later attempt may not meet: no connection, a timeout, HTTP 429 or 5xx."""


class QueryFile(Strict):
    """``--queries FILE``: the ``queries:`` of a daemon config's prometheus source, on their own."""

    queries: tuple[PrometheusQuery, ...] = Field(min_length=1)


@dataclass(frozen=True)
class Wanted:
    """One query and the trace signals it gives: by the value of its ``label`` (the key None when it has none)."""

    query: PrometheusQuery
    names: dict[str | None, str]


@dataclass
class Stats:
    samples: int = 0
    dropped: int = 0  # NaN and ±Inf points: the daemon drops them as malformed, so the trace does too
    requests: int = 0
    seconds: float = 0.0
    silent: set[str] = field(default_factory=set)  # signals with no point at all


def signal_queries(wanted: Iterable[str], queries: Iterable[PrometheusQuery]) -> list[Wanted]:
    """The queries that give the ``wanted`` signals; of two for the same signal and label the later one counts.
    Raises HistoryError naming the signals no query gives."""
    by_key = {(query.signal, query.label): query for query in queries}
    names = sorted(set(wanted))
    found: list[Wanted] = []
    for query in by_key.values():
        given: dict[str | None, str] = {}
        if query.label is None:
            given.update({None: query.signal} if query.signal in names else {})
        else:
            prefix = f"{query.signal}{{{query.label}="  # signals.base.labelled(): signal{label=value}
            given.update({name[len(prefix) : -1]: name for name in names if name.startswith(prefix) and name.endswith("}")})
        if given:
            found.append(Wanted(query, given))
    covered = {name for item in found for name in item.names.values()}
    missing = [name for name in names if name not in covered]
    if missing:
        raise HistoryError(
            f"no query for signal(s) {', '.join(missing)} that the profile reads: map them in --queries FILE "
            "(queries: [{signal: NAME, query: PROMQL}]) or in the --config file's prometheus source"
        )
    return found


class Prometheus:
    """Range queries against one Prometheus, each bounded in time and size and retried while it may pass."""

    def __init__(self, url: str, timeout: float, retries: int) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HistoryError(f"--prometheus {shown_url(url)}: expected an http:// or https:// URL")
        self.endpoint = url.rstrip("/") + "/api/v1/query_range"
        self.shown = shown_url(url)
        self.timeout = timeout
        self.retries = retries
        self.session = requests.Session()
        self.requests = 0

    def close(self) -> None:
        self.session.close()

    def range(self, query: str, signal: str, start_ms: int, end_ms: int, step_ms: int) -> list[Any]:
        """``data.result`` of one range query (a matrix). Raises HistoryError."""
        params = {
            "query": query,
            "start": _seconds(start_ms),
            "end": _seconds(end_ms),
            "step": _seconds(step_ms),
            "timeout": f"{self.timeout:g}s",  # Prometheus gives up on its side too, not only we on ours
        }
        backoff = Backoff(FIRST_BACKOFF_S, math.inf)  # 1 s, 2 s, 4 s…: the project's own doubling, uncapped
        for attempt in range(1, self.retries + 2):
            try:
                return self._once(params, signal)
            except _Transient as exc:
                if attempt > self.retries:
                    tries = f"{attempt} attempt{'s' * (attempt > 1)}"
                    raise HistoryError(f"Prometheus at {self.shown}: {exc} ({tries})", EXIT_FAILED) from None
            time.sleep(backoff.next())
        raise AssertionError("unreachable")  # the loop returns or raises

    def _once(self, params: dict[str, str], signal: str) -> list[Any]:
        self.requests += 1
        deadline = time.monotonic() + self.timeout
        try:
            with self.session.get(self.endpoint, params=params, timeout=(CONNECT_TIMEOUT_S, self.timeout), stream=True) as answer:
                body = _bounded(answer, deadline, signal)
                status = answer.status_code
        except requests.Timeout:
            raise _Transient(f"no answer within {self.timeout:g}s") from None
        except requests.ConnectionError:
            # requests' text quotes the URL, which may carry credentials: the kind of failure only
            raise _Transient("unreachable (connection failed)") from None
        except requests.RequestException as exc:
            raise _Transient(f"request failed ({type(exc).__name__})") from None
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}")
        document = _json(body)
        if status in (400, 422):  # bad_data (a parse error) or an execution error: the query is at fault
            error = document.get("error") if isinstance(document, dict) else None
            detail = f": {error[:300]}" if isinstance(error, str) else ""
            raise HistoryError(f"Prometheus rejected the query for {signal} (HTTP {status}{detail})")
        if status != 200 or not isinstance(document, dict):
            raise HistoryError(f"Prometheus at {self.shown} answered HTTP {status}: is it Prometheus' API?", EXIT_FAILED)
        data = document.get("data")
        if document.get("status") != "success" or not isinstance(data, dict) or data.get("resultType") != "matrix":
            raise HistoryError(f"Prometheus at {self.shown}: unexpected answer to the query for {signal}", EXIT_FAILED)
        result = data.get("result")
        if not isinstance(result, list):
            raise HistoryError(f"Prometheus at {self.shown}: unexpected answer to the query for {signal}", EXIT_FAILED)
        return result


def _bounded(answer: requests.Response, deadline: float, signal: str) -> bytes:
    """The body, refused past MAX_REPLY_BYTES or the deadline (a read timeout bounds each read, not the whole)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in answer.iter_content(1 << 16):
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise HistoryError(
                f"the answer to the query for {signal} is over {MAX_REPLY_BYTES:,} bytes: does it return many series? "
                "aggregate them in PromQL",
                EXIT_FAILED,
            )
        if time.monotonic() > deadline:
            raise requests.Timeout()
        chunks.append(chunk)
    return b"".join(chunks)


def _json(body: bytes) -> Any:
    try:
        return limits.loads(body, REPLY, "Prometheus answer")
    except limits.InputRejected as exc:
        raise HistoryError(str(exc), EXIT_FAILED) from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError: a proxy's page, not Prometheus
        return None


def shown_url(url: str) -> str:
    """The URL without credentials: it goes into messages and logs."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _seconds(ms: int) -> str:
    """Milliseconds as a JSON number of seconds: ``12``, ``12.5``."""
    whole, rest = divmod(ms, 1000)
    return str(whole) if not rest else f"{whole}.{rest:03d}".rstrip("0")


# --------------------------------------------------------------------------------------------- the export


@dataclass(frozen=True)
class Plan:
    start_ms: int
    end_ms: int
    step_ms: int
    wanted: list[Wanted]
    faults: list[Interval] | None  # offsets from the start; None: no --incidents, the trace claims no ground truth

    def chunks(self) -> Iterator[tuple[int, int]]:
        """(first, last) evaluation times of each request, on the grid start + k·step, at most 11,000 a request."""
        first = self.start_ms
        while first <= self.end_ms:
            last = min(self.end_ms, first + (MAX_POINTS_PER_REQUEST - 1) * self.step_ms)
            yield first, last
            first = last + self.step_ms

    @property
    def points(self) -> int:
        return (self.end_ms - self.start_ms) // self.step_ms + 1


def export(plan: Plan, prometheus: Prometheus, out: IO[bytes], progress: IO[str] | None = None) -> Stats:
    """Write the trace to ``out``, one chunk of time at a time (every signal's points of it, in time order)."""
    stats = Stats()
    began = time.monotonic()
    order = sorted((name, i, j) for i, item in enumerate(plan.wanted) for j, name in enumerate(item.names.values()))
    prefixes = {name: f',"signal":{json.dumps(name)},"value":' for name, _i, _j in order}
    texts: dict[str, str | None] = {}
    rank = {name: index for index, (name, _i, _j) in enumerate(order)}
    marks = _marks(plan.faults or [])
    label_first = plan.faults is not None  # an --incidents trace is labelled even when no incident falls in it
    seen: set[str] = set()
    chunks = list(plan.chunks())
    bar = _Progress(progress, len(chunks) * len(plan.wanted))
    answers = _ahead(prometheus, [(item, first, last, plan.step_ms) for first, last in chunks for item in plan.wanted])
    for _chunk in chunks:
        points: list[tuple[int, int, str]] = []
        for item in plan.wanted:
            result = next(answers)
            for name, values in _series(result, item):
                seen.add(name)
                stats.dropped += _collect(values, plan.start_ms, rank[name], prefixes[name], texts, points)
            bar.advance(stats.samples + len(points))
        points.sort()
        lines: list[str] = []
        for offset_ms, _rank, line in points:
            while marks and marks[0][0] <= offset_ms:
                lines.append(marks.pop(0)[1])
            if label_first:
                line = line[:-2] + ',"labels":{"fault":false}}\n'
                label_first = False
            lines.append(line)
        out.write("".join(lines).encode())
        stats.samples += len(points)
    out.write("".join(line for _t, line in marks).encode())  # faults that end (or start) after the last sample
    bar.done()
    stats.requests = prometheus.requests
    stats.seconds = time.monotonic() - began
    stats.silent = {name for name, _i, _j in order} - seen
    return stats


def _ahead(prometheus: Prometheus, requests: list[tuple[Wanted, int, int, int]]) -> Iterator[list[Any]]:
    """The answers in order, each request sent while the one before is turned into lines: Prometheus (another
    process) evaluates and encodes while we decode. One in flight at a time: memory stays at two answers."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="history")  # one thread: the session is never shared
    try:

        def send(index: int) -> Future[list[Any]]:
            item, first, last, step_ms = requests[index]
            return pool.submit(prometheus.range, item.query.query, next(iter(item.names.values())), first, last, step_ms)

        pending = send(0) if requests else None
        for index in range(len(requests)):
            assert pending is not None
            current, pending = pending, send(index + 1) if index + 1 < len(requests) else None
            yield current.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a request in flight ends within its timeout


def _series(result: list[Any], item: Wanted) -> Iterator[tuple[str, list[Any]]]:
    """(trace signal, its ``values``) of each series of a matrix that gives a wanted signal. Raises HistoryError."""
    label = item.query.label
    given: set[str | None] = set()
    for series in result:
        metric = series.get("metric") if isinstance(series, dict) else None
        values = series.get("values") if isinstance(series, dict) else None
        if not isinstance(metric, dict) or not isinstance(values, list):
            problem = f"unexpected answer to the query for {item.query.signal}: a series without metric or values"
            raise HistoryError(problem, EXIT_FAILED)
        key = None if label is None else metric.get(label)
        if key not in item.names:
            continue  # a label value the profile does not read (or a series without the label)
        name = item.names[key]
        if key in given:
            split = f"by {label}" if label else "(max(...)), or split it with `label`"
            raise HistoryError(f"the query for {name} returns several series: aggregate it in PromQL {split}")
        given.add(key)
        yield name, values


def _collect(
    values: list[Any], start_ms: int, rank: int, prefix: str, texts: dict[str, str | None], points: list[tuple[int, int, str]]
) -> int:
    """Append one series' points as trace lines; returns how many were dropped (NaN, ±Inf).

    ``texts`` remembers each value text's JSON form (None: dropped): most series repeat a few values (1, 0), so the
    check runs once per distinct text, not once per point."""
    dropped = 0
    for point in values:
        try:
            at, text = point
            offset_ms = round(at * 1000) - start_ms
            value = texts[text] if text in texts else _value_text(text, texts)
        except (TypeError, ValueError):
            raise HistoryError(f'unexpected answer: a point is {str(point)[:60]}, not [time, "value"]', EXIT_FAILED) from None
        if value is None:
            dropped += 1
            continue
        if offset_ms < 0:  # a range query answers on its own grid only; a t before the trace start would be a lie
            raise HistoryError(f"unexpected answer: a point at {at} is before --start", EXIT_FAILED)
        seconds, rest = divmod(offset_ms, 1000)
        t = _seconds(offset_ms) if rest else str(seconds)
        points.append((offset_ms, rank, f'{{"t":{t}{prefix}{value}}}\n'))
    return dropped


def _value_text(text: str, texts: dict[str, str | None]) -> str | None:
    """A Prometheus value as a JSON number, or None for NaN and ±Inf ("NaN", "+Inf": JSON has no number for them)."""
    if not isinstance(text, str):
        raise TypeError(text)
    if JSON_NUMBER.fullmatch(text.encode()):
        value: str | None = text
    else:
        number = float(text)  # ValueError: not a number at all
        value = repr(number) if math.isfinite(number) else None
    if len(texts) < _VALUE_CACHE:
        texts[text] = value
    return value


def _marks(faults: list[Interval]) -> list[tuple[int, str]]:
    marks: list[tuple[int, str]] = []
    for start, end in faults:
        for at, kind in ((start, "start"), (end, "end")):
            ms = round(at * 1000)
            marks.append((ms, f'{{"t":{_seconds(ms)},"fault":"{kind}"}}\n'))
    return marks


class _Progress:
    """A one-line bar on stderr, only when that is a terminal: a log file or a pipe gets the summary alone."""

    def __init__(self, stream: IO[str] | None, total: int) -> None:
        self.stream = stream if stream is not None and stream.isatty() else None
        self.total = max(total, 1)
        self.done_requests = 0
        self.shown_at = 0.0

    def advance(self, samples: int) -> None:
        self.done_requests += 1
        now = time.monotonic()
        if self.stream is None or (now - self.shown_at < _PROGRESS_EVERY_S and self.done_requests < self.total):
            return
        self.shown_at = now
        share = self.done_requests / self.total
        bar = "#" * int(share * 30)
        self.stream.write(f"\rhistory [{bar:<30}] {share:4.0%} {samples:,} samples")
        self.stream.flush()

    def done(self) -> None:
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()


# --------------------------------------------------------------------------------------------- the command


def run_history(
    *,
    prometheus: str,
    profile_path: Path,
    start: str,
    end: str,
    step: str,
    output: Path | None,
    incidents_path: Path | None,
    queries_path: Path | None,
    config_path: Path | None,
    timeout: str,
    retries: int,
) -> int:
    """``hyops-daemon history``: validate everything first (exit 2), then export (exit 1 if Prometheus fails us)."""
    try:
        plan = _plan(profile_path, start, end, step, incidents_path, queries_path, config_path)
        timeout_s = _duration(timeout, "--timeout")
        if retries < 0 or retries > 10:
            raise HistoryError("--retries takes 0 to 10")
        client = Prometheus(prometheus, timeout_s, retries)
        try:
            with trace_writer(output) as out:
                stats = export(plan, client, out, sys.stderr)
        finally:
            client.close()
    except ConfigInvalid as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return EXIT_INVALID
    except HistoryError as exc:
        print(f"hyops-daemon history: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:  # a long export stopped by hand: say what is left, not where Python was
        print(f"\nhyops-daemon history: interrupted{f'; {output} not written' if output else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    rate = stats.samples / stats.seconds if stats.seconds > 0 else 0.0
    faults = "no ground truth" if plan.faults is None else f"{len(plan.faults)} incident window(s) as faults"
    print(
        f"history: {stats.samples:,} samples of {sum(len(w.names) for w in plan.wanted)} signal(s) over "
        f"{span((plan.end_ms - plan.start_ms) / 1000)} every {span(plan.step_ms / 1000)}, {faults}; "
        f"{stats.requests} request(s) in {stats.seconds:.1f}s ({rate:,.0f} samples/s) to {output or 'stdout'}",
        file=sys.stderr,
    )
    if stats.dropped:
        print(f"history: {stats.dropped:,} NaN or infinite point(s) left out, as the daemon drops them", file=sys.stderr)
    for name in sorted(stats.silent):
        print(f"history: no data for {name}: it reads UNKNOWN throughout the replay", file=sys.stderr)
    return EXIT_OK


def _plan(
    profile_path: Path,
    start: str,
    end: str,
    step: str,
    incidents_path: Path | None,
    queries_path: Path | None,
    config_path: Path | None,
) -> Plan:
    try:
        start_s, end_s = wall_clock(start), wall_clock(end)
    except ValueError as exc:
        raise HistoryError(f"--start/--end: {exc}") from None
    if not start_s < end_s:
        raise HistoryError(f"--start {start} must be before --end {end}")
    step_ms = round(_duration(step, "--step") * 1000)
    if step_ms < 1:
        raise HistoryError("--step must be at least 1ms")
    profile = load_profile(profile_path, DRIVER_MODULES)
    queries: list[PrometheusQuery] = []
    if config_path is not None:
        sources = [s for s in load_daemon_config(config_path).sources if isinstance(s, PrometheusSource)]
        if not sources:
            raise HistoryError(f"{config_path}: the config has no prometheus source to take the queries from")
        queries.extend(query for source in sources for query in source.queries)
    if queries_path is not None:
        queries.extend(load_model(queries_path, QueryFile).queries)  # after the config's: they take precedence
    if not queries:
        raise HistoryError("give the queries: --config DAEMON_CONFIG (its prometheus source) or --queries FILE")
    wanted = signal_queries(profile.signals, queries)
    start_ms, end_ms = round(start_s * 1000), round(end_s * 1000)
    plan = Plan(start_ms, end_ms, step_ms, wanted, None)
    signals = sum(len(item.names) for item in wanted)
    if plan.points * signals > limits.MAX_TRACE_SAMPLES:
        raise HistoryError(
            f"{plan.points:,} steps of {signals} signal(s) would be over the simulator's {limits.MAX_TRACE_SAMPLES:,} "
            "samples: shorten the span or lengthen --step"
        )
    if incidents_path is None:
        return plan
    try:
        incidents = load_intervals(incidents_path, wall_clock)
    except IntervalError as exc:
        raise HistoryError(str(exc)) from None
    duration = (end_ms - start_ms) / 1000
    inside = [(max(0.0, a - start_s), min(duration, b - start_s)) for (a, b), _line in incidents]
    return Plan(start_ms, end_ms, step_ms, wanted, merge((a, b) for a, b in inside if a < b))


def _duration(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        raise HistoryError(f'{option} takes a duration like "10s" or "1m"') from None


@contextmanager
def trace_writer(path: Path | None) -> Iterator[IO[bytes]]:
    """stdout, or ``path`` (gzipped when it ends in .gz) written whole or not at all: beside it as ``.part``,
    renamed when the export succeeded, removed when it failed."""
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    part = path.with_name(path.name + ".part")
    try:
        raw = part.open("wb")
    except OSError as exc:
        raise HistoryError(f"cannot write {path}: {exc.strerror or exc}") from None
    done = False
    try:
        stream: IO[bytes] = raw
        if path.name.endswith(".gz"):
            # No name (it would be the .part one) and mtime 0: the same history gives the same bytes. Level 6,
            # zlib's own default: gzip's 9 took longer than the rest of an export put together, for ~1% of size.
            stream = gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0)  # type: ignore[assignment]
        try:
            yield stream
        finally:
            stream.close()
            raw.close()
        part.replace(path)
        done = True
    except OSError as exc:
        raise HistoryError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if not done:
            part.unlink(missing_ok=True)
