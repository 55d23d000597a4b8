"""Secrets never reach the journal file or the log pipeline: by key, by registered value, anywhere in a structure."""

from __future__ import annotations

import sqlite3
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybridops_daemon.journal.redact import REDACTED, Redactor, is_secret_key
from hybridops_daemon.journal.store import Journal

SECRET = "s3cr3t-Pa55w0rd!x"


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db_password",
        "DB_PASSWD",
        "api_token",
        "X-API-Key",
        "api_key",
        "apikey",
        "apiKeys",
        "accessToken",
        "client.secret",
        "ssh-private-key",
        "Authorization",
        "credentials",
        "ipsec_psk",
        "vault_token_value",
    ],
)
def test_secret_keys_match(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "fencing_token",  # a lease revision, needed in every audit
        "token_count",
        "token_ttl",
        "password_file",  # a reference to where the secret lives
        "client_secret_env",
        "tokenizer",
        "secretary",
        "idempotency_key",
        "key",
        "monkey",
        "passage",
    ],
)
def test_ordinary_keys_do_not_match(key: str) -> None:
    assert not is_secret_key(key)


def test_redact_replaces_by_key_and_by_value_recursively() -> None:
    redactor = Redactor()
    redactor.add_secret(SECRET)
    body: dict[str, Any] = {
        "inputs": {"db": {"dsn": f"postgres://app:{SECRET}@pg/app", "password": 12345, "port": 5432}},
        "log": [f"login with {SECRET}", ("tuple", SECRET)],
        "error": str(RuntimeError(f"auth failed for token {SECRET}")),
        "api_token": {"nested": "whatever its type"},
        f"key-{SECRET}": 1,
        "fencing_token": 41,
    }
    assert redactor.redact(body) == {
        "inputs": {"db": {"dsn": f"postgres://app:{REDACTED}@pg/app", "password": REDACTED, "port": 5432}},
        "log": [f"login with {REDACTED}", ("tuple", REDACTED)],
        "error": f"auth failed for token {REDACTED}",
        "api_token": REDACTED,
        f"key-{REDACTED}": 1,
        "fencing_token": 41,
    }
    assert SECRET in body["log"][0]  # the caller's object is not modified


def test_short_values_are_not_registered_and_stripped_values_are() -> None:
    redactor = Redactor(["abc", f"{SECRET}\n"])
    assert redactor.redact_text("abc and abcd") == "abc and abcd"
    assert redactor.redact_text(f"x{SECRET}y") == f"x{REDACTED}y"


def test_longest_secret_wins_where_secrets_overlap() -> None:
    redactor = Redactor(["hunter2", "hunter2-extended"])
    assert redactor.redact_text("pw=hunter2-extended;") == f"pw={REDACTED};"


def test_structlog_processor_redacts_the_event_dict() -> None:
    redactor = Redactor()
    process = redactor.processor()
    event = {"event": f"connecting with {SECRET}", "token": "t", "attempt": 2}
    assert process(None, "info", dict(event)) == {"event": f"connecting with {SECRET}", "token": REDACTED, "attempt": 2}
    redactor.add_secret(SECRET)  # registered at runtime: the same processor sees it
    error = ValueError(f"bad credentials {SECRET}")
    out = process(None, "error", {**event, "err": error, "exception": f"Traceback...\nValueError: {SECRET}"})
    assert out == {
        "event": f"connecting with {REDACTED}",
        "token": REDACTED,
        "attempt": 2,
        "err": f"bad credentials {REDACTED}",
        "exception": f"Traceback...\nValueError: {REDACTED}",
    }


def test_secret_bytes_never_reach_the_journal_files(tmp_path: Path) -> None:
    redactor = Redactor()
    redactor.add_secret(SECRET)
    path = tmp_path / "journal.db"

    class Opaque:  # a non-JSON value whose text holds the secret
        def __str__(self) -> str:
            return f"<conn password={SECRET}>"

    with Journal.open(path, redactor) as journal:
        journal.append(
            "run.start",
            {"inputs": {"db": {"dsn": f"postgres://app:{SECRET}@pg/app"}, "note": [[SECRET]]}, "conn": Opaque()},
            ts=1.0,
            run_id="r1",
        )
        journal.append("step.apply", {"log": ["ok", f"export PGPASSWORD={SECRET}"], "ok": True}, ts=2.0)
        journal.append("step.failed", {"error": str(ConnectionError(f"refused: {SECRET}"))}, ts=3.0)
        journal.append("operator", {"db_password": "other-value-1234", "X-API-Key": "k-9876543210"}, ts=4.0)
        stored = [r.body for r in journal.records()]
        raw = sqlite3.connect(path)
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL's content goes to the main file
        raw.close()
    assert stored[0]["conn"] == f"<conn password={REDACTED}>"
    assert stored[3] == {"db_password": REDACTED, "X-API-Key": REDACTED}
    files = [p for p in tmp_path.iterdir() if p.name.startswith("journal.db")]
    assert path in files
    for file in files:
        data = file.read_bytes()
        for needle in (SECRET, "other-value-1234", "k-9876543210"):
            assert needle.encode() not in data, f"{needle} found in {file.name}"
    assert Journal.verify_file(path).ok


# Secrets drawn from an alphabet disjoint from the marker's, so a secret cannot be rebuilt from "[REDACTED]" itself.
_SECRET_CHARS = string.ascii_lowercase + string.digits + "-_@:/!$%"


@given(
    secret=st.text(alphabet=_SECRET_CHARS, min_size=4, max_size=24),
    chunks=st.lists(st.text(max_size=30), min_size=1, max_size=8),
)
def test_secret_never_survives_redact_text(secret: str, chunks: list[str]) -> None:
    text = secret.join(chunks)  # the secret between every pair of chunks, chunks themselves arbitrary
    redactor = Redactor([secret])
    out = redactor.redact_text(text)
    assert secret not in out
    if len(chunks) > 1:
        assert REDACTED in out
