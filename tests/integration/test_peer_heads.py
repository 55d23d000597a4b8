"""Two daemons in one process, peered over a real Mosquitto: each journals the other's head as ``peer.head``, and
``journal verify --against`` then catches a cut of either journal against the other's file."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import pytest

from hybridops_daemon.cli.daemon_cli import main
from hybridops_daemon.daemon.app import Daemon
from hybridops_daemon.journal.store import PEER_HEAD, Journal
from tests.testbed.inprocess import running, sandbox_daemon
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.wait import eventually
from tests.unit.test_journal_proof import cut_tail


def daemon(directory: Path, node: str, peer: str, broker: Mosquitto) -> Daemon:
    directory.mkdir()
    return sandbox_daemon(  # no preflight records: the heads' seqs are asserted
        directory,
        f"node: {node}\npeer: {peer}\ntick: 1s\n"
        "sources:\n  - type: peer\n    publish_interval: 200ms\n"
        f"    broker: {{host: {broker.host}, port: {broker.port}, reconnect_min: 100ms, reconnect_max: 500ms}}\n",
    )


def recorded(daemon: Daemon, peer: str) -> list[tuple[int, str]]:
    assert daemon.journal is not None
    return [(r.body["seq"], r.body["hash"]) for r in daemon.journal.records(kinds=[PEER_HEAD]) if r.body["node"] == peer]


async def test_each_daemon_journals_the_others_head_and_a_cut_is_caught_against_it(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    with tempfile.TemporaryDirectory(prefix="hyops-") as tmp:  # short: Unix socket paths
        edge01 = daemon(Path(tmp) / "e1", "edge01", "edge02", mosquitto)
        edge02 = daemon(Path(tmp) / "e2", "edge02", "edge01", mosquitto)
        async with running(edge01):
            # A quiet edge journals only its start; two more records, so that a cut of them keeps the start record.
            await eventually("edge01 to start", lambda: edge01.journal)
            assert edge01.journal is not None
            for i in range(2):
                edge01.journal.append("decision", {"i": i}, ts=time.time(), lane="prod")
            async with running(edge02):
                await eventually("edge02 to journal edge01's head", lambda: recorded(edge02, "edge01"), within=15)
                await eventually("edge01 to journal edge02's head", lambda: recorded(edge01, "edge02"), within=15)
                seq, digest = recorded(edge02, "edge01")[-1]
                assert edge01.journal.records(after_seq=seq - 1, limit=1)[0].hash == digest  # a real head of edge01's
                await asyncio.sleep(1.0)  # five more heads heard
                assert len(recorded(edge02, "edge01")) == 1  # within a minute: one record, not one per publish
        journal01, journal02 = edge01.config.journal_path, edge02.config.journal_path

        for db, other in ((journal01, journal02), (journal02, journal01)):
            code, out, err = main(["journal", "verify", "--db", str(db), "--against", str(other)]), *capsys.readouterr()
            assert code == 0, out + err
            assert "anchored head" in out

        assert seq == 3
        cut_tail(journal01, seq - 1)
        assert Journal.verify_file(journal01).ok  # the walk alone cannot tell
        code, out, err = main(["journal", "verify", "--db", str(journal01), "--against", str(journal02)]), *capsys.readouterr()
        assert code == 1, out + err
        assert f"before the anchored head {seq} (records cut from the end?)" in out
