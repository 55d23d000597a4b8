"""The daemon as a service: sd_notify and the watchdog, SIGTERM mid-chain, the lease, config errors at start."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import DAEMON, DaemonProcess, free_port, profile, wait_for

pytestmark = pytest.mark.e2e

WATCHDOG_USEC = 400_000  # the daemon pings every WATCHDOG_USEC / 2 = 200 ms


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            os.kill(daemon.proc.pid, signal.SIGCONT)  # in case a test failed while the daemon was stopped
        daemon.stop()


def quiet_daemon(root: Path, latency: dict[str, float] | None = None, env: dict[str, str] | None = None) -> DaemonProcess:
    """Two lanes without automatic rules: nothing happens unless an operator asks, so no primary is needed."""
    return DaemonProcess(root, free_port(), {"prod": profile("prod"), "drill": profile("drill")}, latency or {}, env=env)


def journal_kinds(db: Path) -> list[tuple[str, str | None]]:
    """(kind, run_id) of every record, read from the file read-only (never through the daemon)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [(kind, run_id) for kind, run_id in conn.execute("SELECT kind, run_id FROM records ORDER BY seq")]


def journal_bodies(db: Path, kind: str, run_id: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT body FROM records WHERE kind = ?" + (" AND run_id = ?" if run_id else "") + " ORDER BY seq"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [json.loads(row[0]) for row in conn.execute(sql, (kind, run_id) if run_id else (kind,))]


# --------------------------------------------------------------------------------------------- sd_notify


class NotifyListener:
    """What systemd would receive: one datagram per sd_notify message, each with the time it was read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, list[str]]] = []

    def drain(self) -> list[list[str]]:
        """Read every datagram already queued, without waiting."""
        got: list[list[str]] = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            fields = data.decode().split("\n")
            self.messages.append((time.monotonic(), fields))
            got.append(fields)
        return got

    def collect(self, seconds: float) -> list[list[str]]:
        """Every message that arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        got: list[list[str]] = []
        while time.monotonic() < deadline:
            got.extend(self.drain())
            time.sleep(0.01)
        return got + self.drain()

    def wait_for(self, what: str, match: Callable[[list[str]], bool], timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for fields in self.drain():
                if match(fields):
                    return fields
            time.sleep(0.01)
        raise AssertionError(f"no {what} within {timeout}s; received: {[m for _, m in self.messages]}")

    def close(self) -> None:
        self.sock.close()


def status_of(fields: list[str]) -> dict[str, str]:
    """``STATUS=drill: PRIMARY, prod: PRIMARY`` (or, once readiness ran, ``drill: PRIMARY, path ready; prod: ...``)
    → {"drill": "PRIMARY", "prod": "PRIMARY"}."""
    line = next(f for f in fields if f.startswith("STATUS="))
    lanes = re.split(r"[,;] (?=[a-z][a-z0-9_-]*: )", line.removeprefix("STATUS="))
    return {name: rest.split(",")[0] for name, rest in (part.split(": ", 1) for part in lanes)}


def pings(messages: list[list[str]]) -> int:
    return sum(1 for fields in messages if fields == ["WATCHDOG=1"])


def process_state(pid: int) -> str:
    # /proc/PID/stat: "pid (comm) STATE ..."; comm may hold spaces, so split after its closing parenthesis.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_sd_notify_ready_status_watchdog_from_the_loop_and_stopping(tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        daemon = quiet_daemon(tmp_path, env={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)})
        daemons.append(daemon)
        daemon.start()
        assert daemon.proc is not None
        pid = daemon.proc.pid

        ready = listener.wait_for("READY=1", lambda fields: "READY=1" in fields)
        assert status_of(ready) == {"prod": "PRIMARY", "drill": "PRIMARY"}, ready

        window = listener.collect(1.5)
        assert pings(window) >= 3, f"{pings(window)} watchdog pings in 1.5 s with WATCHDOG_USEC={WATCHDOG_USEC}"

        # A stopped loop sends nothing: the pings come from the event loop itself, not from a helper thread.
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_for("the daemon to be stopped", lambda: process_state(pid) == "T", timeout=5, interval=0.01)
            listener.drain()  # everything sent before the stop: a unix datagram is queued when sendto() returns
            time.sleep(1.0)
            frozen = listener.drain()
        finally:
            os.kill(pid, signal.SIGCONT)
        assert pings(frozen) == 0, f"watchdog pings while the daemon was stopped: {frozen}"
        listener.wait_for("a watchdog ping after SIGCONT", lambda fields: fields == ["WATCHDOG=1"], timeout=2)

        # SIGSTOP freezes every thread; to show the pings come from the event loop, block only the loop. A
        # SIGHUP reload journals from the loop, and the journal's appends are synchronous: while this test holds
        # the SQLite write lock the loop waits in append() (busy timeout 5 s), and a healthy loop's pings stop.
        holder = sqlite3.connect(daemon.state / "journal.db", isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            os.kill(pid, signal.SIGHUP)
            time.sleep(0.1)  # a ping already under way when the loop took the signal may still land
            listener.drain()
            blocked = listener.collect(1.0)
            assert "profile.reloaded" not in [kind for kind, _ in journal_kinds(daemon.state / "journal.db")]
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert pings(blocked) == 0, f"watchdog pings while the event loop was blocked: {blocked}"
        listener.wait_for("a watchdog ping once the loop runs again", lambda fields: fields == ["WATCHDOG=1"], timeout=2)
        wait_for(
            "the reload to be journaled",
            lambda: "profile.reloaded" in [kind for kind, _ in journal_kinds(daemon.state / "journal.db")],
            timeout=5,
        )

        # STATUS follows the lanes.
        assert daemon.ctl("drill", "--lane", "drill").returncode == 0
        listener.wait_for(
            "STATUS with the drill lane on standby",
            lambda fields: any(f.startswith("STATUS=") for f in fields) and status_of(fields).get("drill") == "ON_STANDBY",
        )

        assert daemon.stop() == 0
        listener.drain()
        fields_seen = [fields for _, fields in listener.messages]
        assert ["STOPPING=1"] in fields_seen, fields_seen
        after_stopping = fields_seen[fields_seen.index(["STOPPING=1"]) + 1 :]
        assert pings(after_stopping) == 0, f"watchdog pings after STOPPING=1: {after_stopping}"
    finally:
        listener.close()


# --------------------------------------------------------------------------------------------- SIGTERM mid-chain


def test_sigterm_mid_chain_stops_cleanly_within_the_grace_and_a_restart_finishes_the_run(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    daemon = quiet_daemon(tmp_path, latency={"prod": 3.0})  # every apply outlasts the 2 s shutdown grace
    daemons.append(daemon)
    daemon.start()
    assert daemon.proc is not None
    cutover = daemon.ctl("cutover", "--lane", "prod", "--confirm")
    assert cutover.returncode == 0, cutover.stderr
    run_id = daemon.lane("prod")["active_run"]
    assert run_id

    def first_intent() -> bool:
        return any(r["kind"] == "step.intent" for r in daemon.ctl_json("journal", "show", run_id))

    wait_for("the run's first step.intent", first_intent, timeout=10, interval=0.05)
    began = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    wait_for("the daemon to wait for the chain", lambda: "waiting for running chains" in daemon.logs(), timeout=2)
    # While it drains, the loop decides nothing: a command is refused at once, not journaled and left unanswered.
    late = daemon.ctl("pause")
    assert late.returncode == 1 and "the daemon is stopping" in late.stderr, late.stderr
    assert daemon.proc.wait(timeout=2 + 4) == 0
    elapsed = time.monotonic() - began
    # The run cannot finish in the grace (5 steps × 3 s), so the daemon waits it out, then cancels: ~2 s.
    assert 1.9 <= elapsed < 2 + 3, f"stopped {elapsed:.2f}s after SIGTERM with a 2 s shutdown grace"

    db = daemon.state / "journal.db"
    records = journal_kinds(db)
    assert records[-1] == ("daemon.stop", None), records[-5:]
    run = [kind for kind, rid in records if rid == run_id]
    assert run.count("run.interrupted") == 1 and "run.end" not in run, run
    assert run[-1] == "run.interrupted", run  # nothing of the run after it says where it stopped
    assert [body["command"] for body in journal_bodies(db, "operator")] == ["cutover"]  # not the refused pause
    # It names the step in flight: the last one with an intent and no step.done.
    stopped_at = journal_bodies(db, "run.interrupted", run_id)[0]["step"]
    assert stopped_at == journal_bodies(db, "step.intent", run_id)[-1]["step"]
    assert stopped_at not in {body["step"] for body in journal_bodies(db, "step.done", run_id)}
    verified = subprocess.run([DAEMON, "journal", "verify", "--db", str(db)], capture_output=True, text=True, timeout=30)
    assert verified.returncode == 0 and verified.stdout.startswith("journal OK"), verified.stdout + verified.stderr
    applies_before = dict(daemon.world("prod").get("applies", {}))
    assert set(applies_before.values()) <= {1}, applies_before

    # Restart (with a fast sandbox, to keep the test short): the run resumes where it was interrupted.
    config = yaml.safe_load(daemon.config.read_text())
    config["lanes"]["prod"]["drivers"]["sandbox"]["latency"] = "50ms"
    daemon.config.write_text(yaml.safe_dump(config))
    daemon.start()
    daemon.wait_status("prod", "ON_STANDBY", timeout=20)
    applies = dict(daemon.world("prod").get("applies", {}))
    assert len(applies) == 5 and set(applies.values()) == {1}, applies

    shown = daemon.ctl_json("journal", "show", run_id)
    resumed = [r["body"] for r in shown if r["kind"] == "run.resumed"]
    assert len(resumed) == 1, resumed
    assert resumed[0]["from_step"] == stopped_at
    assert [r["body"]["ok"] for r in shown if r["kind"] == "run.end"] == [True]
    starts = journal_bodies(db, "daemon.start")
    assert [start["previous_shutdown"] for start in starts] == ["clean", "clean"], starts  # SIGTERM is a clean stop


# --------------------------------------------------------------------------------------------- the lease


def test_a_second_daemon_on_the_same_state_dir_exits_and_the_first_keeps_serving(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    first = quiet_daemon(tmp_path)
    daemons.append(first)
    first.start()
    assert first.proc is not None
    lease = first.state / "lease.lock"

    began = time.monotonic()
    second = subprocess.run(
        [DAEMON, "run", "--config", str(first.config), "--no-pretty"], capture_output=True, text=True, timeout=15
    )
    assert second.returncode != 0
    assert time.monotonic() - began < 5
    assert "another daemon holds the state directory" in second.stderr and str(lease) in second.stderr, second.stderr
    assert "Traceback" not in second.stderr, second.stderr  # a message for the operator, not a crash

    assert first.proc.poll() is None
    assert first.socket.exists(), "the second daemon removed the first one's control socket"
    assert first.lane("prod")["status"] == "PRIMARY"
    assert first.ctl("drill", "--lane", "drill").returncode == 0  # still acting, not only answering
    first.wait_status("drill", "ON_STANDBY")
    assert lease.read_text().strip() == "1", "the second daemon bumped the fencing token without holding the lease"
    assert [kind for kind, _ in journal_kinds(first.state / "journal.db")].count("daemon.start") == 1


# --------------------------------------------------------------------------------------------- config errors


def test_a_bad_duration_in_a_profile_stops_the_daemon_from_starting(tmp_path: Path) -> None:
    bad = profile("prod", rules=[{"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5}])
    bad["rules"][0]["for"] = "soon"
    daemon = DaemonProcess(tmp_path, free_port(), {"prod": bad, "drill": profile("drill")}, {})
    lines = (tmp_path / "policies" / "prod.yaml").read_text().splitlines()
    line = lines.index("  for: soon") + 1

    done = subprocess.run(
        [DAEMON, "run", "--config", str(daemon.config)], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f'policies/prod.yaml:{line} rules[0].for: must be a duration like "30s"' in done.stderr.splitlines()
    assert "not starting" in done.stderr
    assert not (daemon.state / "journal.db").exists() and not (daemon.state / "lease.lock").exists()
