"""The postgres driver against a real PostgreSQL 15 primary + streaming replica (``pg_pair``, one fresh pair per test).

Site ``onprem`` is the pair's primary, ``cloud`` its replica; the steps make ``cloud`` the primary of cluster ``app``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridops_daemon.chain import preflight
from hybridops_daemon.chain.approvals import ApprovalBook
from hybridops_daemon.chain.runner import ChainRunner, RunSpec
from hybridops_daemon.config.base import SecretRef
from hybridops_daemon.config.profile import Step
from hybridops_daemon.drivers.base import (
    CredentialsUnavailable,
    DriverError,
    NoCompensation,
    NotFound,
    PermanentDriverError,
    Preflight,
    Readiness,
    Refused,
    StepContext,
    Unavailable,
)
from hybridops_daemon.drivers.declarations.postgres import PostgresDriverConfig, PostgresSite
from hybridops_daemon.drivers.postgres import MODULE, PROBE_TABLE, PostgresDriver
from hybridops_daemon.journal.redact import Redactor
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.lease.local import LocalLease
from tests.testbed.postgres import PgPair
from tests.testbed.process import free_port, wait_until

MB = 1024 * 1024


def driver_for(
    pair: PgPair | None = None,
    *,
    onprem: str | None = None,
    cloud: str | None = None,
    password: SecretRef | None = None,
    onprem_password: SecretRef | None = None,
    connect_timeout: float = 5.0,
) -> PostgresDriver:
    onprem_dsn = onprem or (pair.primary_dsn if pair else "")
    cloud_dsn = cloud or (pair.replica_dsn if pair else "")
    return PostgresDriver(
        PostgresDriverConfig(
            clusters={
                "app": {
                    "onprem": PostgresSite(dsn=onprem_dsn, password=onprem_password or password),
                    "cloud": PostgresSite(dsn=cloud_dsn, password=password),
                }
            },
            connect_timeout=connect_timeout,
            promote_timeout=30.0,
        )
    )


def step(primary: str = "cloud", run_id: str = "run-1", cluster: str = "app", **extra: Any) -> StepContext:
    return StepContext(
        run_id=run_id,
        lane="prod",
        step_id="db",
        module=MODULE,
        inputs={"cluster": cluster, "primary": primary, **extra},
        secrets={},
        fencing_token=7,
    )


def secret_file(tmp_path: Path, value: str, name: str = "pg-password") -> SecretRef:
    path = tmp_path / name
    path.write_text(value + "\n")
    return SecretRef(file=path)


def build_lag(pair: PgPair, megabytes: int = 4) -> None:
    """Replay paused, several MB written on the primary and received (not replayed) by the replica."""
    pair.pause_replay()
    pair.wait_received(pair.write_wal(megabytes))


async def test_promotes_the_replica_once_the_primary_is_down(pg_pair: PgPair) -> None:
    driver = driver_for(pg_pair)
    before = await driver.check(step())
    assert not before.satisfied and before.observed["role"] == "replica" and before.outputs == {}

    pg_pair.stop_primary()
    result = await driver.apply(step(max_lag_bytes=16 * MB))  # caught up: within the limit

    assert not pg_pair.in_recovery("replica")
    assert result.outputs["cluster"] == "app" and result.outputs["primary"] == "cloud"
    assert result.outputs["timeline"] == pg_pair.timeline("replica") == 2
    assert result.outputs["server_version"].startswith("15")
    log = "\n".join(result.log)
    assert "peer app/onprem: down" in log and "promoted with pg_promote" in log and "timeline 1 → 2" in log

    probe = await driver.verify(step())
    assert probe.ok, probe.detail
    assert probe.observed["role"] == "primary" and probe.observed["probe_rows"] == 1
    assert pg_pair.sql("replica", f"SELECT run_id FROM {PROBE_TABLE}") == [("run-1",)]  # the write really landed


async def test_rerun_is_a_no_op(pg_pair: PgPair) -> None:
    driver = driver_for(pg_pair)
    pg_pair.stop_primary()
    first = await driver.apply(step())
    timeline = pg_pair.timeline("replica")

    again = await driver.check(step(run_id="run-2"))
    assert again.satisfied
    assert again.outputs == {**first.outputs, "lsn": again.outputs["lsn"]}  # same site, version and timeline
    assert again.observed["timeline"] == timeline

    # Even a direct apply() does not promote again: a second pg_promote would fail or fork a new timeline.
    rerun = await driver.apply(step(run_id="run-2"))
    assert any("pg_promote not called" in line for line in rerun.log)
    assert pg_pair.timeline("replica") == timeline == 2
    assert (await driver.verify(step(run_id="run-2"))).ok


async def test_lag_guard_refuses_and_force_overrides(pg_pair: PgPair) -> None:
    driver = driver_for(pg_pair)
    build_lag(pg_pair, megabytes=4)
    pg_pair.stop_primary()  # after the lag is built: the replica's received-vs-replayed gap still shows it

    with pytest.raises(Refused, match="replay lag") as refused:
        await driver.apply(step(max_lag_bytes=MB))
    assert not refused.value.retryable
    assert refused.value.details["lag_bytes"] > 3 * MB and refused.value.details["max_lag_bytes"] == MB
    assert f"{refused.value.details['lag_bytes']} bytes exceeds max_lag_bytes={MB}" in str(refused.value)
    assert pg_pair.in_recovery("replica")  # refused means untouched

    forced = await driver.apply(step(max_lag_bytes=MB, force=True))
    assert any(line.startswith("force: promoting despite: refusing to promote") for line in forced.log)
    assert not pg_pair.in_recovery("replica")
    # Promotion ends the pause and replays what was received first: nothing received was lost.
    assert pg_pair.sql("replica", "SELECT count(*) FROM testbed_filler")[0][0] == 4000
    assert (await driver.verify(step())).ok


async def test_lag_guard_without_a_limit_does_not_refuse(pg_pair: PgPair) -> None:
    build_lag(pg_pair, megabytes=2)
    pg_pair.stop_primary()
    result = await driver_for(pg_pair).apply(step())  # max_lag_bytes absent: no lag guard, but the lag is logged
    assert any(line.startswith("replay lag: ") and "(limit: none)" in line for line in result.log)
    assert not pg_pair.in_recovery("replica")


async def test_split_brain_guard_refuses_while_the_primary_is_writable(pg_pair: PgPair) -> None:
    driver = driver_for(pg_pair)
    with pytest.raises(Refused, match="split-brain risk") as refused:
        await driver.apply(step(max_lag_bytes=16 * MB))
    assert not refused.value.retryable
    assert refused.value.details["sites"] == ("onprem",)
    assert "onprem is a writable primary" in str(refused.value)
    assert pg_pair.in_recovery("replica") and not pg_pair.in_recovery("primary")

    # The operator's override: promoted although the old primary still writes (two primaries now, on purpose).
    forced = await driver.apply(step(force=True))
    assert any("force: promoting despite: refusing to promote app/cloud: split-brain risk" in line for line in forced.log)
    assert not pg_pair.in_recovery("replica") and not pg_pair.in_recovery("primary")


async def test_split_brain_guard_names_the_lag_too(pg_pair: PgPair) -> None:
    build_lag(pg_pair, megabytes=2)
    with pytest.raises(Refused, match="split-brain risk") as refused:
        await driver_for(pg_pair).apply(step(max_lag_bytes=MB))
    assert "also exceeds max_lag_bytes" in str(refused.value)


async def test_split_brain_guard_when_a_peer_answers_but_cannot_be_read(
    pg_pair_factory: Callable[..., PgPair], tmp_path: Path
) -> None:
    pair = pg_pair_factory(password="right-horse-battery")
    good = secret_file(tmp_path, "right-horse-battery")
    bad = secret_file(tmp_path, "not-the-password", name="bad")
    driver = driver_for(pair, password=good, onprem_password=bad)
    with pytest.raises(Refused, match="split-brain risk") as refused:
        await driver.apply(step())
    assert "cannot rule out that onprem is writable" in str(refused.value)
    assert "not-the-password" not in str(refused.value) and "right-horse-battery" not in str(refused.value)
    assert pair.in_recovery("replica")

    pair.stop_primary()  # down (connection refused) is not "cannot be read": the promotion goes ahead
    result = await driver.apply(step())
    assert not pair.in_recovery("replica")
    assert not any("right-horse-battery" in line for line in result.log)
    assert (await driver.verify(step())).ok  # the password, by reference, opened the write probe too


async def test_verify_catches_a_target_that_still_is_a_replica(pg_pair: PgPair) -> None:
    probe = await driver_for(pg_pair).verify(step())
    assert not probe.ok
    assert probe.observed["in_recovery"] is True and "still in recovery" in probe.detail
    assert pg_pair.sql("primary", f"SELECT to_regclass('{PROBE_TABLE}')") == [(None,)]  # verify wrote nothing anywhere


async def test_verify_catches_a_primary_that_refuses_writes(pg_pair: PgPair) -> None:
    driver = driver_for(pg_pair)
    pg_pair.stop_primary()
    await driver.apply(step())
    # Behind the driver's back: not in recovery, yet every new session is read-only. check() cannot tell; verify() must.
    pg_pair.sql("replica", "ALTER SYSTEM SET default_transaction_read_only = on")
    pg_pair.sql("replica", "SELECT pg_reload_conf()")
    wait_until(
        "the read-only setting to reach new sessions",
        lambda: pg_pair.sql("replica", "SHOW default_transaction_read_only") == [("on",)],
        timeout=10,
    )
    assert (await driver.check(step())).satisfied
    probe = await driver.verify(step())
    assert not probe.ok
    assert probe.observed["write_error"] == "ReadOnlySqlTransaction" and "refuses writes" in probe.detail


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that completes the TCP handshake (listen backlog) but never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


async def test_unreachable_target_is_a_retryable_typed_error() -> None:
    dead = f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres"
    driver = driver_for(onprem=dead, cloud=dead)
    for call in (driver.check, driver.apply, driver.verify):
        with pytest.raises(Unavailable) as failed:
            await call(step())
        assert failed.value.retryable
        assert "app/cloud (127.0.0.1:" in str(failed.value) and "refused" in str(failed.value).lower()


async def test_a_silent_target_times_out_within_connect_timeout(silent_port: int) -> None:
    silent = f"host=127.0.0.1 port={silent_port} user=postgres dbname=postgres"
    driver = driver_for(onprem=silent, cloud=silent, connect_timeout=0.5)
    began = time.monotonic()
    with pytest.raises(Unavailable, match=r"no answer within 0\.5s") as failed:
        await driver.check(step())
    assert failed.value.retryable
    assert time.monotonic() - began < 5  # libpq alone would wait at least 2 s; the driver's bound is 0.5 s


async def test_credentials_failures_are_permanent_and_never_show_the_password(
    pg_pair_factory: Callable[..., PgPair], tmp_path: Path
) -> None:
    pair = pg_pair_factory(password="right-horse-battery")
    assert (await driver_for(pair, password=secret_file(tmp_path, "right-horse-battery")).check(step())).observed["in_recovery"]

    wrong = driver_for(pair, password=secret_file(tmp_path, "wrong-staple-x9", name="wrong"))
    for call in (wrong.check, wrong.apply, wrong.verify):
        with pytest.raises(CredentialsUnavailable) as failed:
            await call(step())
        assert not failed.value.retryable
        text = f"{failed.value} {failed.value!r} {failed.value.__cause__!r} {failed.value.__context__!r}"
        assert "wrong-staple-x9" not in text and "right-horse-battery" not in text
        assert "password authentication failed" in str(failed.value)

    with pytest.raises(CredentialsUnavailable, match="no password supplied"):
        await driver_for(pair).check(step())
    with pytest.raises(CredentialsUnavailable, match="cannot read"):
        await driver_for(pair, password=SecretRef(file=tmp_path / "missing")).check(step())
    assert pair.in_recovery("replica")


async def test_a_role_without_the_right_to_promote_is_refused_permanently(pg_pair: PgPair) -> None:
    pg_pair.sql("primary", "CREATE ROLE app LOGIN")  # pg_promote is superuser-only unless granted
    pg_pair.wait_replayed(pg_pair.sql("primary", "SELECT pg_current_wal_lsn()::text")[0][0])
    pg_pair.stop_primary()
    as_app = pg_pair.replica_dsn.replace("user=postgres", "user=app")
    with pytest.raises(Refused, match="permission denied for function pg_promote") as refused:
        await driver_for(pg_pair, cloud=as_app).apply(step())
    assert not refused.value.retryable
    assert pg_pair.in_recovery("replica")


async def test_lag_that_cannot_be_measured_is_refused_when_a_limit_is_set(pg_pair: PgPair) -> None:
    # A replica that never streams (no primary_conninfo, as in archive-only recovery) has no receive LSN.
    # (One restarted while its primary is down does have one: the point it asks to stream from.)
    pg_pair.stop_primary()
    pg_pair.sql("replica", "ALTER SYSTEM RESET primary_conninfo")
    pg_pair.replica.stop()
    pg_pair.replica.start()
    assert pg_pair.sql("replica", "SELECT pg_last_wal_receive_lsn()") == [(None,)]
    with pytest.raises(Refused, match="lag cannot be measured"):
        await driver_for(pg_pair).apply(step(max_lag_bytes=MB))
    assert pg_pair.in_recovery("replica")


async def test_bad_inputs_and_unknown_sites_are_permanent() -> None:
    driver = driver_for(onprem="host=127.0.0.1 port=1", cloud="host=127.0.0.1 port=1")
    cases: list[tuple[StepContext, type[DriverError], str]] = [
        (step(primary="gcp"), NotFound, "has no site 'gcp'"),
        (step(cluster="billing"), NotFound, "cluster 'billing' is not configured"),
        (step(force="maybe"), PermanentDriverError, "force"),
        (step(max_lag_bytes=-1), PermanentDriverError, "max_lag_bytes"),
        (step(primary=""), PermanentDriverError, "primary"),
        (step(colour="red"), PermanentDriverError, "colour"),
    ]
    for ctx, error, fragment in cases:
        with pytest.raises(error, match=fragment) as failed:
            await driver.apply(ctx)
        assert not failed.value.retryable
    other = StepContext("run-1", "prod", "ip", "network/floating-ip@v1", {"ip": "203.0.113.1", "target": "edge01"}, {}, 1)
    with pytest.raises(PermanentDriverError, match="runs database/primary@v1"):
        await driver.check(other)
    with pytest.raises(NoCompensation, match="no compensation"):
        await driver.compensate(step())


async def test_through_the_chain_runner_the_refusal_lands_in_the_journal(pg_pair: PgPair, tmp_path: Path) -> None:
    """The runner's view: a guard's refusal is one apply attempt (permanent) and the run's recorded reason;
    once the primary is down the run promotes and verifies; a later run finds it already satisfied."""
    redactor = Redactor()
    journal = Journal.open(tmp_path / "journal.db", redactor)
    lease = LocalLease(tmp_path / "lease.lock").acquire()
    runner = ChainRunner(journal, {"prod": {"postgres": driver_for(pg_pair)}}, lease, ApprovalBook(), redactor)
    db = Step.model_validate(
        {"id": "db", "module": MODULE, "driver": "postgres", "inputs": {"cluster": "app", "primary": "cloud"},
         "timeout": "20s", "retries": 2, "backoff": "10ms"}
    )  # fmt: skip

    def run(run_id: str) -> RunSpec:
        return RunSpec(
            run_id=run_id, lane="prod", chain="cutover", kind="cutover", trigger="test", actor="pytest",
            reason="integration test", profile={"name": "prod", "version": 1}, steps=(db,), approval_timeout=5.0,
            hourly_cost_usd=0.0,
        )  # fmt: skip

    def bodies(run_id: str, kind: str) -> list[dict[str, Any]]:
        return [dict(r.body) for r in journal.run_records(run_id) if r.kind == kind]

    try:
        refused = await runner.start(run("r1"))
        assert not refused.ok and "split-brain risk" in refused.detail and "onprem is a writable primary" in refused.detail
        assert [a["retryable"] for a in bodies("r1", "step.apply")] == [False]  # permanent: not retried

        pg_pair.stop_primary()
        promoted = await runner.start(run("r2"))
        assert promoted.ok, promoted.detail
        assert bodies("r2", "step.verify")[0]["ok"] is True
        assert bodies("r2", "step.done")[0]["outputs"]["timeline"] == 2

        again = await runner.start(run("r3"))
        assert again.ok and bodies("r3", "step.done")[0]["outcome"] == "skipped (already satisfied)"
        assert bodies("r3", "step.apply") == [] and pg_pair.timeline("replica") == 2
        assert journal.verify().ok
    finally:
        lease.release()
        journal.close()


# --------------------------------------------------------------------------------------------- preflight (issue #13)


def pf_step(primary: str = "cloud", **extra: Any) -> StepContext:
    """A step as the readiness check hands it over: run "preflight", fencing token 0, inputs as profiled."""
    return StepContext("preflight", "prod", "db", MODULE, {"cluster": "app", "primary": primary, **extra}, {}, 0)


async def readiness(driver: PostgresDriver, ctx: StepContext) -> Readiness:
    """What the caller makes of a preflight: a DriverError is not ready, with the error's text as the reason."""
    began = time.monotonic()
    answer = await preflight.read(driver, ctx)  # as the daemon reads it
    elapsed = time.monotonic() - began
    print(f"postgres preflight {ctx.inputs['primary']}: {elapsed:.3f}s ready={answer.ready}: {answer.reason}")
    return answer


