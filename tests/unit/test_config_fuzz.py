"""Fuzzing check-config with generated YAML: arbitrary documents (odd scalars and tags, duplicate keys, anchors and
alias bombs, deep nesting) and mutations of the repo's own configs and profiles. The loader answers within a time
limit, in bounded memory, with the config or errors naming the file in one line each, never an exception; the CLI
exits 0 or 2, never with a traceback."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hybridops_daemon import limits
from hybridops_daemon.config.loader import ConfigError, ConfigInvalid, check_config, load_profile
from hybridops_daemon.drivers.registry import DRIVER_MODULES

REPO = Path(__file__).resolve().parents[2]
HYOPS_DAEMON = Path(sys.executable).parent / "hyops-daemon"
CONFIGS = sorted((REPO / "config").glob("*.yaml"))
PROFILES = sorted([*(REPO / "policies").rglob("*.yaml"), *(REPO / "simulations" / "profiles").glob("*.yaml")])
SECONDS = 5.0  # per example; the slowest takes ~0.5 s, more when the machine is busy
BOMB_SECONDS = 10.0  # tracemalloc slows PyYAML ~5x
BOMB_MEGABYTES = 32  # traced; the alias bombs peak at a few MB

# ------------------------------------------------------------------------------------------ arbitrary YAML

ODD_SCALARS = st.sampled_from(
    [
        "~",
        "null",
        "yes",
        "off",
        ".nan",
        "-.inf",
        "1e400",
        "0x_1F",
        "0o17",
        "0b101",
        "1_000",
        "190:20:30",
        "-0",
        "2001-12-14t21:59:43.10-05:00",
        "2001-13-45",
        "2001-02-30 25:61:61",
        "!!binary aGVsbG8=",
        "!!binary ?!",
        "!!python/object:os.system x",
        "!!python/name:os.system",
        "!!bool maybe",
        "!!int abc",
        "!!int 0xZZ",
        "!!float x",
        "!!timestamp nope",
        "!!null x",
        "!!set {a, b}",
        "!!omap [a: 1]",
        "!!omap [a]",
        "!!pairs [[a]]",
        "!!str 1",
        "!custom x",
        "!!merge x",
        "<<",
        "'it''s'",
        '"\\x00\\uD800\\U0010FFFF"',
        '"\\e\\N\\_"',
        "|\n  lit",
        "? complex\n: key",
        "@reserved",
        "`tick",
        "&",
        "*",
        "*undefined",
        "!<tag:yaml.org,2002:int> 1",
    ]
)
HUGE_NUMBERS = st.builds(
    lambda digits, n, fraction: digits * n + fraction,
    st.sampled_from(["9", "-1", "0x7", "1", "0o7"]),
    st.integers(1, 6000),
    st.sampled_from(["", ".5", "e9"]),
)
KEYS = st.sampled_from(["node", "lanes", "profile", "state_dir", "sources", "type", "tick", "name", "chains", "1", "<<"])
SCALARS = st.one_of(
    ODD_SCALARS.filter(lambda scalar: "\n" not in scalar),  # flow style: one line each
    HUGE_NUMBERS,
    st.text(max_size=20).map(lambda text: '"' + text.encode("unicode_escape").decode().replace('"', '\\"') + '"'),
    st.from_regex(r"[a-z0-9_./:-]{1,12}", fullmatch=True),
)


@st.composite
def flow_node(draw: st.DrawFn, anchors: list[str], depth: int = 0) -> str:
    """A node in flow style, perhaps anchored, perhaps an alias to an earlier anchor (or to itself)."""
    if anchors and draw(st.integers(0, 5)) == 0:
        return "*" + draw(st.sampled_from(anchors))
    anchor = ""
    if draw(st.integers(0, 4)) == 0:
        name = f"a{len(anchors)}"
        anchors.append(name)  # defined before its content: `&a [*a]` is a recursive alias
        anchor = f"&{name} "
    kind = draw(st.integers(0, 3)) if depth < 5 else 0
    if kind <= 1:
        return anchor + draw(SCALARS)
    children = draw(st.lists(st.just(None), max_size=4))
    if kind == 2:
        return anchor + "[" + ", ".join(draw(flow_node(anchors, depth + 1)) for _ in children) + "]"
    pairs = [f"{draw(KEYS | SCALARS)}: {draw(flow_node(anchors, depth + 1))}" for _ in children]  # duplicates too
    return anchor + "{" + ", ".join(pairs) + "}"


@st.composite
def yaml_document(draw: st.DrawFn) -> str:
    """A block mapping of flow values, with the odd multi-line scalar, merge key or document marker."""
    anchors: list[str] = []
    lines = [f"{draw(KEYS | SCALARS)}: {draw(flow_node(anchors))}" for _ in range(draw(st.integers(0, 6)))]
    extras = st.sampled_from(["---", "...", "%YAML 1.1", "<<: *a0", "<<: [*a0, *a0]", "k: |\n  lit\n  eral", "k: >-\n  f"])
    for _ in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(0, len(lines))), draw(ODD_SCALARS.filter(lambda s: "\n" in s) | extras))
    return "\n".join(lines) + "\n"


def laughs(width: int, levels: int) -> str:
    """The billion laughs: each level a list of ``width`` aliases to the level below."""
    rows = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    rows += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(rows) + "\n"


def alias_chain(links: int, depth: int) -> str:
    """Each anchor nests the previous one ``depth`` levels deeper: shallow as written, deep once expanded."""
    rows = [f"c0: &c0 {'[' * depth}x{']' * depth}"]
    rows += [f"c{i}: &c{i} {'[' * depth}*c{i - 1}{']' * depth}" for i in range(1, links + 1)]
    return "\n".join(rows) + "\n"


def merge_laughs(width: int, levels: int) -> str:
    """Laughs through merge keys: `{<<: *m}` is one node as written but every key of ``m`` once merged."""
    rows = [laughs(width, 3).rstrip(), "m0: &m0 {k: *l3}", "n0: &n0 {<<: *m0}"]
    rows += [f"n{i}: &n{i} {{{', '.join(f'k{j}: *n{i - 1}' for j in range(width))}}}" for i in range(1, levels + 1)]
    return "\n".join(rows) + "\n"


BOMBS = st.one_of(
    st.builds(laughs, st.integers(2, 12), st.integers(1, 9)),
    st.builds(alias_chain, st.integers(1, 60), st.integers(1, 31)),
    st.builds(merge_laughs, st.integers(2, 9), st.integers(1, 4)),
    st.builds(lambda n: "node: " + "[" * n + "]" * n + "\n", st.integers(1, 5000)),
    st.builds(lambda n: "".join("  " * i + "a:\n" for i in range(n)), st.integers(1, 200)),
    st.builds(lambda n: "- " * n + "x\n", st.integers(1, 200)),
    st.builds(lambda n: "a: &a x\nb: [" + ", ".join(["*a"] * n) + "]\n", st.integers(1, limits.MAX_YAML_ALIASES + 10)),
    st.sampled_from(["a: &a [*a]\n", "a: &a {k: *a}\n", "a: &a {<<: *a}\n", "a: &a {k: {<<: *a}}\n"]),
)

# ------------------------------------------------------------------------------------------ mutated examples


@st.composite
def mutated(draw: st.DrawFn, originals: list[Path]) -> bytes:
    """One of the repo's files with one to three edits: a line replaced, dropped or doubled, a value retyped, a long
    string, a cut at any byte, random bytes (invalid UTF-8, NUL, BOM, tabs)."""
    data = draw(st.sampled_from(originals)).read_bytes()
    for _ in range(draw(st.integers(1, 3))):
        lines = data.split(b"\n")
        at = draw(st.integers(0, len(lines) - 1))
        line = lines[at]
        key, colon, _ = line.partition(b":")
        value = draw(
            st.sampled_from([b"", b"x" * 100_000, b"[]", b"{}", b"-1", b"1e400", b"~", b"*nope", b"!!int x", b'"\\ud800"'])
        )
        edit = draw(st.integers(0, 6))
        if edit == 0 and colon:
            lines[at] = key + b": " + value
        elif edit == 1:
            del lines[at]
        elif edit == 2:
            lines.insert(at, line)  # a duplicated key
        elif edit == 3:
            lines[at] = line + value
        elif edit == 4:
            lines = [b"\n".join(lines)[: draw(st.integers(0, len(data)))]]
        else:
            noise = draw(st.binary(max_size=8) | st.sampled_from([b"\x00", b"\xef\xbb\xbf", b"\t", b"\xff\xfe", b"\xc3"]))
            cut = draw(st.integers(0, len(line)))
            lines[at] = line[:cut] + noise + line[cut:]
        data = b"\n".join(lines)
    return data


DAEMON_FILES = mutated(CONFIGS) | yaml_document().map(str.encode)
PROFILE_FILES = mutated(PROFILES) | yaml_document().map(str.encode)

# ------------------------------------------------------------------------------------------ the contract


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of config/ and policies/, so the mutated config's relative profile paths resolve to real profiles."""
    root = tmp_path_factory.mktemp("fuzz")
    for folder in ("config", "policies"):
        shutil.copytree(REPO / folder, root / folder)
    return root


