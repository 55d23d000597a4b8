"""What ``verify`` can prove about a journal's end: the three attacks a bare hash chain cannot see (tail cut, full
rewrite with a fresh valid chain, forged append), each caught by an anchored head or by the per-node key."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from hybridops_daemon.cli.daemon_cli import main
from hybridops_daemon.config.loader import check_config
from hybridops_daemon.daemon.app import Daemon
from hybridops_daemon.drivers.registry import DRIVER_MODULES
from hybridops_daemon.journal.store import GENESIS_HASH, Journal, canonical_json, record_hash
from hybridops_daemon.secrets import SecretUnavailable

REPO = Path(__file__).resolve().parents[2]
KEY = b"edge01 journal key, 32 bytes at least"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.db"


@pytest.fixture
def signed(path: Path) -> Iterator[Journal]:
    with Journal.open(path, key=KEY) as journal:
        fill(journal, 5)
        yield journal


def fill(journal: Journal, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        journal.append("decision", {"i": i, "reason": f"tick {i}"}, ts=1000.0 + i, lane="prod")


def head(journal: Journal) -> tuple[int, str]:
    report = journal.verify()
    return report.head_seq, report.head_hash


def cut_tail(path: Path, after: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER records_no_delete")
    conn.execute("DELETE FROM records WHERE seq > ?", (after,))
    conn.close()


def rewrite(path: Path, n: int) -> None:
    """A fresh, valid chain in place of the journal: what someone with write access but not the key can make."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with Journal.open(path) as journal:
        for i in range(n):
            journal.append("decision", {"i": i, "reason": "all quiet"}, ts=1000.0 + i, lane="prod")


def forge_append(path: Path, body: dict[str, object]) -> None:
    """A record chained correctly onto the head, written with SQL: it has the chain but not the key."""
    conn = sqlite3.connect(path, isolation_level=None)
    seq, prev = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    digest = record_hash(prev, seq + 1, 2000.0, "prod", None, "decision", body)
    conn.execute(
        "INSERT INTO records (seq, ts, lane, run_id, kind, body, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (seq + 1, 2000.0, "prod", None, "decision", canonical_json(body), prev, digest),
    )
    conn.close()


# ------------------------------------------------------------------------------------------------ the attacks


def test_a_tail_cut_passes_the_plain_walk_and_fails_against_the_anchored_head(signed: Journal, path: Path) -> None:
    anchored = head(signed)
    signed.close()
    cut_tail(path, 3)

    assert Journal.verify_file(path).ok  # a shorter chain is a valid chain
    assert Journal.verify_file(path, key=KEY).ok  # the records left are genuinely signed: the key cannot tell
    report = Journal.verify_file(path, expect_head=anchored)
    assert not report.ok
    assert report.problems == ["the journal ends at record 3, before the anchored head 5 (records cut from the end?)"]


def test_a_rewrite_with_a_fresh_valid_chain_passes_the_plain_walk_and_fails_with_the_key(signed: Journal, path: Path) -> None:
    anchored = head(signed)
    signed.close()
    rewrite(path, 5)

    assert Journal.verify_file(path).ok
    keyed = Journal.verify_file(path, key=KEY)
    assert not keyed.ok
    assert keyed.problems == ["no record is signed with the key: the journal was written without it, or rewritten"]
    at_head = Journal.verify_file(path, expect_head=anchored)
    assert not at_head.ok
    assert at_head.problems == [f"record 5 has hash {at_head.head_hash}, not the anchored {anchored[1]} (rewritten?)"]


def test_a_forged_append_passes_the_plain_walk_and_fails_with_the_key(signed: Journal, path: Path) -> None:
    anchored = head(signed)
    forge_append(path, {"i": 99, "reason": "nothing happened here"})

    assert Journal.verify_file(path).ok
    assert Journal.verify_file(path, expect_head=anchored).ok  # the anchor proves what came before it, not after
    report = Journal.verify_file(path, key=KEY)
    assert not report.ok
    assert report.problems == ["record 6 is not signed, but records before it are (appended without the key?)"]


def test_a_record_signed_with_another_key_is_reported(path: Path) -> None:
    with Journal.open(path, key=b"someone else's key") as journal:
        fill(journal, 2)
    report = Journal.verify_file(path, key=KEY)
    assert not report.ok
    assert report.problems[0] == "record 1's signature does not match the key (forged, or signed with another key)"


def test_an_anchor_past_the_pruned_start_is_checked_against_the_summary(path: Path) -> None:
    with Journal.open(path, key=KEY) as journal:
        fill(journal, 6)
        anchored = head(journal)
        fill(journal, 4, start=6)
        assert journal.prune(before_ts=1006.0, now=3000.0) is not None
        assert journal.verify(expect_head=anchored).ok  # record 6 was the last one cut: the summary holds its hash
        assert journal.verify(expect_head=(6, "f" * 64)).problems == [
            f"record 6 has hash {anchored[1]}, not the anchored {'f' * 64} (rewritten?)"
        ]
        early = journal.verify(expect_head=(2, anchored[1]))
        assert early.problems == ["the anchored record 2 was pruned by retention: anchor a newer head to check it"]
        assert journal.verify_file(path, key=KEY).ok  # the summary is signed like any record


# ------------------------------------------------------------------------------------------------ signing


def test_signatures_are_stored_beside_the_hash_and_reported(signed: Journal, path: Path) -> None:
    conn = sqlite3.connect(path)
    sigs = [row[0] for row in conn.execute("SELECT sig FROM records ORDER BY seq")]
    conn.close()
    assert len(sigs) == 5 and all(len(sig) == 64 for sig in sigs)
    unchecked = Journal.verify_file(path)
    assert (unchecked.ok, unchecked.signed, unchecked.signatures_checked) == (True, 5, False)
    checked = Journal.verify_file(path, key=KEY)
    assert (checked.ok, checked.signed, checked.signatures_checked) == (True, 5, True)


