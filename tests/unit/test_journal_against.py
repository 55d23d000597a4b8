"""Each edge journals the other's head (``peer.head``), so a journal cut or rewritten on one edge is caught against
the other's: ``journal verify --db F --against OTHER_DB``. Also the daemon's side: what it publishes, what it records
and how often, and the wire format the peer link reads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from hybridops_daemon import limits
from hybridops_daemon.cli.daemon_cli import main
from hybridops_daemon.daemon.app import PEER_HEAD_EVERY, PeerHeads
from hybridops_daemon.journal.store import PEER_HEAD, Journal
from hybridops_daemon.journal.verify import journal_node
from hybridops_daemon.signals.peer import peer_journal_head
from hybridops_daemon.signals.peer_auth import Malformed, PlainCodec
from tests.unit.test_journal_proof import cut_tail, fill, rewrite

HASH = "ab" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def edge01(tmp_path: Path) -> Path:
    """edge01's journal: started as edge01, five decisions."""
    path = tmp_path / "edge01" / "journal.db"
    with Journal.open(path) as journal:
        journal.append("daemon.start", {"node": "edge01"}, ts=999.0)
        fill(journal, 5)
    return path


@pytest.fixture
def edge02(tmp_path: Path, edge01: Path) -> Path:
    """edge02's journal, holding edge01's head as the daemon records it (heard over the peer link)."""
    path = tmp_path / "edge02" / "journal.db"
    with Journal.open(path) as journal, Journal.open(edge01) as seen:
        journal.append("daemon.start", {"node": "edge02"}, ts=999.0)
        head = PeerHeads.own(seen)
        assert head == (6, seen.verify().head_hash)
        PeerHeads(Clock()).record(journal, "edge01", *head)
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ verify --against


