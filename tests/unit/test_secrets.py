"""Secrets by reference: resolution, and finding every reference in a config so the redactor learns them."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridops_daemon.config.base import SecretRef
from hybridops_daemon.config.models import DaemonConfig
from hybridops_daemon.secrets import SecretUnavailable, referenced, resolve


def test_every_reference_in_a_config_is_found_with_its_path() -> None:
    config = DaemonConfig.model_validate(
        {
            "node": "edge01",
            "peer": "edge02",
            "state_dir": "s",
            "sources": [{"type": "peer", "broker": {"username": "u", "password": {"env": "MQTT_PW"}}}],
            "lanes": {
                "prod": {
                    "profile": "p.yaml",
                    "drivers": {
                        "hcloud": {"token": {"file": "hcloud-token"}},
                        "postgres": {"clusters": {"db": {"cloud": {"dsn": "host=x", "password": {"env": "PG_PW"}}}}},
                    },
                }
            },
        }
    )
    found = dict(referenced(config))
    assert found == {
        "sources[0].broker.password": SecretRef(env="MQTT_PW"),
        "lanes.prod.drivers.hcloud.token": SecretRef(file=Path("hcloud-token")),
        "lanes.prod.drivers.postgres.clusters.db.cloud.password": SecretRef(env="PG_PW"),
    }


def test_resolution_by_env_file_and_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYOPS_T", "from-env")
    assert resolve("t", SecretRef(env="HYOPS_T")) == "from-env"
    (tmp_path / "tok").write_text("from-file\n")
    assert resolve("t", SecretRef(file=tmp_path / "tok")) == "from-file"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert resolve("t", SecretRef(file=Path("tok"))) == "from-file"
    with pytest.raises(SecretUnavailable, match="HYOPS_MISSING is not set"):
        resolve("t", SecretRef(env="HYOPS_MISSING"))
    (tmp_path / "empty").write_text("")
    with pytest.raises(SecretUnavailable, match="is empty"):
        resolve("t", SecretRef(file=tmp_path / "empty"))
