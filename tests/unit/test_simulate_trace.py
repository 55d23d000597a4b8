"""Trace parsing: JSONL (plain and gzipped) and CSV, ground-truth labels, and every error with its file and line."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest

from hybridops_daemon.simulate.trace import TraceCommand, TraceError, load_trace


def write(tmp_path: Path, text: str, name: str = "trace.jsonl") -> Path:
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, name: str = "trace.jsonl") -> str:
    path = write(tmp_path, text, name)
    with pytest.raises(TraceError) as caught:
        load_trace(path, display=name)
    return str(caught.value)


def test_samples_and_commands_with_defaults_values_and_labels(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"t": 0, "signal": "primary_http", "value": 1}\n'
        "\n"  # blank lines are allowed
        '{"t": 0.5, "signal": "primary_http", "value": false, "edge": "edge02", "labels": {"fault": true, "note": "x"}}\n'
        '{"t": 2, "command": "pause"}\n'
        '{"signal": "wan_loss", "value": null, "t": 2.5}\n'
        '{"t": 3, "command": "drill", "lane": "drill"}\n',
    )
    trace = load_trace(path)
    assert list(trace.times) == [0.0, 0.5, 2.5]
    assert [trace.signal_names[i] for i in trace.signals] == ["primary_http", "primary_http", "wan_loss"]
    assert list(trace.values)[:2] == [1.0, 0.0] and math.isnan(trace.values[2])  # null: no data
    assert [trace.edge_names[i] for i in trace.edges] == [None, "edge02", None]  # None: the simulated node
    assert list(trace.faults) == [0, 1, 0]
    assert trace.labelled
    assert trace.commands == [TraceCommand(2.0, "pause", None, 4), TraceCommand(3.0, "drill", "drill", 6)]
    assert trace.duration == 3.0
    assert len(trace) == 3


def test_a_trace_without_fault_labels_has_no_ground_truth(tmp_path: Path) -> None:
    trace = load_trace(write(tmp_path, '{"t": 0, "signal": "s", "value": 1}\n'))
    assert not trace.labelled


def test_gzipped_and_repeated_lines_parse_like_plain_ones(tmp_path: Path) -> None:
    # Lines that differ only in t take the parser's fast path after the first: same result as a full parse.
    lines = [
        f'{{"t":{t},"signal":"primary_http","value":{t % 2},"labels":{{"fault":{"true" if t == 3 else "false"}}}}}\n'
        for t in range(6)
    ]
    plain = load_trace(write(tmp_path, "".join(lines)))
    packed = load_trace(write(tmp_path, "".join(lines), "trace.jsonl.gz"))
    for trace in (plain, packed):
        assert list(trace.times) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        assert list(trace.values) == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
        assert list(trace.faults) == [0, 0, 0, 1, 0, 0]
        assert trace.fault_windows() == [(3.0, 4.0)]  # until the series' next sample says otherwise


def test_csv_with_header_edge_column_and_null_values(tmp_path: Path) -> None:
    path = write(tmp_path, "t,signal,value,edge\n0,primary_http,1,\n1,primary_http,,edge02\n2,primary_http,false,\n", "trace.csv")
    trace = load_trace(path)
    assert list(trace.times) == [0.0, 1.0, 2.0]
    assert trace.values[0] == 1.0 and math.isnan(trace.values[1]) and trace.values[2] == 0.0
    assert [trace.edge_names[i] for i in trace.edges] == [None, "edge02", None]
    assert not trace.labelled


def test_a_fault_window_ends_at_its_series_next_sample_not_labelled_a_fault(tmp_path: Path) -> None:
    def line(t: float, fault: bool, signal: str = "s") -> str:
        return f'{{"t": {t}, "signal": "{signal}", "value": 0, "labels": {{"fault": {str(fault).lower()}}}}}\n'

    text = line(0, False) + line(1, True) + '{"t": 1.5, "command": "pause"}\n' + line(2, True) + line(3, False)
    text += line(4, True) + '{"t": 5, "signal": "s", "value": 1}\n'  # an unlabelled sample ends a window too
    text += line(7, True) + '{"t": 7.5, "signal": "other", "value": 1}\n'  # another series' sample does not
    text += line(8, True, "other") + line(9, False, "other")
    assert load_trace(write(tmp_path, text)).fault_windows() == [(1.0, 3.0), (4.0, 5.0), (7.0, 9.0)]


def test_a_window_no_sample_closes_ends_with_the_trace_and_overlapping_windows_merge(tmp_path: Path) -> None:
    text = (
        '{"t": 0, "signal": "a", "value": 0, "labels": {"fault": true}}\n'
        '{"t": 4, "signal": "b", "value": 0, "labels": {"fault": true}}\n'
        '{"t": 6, "signal": "a", "value": 1}\n'
        '{"t": 9, "command": "pause"}\n'
    )
    assert load_trace(write(tmp_path, text)).fault_windows() == [(0.0, 9.0)]  # b: 4 to the end; a: 0-6; merged


def test_fault_start_and_end_lines_are_intervals_and_label_the_trace(tmp_path: Path) -> None:
    text = (
        '{"t": 0, "signal": "s", "value": 1}\n{"t": 10, "fault": "start"}\n{"t": 20, "fault": "end"}\n'
        '{"t": 30, "fault": "start"}\n{"t": 40, "signal": "s", "value": 1}\n'
    )
    trace = load_trace(write(tmp_path, text))
    assert trace.labelled
    assert list(trace.faults) == [0, 0]
    assert trace.fault_windows() == [(10.0, 20.0), (30.0, 40.0)]  # a fault still open ends with the trace


def test_intervals_added_from_outside_label_the_trace_and_merge_with_its_own(tmp_path: Path) -> None:
    trace = load_trace(write(tmp_path, '{"t": 0, "signal": "s", "value": 1}\n{"t": 10, "fault": "start"}\n'))
    trace.add_faults([(5.0, 12.0), (1.0, 2.0)])
    assert trace.fault_windows() == [(1.0, 2.0), (5.0, 12.0)]  # the open fault runs 10-10 (the trace's end)
    unlabelled = load_trace(write(tmp_path, '{"t": 0, "signal": "s", "value": 1}\n'))
    unlabelled.add_faults([])
    assert unlabelled.labelled and unlabelled.fault_windows() == []  # ground truth: no fault at all


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{nope\n", "trace.jsonl:1: invalid JSON: Expecting property name enclosed in double quotes (column 2)"),
        ("[1, 2]\n", "trace.jsonl:1: expected a JSON object"),
        (
            '{"t": 0, "signal": "s", "value": 1, "colour": "red"}\n',
            'trace.jsonl:1: unknown key "colour" (a sample line has t, signal, value, edge, labels)',
        ),
        (
            '{"t": 0, "command": "pause", "signal": "s"}\n',
            'trace.jsonl:1: unknown key "signal" (a command line has t, command, lane)',
        ),
        (
            '{"t": 0, "value": 1}\n',
            "trace.jsonl:1: a line needs 'signal' (a sample), 'command' (an operator command) or 'fault' (start or end)",
        ),
        ('{"t": 0, "fault": "begin"}\n', 'trace.jsonl:1: \'fault\' must be "start" or "end", got "begin"'),
        ('{"t": 0, "fault": true}\n', 'trace.jsonl:1: \'fault\' must be "start" or "end", got true'),
        ('{"t": 0, "fault": "start", "lane": "x"}\n', 'trace.jsonl:1: unknown key "lane" (a fault line has t, fault)'),
        ('{"fault": "start"}\n', "trace.jsonl:1: missing key 't'"),
        ('{"t": 0, "fault": "end"}\n', "trace.jsonl:1: fault end without a fault start before it"),
        (
            '{"t": 0, "fault": "start"}\n{"t": 1, "fault": "start"}\n',
            "trace.jsonl:2: fault start while the fault started on line 1 is open",
        ),
        (
            '{"t": 5, "fault": "start"}\n{"t": 4, "fault": "end"}\n',
            "trace.jsonl:2: t=4 is before t=5 on line 1: t must not decrease",
        ),
        ('{"signal": "s", "value": 1}\n', "trace.jsonl:1: missing key 't'"),
        ('{"t": "soon", "signal": "s", "value": 1}\n', "trace.jsonl:1: 't' must be a number of seconds, got \"soon\""),
        ('{"t": true, "signal": "s", "value": 1}\n', "trace.jsonl:1: 't' must be a number of seconds, got true"),
        ('{"t": -1, "signal": "s", "value": 1}\n', "trace.jsonl:1: 't' must not be negative, got -1"),
        ('{"t": 1e400, "signal": "s", "value": 1}\n', "trace.jsonl:1: 't' is out of range"),
        ('{"t": 0, "signal": "", "value": 1}\n', "trace.jsonl:1: 'signal' must be a non-empty string"),
        ('{"t": 0, "signal": "s"}\n', "trace.jsonl:1: missing key 'value' (null means no data)"),
        ('{"t": 0, "signal": "s", "value": "up"}\n', "trace.jsonl:1: 'value' must be a number, true, false or null, got \"up\""),
        ('{"t": 0, "signal": "s", "value": NaN}\n', "trace.jsonl:1: NaN is not a number JSON allows"),
        ('{"t": 0, "signal": "s", "value": 1, "value": 2}\n', "trace.jsonl:1: duplicate key 'value'"),
        ('{"t": 0, "signal": "s", "value": 1, "edge": 2}\n', "trace.jsonl:1: 'edge' must be a non-empty string"),
        ('{"t": 0, "signal": "s", "value": 1, "labels": {"fault": 1}}\n', "trace.jsonl:1: 'labels.fault' must be true or false"),
        ('{"t": 0, "signal": "s", "value": 1, "labels": ["fault"]}\n', "trace.jsonl:1: 'labels' must be an object"),
        (
            '{"t": 0, "command": "reboot"}\n',
            'trace.jsonl:1: unknown command "reboot" (one of approve, cutover, drill, failback, pause, reject, resume)',
        ),
        ('{"t": 0, "command": "pause", "lane": ""}\n', "trace.jsonl:1: 'lane' must be a non-empty string"),
        (
            '{"t": 5, "signal": "s", "value": 1}\n{"t": 7, "command": "pause"}\n\n{"t": 6, "signal": "s", "value": 1}\n',
            "trace.jsonl:4: t=6 is before t=7 on line 2: t must not decrease",
        ),
        ("", "trace.jsonl: the trace is empty"),
        ("\n\n", "trace.jsonl: the trace is empty"),
    ],
)
def test_every_malformed_line_is_an_error_naming_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    assert error_of(tmp_path, text) == message


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"t":3,"signal":"s","value":1}\n', "trace.jsonl:3: t=3 is before t=5 on line 2: t must not decrease"),
        ('{"t":-9,"signal":"s","value":1}\n', "trace.jsonl:3: 't' must not be negative, got -9"),
        ('{"t":1e999,"signal":"s","value":1}\n', "trace.jsonl:3: 't' is out of range"),
        (
            '{"t":07,"signal":"s","value":1}\n',
            "trace.jsonl:3: invalid JSON: Expecting ',' delimiter (column 7)",
        ),  # no leading zeros
        ('{"t":0x7,"signal":"s","value":1}\n', "trace.jsonl:3: invalid JSON: Expecting ',' delimiter (column 7)"),
    ],
)
def test_the_fast_path_for_known_line_shapes_reports_the_same_errors(tmp_path: Path, line: str, message: str) -> None:
    known = '{"t":4,"signal":"s","value":1}\n{"t":5,"signal":"s","value":1}\n'  # the shape is cached after line 1
    assert error_of(tmp_path, known + line) == message


def test_gzip_errors_and_missing_files(tmp_path: Path) -> None:
    assert error_of(tmp_path, "", "trace.jsonl.gz") == "trace.jsonl.gz: the trace is empty"
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(TraceError, match=r"^bad\.jsonl\.gz: cannot read: Not a gzipped file"):
        load_trace(tmp_path / "bad.jsonl.gz", display="bad.jsonl.gz")
    truncated = gzip.compress(b'{"t": 0, "signal": "s", "value": 1}\n' * 100)[:-12]
    (tmp_path / "cut.jsonl.gz").write_bytes(truncated)
    with pytest.raises(TraceError, match=r"^cut\.jsonl\.gz: cannot read: "):
        load_trace(tmp_path / "cut.jsonl.gz", display="cut.jsonl.gz")
    with pytest.raises(TraceError, match=r"^gone\.jsonl: file not found$"):
        load_trace(tmp_path / "gone.jsonl", display="gone.jsonl")


def test_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_bytes(b'{"t": 0, "signal": "s", "value": 1}\n{"t": 1, "signal": "\xff", "value": 1}\n')
    with pytest.raises(TraceError) as caught:
        load_trace(path, display="trace.jsonl")
    assert str(caught.value) == "trace.jsonl:2: not UTF-8 text"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("t,signal,level\n", 'trace.csv:1: unknown column "level" (columns: t, signal, value, edge)'),
        ("t,signal\n", "trace.csv:1: missing column 'value' (the header names t,signal,value[,edge])"),
        ("t,signal,value,t\n", "trace.csv:1: a column is named twice"),
        ("t,signal,value\n0,s\n", "trace.csv:2: expected 3 fields (t,signal,value), got 2"),
        ("t,signal,value\nsoon,s,1\n", "trace.csv:2: 't' must be a number, got \"soon\""),
        ("t,signal,value\n0,s,up\n", "trace.csv:2: 'value' must be a number, got \"up\""),
        ("t,signal,value\n0,s,nan\n", "trace.csv:2: 'value' must be a number, got \"nan\""),
        ("t,signal,value\n0,,1\n", "trace.csv:2: 'signal' must not be empty"),
        ("t,signal,value\n5,s,1\n4,s,1\n", "trace.csv:3: t=4 is before t=5 on line 2: t must not decrease"),
        ("\n", "trace.csv: the trace is empty"),
    ],
)
def test_csv_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    assert error_of(tmp_path, text, "trace.csv") == message


def test_a_carriage_return_inside_a_csv_field_is_an_error_naming_its_line(tmp_path: Path) -> None:
    # found by the trace fuzz test: csv.Error escaped as a traceback
    message = error_of(tmp_path, "t,signal,value\n0,s,1\n1,s\r,1\n", "trace.csv")
    assert message.startswith("trace.csv:3: not CSV: new-line character seen in unquoted field")
