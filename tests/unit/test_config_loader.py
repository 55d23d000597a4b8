"""Config loading: every problem reported with its file, line and key path, from real files."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from hybridops_daemon.config.loader import (
    ConfigError,
    ConfigInvalid,
    check_config,
    json_schemas,
    load_daemon_config,
    load_profile,
)

KNOWN_DRIVERS = {
    "sandbox": frozenset(
        {"network/floating-ip@v1", "dns/record@v1", "compute/capacity@v1", "database/primary@v1", "ipam/address@v1"}
    )
}

DAEMON_CONFIG = """\
node: edge01
state_dir: ../var/demo
lanes:
  prod: {profile: ../policies/prod.yaml}
  drill: {profile: ../policies/drill.yaml, drivers: {sandbox: {world: worlds/drill.json}}}
sources:
  - {type: http_probe, signal: primary_http, url: "http://127.0.0.1:8081/health", interval: 1s}
"""

PROFILE = """\
name: {name}
version: 1
signals: {{primary_http: {{max_age: 5s}}}}
rules:
  - {{name: primary_down, signal: primary_http, direction: below, trip: 0.5, clear: 0.5, for: 3s, consecutive: 3}}
chains:
  cutover:
    - {{id: fip, module: network/floating-ip@v1, driver: sandbox, inputs: {{ip: 203.0.113.10, target: edge02}}}}
  failback:
    - {{id: fip, module: network/floating-ip@v1, driver: sandbox, inputs: {{ip: 203.0.113.10, target: edge01}}}}
"""

# Line numbers matter: the assertions below name them.
BROKEN_PROFILE = """\
name: prod
version: 1
signals:
  primary_http: {max_age: 5s}
  edge_bgp: {max_age: 5s, colour: red}
rules:
  - name: primary_down
    signal: primary_http
    direction: below
    trip: 0.5
    clear: 0.2
  - name: bgp_down
    signal: edge_bgp
    for: 3 seconds
    direction: sideways
    trip: 1
    consecutive: three
chains:
  cutover:
    - {id: fip, module: network/floating-ip@v1, inputs: {ip: 203.0.113.10}}
    - id: dns
      driver: sandbox
  failback: []
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def demo_tree(root: Path) -> Path:
    """config/demo.yaml with two lanes, and their profiles under policies/."""
    write(root / "policies" / "prod.yaml", PROFILE.format(name="prod"))
    write(root / "policies" / "drill.yaml", PROFILE.format(name="drill"))
    return write(root / "config" / "demo.yaml", DAEMON_CONFIG)


def rendered(excinfo: pytest.ExceptionInfo[ConfigInvalid]) -> list[str]:
    return [str(error) for error in excinfo.value.errors]


def test_valid_config_and_profiles_load_with_paths_relative_to_the_config_folder(tmp_path: Path) -> None:
    config_path = demo_tree(tmp_path)

    config = load_daemon_config(config_path)

    assert config.state_dir.resolve() == (tmp_path / "var" / "demo").resolve()
    assert config.journal_path.resolve() == (tmp_path / "var" / "demo" / "journal.db").resolve()
    assert config.lanes["prod"].profile.resolve() == (tmp_path / "policies" / "prod.yaml").resolve()
    assert config.lanes["prod"].drivers.sandbox.world == config.state_dir / "world-prod.json"
    assert config.lanes["drill"].drivers.sandbox.world == tmp_path / "config" / "worlds" / "drill.json"
    assert config.sources[0].interval == 1.0

    profile = load_profile(config.lanes["prod"].profile, KNOWN_DRIVERS)
    assert profile.ref == "prod@v1"
    assert profile.rules[0].for_ == 3.0


def test_relative_config_path_still_resolves_against_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo_tree(tmp_path)
    monkeypatch.chdir(tmp_path)

    config = load_daemon_config(Path("config/demo.yaml"))

    # Absolute, so the daemon's paths survive a change of working directory.
    assert config.state_dir.is_absolute()
    assert config.state_dir.resolve() == (tmp_path / "var" / "demo").resolve()


def test_check_config_returns_config_and_every_lane_profile(tmp_path: Path) -> None:
    config, profiles, errors = check_config(demo_tree(tmp_path), KNOWN_DRIVERS)

    assert errors == []
    assert config is not None
    assert {lane: profile.name for lane, profile in profiles.items()} == {"prod": "prod", "drill": "drill"}