def inserted(pair: PgPair) -> str:
    """The primary's WAL insert position: with synchronous_commit off, a commit may not be written out yet."""
    return str(pair.sql("primary", "SELECT pg_current_wal_insert_lsn()::text")[0][0])


def world(pair: PgPair, *, xids: bool = True) -> dict[str, Any]:
    """What a preflight must leave as it found it, per running server: its role, the probe table's absence, its
    replay pause state and (paused) replay LSN, and with ``xids`` the next transaction id (any write takes one)."""
    seen: dict[str, Any] = {}
    for site in ("primary", "replica"):
        if not pair.server(site).running():
            continue
        row = pair.sql(
            site,
            "SELECT pg_is_in_recovery(), to_regclass(%s)::text, "
            "CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END, "
            "CASE WHEN pg_is_in_recovery() AND pg_get_wal_replay_pause_state() = 'paused' "
            "THEN pg_last_wal_replay_lsn()::text END, "
            "CASE WHEN %s THEN pg_snapshot_xmax(pg_current_snapshot())::text END",
            (PROBE_TABLE, xids),
        )[0]
        seen[site] = row
    return seen


async def test_preflight_is_ready_against_a_streaming_replica_and_writes_nothing(pg_pair: PgPair) -> None:
    driver = driver_for(pg_pair)
    assert isinstance(driver, Preflight)
    before = world(pg_pair)
    timings = []
    for _ in range(5):
        began = time.monotonic()
        answer = await driver.preflight(pf_step(max_lag_bytes=16 * MB))
        timings.append(time.monotonic() - began)
        assert answer.ready, answer.reason
    print(f"postgres preflight (ready): {[f'{t:.3f}' for t in timings]} s")
    assert "app/cloud" in answer.reason and "is a streaming replica" in answer.reason
    assert f"max_lag_bytes={16 * MB}" in answer.reason and "split-brain guard" in answer.reason
    assert answer.observed["wal_receiver"] == "streaming" and answer.observed["peers"]["onprem"]["status"] == "primary"
    assert answer.metrics.keys() == {"replica_lag_bytes", "replica_lag_seconds"}
    assert 0 <= answer.metrics["replica_lag_bytes"] < MB and 0 <= answer.metrics["replica_lag_seconds"] < 60
    assert world(pg_pair) == before  # roles, probe table, pause state, next xid: all as they were
    assert before["replica"][0] is True and before["primary"][0] is False


