"""The ``postgres`` driver: ``database/primary@v1`` by promoting a streaming replica with ``pg_promote()``.

``PostgresDriverConfig.clusters[cluster][site]`` names every server of a cluster (a libpq DSN without a
password, and the password by reference). The step's ``primary`` is the site that must end up the one writable
primary. Promotion is one-way: the driver never demotes; turning the old primary into a replica again
(pg_rewind or a new base backup) is a failback job outside this step.

Two optional step inputs guard the promotion (read from ``step.inputs`` whether or not the module's inputs
model declares them yet): ``max_lag_bytes`` (refuse when the replica is further behind than that) and
``force`` (the operator overrides both guards: lag and split brain).

psycopg 3's asyncio API: no worker threads. Every connection is fresh (no pool: a DR step runs rarely and
must not trust a connection opened before the world changed), autocommit, and every await is bounded: the
connect by ``connect_timeout`` (asyncio-side, since libpq rounds its own up to 2 s), each statement by
``connect_timeout`` too (they are all trivial), ``pg_promote`` by ``promote_timeout`` plus that. On
cancellation psycopg sends the server a cancel request and waits up to 5 s for it, so a cancelled call may
take that long to unwind; no thread lingers. Every connection carries libpq's ``tcp_user_timeout`` =
``connect_timeout`` (TCP_USER_TIMEOUT, drivers/sockets.py): a statement the kernel could not deliver in that time
dies with its connection instead of reaching the server after a partition heals. ``pg_promote``'s longer wait is
the server's: the statement itself is sent at once.

Fencing: apply() records the run's fencing token in a fence table on the promoted primary (a conditional write
that never lowers it) and, before promoting, refuses when the target's or another reachable site's fence table holds
a newer token (see drivers/postgres_fence.py); check() refuses a target whose fence is newer than the run's token.

The password is resolved at each connect and handed to libpq as a keyword, never put into a DSN; error
messages name ``cluster/site host:port``, never the DSN, and are scrubbed of the password regardless.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import errors as pg_errors
from psycopg.abc import Params, QueryNoTemplate
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from hybridops_daemon.drivers import postgres_fence as fence
from hybridops_daemon.drivers import sockets
from hybridops_daemon.drivers.base import (
    ApplyResult,
    CheckResult,
    CredentialsUnavailable,
    DriverError,
    NoCompensation,
    NotFound,
    ProbeResult,
    Readiness,
    Refused,
    StepContext,
    Unavailable,
    refuse_newer_stamp,
    secret,
)
from hybridops_daemon.drivers.declarations.postgres import PostgresDriverConfig, PostgresSite
from hybridops_daemon.drivers.modules import DatabasePrimary, validate_inputs
from hybridops_daemon.drivers.postgres_preflight import (
    STANDBY_SQL,
    Standby,
    guarded_peers,
    primary_readiness,
    replica_readiness,
)

MODULE = "database/primary@v1"
PROBE_TABLE = "hybridops_probe"
_PROBE = "fresh connection: pg_is_in_recovery() is false and a committed write reads back"

Connection = psycopg.AsyncConnection[TupleRow]


# A failed connect that the server itself answered (FATAL: starting up, too many clients): Unavailable's code.
SERVER_ANSWERED = "FATAL"


# --------------------------------------------------------------------------------------------- inputs


_GUARD_FIELDS = ("max_lag_bytes", "force")


class PromotionGuards(BaseModel):
    """The optional guard inputs of ``database/primary@v1`` (defaults: no lag limit, no override)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    max_lag_bytes: int | None = Field(default=None, ge=0)
    force: StrictBool = False


