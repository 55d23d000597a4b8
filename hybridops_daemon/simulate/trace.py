"""Signal traces: JSON Lines (optionally gzipped) or CSV, validated whole before anything is simulated.

A JSONL line is a sample ``{"t": 12.5, "signal": "primary_http", "value": 1}`` (optional ``edge`` and ``labels``),
an operator command ``{"t": 900, "command": "drill", "lane": "drill"}`` or a fault mark ``{"t": 900, "fault": "start"}``
(ground truth as an interval: see truth.py). A CSV has a header naming the columns
``t,signal,value`` and optionally ``edge``. ``t`` is seconds from the trace start and never decreases. Every problem
is a :class:`TraceError` naming the file and line.

Samples are held in columns (arrays), not objects: a year of 10-second samples is three million lines.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from hybridops_daemon import limits
from hybridops_daemon.limits import InputRejected
from hybridops_daemon.simulate.truth import Interval, merge, sample_windows

COMMANDS = ("approve", "cutover", "drill", "failback", "pause", "reject", "resume")
SAMPLE_KEYS = ("t", "signal", "value", "edge", "labels")
COMMAND_KEYS = ("t", "command", "lane")
FAULT_KEYS = ("t", "fault")
FAULT_MARKS = ("start", "end")
CSV_COLUMNS = ("t", "signal", "value", "edge")

JSON_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_FAST_PREFIX = b'{"t":'
_CACHE_LIMIT = 65_536  # distinct line shapes remembered; numeric signals with varying values simply miss
READ_BLOCK_BYTES: Final = 1 << 22  # memory while reading: one block and one line (limits.MAX_TRACE_LINE_BYTES)


class TraceError(Exception):
    def __init__(self, file: str, line: int | None, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}" if line is not None else f"{file}: {message}")
        self.file = file
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class TraceCommand:
    t: float
    command: str
    lane: str | None
    line: int


@dataclass(frozen=True, slots=True)
class _FaultMark:
    t: float
    start: bool
    line: int


@dataclass
class Trace:
    """Samples as parallel columns; ``edges[i] == 0`` means the simulated node (the default edge)."""

    path: str
    times: array[float] = field(default_factory=lambda: array("d"))
    signals: array[int] = field(default_factory=lambda: array("I"))
    values: array[float] = field(default_factory=lambda: array("d"))  # NaN: no data (null)
    edges: array[int] = field(default_factory=lambda: array("I"))
    faults: bytearray = field(default_factory=bytearray)
    signal_names: list[str] = field(default_factory=list)
    edge_names: list[str | None] = field(default_factory=lambda: [None])
    commands: list[TraceCommand] = field(default_factory=list)
    fault_intervals: list[Interval] = field(default_factory=list)  # fault start/end lines, and added (--faults)
    labelled: bool = False  # a sample carries a `fault` label, or there are fault intervals: the trace has ground truth
    duration: float = 0.0  # t of the last line

    def __len__(self) -> int:
        return len(self.times)

    def add_faults(self, intervals: Iterable[Interval]) -> None:
        """Ground truth from outside the trace (a file of intervals): the trace is labelled, even by none."""
        self.fault_intervals.extend(intervals)
        self.labelled = True

    def fault_windows(self) -> list[Interval]:
        """The faults as merged intervals of time (truth.py says how labelled samples become windows)."""
        labelled = sample_windows(self.times, self.signals, self.edges, self.faults, self.duration)
        return merge([*labelled, *self.fault_intervals])


def load_trace(path: Path, display: str | None = None) -> Trace:
    """Parse ``path`` (``.jsonl``, ``.csv``, either ``.gz``). Raises TraceError."""
    shown = display if display is not None else str(path)
    name = path.name.removesuffix(".gz")
    try:
        with _open(path) as stream:
            trace = _parse_csv(stream, shown) if name.endswith(".csv") else _parse_jsonl(stream, shown)
    except FileNotFoundError:
        raise TraceError(shown, None, "file not found") from None
    except (OSError, EOFError, zlib.error) as exc:  # gzip reports corruption as OSError (BadGzipFile) or EOFError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise TraceError(shown, None, f"cannot read: {reason}") from None
    if not trace.times and not trace.commands:
        raise TraceError(shown, None, "the trace is empty")
    return trace


def _open(path: Path) -> io.BufferedIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return path.open("rb")


class _Builder:
    """Appends validated lines to a Trace, enforcing the order of t across both kinds of line."""

    def __init__(self, path: str) -> None:
        self.trace = Trace(path)
        self._signal_ids: dict[str, int] = {}
        self._edge_ids: dict[str | None, int] = {None: 0}
        self.last_t = 0.0
        self.last_line = 0
        self._fault_open: _FaultMark | None = None

    def fault_mark(self, mark: _FaultMark) -> None:
        """Pairs ``start`` and ``end`` lines into intervals; one fault is open at a time, so each line has one meaning."""
        opened = self._fault_open
        if mark.start and opened is not None:
            raise TraceError(self.trace.path, mark.line, f"fault start while the fault started on line {opened.line} is open")
        if not mark.start and opened is None:
            raise TraceError(self.trace.path, mark.line, "fault end without a fault start before it")
        if opened is None:
            self._fault_open = mark
        else:
            self.trace.fault_intervals.append((opened.t, mark.t))
            self._fault_open = None
        self.trace.labelled = True

    def time(self, t: float, line: int) -> None:
        if t < self.last_t:
            raise TraceError(
                self.trace.path, line, f"t={t:g} is before t={self.last_t:g} on line {self.last_line}: t must not decrease"
            )
        self.last_t, self.last_line = t, line

    def signal_id(self, name: str) -> int:
        found = self._signal_ids.get(name)
        if found is None:
            self._check_names(self.trace.signal_names, "signal")
            found = self._signal_ids[name] = len(self.trace.signal_names)
            self.trace.signal_names.append(name)
        return found

    def edge_id(self, name: str | None) -> int:
        found = self._edge_ids.get(name)
        if found is None:
            self._check_names(self.trace.edge_names[1:], "edge")  # [0] is None, the simulated node
            found = self._edge_ids[name] = len(self.trace.edge_names)
            self.trace.edge_names.append(name)
        return found

    def _check_names(self, names: list[Any], column: str) -> None:
        if len(names) >= limits.MAX_TRACE_NAMES:
            raise _over(self.trace.path, self.last_line, f"distinct {column} names", limits.MAX_TRACE_NAMES)

    def check_count(self, count: int, what: str, line: int) -> None:
        """For JSONL called once per block of lines: the columns overshoot by at most one block before it refuses."""
        if count > limits.MAX_TRACE_SAMPLES:
            raise _over(self.trace.path, line, what, limits.MAX_TRACE_SAMPLES)

    def finish(self) -> Trace:
        self.trace.duration = self.last_t
        if self._fault_open is not None:  # the fault outlasted the trace: it ends where the trace does
            self.trace.fault_intervals.append((self._fault_open.t, self.last_t))
        return self.trace


# --------------------------------------------------------------------------------------------- JSON Lines

# A validated sample without its t: (signal id, value, edge id, fault, labelled). Commands are never cached.
_Shape = tuple[int, float, int, bool, bool]


def _over(path: str, line: int | None, bound: str, limit: int) -> TraceError:
    return TraceError(path, line, str(InputRejected("trace", bound, limit)))


def _parse_jsonl(stream: io.BufferedIOBase, path: str) -> Trace:
    builder = _Builder(path)
    trace = builder.trace
    times, signals, values, edges, faults = trace.times, trace.signals, trace.values, trace.edges, trace.faults
    # Most lines differ from an earlier one only in t: `{"t":<number>,<rest>` with a known <rest> needs no JSON
    # parsing. Equivalent to the full parse because <rest> was validated (as the rest of a line) when first seen
    # and <number> is checked to be one JSON number token.
    shapes: dict[bytes, _Shape] = {}
    lineno = 0

    def counted(last_line: int) -> None:
        builder.check_count(len(times), "samples", last_line)
        builder.check_count(len(trace.commands), "commands", last_line)
        builder.check_count(len(trace.fault_intervals), "fault intervals", last_line)

    for raw in _lines(stream, path, counted):
        lineno += 1
        if raw[:5] == _FAST_PREFIX:
            comma = raw.find(b",", 5)
            shape = shapes.get(raw[comma + 1 :]) if comma > 0 else None
            if shape is not None:
                number = raw[5:comma]
                if (number.isdigit() and (number[0] != 48 or len(number) == 1)) or JSON_NUMBER.fullmatch(number):
                    t = float(number)
                    if t < builder.last_t or not math.isfinite(t):
                        builder.time(_checked_time(t, path, lineno), lineno)  # raises with the message
                    builder.last_t, builder.last_line = t, lineno
                    times.append(t)
                    signals.append(shape[0])
                    values.append(shape[1])
                    edges.append(shape[2])
                    faults.append(shape[3])
                    continue
        if not raw.strip():
            continue
        shape_or_command = _parse_line(raw, path, lineno, builder)
        if isinstance(shape_or_command, TraceCommand):
            trace.commands.append(shape_or_command)
            continue
        if isinstance(shape_or_command, _FaultMark):
            builder.fault_mark(shape_or_command)
            continue
        t, shape = shape_or_command
        times.append(t)
        signals.append(shape[0])
        values.append(shape[1])
        edges.append(shape[2])
        faults.append(shape[3])
        trace.labelled = trace.labelled or shape[4]
        if raw[:5] == _FAST_PREFIX and len(shapes) < _CACHE_LIMIT:
            comma = raw.find(b",", 5)
            if comma > 0 and JSON_NUMBER.fullmatch(raw[5:comma]):
                shapes[raw[comma + 1 :]] = shape
    return builder.finish()


def _lines(stream: io.BufferedIOBase, path: str, after_block: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """Lines without their newline, split from large blocks: cheaper than a readline call per line on a gzip stream.

    A line over the limit is refused as soon as it is seen, so a stream without newlines costs one block of memory,
    not the stream. ``after_block`` is called with the number of the last line handed out, between blocks."""
    limit = limits.MAX_TRACE_LINE_BYTES
    tail = b""
    done = 0  # lines handed out
    while block := stream.read(READ_BLOCK_BYTES):
        lines = (tail + block).split(b"\n")
        tail = lines.pop()
        if len(tail) > limit or (lines and max(map(len, lines)) > limit):
            first = next((i for i, line in enumerate(lines) if len(line) > limit), len(lines))
            raise TraceError(path, done + first + 1, str(InputRejected("line", "size in bytes", limit)))
        yield from lines
        done += len(lines)
        if after_block is not None:
            after_block(done)
    if tail:
        yield tail
        if after_block is not None:
            after_block(done + 1)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse_line(raw: bytes, path: str, lineno: int, builder: _Builder) -> TraceCommand | _FaultMark | tuple[float, _Shape]:
    try:
        obj = limits.loads(raw, limits.TRACE_LINE, "line", parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except InputRejected as exc:
        raise TraceError(path, lineno, str(exc)) from None
    except json.JSONDecodeError as exc:
        raise TraceError(path, lineno, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except UnicodeDecodeError:
        raise TraceError(path, lineno, "not UTF-8 text") from None
    except ValueError as exc:  # from the hooks: duplicate keys, NaN/Infinity
        raise TraceError(path, lineno, str(exc)) from None
    if not isinstance(obj, dict):
        raise TraceError(path, lineno, "expected a JSON object")
    if "command" in obj:
        return _command(obj, path, lineno, builder)
    if "fault" in obj and "signal" not in obj:
        _known_keys(obj, FAULT_KEYS, "a fault", path, lineno)
        t = _time(obj, path, lineno, builder)
        if obj["fault"] not in FAULT_MARKS:
            raise TraceError(path, lineno, f"'fault' must be \"start\" or \"end\", got {json.dumps(obj['fault'])}")
        return _FaultMark(t, obj["fault"] == "start", lineno)
    if "signal" not in obj:
        raise TraceError(
            path, lineno, "a line needs 'signal' (a sample), 'command' (an operator command) or 'fault' (start or end)"
        )
    _known_keys(obj, SAMPLE_KEYS, "a sample", path, lineno)
    t = _time(obj, path, lineno, builder)
    signal = obj["signal"]
    if not isinstance(signal, str) or not signal:
        raise TraceError(path, lineno, "'signal' must be a non-empty string")
    if "value" not in obj:
        raise TraceError(path, lineno, "missing key 'value' (null means no data)")
    value = _value(obj["value"], path, lineno)
    edge = obj.get("edge")
    if edge is not None and (not isinstance(edge, str) or not edge):
        raise TraceError(path, lineno, "'edge' must be a non-empty string")
    fault, labelled = False, False
    if "labels" in obj:
        labels = obj["labels"]
        if not isinstance(labels, dict):
            raise TraceError(path, lineno, "'labels' must be an object")
        if "fault" in labels:
            if not isinstance(labels["fault"], bool):
                raise TraceError(path, lineno, "'labels.fault' must be true or false")
            fault, labelled = labels["fault"], True
    return t, (builder.signal_id(signal), value, builder.edge_id(edge), fault, labelled)


def _command(obj: dict[str, Any], path: str, lineno: int, builder: _Builder) -> TraceCommand:
    _known_keys(obj, COMMAND_KEYS, "a command", path, lineno)
    t = _time(obj, path, lineno, builder)
    command = obj["command"]
    if command not in COMMANDS:
        raise TraceError(path, lineno, f"unknown command {json.dumps(command)} (one of {', '.join(COMMANDS)})")
    lane = obj.get("lane")
    if lane is not None and (not isinstance(lane, str) or not lane):
        raise TraceError(path, lineno, "'lane' must be a non-empty string")
    return TraceCommand(t, command, lane, lineno)


def _known_keys(obj: dict[str, Any], allowed: tuple[str, ...], what: str, path: str, lineno: int) -> None:
    for key in obj:
        if key not in allowed:
            raise TraceError(path, lineno, f"unknown key {json.dumps(key)} ({what} line has {', '.join(allowed)})")


def _time(obj: dict[str, Any], path: str, lineno: int, builder: _Builder) -> float:
    if "t" not in obj:
        raise TraceError(path, lineno, "missing key 't'")
    raw = obj["t"]
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise TraceError(path, lineno, f"'t' must be a number of seconds, got {json.dumps(raw)}")
    try:
        t = float(raw)
    except OverflowError:
        t = math.inf
    t = _checked_time(t, path, lineno)
    builder.time(t, lineno)
    return t


def _checked_time(t: float, path: str, lineno: int) -> float:
    if not math.isfinite(t):
        raise TraceError(path, lineno, "'t' is out of range")
    if t < 0:
        raise TraceError(path, lineno, f"'t' must not be negative, got {t:g}")
    return t


def _value(raw: Any, path: str, lineno: int) -> float:
    if raw is None:
        return math.nan
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float):
        try:
            value = float(raw)
        except OverflowError:
            value = math.inf
        if math.isfinite(value):
            return value
        raise TraceError(path, lineno, "'value' is out of range")
    raise TraceError(path, lineno, f"'value' must be a number, true, false or null, got {json.dumps(raw)}")


# --------------------------------------------------------------------------------------------- CSV


def _parse_csv(stream: io.BufferedIOBase, path: str) -> Trace:
    builder = _Builder(path)
    trace = builder.trace
    lines = _decoded(_lines(stream, path), path)
    reader = csv.reader(lines)
    header: list[str] | None = None
    for row in _rows(reader, path):
        lineno = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            for name in header:
                if name not in CSV_COLUMNS:
                    raise TraceError(path, lineno, f"unknown column {json.dumps(name)} (columns: {', '.join(CSV_COLUMNS)})")
            for name in ("t", "signal", "value"):
                if name not in header:
                    raise TraceError(path, lineno, f"missing column {name!r} (the header names t,signal,value[,edge])")
            if len(set(header)) != len(header):
                raise TraceError(path, lineno, "a column is named twice")
            continue
        if len(row) != len(header):
            raise TraceError(path, lineno, f"expected {len(header)} fields ({','.join(header)}), got {len(row)}")
        cells = dict(zip(header, (cell.strip() for cell in row), strict=True))
        t = _csv_number(cells["t"], "t", path, lineno)
        t = _checked_time(t, path, lineno)
        builder.time(t, lineno)
        if not cells["signal"]:
            raise TraceError(path, lineno, "'signal' must not be empty")
        text = cells["value"]
        lowered = text.lower()
        if lowered in ("", "null"):
            value = math.nan
        elif lowered in ("true", "false"):
            value = 1.0 if lowered == "true" else 0.0
        else:
            value = _csv_number(text, "value", path, lineno)
        builder.check_count(len(trace.times) + 1, "samples", lineno)
        trace.times.append(t)
        trace.signals.append(builder.signal_id(cells["signal"]))
        trace.values.append(value)
        trace.edges.append(builder.edge_id(cells.get("edge") or None))
        trace.faults.append(0)
    if header is None:
        raise TraceError(path, None, "the trace is empty")
    return builder.finish()


def _rows(reader: Any, path: str) -> Iterator[list[str]]:  # Any: the csv reader's type is private (_csv.Reader)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a stray carriage return, say
            raise TraceError(path, reader.line_num, f"not CSV: {exc}") from None
        yield row


def _decoded(stream: Iterable[bytes], path: str) -> Iterator[str]:
    for lineno, raw in enumerate(stream, 1):
        try:
            yield raw.decode("utf-8") + "\n"  # as csv reads a file: a quoted field may span lines
        except UnicodeDecodeError:
            raise TraceError(path, lineno, "not UTF-8 text") from None


def _csv_number(text: str, column: str, path: str, lineno: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceError(path, lineno, f"'{column}' must be a number, got {json.dumps(text)}") from None
    if not math.isfinite(value) or "_" in text:
        raise TraceError(path, lineno, f"'{column}' must be a number, got {json.dumps(text)}")
    return value
