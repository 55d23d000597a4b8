"""Trace input limits: line length, nesting depth, sample and name counts. Each is exit 2 with file:line naming the
bound, never a traceback, and a trace without newlines is refused without reading it whole."""

from __future__ import annotations

import gzip
import io
import json
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridops_daemon import limits
from hybridops_daemon.cli.daemon_cli import main
from hybridops_daemon.simulate import trace as trace_module
from hybridops_daemon.simulate.trace import TraceError, load_trace
from tests.unit.test_simulate_cli import PROFILE

SAMPLE = '{"t": 0, "signal": "s", "value": 1}\n'


def error_of(path: Path) -> str:
    with pytest.raises(TraceError) as caught:
        load_trace(path, display=path.name)
    return str(caught.value)


def test_a_deeply_nested_line_is_an_error_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(SAMPLE + '{"t": 1, "signal": "s", "value": ' + "[" * 30_000 + "]" * 30_000 + "}\n")
    assert error_of(path) == "trace.jsonl:2: line: nesting depth over the limit of 8"


def test_simulate_exits_2_on_a_deeply_nested_line_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile, path = tmp_path / "prod.yaml", tmp_path / "trace.jsonl"
    profile.write_text(PROFILE)
    path.write_text(SAMPLE + "[" * 30_000 + "]" * 30_000 + "\n")
    assert main(["simulate", "--profile", str(profile), "--trace", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: line: nesting depth over the limit of 8" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["trace.jsonl.gz", "trace.csv.gz"])
def test_a_gzipped_line_over_the_limit_is_refused_with_its_line(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    first = "t,signal,value\n" if name.startswith("trace.csv") else SAMPLE
    path.write_bytes(gzip.compress(first.encode() + b"x" * (limits.MAX_TRACE_LINE_BYTES + 1)))
    assert error_of(path) == f"{name}:2: line: size in bytes over the limit of {limits.MAX_TRACE_LINE_BYTES}"


def test_a_line_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    line = '{"t": 1, "signal": "s", "value": 1}'
    path = tmp_path / "trace.jsonl"
    path.write_text(SAMPLE + line + " " * (limits.MAX_TRACE_LINE_BYTES - len(line)) + "\n")
    assert len(load_trace(path)) == 2


class Endless(io.BufferedIOBase):
    """A stream of one line that never ends (what a 1 GiB gzip of no newlines decompresses to), counting reads."""

    def __init__(self) -> None:
        self.served = 0
        self.largest = 0

    def read(self, size: int | None = -1) -> bytes:
        assert size is not None and size > 0, "the reader must never ask for everything"
        self.served += size
        self.largest = max(self.largest, size)
        return b"x" * size


@pytest.mark.parametrize("name", ["endless.jsonl", "endless.csv"])
def test_a_stream_without_newlines_is_refused_after_a_bounded_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    stream = Endless()
    monkeypatch.setattr(trace_module, "_open", lambda path: stream)
    assert error_of(tmp_path / name).startswith(f"{name}:1: line: size in bytes over the limit")
    # memory stays within one read block and one line, however long the stream
    assert stream.largest <= trace_module.READ_BLOCK_BYTES
    assert stream.served <= trace_module.READ_BLOCK_BYTES + limits.MAX_TRACE_LINE_BYTES


def test_the_number_of_samples_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_TRACE_SAMPLES", 100)
    path = tmp_path / "trace.jsonl.gz"
    path.write_bytes(gzip.compress("".join(f'{{"t":{t},"signal":"s","value":1}}\n' for t in range(101)).encode()))
    assert error_of(path).startswith("trace.jsonl.gz:101: trace: samples over the limit of 100")
    path.write_bytes(gzip.compress("".join(f'{{"t":{t},"signal":"s","value":1}}\n' for t in range(100)).encode()))
    assert len(load_trace(path)) == 100


def test_the_number_of_csv_samples_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_TRACE_SAMPLES", 10)
    path = tmp_path / "trace.csv"
    path.write_text("t,signal,value\n" + "".join(f"{t},s,1\n" for t in range(11)))
    assert error_of(path) == "trace.csv:12: trace: samples over the limit of 10"


@pytest.mark.parametrize("column", ["signal", "edge"])
def test_the_number_of_distinct_names_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, column: str) -> None:
    monkeypatch.setattr(limits, "MAX_TRACE_NAMES", 5)
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps({"t": t, "signal": "s", "value": 1, column: f"n{t}"}) + "\n" for t in range(6)))
    assert error_of(path) == f"trace.jsonl:6: trace: distinct {column} names over the limit of 5"


# --------------------------------------------------------------------------------------------- fuzz

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["t", "signal", "value", "x"]), inner),
    max_leaves=10,
)
LINES = st.one_of(
    st.builds(lambda t, v: json.dumps({"t": t, "signal": "s", "value": v}), st.integers(0, 100), JSON),
    JSON.map(json.dumps),
    st.integers(1, 5000).map(lambda depth: "[" * depth + "]" * depth),
    st.text(alphabet='[]{},"\\:1t ', max_size=200),
    st.binary(max_size=100).map(lambda raw: raw.decode("latin-1")),
    st.integers(sys.get_int_max_str_digits() - 2, sys.get_int_max_str_digits() + 2).map(lambda n: '{"t": ' + "1" * n + "}"),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(LINES, max_size=8), st.sampled_from(["t.jsonl", "t.jsonl.gz", "t.csv"]))
def test_fuzz_any_trace_loads_or_is_a_trace_error_quickly(tmp_path: Path, lines: list[str], name: str) -> None:
    path = tmp_path / name
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    began = time.monotonic()
    try:
        load_trace(path)
    except TraceError as exc:
        assert str(exc).startswith(f"{path}:")
    assert time.monotonic() - began < 5
