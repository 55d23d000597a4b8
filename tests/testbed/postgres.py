"""Testbed fixtures: a real PostgreSQL 15 primary and a streaming replica on free loopback ports (``pg_pair``).

Set up as in TESTBED.md: ``initdb`` as user postgres (``fsync=off``), the primary started with ``pg_ctl -w start``,
the replica cloned from it by ``pg_basebackup -R -X stream -c fast`` (plus ``--no-sync``) and started on another
port, then polled until ``pg_stat_replication`` on the primary shows it streaming. Each pair lives in its own
``tempfile.mkdtemp`` folder owned by postgres (pytest's tmp_path is root's and 0700), unix sockets included, on
/dev/shm when it is there: on a busy disk, copying and removing the data directories cost more than the servers.
Teardown is ``pg_ctl stop -m immediate`` (it signals the postmaster named in the data directory's pid file) and
removal.

``initdb`` (~0.7 s; 1 MB WAL segments) runs once per session into a template that each pair copies (``cp -a`` keeps
the ownership), so a fresh pair costs about half a second; promotion is one-way, hence one pair per test. The
harness talks to the servers over their unix sockets, which pg_hba always trusts, so it keeps working when TCP
connections need a password (``pg_pair_factory(password=...)``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.abc import QueryNoTemplate as Query

from tests.testbed.process import ComponentFailed, free_port, require
from tests.testbed.wait import eventually_sync

BIN = Path("/usr/lib/postgresql/15/bin")
HOST = "127.0.0.1"
USER = "postgres"
Site = Literal["primary", "replica"]
ShutdownMode = Literal["smart", "fast", "immediate"]


def _run_as_postgres(argv: list[str], cwd: Path, timeout: float = 60.0) -> str:
    """Run a PostgreSQL binary as user postgres; fail with its output when it fails."""
    runuser = require(shutil.which("runuser") or "/usr/sbin/runuser")
    try:
        done = subprocess.run(
            [runuser, "-u", USER, "--", *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ComponentFailed(f"{Path(argv[0]).name} did not finish within {timeout}s: {exc.stdout!r} {exc.stderr!r}") from None
    if done.returncode != 0:
        raise ComponentFailed(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _scratch() -> str | None:
    """/dev/shm (tmpfs) when usable and roomy, else the default temp folder."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * 1024**3 else None


def _chown_postgres(path: Path) -> None:
    shutil.chown(path, USER, USER)


