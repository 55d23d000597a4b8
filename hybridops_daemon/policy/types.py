"""Values that flow into and out of ``decide()``: immutable, comparable, cheap to build.

The per-sample values (RuleMemory, RuleEvidence, LaneState, Decision) are NamedTuples rather than frozen
dataclasses: a frozen dataclass pays an ``object.__setattr__`` per field on construction, which made building
them cost more than the decision itself (see benchmarks/decide_throughput.py).

Nothing here reads a clock, a file or a socket; times are epoch seconds handed in by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

from hybridops_daemon.policy.burst import BurstState
from hybridops_daemon.signals.sample import Sample


class LaneStatus(StrEnum):
    PRIMARY = "PRIMARY"
    DEGRADED = "DEGRADED"
    CUTTING_OVER = "CUTTING_OVER"
    ON_STANDBY = "ON_STANDBY"
    FAILING_BACK = "FAILING_BACK"
    PAUSED = "PAUSED"


class DecisionKind(StrEnum):
    HOLD = "hold"
    CUTOVER = "cutover"
    FAILBACK = "failback"
    DRILL = "drill"
    TEARDOWN = "teardown"  # the failback chain run to stop capacity a failed run left behind
    SCALE = "scale"  # a burst lane's scale chain, setting its cloud capacity to a size
    REFUSE = "refuse"


class Trigger(StrEnum):
    AUTOMATIC = "automatic"
    OPERATOR = "operator"
    SCHEDULE = "schedule"  # a scheduled drill, or the teardown a drill's deadline calls for


class Command(StrEnum):
    DRILL = "drill"
    CUTOVER = "cutover"
    FAILBACK = "failback"
    PAUSE = "pause"
    RESUME = "resume"
    TEARDOWN = "teardown"


@dataclass(frozen=True, slots=True)
class Intent:
    """An operator's (or the scheduler's) request, already validated and journaled; ``id`` is its journal seq."""

    id: int
    lane: str
    command: Command
    actor: str
    trigger: Trigger = Trigger.OPERATOR


@dataclass(frozen=True, slots=True)
class ChainEvent:
    """A chain run ended. Fed back to ``decide()`` so the lane's state follows what really happened."""

    lane: str
    run_id: str
    ok: bool
    detail: str


class Observation(NamedTuple):
    """What ``decide()`` sees: the latest sample per (signal, edge) and at most one event to act on."""

    readings: Mapping[tuple[str, str], Sample]
    self_edge: str
    peer_edge: str | None = None
    event: Intent | ChainEvent | None = None


class RuleMemory(NamedTuple):
    """Per (rule, edge): what confirmation has seen so far."""

    breaching_since: float | None = None
    consecutive: int = 0
    last_sample_at: float | None = None
    tripped: bool = False


EMPTY_MEMORY = RuleMemory()


class LaneState(NamedTuple):
    lane: str
    status: LaneStatus = LaneStatus.PRIMARY
    since: float = 0.0
    rules: Mapping[tuple[str, str], RuleMemory] = MappingProxyType({})  # read-only, so one shared default is safe
    automatic_actions: tuple[float, ...] = ()  # times of automatic actions still inside the limit window
    last_action_at: float | None = None
    active_run: str | None = None
    run_seq: int = 0
    drill_deadline: float | None = None
    paused_from: LaneStatus | None = None
    paused_by: str | None = None
    clear_since: float | None = None
    refusal: str | None = None  # code of the last refusal, so a standing refusal is journaled once
    stranded: str | None = None  # a failed run whose paid capacity may still be running (policy/teardown.py)
    teardown_tries: int = 0  # teardowns of it that failed so far: the next waits longer
    teardown_at: float | None = None  # when the next scheduled teardown may start
    burst: BurstState | None = None  # a burst lane's size, spend and timers (policy/burst_lane.py); None for DR lanes

    def evolved(self, rules: Mapping[tuple[str, str], RuleMemory], clear_since: float | None) -> LaneState:
        """The per-sample update, spelled out positionally: the cheapest way to build the next state."""
        return LaneState(
            self.lane,
            self.status,
            self.since,
            rules,
            self.automatic_actions,
            self.last_action_at,
            self.active_run,
            self.run_seq,
            self.drill_deadline,
            self.paused_from,
            self.paused_by,
            clear_since,
            self.refusal,
            self.stranded,
            self.teardown_tries,
            self.teardown_at,
            self.burst,
        )

    def durable(self) -> dict[str, Any]:
        """What survives a restart. Rule memory does not: after a restart a breach must be confirmed anew."""
        return {
            "lane": self.lane,
            "status": self.status.value,
            "since": self.since,
            "automatic_actions": list(self.automatic_actions),
            "last_action_at": self.last_action_at,
            "active_run": self.active_run,
            "run_seq": self.run_seq,
            "drill_deadline": self.drill_deadline,
            "paused_from": self.paused_from.value if self.paused_from else None,
            "paused_by": self.paused_by,
            "stranded": self.stranded,
            "teardown_tries": self.teardown_tries,
            "teardown_at": self.teardown_at,
            # Size and spend survive a restart; its confirmation timers do not (like rule memory): pressure is
            # confirmed anew, rather than trusting a timer whose samples since the record nobody saw.
            "burst": {**self.burst.durable(), "past_trip_since": [], "calm_since": None} if self.burst else None,
        }

    @classmethod
    def from_durable(cls, data: Mapping[str, Any]) -> LaneState:
        return cls(
            lane=str(data["lane"]),
            status=LaneStatus(data["status"]),
            since=float(data["since"]),
            automatic_actions=tuple(float(t) for t in data.get("automatic_actions", ())),
            last_action_at=data.get("last_action_at"),
            active_run=data.get("active_run"),
            run_seq=int(data.get("run_seq", 0)),
            drill_deadline=data.get("drill_deadline"),
            paused_from=LaneStatus(data["paused_from"]) if data.get("paused_from") else None,
            paused_by=data.get("paused_by"),
            stranded=data.get("stranded"),
            teardown_tries=int(data.get("teardown_tries", 0)),
            teardown_at=data.get("teardown_at"),
            burst=BurstState.from_durable(data["burst"]) if data.get("burst") else None,
        )


class RuleEvidence(NamedTuple):
    rule: str
    edge: str
    signal: str
    value: float | None
    age_s: float | None
    unknown: bool
    breaching: bool
    consecutive: int
    breaching_for_s: float
    tripped: bool


class Decision(NamedTuple):
    kind: DecisionKind
    lane: str
    reason: str
    at: float
    status_before: LaneStatus
    status_after: LaneStatus
    trigger: Trigger = Trigger.AUTOMATIC
    actor: str = "policy"
    run_id: str | None = None
    chain: str | None = None  # "cutover" or "failback": which chain the daemon must run now
    intent_id: int | None = None
    evidence: tuple[RuleEvidence, ...] = ()
    unknown_signals: tuple[str, ...] = ()

    @property
    def notable(self) -> bool:
        """Worth a journal record: anything but a hold that left the status as it was. Only these carry evidence."""
        return self.kind is not DecisionKind.HOLD or self.status_before is not self.status_after

    def to_dict(self) -> dict[str, Any]:
        data = self._asdict()
        for key in ("kind", "status_before", "status_after", "trigger"):
            data[key] = data[key].value
        data["evidence"] = [item._asdict() for item in self.evidence]
        data["unknown_signals"] = list(self.unknown_signals)
        return data