async def test_preflight_lag_over_the_limit_is_not_ready(pg_pair: PgPair) -> None:
    pg_pair.sql("primary", "CREATE TABLE replayed_once ()")  # one commit replayed: the lag in seconds has a start
    pg_pair.wait_replayed(inserted(pg_pair))
    build_lag(pg_pair, megabytes=4)
    driver = driver_for(pg_pair)
    before = world(pg_pair, xids=False)  # the primary's autovacuum may analyze the filler table meanwhile

    over = await readiness(driver, pf_step(max_lag_bytes=MB))
    assert not over.ready
    assert "replay lag" in over.reason and f"exceeds max_lag_bytes={MB}" in over.reason
    assert over.metrics["replica_lag_bytes"] > 3 * MB and over.metrics["replica_lag_seconds"] >= 0
    assert over.observed["replay_pause"] == "paused"

    within = await readiness(driver, pf_step(max_lag_bytes=64 * MB))
    assert within.ready and "replay is paused" in within.reason, within.reason
    forced = await readiness(driver, pf_step(max_lag_bytes=MB, force=True))
    assert forced.ready and "force overrides: refusing to promote app/cloud: replay lag" in forced.reason
    assert world(pg_pair, xids=False) == before  # still paused, nothing replayed, nothing promoted
    assert before["replica"][2] == "paused" and before["replica"][3] is not None


