"""``hyops-daemon``'s offline tools: check-config, schema and journal verify, on real files."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hybridops_daemon.cli.daemon_cli import main
from hybridops_daemon.journal.store import Journal

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "config" / "demo.yaml"
PROD_PROFILE = REPO / "policies" / "prod.yaml"
HYOPS_DAEMON = Path(sys.executable).parent / "hyops-daemon"

PROFILE = """\
name: prod
version: 3
signals:
  primary_http: {max_age: 5s}
rules:
  - name: primary_down
    signal: primary_http
    direction: below
    trip: 0.5
    for: 3s
chains:
  cutover:
    - {id: fip, module: network/floating-ip@v1, inputs: {ip: 203.0.113.10, target: edge02}}
  failback:
    - {id: fip, module: network/floating-ip@v1, inputs: {ip: 203.0.113.10, target: edge01}}
"""

DAEMON_CONFIG = """\
node: edge01
state_dir: state
lanes:
  prod: {profile: prod.yaml}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------------------- check-config


def test_check_config_accepts_the_demo_config_and_names_every_lane_with_its_profile(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check-config", str(DEMO_CONFIG))
    assert code == 0, out + err
    assert out.splitlines()[0] == f"{DEMO_CONFIG}: OK — node edge01, lanes: prod (prod@v1), drill (drill@v1), burst (burst@v1)"
    assert "warning" not in out  # peer: null, so no split-brain warning


def test_check_config_reports_every_error_of_every_file_with_file_line_and_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # errors name files relative to the working directory
    write(
        tmp_path / "daemon.yaml",
        """\
        node: edge01
        state_dir: state
        tick: fast
        colour: blue
        lanes:
          prod: {profile: prod.yaml}
          drill: {profile: drill.yaml}
        """,
    )
    write(tmp_path / "prod.yaml", PROFILE.replace("for: 3s", "for: soon").replace("edge01}}", "edge01}, timeout: later}"))

    code, out, err = run(capsys, "check-config", "daemon.yaml")

    assert code == 2
    assert out.splitlines() == [
        'daemon.yaml:3 tick: must be a duration like "30s"',
        "daemon.yaml:4 colour: unknown key (allowed: node, peer, state_dir, journal, journal_key, journal_verify_every, tick, "
        "shutdown_grace, control, metrics, web, notify, retention, lease, sources, lanes)",
        "daemon.yaml:7 lanes.drill.profile: profile file not found: drill.yaml",
        'prod.yaml:10 rules[0].for: must be a duration like "30s"',
        'prod.yaml:15 chains.failback[0].timeout: must be a duration like "30s"',
    ]
    assert all(re.fullmatch(r"[\w.]+\.yaml:\d+ [\w.\[\]]+: .+", line) for line in out.splitlines())
    assert err.strip() == "5 error(s)"


def test_check_config_warns_that_a_peer_with_a_local_lease_cannot_prevent_split_brain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "prod.yaml", PROFILE)
    config = write(tmp_path / "daemon.yaml", DAEMON_CONFIG + "peer: edge02\n")

    code, out, _ = run(capsys, "check-config", str(config))

    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{config}: OK — node edge01, lanes: prod (prod@v3)"
    assert lines[1] == (
        f"warning: {config}: lease.type is 'local' but a peer (edge02) is configured: "
        "two nodes with local leadership cannot prevent split brain"
    )

    # Without a peer there is nothing to split: no warning.
    write(tmp_path / "daemon.yaml", DAEMON_CONFIG)
    code, out, _ = run(capsys, "check-config", str(config))
    assert code == 0 and "warning" not in out

    # With the etcd lease the pair is kept apart: no warning either.
    write(tmp_path / "daemon.yaml", DAEMON_CONFIG + "peer: edge02\n" + ETCD_TLS)
    code, out, _ = run(capsys, "check-config", str(config))
    assert code == 0 and "warning" not in out, out


ETCD_TLS = """\
lease:
  type: etcd
  endpoints: ['https://10.0.0.1:2379', 'https://10.0.0.2:2379', 'https://10.0.0.3:2379']
  tls: {ca: pki/ca.pem, cert: pki/edge01.pem, key: {file: /etc/hybridops/edge01-key.pem}}
"""


