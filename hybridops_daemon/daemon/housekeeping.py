"""Housekeeping beside the decision loop: journal retention and verification, scheduled drills, profile (and etcd
credentials) reload."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from hybridops_daemon.config.loader import check_config
from hybridops_daemon.config.models import DaemonConfig, EtcdLeaseConfig, RetentionConfig
from hybridops_daemon.config.profile import Profile
from hybridops_daemon.control.protocol import CommandRefused
from hybridops_daemon.daemon.lane import Lane
from hybridops_daemon.drivers.registry import DRIVER_MODULES
from hybridops_daemon.journal.retention import PruneReport
from hybridops_daemon.journal.store import Journal, JournalError
from hybridops_daemon.journal.verify import JournalCheck
from hybridops_daemon.policy.types import Command, Decision, Trigger
from hybridops_daemon.scheduler import DrillScheduler
from hybridops_daemon.secrets import SecretUnavailable

if TYPE_CHECKING:
    from hybridops_daemon.lease.etcd import EtcdPool
    from hybridops_daemon.lease.etcd_credentials import EtcdCredentials

log = structlog.get_logger("hybridops.daemon")

Submit = Callable[[Command, str, str, Trigger], Awaitable[tuple[int, Decision]]]

# The first verification after a start. Not at once: takeover, run recovery and the first preflights read the journal
# and use the default executor then. Within a minute: a journal altered while the daemon was down is reported soon
# after it starts, not an interval later. No jitter: each node verifies its own file on its own disk.
FIRST_VERIFY_AFTER = 30.0


@dataclass
class RetentionHold:
    """Why the last retention check removed less than the rules asked for, for ``hyopsctl status``."""

    reason: str | None = None
    run_id: str | None = None  # the run that held it, when one did (``hyopsctl run abandon`` ends an orphan)
    since: float | None = None

    def note(self, report: PruneReport | None, now: float) -> None:
        reason = report.held if report is not None else None
        if reason != self.reason:
            self.since = now if reason is not None else None
        self.reason, self.run_id = reason, report.held_by if report is not None else None

    def document(self) -> dict[str, Any] | None:
        return None if self.reason is None else {"held": self.reason, "run_id": self.run_id, "since": self.since}


async def keep_retention(
    journal: Journal, retention: RetentionConfig, clock: Callable[[], float], hold: RetentionHold | None = None
) -> None:
    """Cut the journal's oldest records to the configured age/size, one bounded batch at a time, so the loop (and the
    watchdog it feeds) keep running; every cut leaves a summary that verify() proves from."""
    hold = hold if hold is not None else RetentionHold()
    while True:
        before = clock() - retention.days * 86400 if retention.days is not None else None
        max_bytes = int(retention.max_mb * 1024 * 1024) if retention.max_mb is not None else None
        try:
            while (report := journal.prune(before_ts=before, max_bytes=max_bytes, now=clock())) is not None:
                hold.note(report, clock())
                if report.removed:
                    log.info("journal pruned", removed=report.removed, held=report.held)
                elif report.held:
                    log.warning("journal retention held", held=report.held)
                if not report.more:
                    break
                await asyncio.sleep(0)
            else:
                hold.note(None, clock())  # nothing due: nothing held
        except JournalError:
            log.exception("journal retention failed; the next check retries")
        await asyncio.sleep(retention.check_every)


async def keep_journal_verified(journal: Journal, check: JournalCheck, clock: Callable[[], float]) -> None:
    """Verify the journal every ``check.every`` seconds and keep the verdict in ``check``, logging only when it turns
    failing or ok again. Never raises: a verify that raises is a failed verification."""
    await asyncio.sleep(min(check.every, FIRST_VERIFY_AFTER))
    while True:
        at, was = clock(), check.ok
        try:
            # In a thread, on a read-only connection of its own, with the journal's key: a long walk holds neither the
            # loop nor the writer. No timeout: a thread cannot be stopped, and one that hangs (a hung disk) leaves
            # check.at behind, which HybridopsJournalVerificationStale alerts on.
            check.note(await asyncio.to_thread(journal.verify_readonly), at)
        except Exception as exc:
            check.note(exc, at)
        if check.ok is False and was is not False:
            log.error("journal verification failed", problem=check.problem, journal=str(journal.path))
        elif check.ok and was is False:
            log.info("journal verification passes again", head=check.head, journal=str(journal.path))
        await asyncio.sleep(check.every)


def scheduled_drill(submit: Submit) -> Callable[[str], Awaitable[None]]:
    """What the drill scheduler fires: a drill intent, as an operator's would be, journaled with trigger `schedule`."""

    async def fire(lane: str) -> None:
        try:
            _, decision = await submit(Command.DRILL, lane, "schedule", Trigger.SCHEDULE)
        except (CommandRefused, TimeoutError) as exc:
            log.warning("scheduled drill not submitted", lane=lane, reason=str(exc))
            return
        log.info("scheduled drill", lane=lane, kind=decision.kind.value, reason=decision.reason)

    return fire