async def test_preflight_replica_not_streaming_from_a_live_primary_or_down_is_not_ready(pg_pair: PgPair) -> None:
    driver = driver_for(pg_pair)
    pg_pair.sql("replica", "ALTER SYSTEM SET primary_conninfo = ''")  # its WAL receiver ends; the primary stays up
    pg_pair.sql("replica", "SELECT pg_reload_conf()")
    wait_until("the WAL receiver to stop", lambda: pg_pair.sql("replica", "SELECT count(*) FROM pg_stat_wal_receiver")[0][0] == 0)
    gone = await readiness(driver, pf_step(max_lag_bytes=16 * MB))
    assert not gone.ready and "app/cloud" in gone.reason and "is not streaming: no WAL receiver" in gone.reason

    # The primary down is the outage a cutover is for: a replica with nothing to stream from is ready then (were it
    # not, a profile refusing broken paths would refuse every real cutover), and its lag says what promotion loses.
    pg_pair.stop_primary()
    orphan = await readiness(driver, pf_step())
    assert orphan.ready and "a replica with no primary to stream from" in orphan.reason, orphan.reason
    assert orphan.observed["peers"]["onprem"]["status"] == "down"
    assert "replica_lag_bytes" in orphan.metrics  # received vs replayed still says what a promotion would lose

    pg_pair.replica.stop()
    down = await readiness(driver, pf_step())
    assert not down.ready and "app/cloud (127.0.0.1:" in down.reason and "refused" in down.reason.lower()