def test_check_config_warns_that_http_etcd_endpoints_are_plaintext(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "prod.yaml", PROFILE)
    endpoints = "['http://10.0.0.1:2379', 'http://10.0.0.2:2379']"
    config = write(tmp_path / "daemon.yaml", DAEMON_CONFIG + f"peer: edge02\nlease: {{type: etcd, endpoints: {endpoints}}}\n")

    code, out, _ = run(capsys, "check-config", str(config))

    assert code == 0
    assert out.splitlines()[1] == (
        f"warning: {config}: etcd endpoints are http:// (http://10.0.0.1:2379, http://10.0.0.2:2379): leadership and "
        "fencing travel unencrypted and unauthenticated; use https:// with lease.tls (client certificates) across any "
        "link you do not own"
    )

    # A password sent that way is named too.
    auth = "auth: {user: edge01, password: {env: ETCD_PASSWORD}}"
    write(tmp_path / "daemon.yaml", DAEMON_CONFIG + f"lease: {{type: etcd, endpoints: {endpoints}, {auth}}}\n")
    code, out, _ = run(capsys, "check-config", str(config))
    assert code == 0 and "unauthenticated, the etcd password too; use https://" in out, out


def test_check_config_warns_of_a_peer_link_without_auth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "prod.yaml", PROFILE)
    pair = DAEMON_CONFIG + "peer: edge02\n" + ETCD_TLS + "sources:\n  - type: peer\n"
    config = write(tmp_path / "daemon.yaml", pair)

    code, out, _ = run(capsys, "check-config", str(config))

    assert code == 0  # a warning: the link still runs as before, trusting the broker
    assert out.splitlines()[1:] == [
        f"warning: {config}: source 'peer' has no auth: peer messages are not authenticated, so anyone who may publish "
        "on the broker can speak for the peer (set auth.key, the same on both edges)"
    ]

    write(tmp_path / "daemon.yaml", pair + "    auth: {key: {file: peer-key}, max_skew: 5s}\n")
    code, out, _ = run(capsys, "check-config", str(config))
    assert code == 0 and "warning" not in out, out

    write(tmp_path / "daemon.yaml", pair + "    auth: {key: 'inline-secret'}\n")
    code, out, _ = run(capsys, "check-config", str(config))
    assert code == 2 and "never inline" in out, out


def test_check_config_warns_of_a_driver_request_timeout_not_below_the_lease_ttl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A request may outlive its sender's leadership when its deadline (and TCP_USER_TIMEOUT) is not below the ttl."""
    write(tmp_path / "prod.yaml", PROFILE.replace("inputs: {ip", "driver: hcloud, inputs: {ip"))
    tls = "tls: {ca: pki/ca.pem, cert: pki/edge01.pem, key: {file: /etc/hybridops/edge01-key.pem}}"
    etcd = f"lease: {{type: etcd, endpoints: ['https://10.0.0.1:2379'], ttl: 5s, {tls}}}\n"
    drivers = "lanes:\n  prod:\n    profile: prod.yaml\n    drivers:\n      hcloud: {token: {env: T}, request_timeout: %s}\n"
    base = DAEMON_CONFIG.split("lanes:")[0] + etcd
    config = write(tmp_path / "daemon.yaml", base + drivers % "5s")

    code, out, _ = run(capsys, "check-config", str(config))

    assert code == 0, out
    assert out.splitlines()[1:] == [
        f"warning: {config}: lanes.prod.drivers.hcloud.request_timeout (5s) is not below lease.ttl (5s): "
        "a request this node sent as leader could land after its leadership ended"
    ]

    write(tmp_path / "daemon.yaml", base + drivers % "4s")
    code, out, _ = run(capsys, "check-config", str(config))
    assert code == 0 and "warning" not in out, out


@pytest.mark.parametrize(
    ("lease", "message"),
    [
        ("{type: etcd, endpoints: []}", "lease.endpoints: Tuple should have at least 1 item"),
        ("{type: etcd, endpoints: ['https://e1:2379']}", "https:// endpoints need `tls`"),
        ("{type: etcd, endpoints: ['http://e1:2379'], tls: {ca: ca.pem}}", "the endpoints are http://: use https://"),
        ("{type: etcd, endpoints: ['https://e1:2379', 'http://e2:2379'], tls: {ca: ca.pem}}", "mix of http:// and https://"),
        ("{type: etcd, endpoints: ['grpc://e1:2379']}", "expected https://HOST:PORT (or http://HOST:PORT, plaintext)"),
        ("{type: etcd, endpoints: ['https://e1:2379'], tls: {ca: ca.pem, cert: c.pem}}", "give both `cert` and `key`"),
        ("{type: etcd, endpoints: ['https://e1:2379'], tls: {ca: ca.pem}, auth: {user: e, password: pw}}", "by reference"),
        ("{type: etcd, endpoints: ['http://e1:2379'], ttl: 2s, op_timeout: 1s}", "must be at most a third of the ttl"),
        ("{type: etcd, endpoints: ['http://e1:2379'], prefix: hybridops}", "lease.prefix: String should match pattern"),
        ("{type: zookeeper}", "lease.type: must be one of 'local', 'etcd'"),
    ],
)
def test_check_config_refuses_a_bad_etcd_lease(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lease: str, message: str
) -> None:
    write(tmp_path / "prod.yaml", PROFILE)
    config = write(tmp_path / "daemon.yaml", DAEMON_CONFIG + f"lease: {lease}\n")

    code, out, _ = run(capsys, "check-config", str(config))

    assert code == 2
    assert message in out, out