def check(config: Path, within: float = SECONDS) -> list[ConfigError]:
    """check-config's verdict on ``config``, asserting the contract: an answer in time, and errors that a person reads."""
    began = time.monotonic()
    loaded, _, errors = check_config(config, DRIVER_MODULES)  # raising anything at all fails the test
    assert time.monotonic() - began < within
    assert (loaded is None) <= bool(errors)  # an invalid config always says why
    for error in errors:
        assert isinstance(error, ConfigError)
        assert error.line is None or error.line >= 1
        rendered = str(error)
        assert "\n" not in rendered, rendered
        rendered.encode()  # the CLI prints it as UTF-8
        assert rendered.startswith(str(error.file)) or error.file.name in rendered.split(" ")[0], rendered
    return errors


@contextlib.contextmanager
def peak_megabytes() -> Iterator[list[float]]:
    tracemalloc.start()
    peak: list[float] = []
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1] / 1e6)
        tracemalloc.stop()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DAEMON_FILES)
@example(b"node: edge01\nstate_dir: s\x00\n")  # a NUL: PyYAML's reader error named no line, and raised
@example(b"node: !!int 0xZZ\nstate_dir: !!bool maybe\ntick: 2001-13-45\npeer: " + b"9" * 5000)  # conversions raised
@example(b"node: edge01\nstate_dir: s\nlanes: {prod: {profile: " + b"x" * 5000 + b"}}\n")  # stat: name too long
@example(b'node: edge01\nstate_dir: s\nlanes: {prod: {profile: "\\ud800"}}\n')  # a surrogate: print() raised
def test_fuzz_check_config_answers_with_a_config_or_one_line_errors(tree: Path, data: bytes) -> None:
    path = tree / "config" / "fuzzed.yaml"
    path.write_bytes(data)
    check(path)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PROFILE_FILES)
