"""The source declarations, the registry and the config schema agree: a source type is declared once, in
``config.sources.SOURCES``, and everything else is derived from it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.cli.daemon_cli import main
from hybridops_daemon.config.loader import json_schemas
from hybridops_daemon.config.sources import SOURCES, SOURCES_BY_TYPE, SourceSpec
from hybridops_daemon.signals.base import SourceContext
from hybridops_daemon.signals.registry import build_source, source_class

REPO = Path(__file__).resolve().parents[2]

# One minimal valid entry per declared type (a new source must add one here: see the first test).
EXAMPLES: dict[str, dict[str, Any]] = {
    "http_probe": {"signal": "primary_http", "url": "http://127.0.0.1:8081/health"},
    "mqtt": {"topics": [{"filter": "site/+/health/db", "signal": "db_up", "labels": ["site"]}]},
    "prometheus": {"url": "http://127.0.0.1:9090", "queries": [{"signal": "primary_up", "query": "up"}]},
    "alertmanager": {"port": 9095, "alerts": [{"signal": "db_alert", "match": {"alertname": "PostgresDown"}}]},
    "bgp": {"daemon": "frr", "socket": "/run/frr", "peers": [{"peer": "10.0.0.1", "signal": "bgp_onprem"}]},
    "ipsec": {"tunnels": [{"ike": "onprem", "signal": "ipsec_onprem"}]},
    "peer": {},
}


def test_every_declared_type_is_in_the_schema_and_nothing_else() -> None:
    assert set(EXAMPLES) == set(SOURCES_BY_TYPE), "each declared source needs an example here"
    schema = json_schemas()["daemon_config"]
    items = schema["properties"]["sources"]["items"]
    refs = {tag: ref.removeprefix("#/$defs/") for tag, ref in items["discriminator"]["mapping"].items()}
    assert refs == {declaration.type: declaration.config.__name__ for declaration in SOURCES}
    assert [member["$ref"].removeprefix("#/$defs/") for member in items["oneOf"]] == [d.config.__name__ for d in SOURCES]
    for declaration in SOURCES:
        assert schema["$defs"][declaration.config.__name__]["properties"]["type"]["const"] == declaration.type


@pytest.mark.parametrize("declaration", SOURCES, ids=lambda declaration: declaration.type)
def test_every_declared_type_builds_into_its_declared_class(declaration: Any) -> None:
    spec = declaration.config.model_validate({"type": declaration.type, **EXAMPLES[declaration.type]})
    source = build_source(spec, SourceContext("edge01", "edge02"))
    cls = source_class(declaration)
    assert type(source) is cls
    assert f"{cls.__module__}:{cls.__qualname__}" == declaration.factory
    assert source.name == spec.name


def test_an_undeclared_type_is_refused_by_the_registry() -> None:
    with pytest.raises(ValueError, match=r"unknown source type 'carrier-pigeon' \(declared: http_probe, mqtt, "):
        build_source(SourceSpec(type="carrier-pigeon", name="pigeon"), SourceContext("edge01"))


def test_a_peer_link_needs_the_peer_in_its_context() -> None:
    spec = SOURCES_BY_TYPE["peer"].config.model_validate({"type": "peer"})
    with pytest.raises(ValueError, match=r"a `peer` source needs `peer:`"):
        build_source(spec, SourceContext("edge01"))


def test_check_config_names_an_unknown_source_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "prod.yaml").write_text("name: prod\nversion: 1\nchains: {cutover: [], failback: []}\n")
    config = tmp_path / "daemon.yaml"
    config.write_text(
        textwrap.dedent("""\
            node: edge01
            state_dir: state
            lanes: {prod: {profile: prod.yaml}}
            sources:
              - {type: carrier-pigeon, signal: primary_http}
            """)
    )
    assert main(["check-config", str(config)]) == 2
    declared = ", ".join(f"'{declaration.type}'" for declaration in SOURCES)
    assert f"daemon.yaml:5 sources[0].type: must be one of {declared}\n" in capsys.readouterr().out


# Run in a fresh interpreter: this test process has long imported every source.
LAZY = """\
import sys
from pathlib import Path
from hybridops_daemon.cli.daemon_cli import main
from hybridops_daemon.config.loader import load_daemon_config
from hybridops_daemon.signals.base import SourceContext
from hybridops_daemon.signals.registry import build_source

assert main(["check-config", sys.argv[1]]) == 0
config = load_daemon_config(Path(sys.argv[1]))
assert [spec.type for spec in config.sources] == ["http_probe", "http_probe"]
for spec in config.sources:
    build_source(spec, SourceContext(config.node))
print(sorted(m for m in ("vici", "prometheus_api_client", "aiomqtt", "paho") if m in sys.modules))
"""


def test_the_demo_never_imports_the_clients_of_sources_it_does_not_configure() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LAZY, str(REPO / "config" / "demo.yaml")], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.splitlines()[-1] == "[]"