ZERO_INTERVAL_SOURCES = {
    "prometheus": "{type: prometheus, url: 'http://127.0.0.1:9090', queries: [{signal: up, query: up}], interval: 0s}",
    "bgp": "{type: bgp, daemon: frr, socket: /run/frr, peers: [{peer: 10.0.0.1, signal: bgp}], interval: 0s}",
    "ipsec": "{type: ipsec, tunnels: [{ike: onprem, signal: ipsec}], interval: 0s}",
    "http_probe": "{type: http_probe, signal: up, url: 'http://127.0.0.1:8081/health', interval: 0s}",
}


# A zero interval validated once crash-looped the source in the daemon; a zero tick spun a core.
@pytest.mark.parametrize(
    ("extra", "error"),
    [
        *[(f"sources:\n  - {source}\n", "sources[0].interval") for source in ZERO_INTERVAL_SOURCES.values()],
        ("tick: 0s\n", "tick"),
    ],
    ids=[*ZERO_INTERVAL_SOURCES, "tick"],
)
def test_check_config_refuses_a_zero_interval_naming_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, extra: str, error: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "prod.yaml", PROFILE)
    write(tmp_path / "daemon.yaml", DAEMON_CONFIG + extra)
    line = len(DAEMON_CONFIG.splitlines()) + len(extra.splitlines())

    code, out, err = run(capsys, "check-config", "daemon.yaml")

    assert code == 2
    assert out.splitlines() == [f'daemon.yaml:{line} {error}: must be a duration above 0, like "30s"']
    assert err.strip() == "1 error(s)"


# --------------------------------------------------------------------------------------------- schema


def test_schema_prints_both_schemas_or_just_the_one_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema")
    assert code == 0
    schemas = json.loads(out)
    assert set(schemas) == {"daemon_config", "profile"}
    assert "lanes" in schemas["daemon_config"]["required"] and "chains" in schemas["profile"]["required"]

    code, out, _ = run(capsys, "schema", "--kind", "profile")
    assert code == 0
    profile = json.loads(out)
    assert profile == schemas["profile"]
    assert profile["title"] == "Profile"

    # Operators write durations as strings: the schema must accept `for: 30s`, not only a number.
    for_ = profile["$defs"]["Rule"]["properties"]["for"]
    patterns = [alt["pattern"] for alt in for_["anyOf"] if alt.get("type") == "string"]
    assert len(patterns) == 1
    for good in ("30s", "250ms", "1.5m", "2h", "1d"):
        assert re.search(patterns[0], good), good
    for bad in ("soon", "30", "3 seconds", "-1s", "30 s s"):
        assert not re.search(patterns[0], bad), bad
    assert "for_" not in profile["$defs"]["Rule"]["properties"]  # keys by alias, as written in the file


# --------------------------------------------------------------------------------------------- journal verify


