"""Readiness of a ``database/primary@v1`` step (issue #13): what the postgres driver's preflight() read, judged.

The driver does the reading (its own connections, statements and error mapping); this module only decides. The
step's target either already is a primary (apply() would do nothing) or is a replica apply() would promote: then
it must stream, its lag must be within ``max_lag_bytes``, its role must be allowed to run ``pg_promote``, and
apply()'s guards must not refuse for a reason that is already true now.

One writable peer is the normal state before a promotion: it is the primary the step takes over from, and apply()
refuses only while it still answers (the cutover runs once it is down or fenced). So a single writable peer is
reported, not held against readiness; two writable peers, or a peer that answers without saying its role, are
a split brain apply() would refuse whenever it ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hybridops_daemon.drivers.base import Readiness, Refused

if TYPE_CHECKING:  # the driver imports this module: types only, no cycle at run time
    from hybridops_daemon.drivers.postgres import PeerState, PromotionGuards, ServerState

# One row whatever pg_stat_wal_receiver holds (it has no row without a WAL receiver). Its status and sender are NULL
# for a role without pg_read_all_stats. Run on a replica only: pg_get_wal_replay_pause_state() fails on a primary.
STANDBY_SQL = """
SELECT r.pid, r.status, r.sender_host || ':' || r.sender_port,
       pg_get_wal_replay_pause_state(),
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,
       has_function_privilege('pg_promote(boolean, integer)', 'EXECUTE')
FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true
"""


@dataclass(frozen=True, slots=True)
class Standby:
    """A replica's WAL receiver, replay and right to promote, from one row of ``STANDBY_SQL``."""

    receiver_pid: int | None
    receiver_status: str | None
    sender: str | None
    replay_pause: str  # "not paused", "pause requested" or "paused"
    replay_age_seconds: float | None  # now() minus the commit time of the last transaction replayed
    may_promote: bool

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Standby:
        pid, status, sender, pause, age, may_promote = row
        return cls(pid, status, sender, str(pause), None if age is None else max(0.0, float(age)), bool(may_promote))


def lag_seconds(lag_bytes: int | None, standby: Standby) -> float | None:
    """How far behind in time. now() - pg_last_xact_replay_timestamp() alone grows on an idle primary without any
    real lag, so it counts only while WAL is outstanding: with nothing left to replay no write can be lost and the
    lag is 0 s; else it is the age of the newest replayed commit (an upper bound of the writes the replica lacks)."""
    if lag_bytes == 0:
        return 0.0
    return standby.replay_age_seconds if lag_bytes is not None else None


def guarded_peers(peers: Sequence[PeerState]) -> list[PeerState]:
    """The peers apply()'s split-brain guard would still refuse for once the primary it replaces is gone: every
    peer of unknown role, and every writable one when there are more than one."""
    writable = [p for p in peers if p.status == "primary"]
    return [p for p in peers if p.status == "unknown"] + (writable if len(writable) > 1 else [])


def _peers_seen(peers: Sequence[PeerState]) -> dict[str, Any]:
    return {p.site: {"status": p.status, "lsn": p.lsn, "detail": p.detail} for p in peers}


def primary_readiness(where: str, state: ServerState, peers: Sequence[PeerState]) -> Readiness:
    """The target already is a primary: apply() would not call pg_promote. Ready unless another site writes too."""
    observed = state.observed() | {"peers": _peers_seen(peers)}
    writable = [p.site for p in peers if p.status == "primary"]
    if writable:
        return Readiness(
            False,
            f"split brain: {where} is a writable primary and so is {', '.join(writable)}; the step would change nothing "
            f"while both take writes; rebuild the others as replicas first",
            observed,
        )
    return Readiness(True, f"{where} already is the primary (timeline {state.timeline}): nothing to promote", observed)


def replica_readiness(
    where: str,
    state: ServerState,
    standby: Standby,
    peers: Sequence[PeerState],
    lag: int | None,
    guards: PromotionGuards,
    refusal: Refused | None,
) -> Readiness:
    """The target is a replica apply() would promote: streaming, within the lag limit, allowed to, not refused."""
    seconds = lag_seconds(lag, standby)
    observed = state.observed() | {
        "wal_receiver": standby.receiver_status,
        "sender": standby.sender,
        "replay_pause": standby.replay_pause,
        "may_promote": standby.may_promote,
        "replica_lag_bytes": lag,
        "replica_lag_seconds": seconds,
        "max_lag_bytes": guards.max_lag_bytes,
        "force": guards.force,
        "peers": _peers_seen(peers),
    }
    metrics = {"replica_lag_bytes": float(lag)} if lag is not None else {}
    if seconds is not None:
        metrics["replica_lag_seconds"] = seconds
    faults = []
    # With no writable peer the primary is down: that is the outage a cutover exists for, and a replica with nothing
    # to stream from is expected then (its lag is the data the promotion would lose). Only a primary that is up while
    # the replica does not stream from it is a broken path; else readiness would refuse exactly the cutovers it guards.
    primary_up = any(p.status == "primary" for p in peers)
    if standby.receiver_status != "streaming" and primary_up:
        faults.append(_not_streaming(where, standby))
    if refusal is not None and not guards.force:
        faults.append(f"apply would refuse: {refusal}")
    if not standby.may_promote:
        faults.append(f"{where}: the role may not execute pg_promote (a superuser, or GRANT EXECUTE on it, is needed)")
    if faults:
        return Readiness(False, "; ".join(faults), observed, metrics)
    limit = "no limit" if guards.max_lag_bytes is None else f"max_lag_bytes={guards.max_lag_bytes}"
    lag_text = "unknown" if lag is None else f"{lag} bytes"
    age = "" if seconds is None else f", {seconds:.1f}s"
    kind = "a streaming replica" if standby.receiver_status == "streaming" else "a replica with no primary to stream from"
    reason = f"{where} is {kind}, replay lag {lag_text}{age} ({limit})"
    writable = [p.site for p in peers if p.status == "primary"]
    if writable and not guards.force:
        reason += f"; apply refuses while {writable[0]} still takes writes (split-brain guard): it runs once that is down"
    if refusal is not None:  # forced: apply would promote regardless, and say so in its log
        reason += f"; force overrides: {refusal}"
    if standby.replay_pause != "not paused":
        reason += f"; replay is {standby.replay_pause} (promotion replays what was received first)"
    return Readiness(True, reason, observed, metrics)


def _not_streaming(where: str, standby: Standby) -> str:
    if standby.receiver_pid is None:
        return f"{where} is not streaming: no WAL receiver (its primary down or unreachable, or no primary_conninfo)"
    if standby.receiver_status is None:
        return f"{where}: cannot tell whether it streams: its WAL receiver's status is hidden (grant the role pg_read_all_stats)"
    return f"{where} is not streaming: its WAL receiver is {standby.receiver_status!r}"
