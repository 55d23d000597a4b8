"""The profile: policy and defaults for one lane version (``prod@v3``).

Cross-references (a rule naming an unknown signal, a step bound to a driver that cannot run its module) are
checked by ``profile_problems`` after the structure validates, so that every problem is reported with its own
key path.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from hybridops_daemon.config.base import Duration, Name, PositiveDuration, SecretRef, Strict
from hybridops_daemon.config.burst import BurstPolicy

ModuleRef = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*/[a-z][a-z0-9_-]*@v[0-9]+$")]


class SignalSpec(Strict):
    """A signal the profile reads. Older than ``max_age`` (or absent) it is UNKNOWN."""

    max_age: PositiveDuration
    description: str = ""


class Direction(StrEnum):
    BELOW = "below"  # breaching while value < trip, cleared once value >= clear
    ABOVE = "above"  # breaching while value > trip, cleared once value <= clear


class UnknownMeans(StrEnum):
    HOLD = "hold"  # UNKNOWN neither confirms nor clears the rule; it only blocks failback
    BREACH = "breach"  # UNKNOWN counts as breaching, timed by `for` alone (no samples to count)


class Rule(Strict):
    """A threshold with direction, confirmation time, consecutive count and hysteresis."""

    name: Name
    signal: str
    direction: Direction
    trip: float
    clear: float | None = Field(default=None, description="level at which a tripped rule clears; defaults to trip")
    for_: Duration = Field(default=0.0, alias="for", description="breach must last this long")
    consecutive: int = Field(default=1, ge=1, description="breaching samples in a row needed")
    unknown: UnknownMeans = UnknownMeans.HOLD

    @property
    def clear_level(self) -> float:
        return self.trip if self.clear is None else self.clear

    @model_validator(mode="after")
    def _hysteresis_points_the_right_way(self) -> Rule:
        if self.clear is None:
            return self
        if self.direction is Direction.BELOW and self.clear < self.trip:
            raise ValueError("clear must be >= trip for a 'below' rule (hysteresis band)")
        if self.direction is Direction.ABOVE and self.clear > self.trip:
            raise ValueError("clear must be <= trip for an 'above' rule (hysteresis band)")
        return self


class Corroboration(Strict):
    """Cut over only when ``min_rules`` of ``rules`` (default: all rules) are tripped."""

    min_rules: int = Field(default=1, ge=1)
    rules: tuple[str, ...] | None = None
    both_edges: bool = Field(default=False, description="a rule counts only when tripped on this edge and on the peer")


class FailbackPolicy(Strict):
    automatic: bool = False
    stable_for: Duration = 600.0


class ActionLimit(Strict):
    """At most ``max_actions`` automatic actions in any ``window``."""

    max_actions: int = Field(default=3, ge=1)
    window: Duration = 86400.0


class CostGuardrail(Strict):
    budget_usd_per_hour: float = Field(ge=0, description="an automatic cutover or a drill whose capacity costs more is refused")
    always_on_usd_per_hour: float | None = Field(
        default=None, ge=0, description="the baseline: an always-on cloud standby; default: the cutover chain's capacity, 24/7"
    )


class DrillPolicy(Strict):
    allowed: bool = True
    teardown_after: Duration = 900.0
    schedule: str | None = Field(
        default=None, description='cron expression (5 fields, UTC) for scheduled drills, e.g. "0 3 1 * *"'
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from hybridops_daemon.cron import validate_cron  # APScheduler is imported only when a schedule is set

            problem = validate_cron(value)
            if problem is not None:
                raise ValueError(problem)
        return value


class ReadinessPolicy(Strict):
    """How the lane's readiness (its steps' preflights, as ``ready_<chain>_<step>`` signals) weighs on decisions."""

    refuse_broken_cutover: bool = Field(
        default=False, description="refuse an automatic cutover while a cutover step's preflight reports it not ready"
    )
    max_age: PositiveDuration = Field(default=900.0, description="older readiness is UNKNOWN, and UNKNOWN never blocks")


class TeardownPolicy(Strict):
    """When a failed run may have left paid capacity running, its teardown (the failback chain) is retried on this
    schedule: ``retry_after`` after the failure, doubling per failed teardown up to ``retry_max``."""

    retry_after: PositiveDuration = 60.0
    retry_max: PositiveDuration = 3600.0

    @model_validator(mode="after")
    def _ordered(self) -> TeardownPolicy:
        if self.retry_max < self.retry_after:
            raise ValueError("retry_max must be at least retry_after")
        return self


class Step(Strict):
    """One module of a chain: the intent (module + inputs) and the driver bound to run it."""

    id: Name
    module: ModuleRef
    driver: Name = "sandbox"
    inputs: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, SecretRef] = Field(default_factory=dict)
    approval: bool = Field(default=False, description="wait for `hyopsctl approve RUN STEP`")
    timeout: PositiveDuration = 30.0
    retries: int = Field(default=2, ge=0, le=20)
    backoff: Duration = 1.0
    hourly_cost_usd: float = Field(default=0.0, ge=0, description="cloud capacity this step keeps running")
    expected_duration: Duration = Field(default=5.0, description="used by the simulator")


class Chains(Strict):
    """A DR lane's cutover and failback, or a burst lane's ``scale`` (whose steps take the size as ``${run.size}``)."""

    cutover: tuple[Step, ...] = ()
    failback: tuple[Step, ...] = ()
    scale: tuple[Step, ...] = ()


class Profile(Strict):
    """Policy and defaults for one lane, versioned (``prod@v3``)."""

    name: Name
    version: int = Field(ge=1)
    description: str = ""
    signals: dict[str, SignalSpec] = Field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    corroboration: Corroboration = Corroboration()
    cooldown: Duration = 300.0
    action_limit: ActionLimit = ActionLimit()
    failback: FailbackPolicy = FailbackPolicy()
    drill: DrillPolicy = DrillPolicy()
    teardown: TeardownPolicy = TeardownPolicy()
    readiness: ReadinessPolicy = ReadinessPolicy()
    approval_timeout: PositiveDuration = 3600.0
    cost: CostGuardrail | None = None
    burst: BurstPolicy | None = Field(default=None, description="a burst lane: scale cloud capacity on load pressure")
    chains: Chains

    @model_validator(mode="after")
    def _chains_of_its_kind(self) -> Profile:
        chains = self.chains
        if self.burst is None:
            missing = [name for name in ("cutover", "failback") if name not in chains.model_fields_set]
            if missing:  # an empty chain may be written (a lane that only drills its cutover), a missing one not
                raise ValueError(f"chains: a DR profile needs {' and '.join(missing)} chain(s) (or `burst:` for a burst lane)")
            if chains.scale:
                raise ValueError("chains.scale: only a burst profile (with `burst:`) scales")
        else:
            if not chains.scale:
                raise ValueError("chains.scale: a burst profile needs a scale chain")
            if chains.cutover or chains.failback or self.rules:
                raise ValueError("a burst profile has no rules and no cutover or failback chain: its levels decide")
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    def chain(self, which: Literal["cutover", "failback", "scale"]) -> tuple[Step, ...]:
        steps: tuple[Step, ...] = getattr(self.chains, which)
        return steps

    def hourly_cost(self) -> float:
        """Cloud cost per hour while the cutover chain's capacity runs."""
        return sum(step.hourly_cost_usd for step in self.chains.cutover)

    def capacity(self) -> tuple[str, ...]:
        """The cutover chain's paid capacity, as an operator names it: ``step (its target)``."""
        return tuple(f"{step.id} ({_target(step)})" for step in self.chains.cutover if step.hourly_cost_usd > 0)