def test_journal_verify_without_a_file_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "journal.db"
    done = subprocess.run(
        [str(HYOPS_DAEMON), "journal", "verify", "--db", str(missing)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"hyops-daemon: no journal at {missing}"
    assert not missing.exists() and not missing.parent.exists()  # verify never creates a journal


@pytest.mark.parametrize("content", ["text", "other sqlite database"])
def test_journal_verify_of_a_file_that_is_not_a_journal_is_a_usage_error_not_a_failed_verification(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    db = tmp_path / "journal.db"
    if content == "text":
        db.write_text("hello\n")
    else:
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE notes (text TEXT)")
        conn.close()

    code, out, err = run(capsys, "journal", "verify", "--db", str(db))

    assert code == 2, out + err  # exit 1 means "tampered": an auditor must be able to tell the two apart
    assert out == ""
    assert err.startswith(f"hyops-daemon: {db}: ") and len(err.splitlines()) == 1, err


def test_journal_verify_passes_a_real_journal_and_lists_the_tampering(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "journal.db"
    with Journal.open(db) as journal:
        for i in range(4):
            last = journal.append("decision", {"i": i, "reason": f"tick {i}"}, ts=1000.0 + i, lane="prod")

    code, out, _ = run(capsys, "journal", "verify", "--db", str(db))
    assert code == 0
    assert out.strip() == f"journal OK: 4 records, head #4 hash {last.hash}"

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER records_no_update")
        conn.execute("DROP TRIGGER records_no_delete")
        conn.execute("""UPDATE records SET body = '{"i":1,"reason":"nothing to see"}' WHERE seq = 2""")
    finally:
        conn.close()

    code, out, _ = run(capsys, "journal", "verify", "--db", str(db))
    assert code == 1
    assert out.splitlines() == [
        "journal FAILED verification (1 problem(s)):",
        "  record 2 was altered (its hash does not match its content)",
    ]


def test_run_with_a_journal_key_that_is_not_there_says_so_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "daemon.yaml"
    config.write_text(
        f"node: edge01\nstate_dir: {tmp_path / 'state'}\njournal_key: {{file: {tmp_path / 'no-such-key'}}}\n"
        f"lanes:\n  prod: {{profile: {REPO / 'policies' / 'prod.yaml'}}}\n"
    )
    done = subprocess.run([str(HYOPS_DAEMON), "run", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("hyops-daemon: ") and "no-such-key" in done.stderr


@pytest.mark.parametrize(
    ("profile", "expected"),
    [("/dev/zero", "is not a regular file (a device or a pipe?)"), ("/tmp", "is a directory, not a file")],
)
def test_check_config_says_what_a_profile_path_is_when_it_is_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], profile: str, expected: str
) -> None:
    write(tmp_path / "daemon.yaml", f"node: edge01\nstate_dir: state\nlanes:\n  prod: {{profile: {profile}}}\n")
    code, out, _ = run(capsys, "check-config", str(tmp_path / "daemon.yaml"))
    assert code == 2
    assert out.splitlines() == [f"{tmp_path / 'daemon.yaml'}:4 lanes.prod.profile: profile {expected}: {profile}"]


def test_check_config_on_a_device_or_a_directory_is_an_error_not_an_endless_read(capsys: pytest.CaptureFixture[str]) -> None:
    for path, expected in (("/dev/zero", "is not a regular file (a device or a pipe?)"), ("/tmp", "is a directory, not a file")):
        code, out, _ = run(capsys, "check-config", path)
        assert code == 2
        assert out.splitlines() == [f"{path}: {expected}"]


def test_a_lane_may_not_run_the_profile_written_for_another_lane(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(
        tmp_path / "daemon.yaml",
        f"node: edge01\nstate_dir: state\nlanes:\n  prod: {{profile: {PROD_PROFILE}}}\n  drill: {{profile: {PROD_PROFILE}}}\n",
    )
    code, out, _ = run(capsys, "check-config", str(tmp_path / "daemon.yaml"))
    assert code == 2
    assert out.splitlines() == [
        f"{tmp_path / 'daemon.yaml'}:5 lanes.drill.profile: profile prod@v1 is written for lane 'prod'; lane 'drill' needs "
        "its own (name: drill)"
    ]


LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (LAUGHS, ":1: invalid YAML: more than 100000 nodes once aliases are expanded"),
        ("node: " + "[" * 5000 + "]" * 5000 + "\n", ":1: invalid YAML: nested deeper than 32 levels"),
        ("a: &a x\nb: [" + ", ".join(["*a"] * 101) + "]\n", ":2: invalid YAML: more than 100 aliases"),
        ("# " + "x" * (1024 * 1024) + "\n", ": file: size in bytes over the limit of 1048576"),
    ],
    ids=["billion-laughs", "deep", "aliases", "size"],
)
def test_check_config_refuses_a_hostile_yaml_file_in_bounded_time_and_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    bomb = tmp_path / "daemon.yaml"
    bomb.write_text(text)
    code, out, err = run(capsys, "check-config", str(bomb))  # in-process: a MemoryError or RecursionError would fail here
    assert code == 2, out + err
    assert out.splitlines() == [f"{bomb}{expected}"]
