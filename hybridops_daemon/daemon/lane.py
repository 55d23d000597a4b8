"""A lane as the daemon holds it, and what a successor needs of it: the typed handover and the run's progress.

The handover is the document the lane's leader keeps in etcd (through its ``LaneLeadership``): the lane's durable
state, the decision that started its active run, and that run's plan and progress. A successor adopts the state and
continues the run from ``check()`` of its first unfinished step. With the local lease there is no handover: the node's
own journal is the lane's memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hybridops_daemon.chain.preflight import NOT_CHECKED, READY, StepReadiness
from hybridops_daemon.chain.runner import RunSpec
from hybridops_daemon.config.profile import Profile
from hybridops_daemon.drivers.base import Driver
from hybridops_daemon.lease.lanes import LaneLeadership
from hybridops_daemon.policy.types import Decision, LaneState


class HandoverInvalid(ValueError):
    """The handover document in the lease store cannot be read as one (a bug or a foreign writer)."""


@dataclass(frozen=True, slots=True)
class RunEnd:
    ok: bool
    reason: str


@dataclass
class RunProgress:
    """The active run as a successor needs it: its plan (the ``run.start`` body), the outputs of the steps it finished,
    and its end once it has one."""

    start: dict[str, Any]
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    end: RunEnd | None = None

    @property
    def run_id(self) -> str | None:
        run_id = self.start.get("run_id")
        return run_id if isinstance(run_id, str) else None

    def document(self) -> dict[str, Any]:
        end = {"ok": self.end.ok, "reason": self.end.reason} if self.end is not None else None
        return {"start": self.start, "done": self.done, "end": end}

    @classmethod
    def from_document(cls, raw: object) -> RunProgress | None:
        """None when the document names no run; raises HandoverInvalid when it names one badly."""
        if not raw:
            return None
        if not isinstance(raw, Mapping) or not isinstance(raw.get("start") or {}, Mapping):
            raise HandoverInvalid("the run's progress is not an object with a `start`")
        done = raw.get("done") or {}
        end = raw.get("end")
        if not isinstance(done, Mapping) or not all(isinstance(v, Mapping) for v in done.values()):
            raise HandoverInvalid("the run's finished steps are not a map of step → outputs")
        if end is not None and not (isinstance(end, Mapping) and isinstance(end.get("ok"), bool)):
            raise HandoverInvalid("the run's end is not {ok, reason}")
        return cls(
            start=dict(raw.get("start") or {}),
            done={str(step): dict(outputs) for step, outputs in done.items()},
            end=RunEnd(bool(end["ok"]), str(end.get("reason", ""))) if end else None,
        )


@dataclass(frozen=True, slots=True)
class Handover:
    """What the lane's last holding left for its successor."""

    node: str | None
    fencing_token: int | None
    state: LaneState
    decision: dict[str, Any] | None = None  # the decision that started the active run (a successor rebuilds it)
    run: RunProgress | None = None
    at: float | None = None

    @property
    def previous(self) -> dict[str, Any]:
        """Who held the lane: named in this node's journal and in the run it continues."""
        return {"node": self.node, "fencing_token": self.fencing_token}

    def document(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "fencing_token": self.fencing_token,
            "state": self.state.durable(),
            "decision": self.decision,
            "run": self.run.document() if self.run is not None else None,
            "at": self.at,
        }

    @classmethod
    def from_document(cls, raw: Mapping[str, Any]) -> Handover:
        """Raises HandoverInvalid for a document that is not a handover this daemon wrote."""
        try:
            state = LaneState.from_durable(raw["state"])
        except (KeyError, TypeError, ValueError) as exc:
            raise HandoverInvalid(f"the lane state is missing or unreadable ({type(exc).__name__}: {exc})") from None
        decision = raw.get("decision")
        token = raw.get("fencing_token")
        return cls(
            node=str(raw["node"]) if raw.get("node") is not None else None,
            fencing_token=token if isinstance(token, int) else None,
            state=state,
            decision=dict(decision) if isinstance(decision, Mapping) else None,
            run=RunProgress.from_document(raw.get("run")),
            at=raw.get("at") if isinstance(raw.get("at"), int | float) else None,
        )


