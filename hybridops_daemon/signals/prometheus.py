"""The Prometheus source: instant PromQL queries on a fixed cadence, one sample per query (or per label value).

What a result means:

- one series → its value, ``observed_at`` = the timestamp Prometheus gave the result. For an instant query that
  is the evaluation time, not the scrape time: a value can be as old as Prometheus' lookback (5 min by
  default) unless the series was marked stale, which Prometheus does on the first failed scrape of its target.
- with ``label`` set → one sample per series, named ``signal{label=value}``. A label value seen before and now
  missing from the result counts as an empty result for that labelled signal (see ``empty``).
- an empty result → ``empty: down`` emits 0.0: the series vanished because its target died (stale-marked),
  which is evidence the target is down, not a lack of evidence; ``empty: unknown`` emits None (no data).
- NaN/±Inf, a range vector, several series without ``label``, a series lacking ``label``, a query Prometheus
  rejects (HTTP 400/422: syntax or execution error) → malformed: counted, logged once, dropped; the other
  queries still run.

UNKNOWN for this source: a signal reads UNKNOWN when its last sample is older than its ``max_age`` (decided by
the observation store), which happens when Prometheus is unreachable or answers with an error (nothing is
emitted for any query; the poll backs off), when the query is malformed (nothing emitted for it), or when
an ``empty: unknown`` query returns nothing (None is emitted: explicitly "no data").
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import re
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from hybridops_daemon.config.sources import PrometheusQuery, PrometheusSource
from hybridops_daemon.signals.base import PollingSource, SourceContext, UpstreamError, labelled
from hybridops_daemon.signals.sample import Sample

# HTTP statuses with which Prometheus blames the query, not itself: 400 bad_data (parse error), 422 execution.
_QUERY_AT_FAULT = frozenset({400, 422})
_HTTP_ERROR = re.compile(r"^HTTP Status Code (\d+) \((.*)\)$", re.DOTALL)


class Malformed(Exception):
    """One query's result cannot be turned into samples; the message says why."""


class PrometheusPoller(PollingSource):
    """Instant queries against one Prometheus. Use as ``async with PrometheusPoller(spec, edge) as p: await p.run(emit)``."""

    @classmethod
    def from_context(cls, spec: PrometheusSource, context: SourceContext) -> Self:
        return cls(spec, context.node, context.clock)

    def __init__(self, spec: PrometheusSource, edge: str, clock: Callable[[], float] = time.time) -> None:
        super().__init__(spec.name, edge, spec.interval, spec.timeout, clock)
        self.spec = spec
        self._client: PrometheusConnect | None = None
        # Per labelled query: the label values seen so far, so a vanished one reads as an empty result.
        self._seen: dict[int, set[str]] = {i: set() for i, q in enumerate(spec.queries) if q.label is not None}

    async def __aenter__(self) -> Self:
        # No retries inside the client (the default retries 3× with backoff, far past our timeout):
        # PollingSource owns retry and backoff, and counts each failure.
        self._client = PrometheusConnect(url=self.spec.url, disable_ssl=False, retry=Retry(total=0, raise_on_status=False))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def poll(self) -> list[Sample]:
        """All queries, one after the other, within one ``spec.timeout`` budget (PollingSource enforces it)."""
        if self._client is None:
            raise RuntimeError("PrometheusPoller.poll called outside `async with`")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        samples: list[Sample] = []
        clean = True
        for index, query in enumerate(self.spec.queries):
            # A thread cannot be cancelled: the request's own timeout (what is left of the budget) makes sure
            # it ends about when PollingSource's timeout gives up on it, instead of lingering.
            budget = max(0.05, deadline - loop.time())
            try:
                result = await asyncio.to_thread(_instant_query, self._client, query.query, budget)
            except PrometheusApiClientException as exc:
                status, detail = _http_error(exc)
                if status in _QUERY_AT_FAULT:
                    self.health.malformed_input(f"query for {query.signal!r} rejected ({detail})")
                    clean = False
                    continue
                raise UpstreamError(f"Prometheus answered {detail}" if status else detail) from None
            except OSError as exc:
                # requests' errors are OSErrors whose text quotes the URL (it may carry credentials): type only.
                raise UpstreamError(f"Prometheus unreachable ({type(exc).__name__})") from None
            except (KeyError, TypeError, ValueError) as exc:
                raise UpstreamError(f"Prometheus reply unparseable ({type(exc).__name__})") from None
            problems: list[str] = []
            try:
                samples.extend(self._samples(index, query, result, problems))
            except Malformed as exc:
                problems.append(str(exc))
            for problem in problems:
                self.health.malformed_input(f"query for {query.signal!r}: {problem}")
            clean = clean and not problems
        # Only a fully clean poll ends the malformed state: a query that is bad on every poll stays logged once.
        if clean:
            self.health.good_input()
        return samples

    def _samples(self, index: int, query: PrometheusQuery, result: Any, problems: list[str]) -> list[Sample]:
        """One query's ``data.result`` as samples. Raises Malformed to drop the whole query; appends to
        ``problems`` for series dropped from an otherwise usable result."""
        if not isinstance(result, list):
            raise Malformed(f"result is a {type(result).__name__}, not a list")
        empty_value = 0.0 if query.empty == "down" else None
        if _is_scalar(result):
            # A scalar result (e.g. `scalar(...)`, `vector(1)` is a vector): one value, never empty.
            if query.label is not None:
                raise Malformed(f"scalar result has no label {query.label!r}")
            value, at = _point(result)
            return [self.sample(query.signal, value, at)]
        series = [_series(item) for item in result]
        if query.label is None:
            if not series:
                return [self.sample(query.signal, empty_value)]
            if len(series) > 1:
                raise Malformed(f"{len(series)} series; aggregate in PromQL (e.g. max(...)) or set `label` to split them")
            _labels, value, at = series[0]
            return [self.sample(query.signal, value, at)]
        return self._split(index, query, series, empty_value, problems)

    def _split(
        self,
        index: int,
        query: PrometheusQuery,
        series: list[tuple[dict[str, str], float, float]],
        empty_value: float | None,
        problems: list[str],
    ) -> list[Sample]:
        """One sample per value of ``query.label``. Series lacking the label, or sharing a value, are dropped."""
        assert query.label is not None
        by_value: dict[str, list[tuple[float, float]]] = {}
        for labels, value, at in series:
            key = labels.get(query.label)
            if key is None:
                problems.append(f"a series lacks label {query.label!r}")
            else:
                by_value.setdefault(key, []).append((value, at))
        samples: list[Sample] = []
        for key, points in sorted(by_value.items()):
            if len(points) > 1:
                # Ambiguous: which one is the signal? Aggregate by the label in PromQL (max by (label) (...)).
                problems.append(f"{len(points)} series with {query.label}={key}; aggregate by {query.label} in PromQL")
                continue
            samples.append(self.sample(labelled(query.signal, {query.label: key}), *points[0]))
        seen = self._seen[index]
        seen.update(by_value)
        for key in sorted(seen - by_value.keys()):
            samples.append(self.sample(labelled(query.signal, {query.label: key}), empty_value))
        return samples