def test_fuzz_profiles_answer_with_a_profile_or_one_line_errors(tree: Path, data: bytes) -> None:
    profile = tree / "policies" / "fuzzed.yaml"
    profile.write_bytes(data)
    config = tree / "config" / "fuzzed-lane.yaml"
    config.write_text(f"node: edge01\nstate_dir: s\nlanes:\n  prod: {{profile: {profile}, drivers: {{sandbox: {{}}}}}}\n")
    check(config)
    with contextlib.suppress(ConfigInvalid):  # the reader simulate uses: a profile, or this error alone
        load_profile(profile, DRIVER_MODULES)


# Each level merges the one before and holds it under a key: 25 levels, 50 aliases, 2^25 nodes once serialised.
MERGE_DOUBLING = "x0: &a0 {k: 1, j: 2}\n" + "".join(f"x{i}: &a{i} {{<<: *a{i - 1}, k{i}: *a{i - 1}}}\n" for i in range(1, 26))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BOMBS)
@example(alias_chain(60, 30))  # 30 levels as written, 1800 once expanded: RecursionError
@example(MERGE_DOUBLING)  # 2^25 nodes through merge keys, which the expanded count skipped: accepted before
def test_fuzz_hostile_yaml_is_refused_in_bounded_time_and_memory(tree: Path, text: str) -> None:
    path = tree / "config" / "bomb.yaml"
    path.write_text(text)
    with peak_megabytes() as peak:
        errors = check(path, within=BOMB_SECONDS)
    assert peak[0] < BOMB_MEGABYTES, f"{peak[0]:.0f} MB"
    assert errors  # none of these is a daemon config


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DAEMON_FILES | PROFILE_FILES | BOMBS.map(str.encode))
def test_fuzz_the_cli_exits_0_or_2_without_a_traceback(tree: Path, data: bytes) -> None:
    path = tree / "config" / "cli.yaml"
    path.write_bytes(data)
    done = subprocess.run([str(HYOPS_DAEMON), "check-config", str(path)], capture_output=True, timeout=30, check=False)
    out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    assert done.returncode in {0, 2}, out + err
    assert "Traceback" not in out + err
    assert out.strip() or err.strip()


# The CLI measures its own peak RSS: tracemalloc would slow composing these ~5x. check-config on demo.yaml: ~40 MB.
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec, so a child spawned by a large pytest process
# would report pytest's own peak (measured: 173 MB in a full run for a 98 MB check).
MEASURED = """
import re, sys
from pathlib import Path
from hybridops_daemon.cli.daemon_cli import main
code = main(["check-config", sys.argv[1]])
hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print(f"peak RSS {hwm // 1024} MB", file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize(
    "text",
    ["node: [" + "a, " * 349_000 + "]\n", "- a\n" * 250_000],
    ids=["flow-list", "block-list"],
)
def test_a_file_of_the_most_nodes_is_refused_in_seconds_and_bounded_memory(tree: Path, text: str) -> None:
    """Nodes are counted as they are composed: the 1 MiB list was composed whole first (60 s, 300 MB)."""
    path = tree / "config" / "wide.yaml"
    path.write_text(text)
    assert len(text) < limits.MAX_CONFIG_BYTES
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", MEASURED, str(path)], capture_output=True, text=True, timeout=60, check=False)
    peak = int(done.stderr.split("peak RSS ")[1].split()[0])
    assert peak < 160, done.stderr  # it was 261 MB
    assert time.monotonic() - began < BOMB_SECONDS
    assert done.returncode == 2
    assert re.fullmatch(rf"{re.escape(str(path))}:\d+: invalid YAML: more than {limits.MAX_YAML_NODES} nodes\n", done.stdout)


def test_merge_keys_count_towards_the_node_bound(tree: Path) -> None:
    path = tree / "config" / "merges.yaml"
    path.write_text("node: edge01\nstate_dir: s\n" + MERGE_DOUBLING)
    [error] = check(path, within=BOMB_SECONDS)
    assert error.message == f"invalid YAML: more than {limits.MAX_YAML_NODES} nodes once aliases are expanded"