def _check(path: Path, running: DaemonConfig) -> tuple[dict[str, Profile], list[str]]:
    """Every check check-config makes, on the files as they are now; the daemon config itself must not have changed
    (its sources, lanes and drivers are wired at start: a change to it needs a restart, and a reload that applied only
    part of it would run with a config nobody checked)."""
    config, profiles, errors = check_config(path, DRIVER_MODULES)
    if errors or config is None:
        return {}, [str(error) for error in errors] or [f"{path}: not a daemon config"]
    if config != running:
        return {}, [f"{path} changed since the daemon started: restart it to apply that (profiles not reloaded either)"]
    return profiles, []


def _kind_changes(lanes: Mapping[str, Lane], loaded: Mapping[str, Profile]) -> list[str]:
    """A lane stays the kind it started as: its state, its run in flight and its metrics are a DR lane's or a burst
    lane's, and a scale run would find no size in a DR profile (nor a cutover a chain in a burst one)."""

    def kind(profile: Profile) -> str:
        return "DR" if profile.burst is None else "burst"

    return [
        f"lane {name}: profile {profile.ref} is a {kind(profile)} profile, the lane runs as a {kind(lanes[name].profile)}"
        " lane: restart the daemon to change its kind"
        for name, profile in loaded.items()
        if name in lanes and kind(profile) != kind(lanes[name].profile)
    ]


async def reload_profiles(
    path: Path,
    config: DaemonConfig,
    lanes: Mapping[str, Lane],
    drills: DrillScheduler | None,
    journal: Journal,
    now: Callable[[], float],
    etcd: EtcdPool | None = None,
) -> None:
    """Check the configuration again as check-config would (off the event loop: a large file must not stall status or
    the watchdog's view of progress) and swap every lane's profile, or none, keeping the running ones and saying why.
    With ``etcd``, its credentials are read again too (a renewed certificate, a new password) and swapped with them."""
    loaded, errors = await asyncio.to_thread(_check, path, config)
    errors += _kind_changes(lanes, loaded)
    credentials: EtcdCredentials | None = None
    if not errors and etcd is not None:
        assert isinstance(config.lease, EtcdLeaseConfig)
        from hybridops_daemon.lease.etcd_credentials import load_credentials

        try:
            credentials = await asyncio.to_thread(load_credentials, config.lease)
        except SecretUnavailable as exc:
            errors.append(str(exc))
    if not errors and drills is not None:
        try:
            drills.reschedule(loaded)
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        journal.append("profile.reload_refused", {"errors": errors}, ts=now())
        log.error("profile reload refused; keeping the running profiles", errors=errors)
        return
    if etcd is not None and credentials is not None:
        await etcd.use(credentials)
        log.info("etcd credentials reloaded: later etcd calls use them")
    for name, profile in loaded.items():
        lanes[name].profile = profile
    journal.append("profile.reloaded", {"lanes": {n: p.ref for n, p in loaded.items()}}, ts=now())
    log.info("profiles reloaded", lanes={n: p.ref for n, p in loaded.items()})