def test_records_from_before_the_key_are_covered_by_the_first_signed_record(path: Path) -> None:
    with Journal.open(path) as journal:
        fill(journal, 3)
    with Journal.open(path, key=KEY) as journal:
        fill(journal, 2, start=3)
    report = Journal.verify_file(path, key=KEY)
    assert (report.ok, report.signed, report.first_signed) == (True, 2, 4)


def test_unsigned_journals_verify_as_before(path: Path) -> None:
    with Journal.open(path) as journal:
        fill(journal, 3)
        report = journal.verify()
    assert (report.ok, report.signed, report.signatures_checked) == (True, 0, False)


def test_a_journal_written_before_signatures_opens_verifies_and_gains_the_column(path: Path) -> None:
    path.parent.mkdir()
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(
        """
        PRAGMA journal_mode=WAL;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta (key, value) VALUES ('schema_version', '1');
        CREATE TABLE records (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, lane TEXT, run_id TEXT, kind TEXT NOT NULL,
            body TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
        """
    )
    digest = record_hash(GENESIS_HASH, 1, 1000.0, "prod", None, "decision", {"i": 0})
    old.execute("INSERT INTO records VALUES (1, 1000.0, 'prod', NULL, 'decision', ?, ?, ?)", ('{"i":0}', GENESIS_HASH, digest))
    old.close()

    assert Journal.verify_file(path).ok  # read-only, before any migration
    with Journal.open(path, key=KEY) as journal:
        journal.append("decision", {"i": 1}, ts=1001.0, lane="prod")
        assert journal.verify().ok
    report = Journal.verify_file(path, key=KEY)
    assert (report.ok, report.count, report.signed, report.first_signed) == (True, 2, 1, 2)


# ------------------------------------------------------------------------------------------------ the CLI


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_journal_head_prints_seq_and_hash(signed: Journal, path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seq, digest = head(signed)
    assert cli(capsys, "journal", "head", "--db", str(path)) == (0, f"{seq}:{digest}\n", "")


def test_verify_against_the_printed_head_catches_a_tail_cut(
    signed: Journal, path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, anchored, _ = cli(capsys, "journal", "head", "--db", str(path))
    signed.close()

    code, out, err = cli(capsys, "journal", "verify", "--db", str(path), "--expect-head", anchored.strip())
    assert code == 0
    assert out.splitlines()[1:] == ["anchored head #5 is in the chain"]
    assert "signatures not checked" in err

    cut_tail(path, 4)
    code, out, _ = cli(capsys, "journal", "verify", "--db", str(path), "--expect-head", anchored.strip())
    assert code == 1
    assert out.splitlines() == [
        "journal FAILED verification (1 problem(s)):",
        "  the journal ends at record 4, before the anchored head 5 (records cut from the end?)",
    ]


@pytest.mark.parametrize("how", ["--key-file", "--key-env"])
def test_verify_with_the_key_catches_a_forged_append(
    signed: Journal, path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    (tmp_path / "journal-key").write_bytes(KEY + b"\n")
    monkeypatch.setenv("HYOPS_JOURNAL_KEY", KEY.decode())
    key_args = [how, str(tmp_path / "journal-key") if how == "--key-file" else "HYOPS_JOURNAL_KEY"]

    code, out, err = cli(capsys, "journal", "verify", "--db", str(path), *key_args)
    assert code == 0
    assert out.splitlines()[1] == "signatures checked: records 1..5 signed with the key"
    assert "not anchored" in err and KEY.decode() not in out + err

    forge_append(path, {"i": 5})
    assert cli(capsys, "journal", "verify", "--db", str(path))[0] == 0
    code, out, _ = cli(capsys, "journal", "verify", "--db", str(path), *key_args)
    assert code == 1
    assert "record 6 is not signed, but records before it are (appended without the key?)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--expect-head", "5"], "expected SEQ:HASH"),
        (["--expect-head", "5:abc"], "expected SEQ:HASH"),
        (["--key-env", "HYOPS_NO_SUCH_VARIABLE"], "environment variable HYOPS_NO_SUCH_VARIABLE is not set"),
    ],
)
def test_verify_usage_errors_exit_2(
    signed: Journal, path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = cli(capsys, "journal", "verify", "--db", str(path), *args)
    assert (code, out) == (2, "")
    assert message in err


# ------------------------------------------------------------------------------------------------ the daemon's key


def test_the_daemon_signs_with_the_key_its_config_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file = tmp_path / "daemon.yaml"
    config_file.write_text(
        f"node: edge01\nstate_dir: {tmp_path}\njournal_key: {{env: HYOPS_TEST_JOURNAL_KEY}}\n"
        f"lanes:\n  prod:\n    profile: {REPO / 'policies' / 'prod.yaml'}\n    drivers:\n      sandbox: {{}}\n"
    )
    config, profiles, errors = check_config(config_file, DRIVER_MODULES)
    assert config is not None and not errors, errors
    daemon = Daemon(config, profiles, config_file)
    with pytest.raises(SecretUnavailable, match="HYOPS_TEST_JOURNAL_KEY is not set"):
        daemon._journal_key()  # a node told to sign does not start unsigned
    monkeypatch.setenv("HYOPS_TEST_JOURNAL_KEY", KEY.decode())
    assert daemon._journal_key() == KEY