def test_every_structural_error_is_reported_with_its_line_and_path(tmp_path: Path) -> None:
    path = write(tmp_path / "policies" / "prod.yaml", BROKEN_PROFILE)

    with pytest.raises(ConfigInvalid) as excinfo:
        load_profile(path, KNOWN_DRIVERS)

    assert rendered(excinfo) == [
        f"{path}:5 signals.edge_bgp.colour: unknown key (allowed: max_age, description)",
        f"{path}:7 rules[0]: clear must be >= trip for a 'below' rule (hysteresis band)",
        f'{path}:14 rules[1].for: must be a duration like "30s"',
        f"{path}:15 rules[1].direction: must be 'below' or 'above'",
        f"{path}:17 rules[1].consecutive: must be a valid integer, unable to parse string as an integer",
        # A missing key points at the mapping that lacks it.
        f"{path}:21 chains.cutover[1].module: required key is missing",
    ]
    assert str(excinfo.value) == "\n".join(rendered(excinfo))


def test_cross_reference_errors_are_reported_once_the_structure_is_valid(tmp_path: Path) -> None:
    path = write(
        tmp_path / "prod.yaml",
        """\
        name: prod
        version: 1
        signals: {primary_http: {max_age: 5s}}
        rules:
          - {name: primary_down, signal: primary_http, direction: below, trip: 0.5, for: 3s}
          - {name: bgp_down, signal: edge_bgp, direction: below, trip: 1}
        corroboration: {min_rules: 2, rules: [primary_down, bpg_down]}
        chains:
          cutover:
            - {id: fip, module: network/floating-ip@v1, driver: hcloud}
            - {id: dns, module: dns/record@v1, driver: sandbox}
            - {id: dns, module: storage/bucket@v1, driver: sandbox}
          failback:
            - {id: fip, module: network/floating-ip@v1}
        """,
    )

    with pytest.raises(ConfigInvalid) as excinfo:
        load_profile(path, KNOWN_DRIVERS)

    assert rendered(excinfo) == [
        f"{path}:6 rules[1].signal: unknown signal 'edge_bgp'; declare it under signals",
        f"{path}:7 corroboration.rules[1]: unknown rule 'bpg_down'",
        f"{path}:10 chains.cutover[0].driver: unknown driver 'hcloud'; known: sandbox",
        f"{path}:12 chains.cutover[2].id: duplicate step id 'dns'",
        f"{path}:12 chains.cutover[2].module: driver 'sandbox' cannot run 'storage/bucket@v1'",
    ]


def test_duplicate_key_is_an_error_even_when_the_rest_is_valid(tmp_path: Path) -> None:
    text = PROFILE.format(name="prod") + "version: 2\n"
    path = write(tmp_path / "prod.yaml", text)

    with pytest.raises(ConfigInvalid) as excinfo:
        load_profile(path, KNOWN_DRIVERS)

    assert excinfo.value.errors == [ConfigError(path, 11, "version", "duplicate key (first on line 2)")]


def test_duplicate_keys_are_compared_by_type_and_value(tmp_path: Path) -> None:
    text = PROFILE.format(name="prod").replace("inputs: {ip:", 'inputs: {1: one, "1": two, ip:', 1)
    path = write(tmp_path / "prod.yaml", text)

    with pytest.raises(ConfigInvalid) as excinfo:
        load_profile(path, KNOWN_DRIVERS)

    # Not a duplicate of "1"; the int key is still refused (inputs are keyed by name).
    assert rendered(excinfo) == [f"{path}:8 chains.cutover[0].inputs[1]: invalid key: must be a valid string"]


def test_yaml_syntax_error_reports_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "prod.yaml", "name: prod\nversion: 1\ndescription: fails over: fast\n")

    with pytest.raises(ConfigInvalid) as excinfo:
        load_profile(path, KNOWN_DRIVERS)

    [error] = excinfo.value.errors
    assert (error.line, error.path) == (3, "")
    assert str(error) == f"{path}:3: invalid YAML: mapping values are not allowed here"


@pytest.mark.parametrize(("text", "message"), [("", "file is empty"), ("# nothing yet\n", "file is empty")])
def test_empty_file_is_reported(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "prod.yaml", text)

    with pytest.raises(ConfigInvalid) as excinfo:
        load_profile(path, KNOWN_DRIVERS)

    assert rendered(excinfo) == [f"{path}: {message}"]


