"""What the etcd client presents: the CA it trusts, its certificate and key, its user and password, read from the files
and secret references the config names. Read at start and again on every reload (SIGHUP), so a renewed certificate is
picked up without a restart; checked before use, so a reload that would break every connection is refused instead.

Kept apart from ``lease.etcd``: the reload path reads credentials without loading grpc.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hybridops_daemon.config.models import EtcdLeaseConfig
from hybridops_daemon.secrets import SecretUnavailable, resolve

_SPKI = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo


@dataclass(frozen=True)
class EtcdCredentials:
    """PEM bytes for grpc's channel credentials (``ca`` None: plaintext), and a user/password to get a token with."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)


def load_credentials(lease: EtcdLeaseConfig) -> EtcdCredentials:
    """Read and check everything ``lease.tls`` and ``lease.auth`` name. Raises SecretUnavailable (naming the file or
    reference, never a value) if something is unreadable, not PEM, expired, or the key does not match the certificate."""
    tls, auth = lease.tls, lease.auth
    ca = cert = key = None
    if tls is not None:
        ca = _read(tls.ca, "lease.tls.ca")
        _certificates(ca, "lease.tls.ca")
        if tls.cert is not None and tls.key is not None:
            cert = _read(tls.cert, "lease.tls.cert")
            key = resolve("lease.tls.key", tls.key).encode() + b"\n"  # resolve() strips the PEM's final newline
            _matching(_certificates(cert, "lease.tls.cert")[0], key)
    return EtcdCredentials(
        ca=ca,
        cert=cert,
        key=key,
        server_name=tls.server_name if tls is not None else None,
        user=auth.user if auth is not None else None,
        password=resolve("lease.auth.password", auth.password) if auth is not None else None,
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SecretUnavailable(f"{what}: cannot read {path}: {exc.strerror}") from None


def _certificates(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise SecretUnavailable(f"{what}: no PEM certificate in it") from None
    now = datetime.datetime.now(datetime.UTC)
    for certificate in found:
        if certificate.not_valid_after_utc < now:  # every handshake would fail: refuse it now, with a reason
            subject = certificate.subject.rfc4514_string()
            raise SecretUnavailable(f"{what}: the certificate {subject} expired on {certificate.not_valid_after_utc:%Y-%m-%d}")
    return found


def _matching(leaf: x509.Certificate, key: bytes) -> None:
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):  # TypeError: an encrypted key, which grpc cannot use either
        raise SecretUnavailable("lease.tls.key: not an unencrypted PEM private key") from None
    if private.public_key().public_bytes(*_SPKI) != leaf.public_key().public_bytes(*_SPKI):
        raise SecretUnavailable("lease.tls.key does not belong to the certificate in lease.tls.cert")
