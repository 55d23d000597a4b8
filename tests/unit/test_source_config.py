"""Every source is configured in the daemon config and validated with errors that name the file, line and key."""

from __future__ import annotations

from pathlib import Path

import yaml

from hybridops_daemon.config.loader import check_config, warnings
from hybridops_daemon.config.sources import AlertmanagerSource, BgpSource, IpsecSource, MqttSource, PeerSource, PrometheusSource
from hybridops_daemon.drivers.registry import DRIVER_MODULES

PROFILE = {
    "name": "prod",
    "version": 1,
    "chains": {"cutover": [], "failback": []},
}

ALL_SOURCES = [
    {"type": "http_probe", "signal": "primary_http", "url": "http://127.0.0.1:8081/health"},
    {
        "type": "mqtt",
        "topics": [{"filter": "site/+/health/db", "signal": "db_up", "labels": ["site"]}],
        "broker": {"host": "127.0.0.1", "port": 1883, "username": "edge", "password": {"env": "MQTT_PASSWORD"}},
    },
    {
        "type": "prometheus",
        "url": "http://127.0.0.1:9090",
        "queries": [{"signal": "primary_up", "query": "up{job='db'}", "empty": "down"}],
    },
    {"type": "alertmanager", "port": 9095, "alerts": [{"signal": "db_alert", "match": {"alertname": "PostgresDown"}}]},
    {"type": "bgp", "daemon": "frr", "socket": "/run/frr", "peers": [{"peer": "10.0.0.1", "signal": "bgp_onprem"}]},
    {
        "type": "bgp",
        "name": "bgp-bird",
        "daemon": "bird",
        "socket": "/run/bird/bird.ctl",
        "peers": [{"peer": "cloud", "signal": "bgp_cloud"}],
    },
    {"type": "ipsec", "tunnels": [{"ike": "onprem", "child": "net", "signal": "ipsec_onprem"}]},
    {"type": "peer", "broker": {"host": "127.0.0.1"}},
]


def write(tmp_path: Path, sources: list[dict[str, object]], **extra: object) -> Path:
    (tmp_path / "prod.yaml").write_text(yaml.safe_dump(PROFILE))
    config = {"node": "edge01", "state_dir": "state", "lanes": {"prod": {"profile": "prod.yaml"}}, "sources": sources, **extra}
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_every_source_type_validates(tmp_path: Path) -> None:
    config, _, errors = check_config(write(tmp_path, ALL_SOURCES, peer="edge02"), DRIVER_MODULES)
    assert errors == []
    assert config is not None
    kinds = [type(source) for source in config.sources[1:]]
    assert kinds == [MqttSource, PrometheusSource, AlertmanagerSource, BgpSource, BgpSource, IpsecSource, PeerSource]
    assert [source.name for source in config.sources] == [
        "http_probe:primary_http",
        "mqtt",
        "prometheus",
        "alertmanager",
        "bgp",
        "bgp-bird",
        "ipsec",
        "peer",
    ]


def test_source_errors_name_the_line_and_key(tmp_path: Path) -> None:
    sources = [
        {"type": "prometheus", "url": "http://127.0.0.1:9090", "queries": [{"signal": "x", "query": "up", "empty": "maybe"}]},
        {"type": "bgp", "daemon": "quagga", "socket": "/run/frr", "peers": [{"peer": "10.0.0.1", "signal": "b"}]},
        {"type": "mqtt", "topics": [{"filter": "a/b", "signal": "Bad-Name"}], "broker": {"password": "inline-secret"}},
        {"type": "carrier-pigeon"},
    ]
    _, _, errors = check_config(write(tmp_path, sources), DRIVER_MODULES)
    rendered = [f"{e.line} {e.path}: {e.message}" for e in errors]
    assert rendered == [
        "12 sources[0].queries[0].empty: must be 'down' or 'unknown'",
        "14 sources[1].daemon: must be 'frr' or 'bird'",
        "22 sources[2].topics[0].signal: must be a lowercase signal name like primary_http (a-z, 0-9 and _)",
        "24 sources[2].broker.password: secrets are given by reference, {env: VAR} or {file: path}, never inline",
        "25 sources[3].type: must be one of 'http_probe', 'mqtt', 'prometheus', 'alertmanager', 'bgp', 'ipsec', 'peer'",
    ]


def test_a_peer_source_needs_a_peer_and_names_are_unique(tmp_path: Path) -> None:
    sources = [
        {"type": "peer"},
        {"type": "ipsec", "tunnels": [{"ike": "a", "signal": "a"}]},
        {"type": "ipsec", "tunnels": [{"ike": "b", "signal": "b"}]},
    ]
    _, _, errors = check_config(write(tmp_path, sources), DRIVER_MODULES)
    messages = " | ".join(e.message for e in errors)
    assert "source names must be unique (give each a `name:`); repeated: ipsec" in messages
    assert "a `peer` source needs `peer:`" in messages or len(errors) == 1


REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_real_driver_profiles_validate() -> None:
    config, profiles, errors = check_config(REPO / "config" / "edge01.example.yaml", DRIVER_MODULES)
    assert errors == []
    assert config is not None and set(profiles) == {"prod", "drill"}
    assert warnings(config) == []  # every driver's request timeout below the lease ttl
    prod, drill = profiles["prod"], profiles["drill"]
    assert {step.driver for step in prod.chains.cutover} == {"gcp", "postgres", "hcloud", "powerdns", "netbox"}
    # A drill never touches prod's targets: its own floating IP, DNS name, capacity and database cluster.
    prod_targets = {str(sorted(step.inputs.items())) for step in prod.chains.cutover + prod.chains.failback}
    assert not prod_targets & {str(sorted(step.inputs.items())) for step in drill.chains.cutover + drill.chains.failback}
    assert {step.inputs.get("ip") for step in drill.chains.cutover} - {None} == {"203.0.113.99"}
    assert drill.drill.teardown_after == 1800


def test_a_step_whose_driver_the_lane_does_not_configure_is_an_error(tmp_path: Path) -> None:
    profile = {
        **PROFILE,
        "chains": {
            "cutover": [
                {
                    "id": "fip",
                    "module": "network/floating-ip@v1",
                    "driver": "hcloud",
                    "inputs": {"ip": "203.0.113.10", "target": "edge02"},
                }
            ],
            "failback": [],
        },
    }
    (tmp_path / "prod.yaml").write_text(yaml.safe_dump(profile))
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump({"node": "edge01", "state_dir": "s", "lanes": {"prod": {"profile": "prod.yaml"}}}))
    _, _, errors = check_config(path, DRIVER_MODULES)
    assert [f"{e.path}: {e.message}" for e in errors] == [
        "lanes.prod.drivers: profile prod@v1 step cutover.fip uses driver 'hcloud', not configured here"
    ]