def test_a_list_at_the_top_level_is_reported_at_line_one(tmp_path: Path) -> None:
    path = write(tmp_path / "prod.yaml", "- name: prod\n")

    with pytest.raises(ConfigInvalid) as excinfo:
        load_profile(path, KNOWN_DRIVERS)

    assert rendered(excinfo) == [f"{path}:1: must be a mapping (key: value)"]


def test_missing_file_is_reported_without_a_line(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"

    with pytest.raises(ConfigInvalid) as excinfo:
        load_daemon_config(path)

    assert excinfo.value.errors == [ConfigError(path, None, "", "file not found")]
    assert str(excinfo.value) == f"{path}: file not found"


def test_errors_show_the_file_relative_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "policies" / "prod.yaml", BROKEN_PROFILE)
    (tmp_path / "config").mkdir()
    monkeypatch.chdir(tmp_path / "policies")

    with pytest.raises(ConfigInvalid) as excinfo:
        load_profile(tmp_path / "config" / ".." / "policies" / "prod.yaml", KNOWN_DRIVERS)

    assert rendered(excinfo)[2] == 'prod.yaml:14 rules[1].for: must be a duration like "30s"'


def test_daemon_config_errors_name_the_keys_as_written(tmp_path: Path) -> None:
    path = write(
        tmp_path / "demo.yaml",
        """\
        node: edge01
        state_dir: /var/lib/hybridops
        lanes:
          Prod: {profile: prod.yaml}
        sources:
          - {type: http_probe, signal: primary_http, url: "ftp://10.0.0.1/health", interval: soon}
          - {type: icmp_probe, signal: primary_ping}
          - {signal: primary_tcp}
        """,
    )

    with pytest.raises(ConfigInvalid) as excinfo:
        load_daemon_config(path)

    # The discriminated union's tag ("http_probe") is not part of the path in the file.
    assert rendered(excinfo) == [
        f"{path}:4 lanes.Prod: invalid key: must be a lowercase name like prod or floating-ip (a-z, 0-9, _ and -)",
        f"{path}:6 sources[0].url: must be an http:// or https:// URL",
        f'{path}:6 sources[0].interval: must be a duration like "30s"',
        f"{path}:7 sources[1].type: must be one of 'http_probe', 'mqtt', 'prometheus', 'alertmanager', 'bgp', 'ipsec', 'peer'",
        f"{path}:8 sources[2].type: required key is missing",
    ]


def test_check_config_collects_errors_from_every_file(tmp_path: Path) -> None:
    config_path = demo_tree(tmp_path)
    write(config_path, DAEMON_CONFIG.replace("node: edge01", "node: edge01\ntick: never"))
    broken = write(tmp_path / "policies" / "prod.yaml", BROKEN_PROFILE)

    config, profiles, errors = check_config(config_path, KNOWN_DRIVERS)

    # The daemon config is invalid, yet its lanes' profiles were still checked.
    assert config is None
    assert set(profiles) == {"drill"}
    assert [str(error) for error in errors[:2]] == [
        f'{config_path}:2 tick: must be a duration like "30s"',
        f"{broken}:5 signals.edge_bgp.colour: unknown key (allowed: max_age, description)",
    ]
    assert len(errors) == 1 + 6
    assert {error.file.resolve() for error in errors} == {config_path.resolve(), broken.resolve()}


def test_check_config_reports_a_missing_profile_at_the_lane_that_names_it(tmp_path: Path) -> None:
    config_path = demo_tree(tmp_path)
    (tmp_path / "policies" / "drill.yaml").unlink()

    config, profiles, errors = check_config(config_path, KNOWN_DRIVERS)

    assert config is not None
    assert set(profiles) == {"prod"}
    assert [str(error) for error in errors] == [
        f"{config_path}:5 lanes.drill.profile: profile file not found: {tmp_path / 'policies' / 'drill.yaml'}"
    ]


def test_json_schemas_use_aliases_and_accept_written_durations() -> None:
    schemas = json_schemas()

    assert set(schemas) == {"daemon_config", "profile"}
    assert json.loads(json.dumps(schemas)) == schemas
    rule = schemas["profile"]["$defs"]["Rule"]["properties"]
    assert "for" in rule and "for_" not in rule
    number, text = rule["for"]["anyOf"]
    assert number == {"type": "number", "minimum": 0}
    assert re.search(text["pattern"], "30s") and not re.search(text["pattern"], "30 seconds")