async def test_preflight_wrong_password_is_not_ready_and_never_shows_it(
    pg_pair_factory: Callable[..., PgPair], tmp_path: Path
) -> None:
    pair = pg_pair_factory(password="right-horse-battery")
    good = secret_file(tmp_path, "right-horse-battery")
    wrong = secret_file(tmp_path, "wrong-staple-x9", name="wrong")

    target = await readiness(driver_for(pair, password=wrong), pf_step())
    assert not target.ready and "app/cloud" in target.reason and "password authentication failed" in target.reason

    # The peer's password wrong: apply's split-brain guard could not rule out a writable onprem.
    peer = await readiness(driver_for(pair, password=good, onprem_password=wrong), pf_step())
    assert not peer.ready and "cannot rule out that onprem is writable" in peer.reason
    assert "password authentication failed" in peer.reason
    for text in (target.reason, peer.reason, repr(peer.observed)):
        assert "wrong-staple-x9" not in text and "right-horse-battery" not in text
    assert (await readiness(driver_for(pair, password=good), pf_step())).ready


async def test_preflight_a_role_that_may_not_promote_is_not_ready(pg_pair: PgPair) -> None:
    pg_pair.sql("primary", "CREATE ROLE app LOGIN")
    pg_pair.wait_replayed(inserted(pg_pair))
    as_app = pg_pair.replica_dsn.replace("user=postgres", "user=app")
    answer = await readiness(driver_for(pg_pair, cloud=as_app), pf_step())
    assert not answer.ready
    assert "the role may not execute pg_promote" in answer.reason and "pg_read_all_stats" in answer.reason


async def test_preflight_failback_target_already_primary_and_split_brain(pg_pair: PgPair) -> None:
    driver = driver_for(pg_pair)
    before = world(pg_pair)
    home = await readiness(driver, pf_step("onprem", max_lag_bytes=MB))
    assert home.ready and "app/onprem" in home.reason and "already is the primary" in home.reason
    assert home.metrics == {} and home.observed["peers"]["cloud"]["status"] == "replica"
    assert world(pg_pair) == before

    pg_pair.sql("replica", "SELECT pg_promote()")  # behind the driver's back: two writable primaries
    for site, other in (("onprem", "cloud"), ("cloud", "onprem")):
        split = await readiness(driver, pf_step(site))
        assert not split.ready and "split brain" in split.reason and f"so is {other}" in split.reason