@dataclass
class Lane:
    name: str
    profile: Profile
    state: LaneState
    drivers: Mapping[str, Driver]
    leadership: LaneLeadership | None = None  # set once, right after the lanes are built
    last_decision: Decision | None = None
    led: bool = False  # this node leads the lane and has adopted its state: only then does the loop decide for it
    situation: str = ""  # leading / following X / no quorum: journaled and logged when it changes
    run_decision: dict[str, Any] | None = None  # the decision that started the active run (a successor rebuilds it)
    run_progress: RunProgress | None = None  # the active run's plan, finished steps and end, for the handover
    dirty: asyncio.Event = field(default_factory=asyncio.Event)  # the handover changed: publish it
    chain: asyncio.Task[None] | None = None
    chain_run: str | None = None  # the run ``chain`` works on
    chain_stored: asyncio.Future[str | None] | None = None  # a new run's: in the handover (None), or why not
    preflight: asyncio.Task[list[StepReadiness]] | None = None  # readiness checks under way: a chain start stops them
    readiness: dict[tuple[str, str], StepReadiness] = field(default_factory=dict)  # (chain, step) → the last preflight

    @property
    def leads(self) -> bool:
        return self.led and self.leadership is not None and self.leadership.leading

    @property
    def lease(self) -> LaneLeadership:
        assert self.leadership is not None, "leaderships are made before anything runs"
        return self.leadership

    @property
    def winding_down(self) -> str | None:
        """The run a chain task of this node still works on, if any."""
        return self.chain_run if self.chain is not None and not self.chain.done() else None

    def handover(self, node: str, at: float) -> Handover:
        token = self.leadership.token if self.leadership is not None else None
        return Handover(node, token, self.state, self.run_decision, self.run_progress, at)

    def track(self, kind: str, run_id: str, body: Mapping[str, Any]) -> bool:
        """Keep the handover's run progress in step with a run record; True when the handover changed."""
        if self.state.active_run != run_id:
            return False
        progress = self.run_progress
        if kind == "run.start":
            done = progress.done if progress is not None and progress.run_id == run_id else {}
            self.run_progress = RunProgress(dict(body), done)
        elif progress is None:
            return False
        elif kind == "step.done":
            progress.done[body["step"]] = dict(body.get("outputs") or {})
        elif kind == "run.end":
            progress.end = RunEnd(bool(body["ok"]), str(body["reason"]))
        else:
            return False
        self.dirty.set()
        return True

    def run_spec(self, decision: Mapping[str, Any]) -> RunSpec:
        """The run a decision asks for (as journaled, so a restart builds the same run from the record).
        Raises ValueError for a decision that names no chain this daemon knows, or a scale run with no size."""
        chain = decision.get("chain")
        known: Literal["cutover", "failback", "scale"]
        if chain == "cutover" or chain == "failback":
            known, size, hourly = chain, None, self.profile.hourly_cost()
        elif chain == "scale" and self.profile.burst is not None:
            scale = decision.get("burst")
            if not isinstance(scale, Mapping) or not isinstance(scale.get("size_after"), int):
                raise ValueError(f"decision {decision.get('run_id')!r} starts a scale run but names no size")
            known, size = "scale", int(scale["size_after"])
            hourly = self.profile.burst.cost_per_hour(size)
        else:
            raise ValueError(f"decision {decision.get('run_id')!r} names chain {chain!r}, not one lane {self.name} runs")
        return RunSpec(
            run_id=decision["run_id"],
            lane=self.name,
            chain=known,
            kind=decision["kind"],
            trigger=decision["trigger"],
            actor=decision["actor"],
            reason=decision["reason"],
            profile={"name": self.profile.name, "version": self.profile.version},
            steps=self.profile.chain(known),
            approval_timeout=self.profile.approval_timeout,
            hourly_cost_usd=hourly,
            size=size,
        )


def status_line(lanes: Mapping[str, Lane]) -> str:
    """sd_notify's STATUS: every lane's status, and its path's readiness once checked, in one line."""
    parts = []
    for name, lane in lanes.items():
        path = path_summary(lane)
        parts.append(f"{name}: {lane.state.status.value}" + (f", {path}" if path else ""))
    return "; ".join(parts) if any(lane.readiness for lane in lanes.values()) else ", ".join(parts)


def next_chain(lane: Lane) -> str:
    """The chain the lane would run next: a burst lane's scale; failback once it is on standby, cutover otherwise."""
    if lane.profile.burst is not None:
        return "scale"
    status = lane.state.paused_from or lane.state.status
    return "failback" if status.value in ("ON_STANDBY", "FAILING_BACK") else "cutover"


def path_summary(lane: Lane) -> str:
    return path_summary_of(lane, lane.readiness)


def path_summary_of(lane: Lane, readiness: Mapping[tuple[str, str], StepReadiness]) -> str:
    """"path ready", "path broken at database, dns", "path not checked", or "" before any preflight ran."""
    chain = next_chain(lane)
    steps = [result for (which, _), result in readiness.items() if which == chain]
    if not steps:
        return ""
    broken = [result.step for result in steps if result.state not in (READY, NOT_CHECKED)]
    if broken:
        return f"path broken at {', '.join(broken)}"
    return "path ready" if any(result.state == READY for result in steps) else "path not checked"


def lane_document(lane: Lane) -> dict[str, Any] | None:
    """The lane's readiness for ``status``: the next chain's summary, its faults, when it was checked."""
    if not lane.readiness:
        return None
    chain = next_chain(lane)
    steps = [result for (which, _), result in lane.readiness.items() if which == chain]
    return {
        "chain": chain,
        "summary": path_summary(lane),
        "checked_at": max((result.checked_at for result in steps), default=None),
        "not_ready": [{"step": r.step, "reason": r.reason} for r in steps if r.state not in (READY, NOT_CHECKED)],
        "not_checked": [r.step for r in steps if r.state == NOT_CHECKED],
    }
