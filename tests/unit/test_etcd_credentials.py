"""The etcd client's credentials from the config: paths, secret references, and the checks that refuse what would fail
every handshake (read at start and on every reload)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.config.loader import load_daemon_config
from hybridops_daemon.config.models import EtcdLeaseConfig
from hybridops_daemon.lease.etcd_credentials import load_credentials
from hybridops_daemon.secrets import SecretUnavailable, referenced
from tests.testbed.pki import Pki


def lease(**fields: Any) -> EtcdLeaseConfig:
    return EtcdLeaseConfig.model_validate({"type": "etcd", "endpoints": ["https://10.0.0.1:2379"], **fields})


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def test_tls_paths_resolve_against_the_config_folder_and_the_key_stays_a_secret_reference(tmp_path: Path) -> None:
    (tmp_path / "prod.yaml").write_text("name: prod\nversion: 1\nchains: {cutover: [], failback: []}\n")
    (tmp_path / "daemon.yaml").write_text(
        "node: edge01\nstate_dir: state\nlanes: {prod: {profile: prod.yaml}}\n"
        "lease:\n  type: etcd\n  endpoints: ['https://10.0.0.1:2379']\n"
        "  tls: {ca: pki/ca.pem, cert: pki/edge01.pem, key: {file: edge01-key.pem}, server_name: etcd.example}\n"
        "  auth: {user: edge01, password: {env: ETCD_PASSWORD}}\n"
    )
    config = load_daemon_config(tmp_path / "daemon.yaml")
    assert isinstance(config.lease, EtcdLeaseConfig) and config.lease.tls is not None
    assert config.lease.tls.ca == tmp_path / "pki" / "ca.pem"
    assert config.lease.tls.cert == tmp_path / "pki" / "edge01.pem"
    # Like every secret: absolute, or under systemd's $CREDENTIALS_DIRECTORY; and the redactor learns it.
    assert config.lease.tls.key is not None and config.lease.tls.key.file == Path("edge01-key.pem")
    assert {path for path, _ in referenced(config)} >= {"lease.tls.key", "lease.auth.password"}


def test_credentials_carry_the_pem_files_and_the_password(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    edge = pki.client("edge01")
    monkeypatch.setenv("ETCD_PASSWORD", "not-in-any-repr")
    credentials = load_credentials(
        lease(
            tls={"ca": pki.ca, "cert": edge.cert, "key": {"file": edge.key}, "server_name": "etcd.example"},
            auth={"user": "edge01", "password": {"env": "ETCD_PASSWORD"}},
        )
    )
    assert credentials.ca == pki.ca.read_bytes() and credentials.cert == edge.cert.read_bytes()
    assert credentials.key == edge.key.read_bytes()
    assert (credentials.server_name, credentials.user, credentials.password) == ("etcd.example", "edge01", "not-in-any-repr")
    assert "not-in-any-repr" not in repr(credentials) and "PRIVATE KEY" not in repr(credentials)


def test_a_key_of_another_certificate_is_refused(pki: Pki) -> None:
    edge, other = pki.client("edge01"), pki.client("edge02")
    with pytest.raises(SecretUnavailable, match=r"lease.tls.key does not belong to the certificate in lease.tls.cert"):
        load_credentials(lease(tls={"ca": pki.ca, "cert": edge.cert, "key": {"file": other.key}}))


@pytest.mark.parametrize(
    ("which", "content", "message"),
    [
        ("ca", None, r"lease.tls.ca: cannot read .*missing.pem: No such file"),
        ("ca", b"not a certificate", r"lease.tls.ca: no PEM certificate in it"),
        ("cert", b"", r"lease.tls.cert: no PEM certificate in it"),
        ("key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", r"lease.tls.key: not an unencrypted PEM"),
    ],
)
def test_unusable_files_are_refused_naming_the_setting(
    pki: Pki, tmp_path: Path, which: str, content: bytes | None, message: str
) -> None:
    edge = pki.client("edge01")
    files = {"ca": pki.ca, "cert": edge.cert, "key": edge.key}
    files[which] = tmp_path / "missing.pem"
    if content is not None:
        files[which].write_bytes(content)
    with pytest.raises(SecretUnavailable, match=message) as raised:
        load_credentials(lease(tls={"ca": files["ca"], "cert": files["cert"], "key": {"file": files["key"]}}))
    assert "AAAA" not in str(raised.value)


def test_an_expired_client_certificate_is_refused(pki: Pki) -> None:
    old = pki.client("edge01", file="edge01-expired", days=-1)
    with pytest.raises(SecretUnavailable, match=r"lease.tls.cert: the certificate CN=edge01 expired on"):
        load_credentials(lease(tls={"ca": pki.ca, "cert": old.cert, "key": {"file": old.key}}))


def test_plaintext_carries_no_tls() -> None:
    credentials = load_credentials(EtcdLeaseConfig.model_validate({"type": "etcd", "endpoints": ["http://10.0.0.1:2379"]}))
    assert credentials.ca is None and credentials.cert is None and credentials.user is None