def parse_inputs(step: StepContext) -> tuple[DatabasePrimary, PromotionGuards]:
    """The module's inputs plus the guards. Works whether or not ``DatabasePrimary`` declares the guard fields yet."""
    if step.module != MODULE:
        raise Refused(f"the postgres driver runs {MODULE}, not {step.module}")
    declared = DatabasePrimary.model_fields
    own = {name: step.inputs[name] for name in _GUARD_FIELDS if name in step.inputs and name not in declared}
    inputs = validate_inputs(step.module, {k: v for k, v in step.inputs.items() if k not in own})
    assert isinstance(inputs, DatabasePrimary)
    from_model = {name: getattr(inputs, name) for name in _GUARD_FIELDS if name in declared}
    try:
        guards = PromotionGuards.model_validate({**from_model, **own})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise Refused(f"postgres: invalid inputs for {MODULE}: {problems}") from None
    return inputs, guards


# --------------------------------------------------------------------------------------------- server state


@dataclass(frozen=True, slots=True)
class ServerState:
    """One read of a server: role, version, and where its WAL stands."""

    in_recovery: bool
    server_version: str
    timeline: int | None  # a primary: the timeline it writes; a replica: its last restartpoint's
    lsn: str | None  # a primary: pg_current_wal_lsn()
    receive_lsn: str | None  # a replica: last WAL received and flushed (NULL before it ever streamed)
    replay_lsn: str | None  # a replica: last WAL replayed
    receive_lag_bytes: int | None  # a replica: received but not yet replayed

    def outputs(self, cluster: str, site: str) -> dict[str, Any]:
        return {
            "cluster": cluster,
            "primary": site,
            "server_version": self.server_version,
            "timeline": self.timeline,
            "lsn": self.lsn,
        }

    def observed(self) -> dict[str, Any]:
        role = "replica" if self.in_recovery else "primary"
        seen: dict[str, Any] = {"role": role, "in_recovery": self.in_recovery, "server_version": self.server_version}
        seen["timeline"] = self.timeline
        if self.in_recovery:
            seen |= {
                "receive_lsn": self.receive_lsn,
                "replay_lsn": self.replay_lsn,
                "receive_lag_bytes": self.receive_lag_bytes,
            }
        else:
            seen["lsn"] = self.lsn
        return seen


# The timeline of a primary comes from its current WAL file name (its first 8 hex digits), not from
# pg_control_checkpoint(): right after a promotion the checkpoint still names the old timeline until the
# end-of-recovery checkpoint completes, which would make a fresh primary look unpromoted.
_STATE_SQL = """
SELECT pg_is_in_recovery(),
       current_setting('server_version'),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END,
       (SELECT timeline_id FROM pg_control_checkpoint()),
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint
"""


@dataclass(frozen=True, slots=True)
class PeerState:
    """Another site of the cluster as seen just before a promotion."""

    site: str
    status: Literal["down", "replica", "primary", "unknown"]
    lsn: str | None = None
    detail: str = ""
    fence: int | None = None  # the newest token in its fence table (postgres_fence.py)


# --------------------------------------------------------------------------------------------- the driver