def _target(step: Step) -> str:
    for key in ("name", "instance", "cluster", "server"):
        if isinstance(step.inputs.get(key), str):
            return str(step.inputs[key])
    return step.module


def profile_problems(profile: Profile, known_drivers: dict[str, frozenset[str]]) -> list[tuple[tuple[str | int, ...], str]]:
    """Cross-reference checks, as (key path, message). ``known_drivers`` maps driver → supported modules."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    names = [rule.name for rule in profile.rules]
    for i, rule in enumerate(profile.rules):
        if rule.signal not in profile.signals:
            problems.append((("rules", i, "signal"), f"unknown signal {rule.signal!r}; declare it under signals"))
        if names.count(rule.name) > 1 and names.index(rule.name) != i:
            problems.append((("rules", i, "name"), f"duplicate rule name {rule.name!r}"))
    chosen = profile.corroboration.rules
    for i, name in enumerate(chosen or ()):
        if name not in names:
            problems.append((("corroboration", "rules", i), f"unknown rule {name!r}"))
    pool = len(chosen) if chosen is not None else len(names)
    if profile.rules and profile.corroboration.min_rules > pool:
        problems.append(
            (("corroboration", "min_rules"), f"needs {profile.corroboration.min_rules} rules but only {pool} can count")
        )
    if profile.burst is not None and profile.burst.signal not in profile.signals:
        problems.append((("burst", "signal"), f"unknown signal {profile.burst.signal!r}; declare it under signals"))
    if profile.burst is not None:
        top = max(level.size for level in profile.burst.levels)
        for i, step in enumerate(profile.chains.scale):
            ceiling = step.inputs.get("max_size")
            if isinstance(ceiling, int) and ceiling < top:  # the top level's run would be refused by its own step
                message = f"max_size {ceiling} is below the largest burst level ({top})"
                problems.append((("chains", "scale", i, "inputs", "max_size"), message))
    for which in ("cutover", "failback", "scale"):
        ids: set[str] = set()
        for i, step in enumerate(getattr(profile.chains, which)):
            where: tuple[str | int, ...] = ("chains", which, i)
            if step.id in ids:
                problems.append(((*where, "id"), f"duplicate step id {step.id!r}"))
            ids.add(step.id)
            supported = known_drivers.get(step.driver)
            if supported is None:
                problems.append(
                    ((*where, "driver"), f"unknown driver {step.driver!r}; known: {', '.join(sorted(known_drivers))}")
                )
            elif step.module not in supported:
                problems.append(((*where, "module"), f"driver {step.driver!r} cannot run {step.module!r}"))
    return problems