class PgServer:
    """One PostgreSQL server: its data directory, TCP port and unix socket folder. Started and stopped with pg_ctl."""

    def __init__(self, name: str, data: Path, port: int, sockets: Path) -> None:
        self.name = name
        self.data = data
        self.port = port
        self.sockets = sockets
        self.log = data.parent / f"{name}.log"

    @property
    def dsn(self) -> str:
        """The libpq DSN a driver uses: TCP on loopback, no password in it."""
        return f"host={HOST} port={self.port} user={USER} dbname=postgres"

    def start(self, timeout: float = 30.0) -> None:
        _run_as_postgres(
            [str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(timeout)), "start"],
            cwd=self.data.parent,
            timeout=timeout + 5,
        )
        eventually_sync(f"pg_isready on {self.name} (port {self.port})", self._ready, within=timeout)

    def stop(self, mode: ShutdownMode = "fast", timeout: float = 30.0) -> None:
        """``pg_ctl stop -m MODE``; a no-op when the server is not running."""
        if not self.running():
            return
        _run_as_postgres(
            [str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", str(int(timeout)), "stop"],
            cwd=self.data.parent,
            timeout=timeout + 5,
        )

    def running(self) -> bool:
        # pg_ctl removes postmaster.pid on a clean stop; an immediate stop leaves it, so ask pg_ctl when it exists.
        if not (self.data / "postmaster.pid").exists():
            return False
        status = subprocess.run(
            [require(shutil.which("runuser") or "/usr/sbin/runuser"), "-u", USER, "--", str(BIN / "pg_ctl"), "-D",
             str(self.data), "status"],
            cwd=self.data.parent, capture_output=True, timeout=10, check=False,
        )  # fmt: skip
        return status.returncode == 0

    def sql(self, query: Query, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement over the unix socket (always trusted), autocommit; the rows it returned (or [])."""
        with psycopg.connect(
            host=str(self.sockets), port=self.port, user=USER, dbname="postgres", autocommit=True, connect_timeout=5
        ) as conn:
            cursor = conn.execute(query, params)
            return list(cursor.fetchall()) if cursor.description is not None else []

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _ready(self) -> bool:
        probe = subprocess.run(
            [str(BIN / "pg_isready"), "-h", HOST, "-p", str(self.port), "-t", "2"], capture_output=True, timeout=10, check=False
        )
        return probe.returncode == 0


class PgPair:
    """A primary and a streaming replica of it. ``password`` (if set) is what TCP connections as postgres need."""

    def __init__(self, directory: Path, primary: PgServer, replica: PgServer, password: str | None) -> None:
        self.directory = directory
        self.primary = primary
        self.replica = replica
        self.password = password

    @property
    def primary_dsn(self) -> str:
        return self.primary.dsn

    @property
    def replica_dsn(self) -> str:
        return self.replica.dsn

    def server(self, site: Site) -> PgServer:
        return self.primary if site == "primary" else self.replica

    def sql(self, site: Site, query: Query, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        return self.server(site).sql(query, params)

    def stop_primary(self, mode: ShutdownMode = "fast") -> None:
        """Take the primary away. ``fast`` (the default) lets the walsender ship every WAL record to the replica first."""
        self.primary.stop(mode)

    def pause_replay(self) -> None:
        """Pause WAL replay on the replica (it keeps receiving): the way to build replay lag honestly."""
        self.replica.sql("SELECT pg_wal_replay_pause()")
        eventually_sync(
            "replay paused on the replica",
            lambda: self.replica.sql("SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused",
            within=10,
        )

    def write_wal(self, megabytes: int = 4) -> str:
        """Generate about ``megabytes`` MB of WAL on the primary; the primary's WAL LSN afterwards."""
        rows = megabytes * 1000
        self.primary.sql("CREATE TABLE IF NOT EXISTS testbed_filler (id int, payload text)")
        self.primary.sql("INSERT INTO testbed_filler SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, %s) g", (rows,))
        lsn = self.primary.sql("SELECT pg_current_wal_lsn()::text")[0][0]
        return str(lsn)

    def wait_received(self, lsn: str, timeout: float = 20.0) -> None:
        """Until the replica has received (not necessarily replayed) WAL up to ``lsn``."""
        eventually_sync(
            f"the replica to receive WAL up to {lsn}",
            lambda: self.replica.sql("SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), %s::pg_lsn) >= 0", (lsn,))[0][0],
            within=timeout,
        )

    def wait_replayed(self, lsn: str, timeout: float = 20.0) -> None:
        eventually_sync(
            f"the replica to replay WAL up to {lsn}",
            lambda: self.replica.sql("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s::pg_lsn) >= 0", (lsn,))[0][0],
            within=timeout,
        )

    def in_recovery(self, site: Site) -> bool:
        return bool(self.sql(site, "SELECT pg_is_in_recovery()")[0][0])

    def timeline(self, site: Site) -> int:
        """The timeline the server writes (a primary) or replays (a replica) now, read from its WAL position."""
        if self.in_recovery(site):
            return int(self.sql(site, "SELECT timeline_id FROM pg_control_checkpoint()")[0][0])
        return int(self.sql(site, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")[0][0], 16)

    def teardown(self) -> None:
        for server in (self.replica, self.primary):
            try:
                server.stop("immediate")
            except ComponentFailed:
                _kill_postmaster(server)
        shutil.rmtree(self.directory, ignore_errors=True)


def _kill_postmaster(server: PgServer) -> None:
    """Last resort when pg_ctl cannot stop it: SIGKILL the postmaster named in its own pid file (by id, never by name)."""
    try:
        pid = int((server.data / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def make_template(directory: Path) -> Path:
    """``initdb`` once into ``directory/template`` (owned by postgres), configured as TESTBED.md says, minus the port."""
    _chown_postgres(directory)
    template = directory / "template"
    _run_as_postgres(
        [
            str(BIN / "initdb"),
            "-D",
            str(template),
            "-U",
            USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "-N",
            "--wal-segsize=1",
        ],
        cwd=directory,
    )
    with (template / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# hybridops testbed\n"
            f"listen_addresses = '{HOST}'\n"
            "wal_level = replica\nmax_wal_senders = 5\nhot_standby = on\nfsync = off\n"
            "synchronous_commit = off\nfull_page_writes = off\n"
            "wal_keep_size = '256MB'\n"  # a paused replica must not lose WAL it has not replayed yet
            "shared_buffers = '32MB'\nmax_connections = 30\n"
        )
    return template


def _configure(data: Path, port: int, sockets: Path) -> None:
    """Append this server's port and socket folder; the last setting in postgresql.conf wins."""
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(f"port = {port}\nunix_socket_directories = '{sockets}'\n")


def start_pair(template: Path, password: str | None = None) -> PgPair:
    """A running primary + streaming replica copied from ``template``; ``pair.teardown()`` stops and removes them.

    With ``password``, TCP connections (other than replication) need it by SCRAM; unix sockets stay trusted.
    """
    directory = Path(tempfile.mkdtemp(prefix="hyops-pg-", dir=_scratch()))
    _chown_postgres(directory)
    sockets = directory / "sock"
    sockets.mkdir()
    _chown_postgres(sockets)
    ports = {free_port()}
    while len(ports) < 2:  # two consecutive picks may (rarely) name the same released port
        ports.add(free_port())
    primary_port, replica_port = sorted(ports)
    primary = PgServer("primary", directory / "primary", primary_port, sockets)
    replica = PgServer("replica", directory / "replica", replica_port, sockets)
    pair = PgPair(directory, primary, replica, password)
    try:
        subprocess.run(["cp", "-a", str(template), str(primary.data)], check=True, capture_output=True, timeout=30)
        _configure(primary.data, primary.port, sockets)
        hba = ["local all all trust", f"host replication {USER} {HOST}/32 trust"]
        hba.append(f"host all all {HOST}/32 {'scram-sha-256' if password else 'trust'}")
        (primary.data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        try:
            primary.start()
        except ComponentFailed as exc:
            raise ComponentFailed(f"{exc}\nprimary log:\n{primary.log_tail()}") from None
        if password is not None:
            primary.sql(pgsql.SQL("ALTER USER {} PASSWORD {}").format(pgsql.Identifier(USER), pgsql.Literal(password)))
        _run_as_postgres(
            [str(BIN / "pg_basebackup"), "-h", HOST, "-p", str(primary.port), "-U", USER, "-D", str(replica.data),
             "-R", "-X", "stream", "-c", "fast", "--no-sync"],
            cwd=directory,
        )  # fmt: skip
        _configure(replica.data, replica.port, sockets)  # the replica copied the primary's conf: give it its own port
        try:
            replica.start()
        except ComponentFailed as exc:
            raise ComponentFailed(f"{exc}\nreplica log:\n{replica.log_tail()}") from None
        eventually_sync(
            "the replica to stream from the primary (pg_stat_replication)",
            lambda: primary.sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")[0][0] >= 1,
            within=30,
        )
        if not pair.in_recovery("replica"):
            raise ComponentFailed("the replica is not in recovery after pg_basebackup -R")
    except BaseException:
        pair.teardown()
        raise
    return pair


@pytest.fixture(scope="session")
def pg_template() -> Iterator[Path]:
    """One initdb per session; pairs copy it."""
    require(str(BIN / "initdb"))
    directory = Path(tempfile.mkdtemp(prefix="hyops-pg-template-", dir=_scratch()))
    try:
        yield make_template(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pg_pair_factory(pg_template: Path) -> Iterator[Callable[..., PgPair]]:
    """``pg_pair_factory(password=None)``: fresh primary + replica pairs, torn down at the end of the test."""
    started: list[PgPair] = []

    def make(password: str | None = None) -> PgPair:
        pair = start_pair(pg_template, password)
        started.append(pair)
        return pair

    yield make
    for pair in started:
        pair.teardown()


@pytest.fixture
def pg_pair(pg_pair_factory: Callable[..., PgPair]) -> PgPair:
    """A fresh primary + streaming replica (about a second), trusted on loopback; stopped and removed at teardown."""
    return pg_pair_factory()