def test_an_intact_journal_passes_against_the_peers_record_and_the_peers_file_is_left_as_it_was(
    edge01: Path, edge02: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digest(edge02)
    code, out, err = cli(capsys, "journal", "verify", "--db", str(edge01), "--against", str(edge02))
    assert code == 0, out + err
    head = Journal.head_of_file(edge01)
    assert out.splitlines()[0] == f"against {edge02}: edge02 last recorded edge01's head as #6 hash {head[1]} (its record #2)"
    assert out.splitlines()[-1] == "anchored head #6 is in the chain"
    assert digest(edge02) == before  # opened read-only: the peer's evidence is not touched

    with Journal.open(edge01) as journal:  # records written after the peer's last look pass: nothing vouches for them
        fill(journal, 2, start=5)
    assert cli(capsys, "journal", "verify", "--db", str(edge01), "--against", str(edge02))[0] == 0


def test_a_tail_cut_passes_the_plain_walk_and_fails_against_the_peer(
    edge01: Path, edge02: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = Journal.head_of_file(edge01)
    cut_tail(edge01, 4)

    assert cli(capsys, "journal", "verify", "--db", str(edge01))[0] == 0  # a shorter chain is a valid chain
    code, out, _ = cli(capsys, "journal", "verify", "--db", str(edge01), "--against", str(edge02))
    assert code == 1
    assert out.splitlines() == [
        f"against {edge02}: edge02 last recorded edge01's head as #6 hash {expected[1]} (its record #2)",
        "journal FAILED verification (1 problem(s)):",
        "  the journal ends at record 4, before the anchored head 6 (records cut from the end?)",
    ]


def test_a_rewrite_with_a_valid_chain_as_long_fails_against_the_peer(
    edge01: Path, edge02: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = Journal.head_of_file(edge01)
    rewrite(edge01, 6)  # a fresh valid chain, no daemon.start: which node it is must be said
    written = Journal.head_of_file(edge01)

    assert cli(capsys, "journal", "verify", "--db", str(edge01))[0] == 0
    code, out, err = cli(capsys, "journal", "verify", "--db", str(edge01), "--against", str(edge02))
    assert (code, out) == (2, "")
    assert err == f"hyops-daemon: {edge01}: no daemon.start record says which node wrote it; name it with --node\n"
    code, out, _ = cli(capsys, "journal", "verify", "--db", str(edge01), "--against", str(edge02), "--node", "edge01")
    assert code == 1
    assert out.splitlines()[1:] == [
        "journal FAILED verification (1 problem(s)):",
        f"  record 6 has hash {written[1]}, not the anchored {expected[1]} (rewritten?)",
    ]


def test_the_newest_peer_head_of_this_node_is_the_anchor(edge01: Path, edge02: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Journal.open(edge02) as journal:
        journal.append(PEER_HEAD, {"node": "edge09", "seq": 99, "hash": HASH}, ts=1001.0)  # another node's: not ours
        journal.append(PEER_HEAD, {"node": "edge01", "seq": 3, "hash": HASH}, ts=1002.0)  # ours, but not F's record 3
        journal.append(PEER_HEAD, {"node": "edge09", "seq": 98, "hash": HASH}, ts=1003.0)
    with Journal.open(edge01) as journal:
        third = journal.records()[2].hash
    code, out, _ = cli(capsys, "journal", "verify", "--db", str(edge01), "--against", str(edge02))
    assert code == 1
    assert out.splitlines()[0] == f"against {edge02}: edge02 last recorded edge01's head as #3 hash {HASH} (its record #4)"
    assert out.splitlines()[1:] == [
        "journal FAILED verification (1 problem(s)):",
        f"  record 3 has hash {third}, not the anchored {HASH} (rewritten?)",
    ]


def test_the_node_is_read_from_a_start_record_retention_carried(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with Journal.open(path) as journal:
        journal.append("daemon.start", {"node": "edge01"}, ts=999.0)
        fill(journal, 5)
        report = journal.prune(before_ts=1003.0, now=2000.0)
        assert report is not None and report.removed == 4
        assert journal.records(kinds=["daemon.start"]) == []
    assert journal_node(path) == "edge01"


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ("missing", "no journal at {other}"),
        ("garbage", "{other}: journal open failed: file is not a database"),
        ("no-record", "{other}: no peer.head record of node edge01: the peer never recorded this journal's head"),
        ("malformed", "{other}: record 2 is not a well-formed peer.head (node, seq, hash)"),
    ],
)
def test_a_peer_journal_that_cannot_anchor_anything_exits_2_with_one_line(
    edge01: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], other: str, message: str
) -> None:
    path = tmp_path / other / "journal.db"
    if other == "garbage":
        path.parent.mkdir()
        path.write_bytes(b"not a journal at all, " * 100)
    elif other != "missing":
        with Journal.open(path) as journal:
            journal.append("daemon.start", {"node": "edge02"}, ts=999.0)
            if other == "malformed":
                journal.append(PEER_HEAD, {"node": "edge01", "seq": "six", "hash": HASH}, ts=1000.0)
    code, out, err = cli(capsys, "journal", "verify", "--db", str(edge01), "--against", str(path))
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"hyops-daemon: {message.format(other=path)}"]


@pytest.mark.parametrize("extra", [["--node", "edge01"], ["--against", "X", "--expect-head", f"1:{HASH}"]])
def test_node_without_against_and_against_with_an_expected_head_are_usage_errors(
    edge01: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["journal", "verify", "--db", str(edge01), *extra])
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ the daemon's side


def test_the_head_published_passes_over_the_journals_own_peer_head_records(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "journal.db") as journal:
        assert PeerHeads.own(journal) is None  # nothing to tell
        record = journal.append("decision", {"i": 0}, ts=1000.0)
        PeerHeads(Clock()).record(journal, "edge02", 7, HASH)
        # Else recording the peer's head would move this one, which the peer would record, and so on, forever.
        assert PeerHeads.own(journal) == (record.seq, record.hash)
        assert journal.head() == (2, journal.verify().head_hash)


def peer_heads(journal: Journal) -> list[tuple[int, str, float]]:
    return [(r.body["seq"], r.body["hash"], r.ts) for r in journal.records(kinds=[PEER_HEAD]) if r.body["node"] == "edge02"]


def test_the_peers_head_is_journaled_when_it_changed_at_most_once_a_minute(tmp_path: Path) -> None:
    clock = Clock()
    heads = PeerHeads(clock)
    other = "cd" * 32
    with Journal.open(tmp_path / "journal.db") as journal:
        heads.record(journal, "edge02", 5, HASH)  # the first one heard: at once
        clock.now += 1
        heads.record(journal, "edge02", 5, HASH)  # the same head again: nothing
        heads.record(journal, "edge02", 6, other)  # changed, but within the minute: not yet
        clock.now += PEER_HEAD_EVERY - 1
        heads.record(journal, "edge02", 6, other)  # a minute after the last record: journaled
        clock.now += PEER_HEAD_EVERY
        heads.record(journal, "edge02", 6, other)  # unchanged for a minute: still nothing
        assert peer_heads(journal) == [(5, HASH, 1000.0), (6, other, 1000.0 + PEER_HEAD_EVERY)]


def test_a_peer_head_that_went_back_is_journaled_at_once(tmp_path: Path) -> None:
    clock = Clock()
    heads = PeerHeads(clock)
    with Journal.open(tmp_path / "journal.db") as journal:
        heads.record(journal, "edge02", 9, HASH)
        clock.now += 1
        heads.record(journal, "edge02", 4, HASH)  # the peer's journal lost records: the evidence, kept now
        clock.now += 1
        heads.record(journal, "edge02", 4, "ef" * 32)  # same seq, another hash: rewritten
        assert [seq for seq, _, _ in peer_heads(journal)] == [9, 4, 4]


def test_a_journal_that_cannot_be_written_costs_the_record_not_the_link(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal.db")
    journal.close()  # every call now fails with JournalError
    heads = PeerHeads(Clock())
    assert PeerHeads.own(journal) is None
    heads.record(journal, "edge02", 5, HASH)  # logged, not raised
    with Journal.open(tmp_path / "journal.db") as reopened:
        heads.record(reopened, "edge02", 5, HASH)  # not taken as recorded: the next one is journaled
        assert peer_heads(reopened) == [(5, HASH, 1000.0)]


# ------------------------------------------------------------------------------------------------ the wire


def test_a_well_formed_head_from_the_peer_is_read() -> None:
    payload = json.dumps({"node": "edge02", "seq": 12, "hash": HASH}).encode()
    assert peer_journal_head(PlainCodec().open("t", payload, limits.PEER_HEAD, "journal head").body, "edge02") == (12, HASH)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "journal head is not JSON"),
        (json.dumps({"node": "edge02", "seq": 1, "hash": HASH, "pad": "x" * 2000}).encode(), "size in bytes"),
        (json.dumps({"node": "edge09", "seq": 1, "hash": HASH}).encode(), "not a journal head from the configured peer"),
        (json.dumps([1, 2]).encode(), "not a journal head from the configured peer"),
        (json.dumps({"node": "edge02", "seq": True, "hash": HASH}).encode(), "'seq' must be an integer"),
        (json.dumps({"node": "edge02", "seq": 1.5, "hash": HASH}).encode(), "'seq' must be an integer"),
        (json.dumps({"node": "edge02", "seq": -1, "hash": HASH}).encode(), "expected SEQ:HASH"),
        (json.dumps({"node": "edge02", "seq": 1, "hash": HASH.upper()}).encode(), "expected SEQ:HASH"),
        (json.dumps({"node": "edge02", "seq": 1, "hash": HASH[:-2]}).encode(), "expected SEQ:HASH"),
        (json.dumps({"node": "edge02", "seq": 1, "hash": None}).encode(), "'hash' a string"),
    ],
)
def test_a_malformed_head_is_refused_with_its_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(Malformed, match=reason):
        peer_journal_head(PlainCodec().open("t", payload, limits.PEER_HEAD, "journal head").body, "edge02")