def _instant_query(client: PrometheusConnect, query: str, timeout: float) -> Any:
    """Blocking; runs in a worker thread. ``timeout`` bounds the connect and each read (requests semantics)."""
    untyped: Any = client  # custom_query's annotations say int; requests takes a float timeout
    return untyped.custom_query(query, timeout=timeout)


def _http_error(exc: PrometheusApiClientException) -> tuple[int | None, str]:
    """(status, Prometheus' own error text) from the client's exception, whose text is all it gives us:
    ``HTTP Status Code 400 (b'{"status":"error","errorType":"bad_data","error":"..."}')``."""
    match = _HTTP_ERROR.match(str(exc))
    if match is None:
        return None, str(exc)[:200]
    status = int(match.group(1))
    detail = f"HTTP {status}"
    try:
        body = ast.literal_eval(match.group(2))
        error = json.loads(body)["error"] if isinstance(body, bytes) else None
        if isinstance(error, str):
            detail = f"HTTP {status}: {error[:200]}"
    except (ValueError, SyntaxError, KeyError, TypeError):
        pass  # not Prometheus' JSON (a proxy's page): the status alone says enough
    return status, detail


def _is_scalar(result: list[Any]) -> bool:
    return len(result) == 2 and isinstance(result[0], int | float) and isinstance(result[1], str)


def _point(pair: Any) -> tuple[float, float]:
    """``[timestamp, "value"]`` → (value, timestamp); both must be finite numbers."""
    if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], str):
        raise Malformed('a value is not [timestamp, "number"]')
    try:
        value, at = float(pair[1]), float(pair[0])
    except (TypeError, ValueError):
        raise Malformed(f"value {pair[1]!r:.40} is not a number") from None
    if not math.isfinite(value):
        raise Malformed(f"value is {pair[1]}")  # NaN (e.g. 0/0) or ±Inf: no reading, not a reading of 0
    if not math.isfinite(at):
        raise Malformed("timestamp is not finite")
    return value, at


def _series(item: Any) -> tuple[dict[str, str], float, float]:
    if not isinstance(item, dict):
        raise Malformed("a result entry is not an object")
    if "values" in item:
        raise Malformed("range vector result: use an instant vector (drop the [range])")
    labels = item.get("metric")
    if not isinstance(labels, dict):
        raise Malformed("a series has no labels object")
    value, at = _point(item.get("value"))
    return {str(k): str(v) for k, v in labels.items()}, value, at