class PostgresDriver:
    """Makes ``primary`` the writable primary of ``cluster`` by promoting it, guarded against lag and split brain."""

    name = "postgres"
    modules = frozenset({MODULE})

    def __init__(self, config: PostgresDriverConfig) -> None:
        self._config = config

    async def preflight(self, step: StepContext) -> Readiness:
        """Would apply() succeed now? Read-only: SELECTs only, on the target and on each peer (as apply() reads them).

        A target that already is a primary is ready unless another site writes too (split brain). A replica must
        stream (pg_stat_wal_receiver), lag no more than ``max_lag_bytes`` (apply()'s own measure: received but not
        replayed, and the writable peer's current LSN minus the replay LSN), be allowed to run pg_promote, and not
        meet a guard that would refuse even with the primary gone (see drivers/postgres_preflight.py). Exports
        ``replica_lag_bytes`` and ``replica_lag_seconds``: the recovery point a cutover would give now.
        Budget: the target's connect and three statements, the peers' probes in parallel with one of them.
        Raises as check(): CredentialsUnavailable (a wrong password), Unavailable (the target down), NotFound, Refused.
        """
        inputs, guards = parse_inputs(step)
        cluster, target = inputs.cluster, inputs.primary
        async with self._connect(cluster, target) as (conn, where):
            state = await self._state(conn, where)
            if not state.in_recovery:
                return primary_readiness(where, state, await self._peers(cluster, target))
            row, peers = await asyncio.gather(self._one(conn, where, STANDBY_SQL), self._peers(cluster, target))
            lag = await self._lag(conn, where, state, peers)  # after the peers: their LSN is read before our replay LSN
        refusal = self._refusal(cluster, target, guards, guarded_peers(peers), lag)
        return replica_readiness(where, state, Standby.from_row(row), peers, lag, guards, refusal)

    async def check(self, step: StepContext) -> CheckResult:
        """Is the target site already a primary (``pg_is_in_recovery()`` false)? Read-only and idempotent.

        Looks at the target only: a second writable site is apply()'s concern (its split-brain guard). Its fence
        table (replicated, on a replica) holding a newer token than the step's raises Fenced, satisfied or not.
        Budget: one connect (``connect_timeout``) and up to three statements (``connect_timeout`` each).
        Raises Fenced, Unavailable (retryable), CredentialsUnavailable (password unreadable or rejected), NotFound
        (cluster or site not configured), Refused (permission denied, bad inputs).
        """
        inputs, _guards = parse_inputs(step)
        async with self._connect(inputs.cluster, inputs.primary) as (conn, where):
            state = await self._state(conn, where)
            stamp = await self._fence(conn, where)
        refuse_newer_stamp(f"postgres {inputs.cluster}/{inputs.primary}", stamp, step)
        satisfied = not state.in_recovery
        return CheckResult(
            satisfied=satisfied,
            observed=state.observed() | {"fencing_token": stamp},
            outputs=state.outputs(inputs.cluster, inputs.primary) if satisfied else {},
        )

    async def apply(self, step: StepContext) -> ApplyResult:
        """Promote the target replica with ``pg_promote(wait => true)`` unless a guard refuses.

        Idempotent: a target that already is a primary is not promoted again (only its fence gets the step's token,
        unless it holds a newer one: Fenced). Fencing first: the target's or a reachable peer's fence table holding
        a newer token than the step's raises Fenced, whatever ``force`` says. After the promotion the fence table
        of the new primary gets the step's token. Guards,
        both overridden by ``force`` (and then named in the log), each a Refused: another site reachable and
        writable, or reachable but of unknown role (split-brain risk, ``details["sites"]``); replay lag
        (received-but-not-replayed on the replica, and the old primary's current LSN minus the replica's replay
        LSN when it answers) above ``max_lag_bytes`` (``details["lag_bytes"]`` and ``["max_lag_bytes"]``), or
        not measurable. Split brain is tested first: it is the graver, and its message names the lag too.

        Budget: the target's connect + a few statements, the peers' probes in parallel (each a connect and a
        statement), then ``pg_promote`` up to ``promote_timeout``. Raises the guards' Refused (permanent),
        Unavailable (unreachable, or pg_promote not done within ``promote_timeout``: retryable),
        CredentialsUnavailable, NotFound, Refused.
        A cancelled pg_promote may still complete on the server (the runner re-checks before retrying).
        """
        inputs, guards = parse_inputs(step)
        cluster, target = inputs.cluster, inputs.primary
        async with self._connect(cluster, target) as (conn, where):
            before = await self._state(conn, where)
            if not before.in_recovery:
                note = f"{where} already is a primary (timeline {before.timeline}, LSN {before.lsn}): pg_promote not called"
                fenced = await self._write_fence(conn, where, target, step)  # ours, or Fenced: a newer leader's
                return ApplyResult(log=(note, fenced), outputs=before.outputs(cluster, target))

            peers = await self._peers(cluster, target)
            fences = {target: await self._fence(conn, where)} | {p.site: p.fence for p in peers}
            newest = max(((token, site) for site, token in fences.items() if token is not None), default=None)
            if newest is not None:  # a newer leader promoted there: refused even with force
                refuse_newer_stamp(f"postgres {cluster}/{newest[1]} (its fence table)", newest[0], step)
            log = [
                f"{where} is a replica: received {before.receive_lsn}, replayed {before.replay_lsn}, "
                f"{_bytes(before.receive_lag_bytes)} received but not replayed",
                *(f"peer {cluster}/{p.site}: {p.status}{f' at LSN {p.lsn}' if p.lsn else ''}{_detail(p.detail)}" for p in peers),
            ]
            lag = await self._lag(conn, where, before, peers)
            limit = "none" if guards.max_lag_bytes is None else _bytes(guards.max_lag_bytes)
            log.append(f"replay lag: {_bytes(lag)} (limit: {limit})")

            refusal = self._refusal(cluster, target, guards, peers, lag)
            if refusal is not None:
                if not guards.force:
                    raise refusal
                log.append(f"force: promoting despite: {refusal}")

            began = time.monotonic()
            promoted = await self._promote(conn, where)
            after = await self._state(conn, where)
            if after.in_recovery:  # pg_promote said true, yet the server still is in recovery: not done
                raise Unavailable(f"{where}: pg_promote returned but the server is still in recovery")
            how = "promoted with pg_promote" if promoted else "was promoted meanwhile by someone else"
            log.append(
                f"{where} {how} in {time.monotonic() - began:.2f}s: timeline {before.timeline} → {after.timeline}, "
                f"writing at LSN {after.lsn}"
            )
            log.append(await self._write_fence(conn, where, target, step))
        return ApplyResult(log=tuple(log), outputs=after.outputs(cluster, target))

    async def verify(self, step: StepContext) -> ProbeResult:
        """On a fresh connection: ``pg_is_in_recovery()`` is false, and a write commits and reads back.

        Independent of apply(): creates ``hybridops_probe(run_id text, at timestamptz)`` if absent, inserts the
        step's run_id in a committed transaction and counts it back. Not idempotent in the strict sense (each
        call adds a probe row) but harmless to repeat. A replica, or a primary that refuses writes
        (read-only transaction, no privilege), gives ok=False. Budget: one connect and four statements.
        Raises Unavailable (retryable), CredentialsUnavailable, NotFound.
        """
        inputs, _guards = parse_inputs(step)
        cluster, target = inputs.cluster, inputs.primary
        async with self._connect(cluster, target) as (conn, where):
            state = await self._state(conn, where)
            observed = state.observed()
            if state.in_recovery:
                return ProbeResult(ok=False, probe=_PROBE, observed=observed, detail=f"{where} is still in recovery (a replica)")
            try:
                async with self._bounded(where, "probe write"), conn.transaction():
                    await conn.execute(f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (run_id text, at timestamptz)")
                    cursor = await conn.execute(
                        f"INSERT INTO {PROBE_TABLE} (run_id, at) VALUES (%s, clock_timestamp()) RETURNING at", (step.run_id,)
                    )
                    written = await cursor.fetchone()
            except (pg_errors.ReadOnlySqlTransaction, pg_errors.InsufficientPrivilege) as exc:
                observed["write_error"] = type(exc).__name__
                detail = f"{where} is not in recovery but refuses writes: {_first_line(exc)}"
                return ProbeResult(ok=False, probe=_PROBE, observed=observed, detail=detail)
            except psycopg.Error as exc:
                raise self._query_error(where, exc) from None
            if written is None:
                raise DriverError(f"{where}: the probe INSERT returned no row")
            # Read back this very row (run_id + its timestamp) after the commit, not just any earlier probe of the run.
            query = f"SELECT count(*) FROM {PROBE_TABLE} WHERE run_id = %s AND at = %s"
            rows = await self._one(conn, where, query, (step.run_id, written[0]))
        observed |= {"probe_at": written[0].isoformat(), "probe_rows": int(rows[0])}
        ok = observed["probe_rows"] == 1
        detail = (
            f"{where} is a writable primary (timeline {state.timeline})" if ok else f"{where}: the probe row did not read back"
        )
        return ProbeResult(ok=ok, probe=_PROBE, observed=observed, detail=detail)

    async def compensate(self, step: StepContext) -> ApplyResult:
        """Promotion is one-way: there is nothing to undo. Always raises NoCompensation."""
        raise NoCompensation(
            f"postgres: no compensation for {MODULE}: a promotion cannot be undone; rebuild the old primary as a replica "
            "(pg_rewind or a new base backup) to fail back"
        )

    # ------------------------------------------------------------------------------------------ guards

    def _refusal(
        self, cluster: str, target: str, guards: PromotionGuards, peers: Sequence[PeerState], lag: int | None
    ) -> Refused | None:
        """The guard that refuses this promotion (split brain first), or None."""
        over = guards.max_lag_bytes is not None and (lag is None or lag > guards.max_lag_bytes)
        risky = [p for p in peers if p.status in ("primary", "unknown")]
        if risky:
            reasons = ", ".join(
                f"{p.site} is a writable primary" + (f" at LSN {p.lsn}" if p.lsn else "")
                if p.status == "primary"
                else f"cannot rule out that {p.site} is writable ({p.detail})"
                for p in risky
            )
            also = f"; replay lag {_bytes(lag)} also exceeds max_lag_bytes={guards.max_lag_bytes}" if over else ""
            return Refused(
                f"refusing to promote {cluster}/{target}: split-brain risk: {reasons}; stop or fence it first, "
                f"or set force{also}",
                details={"sites": tuple(p.site for p in risky)},
            )
        if guards.max_lag_bytes is None or not over:
            return None
        if lag is None:
            return Refused(
                f"refusing to promote {cluster}/{target}: max_lag_bytes={guards.max_lag_bytes} but the replica's lag "
                "cannot be measured (it has received no WAL since it started and no primary answers); set force to override"
            )
        return Refused(
            f"refusing to promote {cluster}/{target}: replay lag {lag} bytes exceeds "
            f"max_lag_bytes={guards.max_lag_bytes}; promoting would lose those writes; set force to override",
            details={"lag_bytes": lag, "max_lag_bytes": guards.max_lag_bytes},
        )

    async def _lag(self, conn: Connection, where: str, state: ServerState, peers: Sequence[PeerState]) -> int | None:
        """The worst of: WAL received but not replayed, and each writable peer's current LSN minus our replay LSN."""
        candidates = [state.receive_lag_bytes] if state.receive_lag_bytes is not None else []
        for peer in peers:
            if peer.status == "primary" and peer.lsn is not None:
                row = await self._one(
                    conn, where, "SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn())::bigint", (peer.lsn,)
                )
                if row[0] is not None:
                    candidates.append(max(0, int(row[0])))
        return max(candidates) if candidates else None

    async def _peers(self, cluster: str, target: str) -> list[PeerState]:
        others = [name for name in self._config.clusters[cluster] if name != target]
        return list(await asyncio.gather(*(self._peer(cluster, name) for name in others)))

    async def _peer(self, cluster: str, name: str) -> PeerState:
        """How another site looks: down (unreachable), replica, primary, or unknown (answers but cannot be read)."""
        try:
            async with self._connect(cluster, name) as (conn, where):
                state = await self._state(conn, where)
                fence = await self._fence(conn, where)
        except Unavailable as exc:
            # A server that answers "starting up" (crash recovery) may be writable a moment later: not down.
            if exc.code == SERVER_ANSWERED and "shutting down" not in str(exc):
                return PeerState(name, "unknown", detail=str(exc))
            return PeerState(name, "down", detail=str(exc))
        except DriverError as exc:  # it answers, but we cannot tell its role: not the same as down
            return PeerState(name, "unknown", detail=str(exc))
        if state.in_recovery:
            return PeerState(name, "replica", fence=fence)
        return PeerState(name, "primary", lsn=state.lsn, fence=fence)

    async def _fence(self, conn: Connection, where: str) -> int | None:
        """The newest token in the site's fence table; None when it has none."""
        if not (await self._one(conn, where, fence.EXISTS_SQL))[0]:
            return None
        token = (await self._one(conn, where, fence.READ_SQL))[0]
        return None if token is None else int(token)

    async def _write_fence(self, conn: Connection, where: str, site: str, step: StepContext) -> str:
        """Record the step's token in the fence table of the (new) primary, never lowering it: Fenced when a newer one
        is there. Returns the log line."""
        try:
            async with self._bounded(where, "fence write"), conn.transaction():
                await conn.execute(fence.CREATE_SQL)
                cursor = await conn.execute(fence.WRITE_SQL, (step.fencing_token, site, step.run_id))
                written = await cursor.fetchone()
        except psycopg.Error as exc:
            raise self._query_error(where, exc) from None
        if written is None:
            refuse_newer_stamp(f"{where} (its fence table)", await self._fence(conn, where), step)
            raise DriverError(f"{where}: the fence write changed nothing, yet holds no newer token")
        return f"{where}: fence table {fence.TABLE} holds fencing token {step.fencing_token} (run {step.run_id})"

    async def _promote(self, conn: Connection, where: str) -> bool:
        """True when our pg_promote did it; False when the server turned out promoted already (by someone else)."""
        wait_seconds = max(1, math.ceil(self._config.promote_timeout))
        try:
            async with asyncio.timeout(self._config.promote_timeout + self._config.connect_timeout):
                cursor = await conn.execute("SELECT pg_promote(wait => true, wait_seconds => %s::integer)", (wait_seconds,))
                row = await cursor.fetchone()
        except TimeoutError:
            raise Unavailable(f"{where}: pg_promote did not return within {self._config.promote_timeout:g}s") from None
        except pg_errors.ObjectNotInPrerequisiteState:  # "recovery is not in progress": promoted since we looked
            return False
        except psycopg.Error as exc:
            raise self._query_error(where, exc) from None
        if row is None or row[0] is not True:
            raise Unavailable(f"{where}: pg_promote did not complete within {wait_seconds}s (it may still)")
        return True

    # ------------------------------------------------------------------------------------------ plumbing

    def _site(self, cluster: str, name: str) -> PostgresSite:
        sites = self._config.clusters.get(cluster)
        if sites is None:
            known = ", ".join(sorted(self._config.clusters))
            raise NotFound(f"cluster {cluster!r} is not configured for the postgres driver; known: {known}")
        site = sites.get(name)
        if site is None:
            raise NotFound(f"postgres: cluster {cluster!r} has no site {name!r}; known: {', '.join(sorted(sites))}")
        return site

    @staticmethod
    def _where(cluster: str, name: str, site: PostgresSite) -> str:
        """``postgres cluster/site (host:port)`` for messages: never the DSN itself, which could hold a password by mistake."""
        try:
            params = conninfo_to_dict(site.dsn)
        except psycopg.Error:
            return f"postgres {cluster}/{name}"
        host = params.get("host") or params.get("hostaddr") or "local socket"
        return f"postgres {cluster}/{name} ({host}:{params.get('port') or 5432})"

    @asynccontextmanager
    async def _connect(self, cluster: str, name: str) -> AsyncIterator[tuple[Connection, str]]:
        """A fresh autocommit connection to the site, within ``connect_timeout``, and how messages name the site;
        typed errors (NotFound for a site not configured), the password scrubbed."""
        site = self._site(cluster, name)
        where = self._where(cluster, name, site)
        password: str | None = None
        if site.password is not None:
            password = secret("postgres", f"postgres {cluster}/{name} password", site.password)
        extra: dict[str, Any] = {} if password is None else {"password": password}
        timeout = self._config.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                conn = await psycopg.AsyncConnection.connect(
                    site.dsn,
                    autocommit=True,
                    connect_timeout=max(2, math.ceil(timeout)),
                    tcp_user_timeout=sockets.user_timeout_ms(timeout),
                    **extra,
                )
        except TimeoutError:
            raise Unavailable(f"{where}: no answer within {timeout:g}s") from None
        except psycopg.OperationalError as exc:
            raise _connect_error(where, exc, password) from None
        except psycopg.Error as exc:  # e.g. a malformed DSN (ProgrammingError)
            raise Refused(f"{where}: cannot connect: {_scrub(_first_line(exc), password)}") from None
        try:
            yield conn, where
        finally:
            with suppress(Exception):
                async with asyncio.timeout(timeout):
                    await conn.close()

    @asynccontextmanager
    async def _bounded(self, where: str, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._config.connect_timeout):
                yield
        except TimeoutError:
            raise Unavailable(f"{where}: {what} got no answer within {self._config.connect_timeout:g}s") from None

    async def _one(self, conn: Connection, where: str, query: QueryNoTemplate, params: Params | None = None) -> TupleRow:
        try:
            async with self._bounded(where, "query"):
                cursor = await conn.execute(query, params)
                row = await cursor.fetchone()
        except psycopg.Error as exc:
            raise self._query_error(where, exc) from None
        if row is None:
            raise DriverError(f"{where}: a query returned no row")
        return row

    async def _state(self, conn: Connection, where: str) -> ServerState:
        row = await self._one(conn, where, _STATE_SQL)
        in_recovery, version, lsn, walfile_tli, checkpoint_tli, receive_lsn, replay_lsn, receive_lag = row
        timeline = int(walfile_tli, 16) if walfile_tli else (int(checkpoint_tli) if checkpoint_tli is not None else None)
        return ServerState(
            in_recovery=bool(in_recovery),
            server_version=str(version),
            timeline=timeline,
            lsn=lsn,
            receive_lsn=receive_lsn,
            replay_lsn=replay_lsn,
            receive_lag_bytes=max(0, int(receive_lag)) if receive_lag is not None else None,
        )

    @staticmethod
    def _query_error(where: str, exc: psycopg.Error) -> DriverError:
        message = f"{where}: {type(exc).__name__}: {_first_line(exc)}"
        if isinstance(exc, pg_errors.InsufficientPrivilege):
            return Refused(message)
        if isinstance(exc, psycopg.OperationalError):  # the connection broke or the server is shutting down
            return Unavailable(message)
        return DriverError(message)


# --------------------------------------------------------------------------------------------- helpers

_AUTH_MARKERS = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "pg_hba.conf",
    "sasl authentication",
)
_REFUSED_MARKERS = ("does not exist", "permission denied", "not permitted to log in")


def _connect_error(where: str, exc: psycopg.OperationalError, password: str | None) -> DriverError:
    """Classify a failed connect. libpq gives no SQLSTATE for it, so the (C-locale) message decides."""
    text = _scrub(" ".join(str(exc).split()), password)
    lowered = text.lower()
    if any(marker in lowered for marker in _AUTH_MARKERS):
        return CredentialsUnavailable(f"{where}: authentication failed: {text}")
    if any(marker in lowered for marker in _REFUSED_MARKERS):
        return Refused(f"{where}: {text}")
    return Unavailable(f"{where}: {text}", code=SERVER_ANSWERED if "fatal:" in lowered else None)


def _scrub(text: str, password: str | None) -> str:
    return text.replace(password, "***") if password else text


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _bytes(value: int | None) -> str:
    return "unknown" if value is None else f"{value} bytes"


def _detail(detail: str) -> str:
    return f" ({detail})" if detail else ""
